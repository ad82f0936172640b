//! Channel-level decomposition artifacts: per-channel activation statistics
//! ([`ChannelConcernSet`]) and physically small modules ([`ChannelModule`]).

use serde::{Deserialize, Serialize};

use crate::analysis::Cost;
use crate::artifact::{Artifact, ArtifactKind};
use crate::channel::ChannelPlan;
use crate::graph::NodeId;
use crate::model::ModelIr;
use crate::module::{DecompConfig, SampleCounts};

/// Which per-channel statistic is compared with the thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivationRate {
    /// Fraction of the channel's positions that are `> 0`, averaged over images (default):
    /// how much of the feature map the channel lights up for the class.
    MeanPositions,
    /// Fraction of images for which any position of the channel is `> 0`.
    AnyPosition,
    /// Standard deviation of the channel's post-ReLU output over positions and images,
    /// divided by the largest at its site: how much holding the channel at its mean
    /// changes what the next layer sees (0 = constant channel).
    Deviation,
}

impl ActivationRate {
    pub fn name(self) -> &'static str {
        match self {
            Self::MeanPositions => "mean-positions",
            Self::AnyPosition => "any-position",
            Self::Deviation => "deviation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::MeanPositions, Self::AnyPosition, Self::Deviation]
            .into_iter()
            .find(|r| r.name() == s)
    }
}

/// What a removed channel outputs after its ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compensation {
    /// Zero (plain removal).
    Off,
    /// Its mean post-ReLU activation (over positions and images) on the concerned images.
    Concerned,
    /// Its mean post-ReLU activation on the concerned and the unconcerned images together
    /// (the module's 1:1 sample), weighted by image count (default).
    Sample,
}

impl Compensation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Concerned => "concerned",
            Self::Sample => "sample",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Off, Self::Concerned, Self::Sample]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

/// Choices of channel-level decomposition (issue 6), recorded in every channel module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelConfig {
    /// Concern identification keeps a channel when its rate on the concerned images is
    /// `>= tau` and `> 0` (so `tau = 0` keeps every channel that is ever active: the element
    /// method's "keep if ever active" at channel granularity). Default 0.
    pub tau: f32,
    /// Tangling identification brings back a channel whose rate on the unconcerned sample is
    /// `>= tau_neg` and `> 0`; values above 1 bring back nothing. Default 0 (any activity,
    /// as the element method).
    pub tau_neg: f32,
    pub rate: ActivationRate,
    pub compensation: Compensation,
    /// Budget selection instead of thresholds: when set, `tau`, `tau_neg` and `rate` are not
    /// used; channels are removed in order of least first-order importance per FLOP (the
    /// squared change of the module's margin `mine - other` when the channel is held at its
    /// compensation value, averaged over the module's sample) until the module's FLOPs are at
    /// most this fraction of the model's.
    pub budget: Option<f32>,
    /// Least-squares reconstruction: after selection, every convolution feeding a mask site
    /// is refitted in closed form (ridge least squares, in graph order) so that the pruned
    /// network reproduces the **model's own** pre-activations of the kept channels on the
    /// module's sample. No labels and no gradient steps; the binary head is not changed.
    pub reconstruct: bool,
    /// Passes of the reconstruction's least squares per convolution (>= 1; default 3).
    /// 1: plain least squares of the pre-activations. Each further pass is ReLU-aware:
    /// where the model's pre-activation is `<= 0` its ReLU outputs 0 for any value `<= 0`,
    /// so the target there becomes `min(previous prediction, 0)` and the convolution is
    /// solved again (same Gram matrix, new right-hand side).
    pub relu_passes: u32,
    /// **Training** (issue 6 item 5, reported separately): fit the module's binary head by
    /// ridge least squares so that its margin reproduces the model's on the module's sample.
    pub fit_head: bool,
    /// Images of the module's sample (half concerned, half unconcerned) used by budget
    /// selection and reconstruction.
    pub fit_images: usize,
    /// **Training** of the module's weights after selection and reconstruction (issue 17):
    /// distillation of the model's margin on the training images ([`ModuleTrainConfig`]).
    /// `None`: no gradient steps.
    pub train: Option<ModuleTrainConfig>,
}

/// Module training: every weight of the extracted module (convolutions, BatchNorm `gamma`
/// and `beta` with the running statistics frozen, the binary head) moves by Adam so that
/// the module's margin `mine - other` reproduces the model's own binary margin
/// `z_c - mean of the other logits` (the margin composition votes on) on the training
/// images, as mean squared error. No labels: the module learns the model's decision,
/// mistakes included, which is what keeps the composition at the model's accuracy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModuleTrainConfig {
    /// The budget of all the model's modules together, in epochs of the model's own
    /// training cost (`3 x model FLOPs` per training image): each module gets `budget x
    /// training images x 3 x model FLOPs / classes`, minus its share of the model's forward
    /// passes that give the targets, as images of `3 x its own FLOPs`. Default 2.
    pub budget_epochs: f64,
    /// Adam's largest learning rate, reached after the warmup; it then decays to 0 along a
    /// cosine. Default 1e-3. Chosen on 2,000 held-out training images of the ResNet-20
    /// class-3 module at the default budget: at 20% of the FLOPs, without warmup 1e-4 /
    /// 3e-4 / 1e-3 / 3e-3 left margin errors of 14.0 / 12.8 / 20.4 / 25.7 (from 29.1
    /// untrained), with a 10% warmup 3e-4 / 1e-3 / 3e-3 left 12.9 / 12.3 / 13.6; at 40%,
    /// 3e-4 without warmup 8.58, 1e-3 with it 8.37 (from 14.1).
    pub lr: f64,
    /// Images per step. Default 64.
    pub batch_size: usize,
    /// Training images held out of the steps to measure the module before and after
    /// training (margin error and agreement with the model's decision). Default 2,000.
    pub validation_images: usize,
    /// Seed of the hold-out split and the image order.
    pub seed: u64,
    /// Composition-aware distillation: an image whose model margin for the module's class
    /// is more than this many logits below its largest margin over all classes (the class
    /// cannot win there) only asks the module's margin to stay below that line, instead of
    /// fitting it; `None` fits every margin.
    pub competitive: Option<f32>,
    /// The learning rate rises linearly to `lr` over this fraction of the steps (step `s`
    /// of the warmup runs at `(s + 1) / (warmup x steps)` of the cosine's rate), then
    /// follows the cosine (format version 4). Without it, Adam's first
    /// steps (every weight moves by about the learning rate) undo part of the
    /// reconstruction, and a larger learning rate diverges from it.
    pub warmup: f64,
    /// Hold-out checks (format version 6): the held-out images measure the module at every
    /// `checks`-th of the steps (the last check at the end), and training keeps the best of
    /// the reconstructed module and the checked ones by margin error. Without them (0, and
    /// every module of an older format) training keeps the end, which can be worse than the
    /// start: ResNet-56's modules at 40% of the FLOPs, reconstructed to margin errors of 3-9,
    /// ended at 4-30 after the default budget at `lr` 1e-3 (2026-12-08). Default 5; each
    /// check costs a forward pass over the held-out images.
    pub checks: usize,
}

/// [`ModuleTrainConfig`]'s fields as format versions up to 5 wrote them (no `checks`).
#[derive(Deserialize)]
#[serde(rename = "ModuleTrainConfig")]
struct ModuleTrainConfigV5 {
    budget_epochs: f64,
    lr: f64,
    batch_size: usize,
    validation_images: usize,
    seed: u64,
    competitive: Option<f32>,
    warmup: f64,
}

/// [`ModuleTrainConfig`] in self-describing formats (JSON reports), where a missing
/// `checks` (written before format version 6) reads as 0: those modules kept the end.
#[derive(Deserialize)]
struct NamedModuleTrainConfig {
    #[serde(flatten)]
    v5: ModuleTrainConfigV5,
    #[serde(default)]
    checks: usize,
}

impl<'de> Deserialize<'de> for ModuleTrainConfig {
    /// Binary payloads hold the fields in order, up to format version 5 without `checks`
    /// (read as 0); self-describing formats name them and may omit it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (v, checks) = if d.is_human_readable() {
            let n = NamedModuleTrainConfig::deserialize(d)?;
            (n.v5, n.checks)
        } else if crate::artifact::decoding_version() < 6 {
            (ModuleTrainConfigV5::deserialize(d)?, 0)
        } else {
            <(ModuleTrainConfigV5, usize)>::deserialize(d)?
        };
        Ok(Self {
            budget_epochs: v.budget_epochs,
            lr: v.lr,
            batch_size: v.batch_size,
            validation_images: v.validation_images,
            seed: v.seed,
            competitive: v.competitive,
            warmup: v.warmup,
            checks,
        })
    }
}

impl Default for ModuleTrainConfig {
    fn default() -> Self {
        Self {
            budget_epochs: 2.0,
            lr: 1e-3,
            batch_size: 64,
            validation_images: 2000,
            seed: 0,
            competitive: None,
            warmup: 0.1,
            checks: 5,
        }
    }
}

/// A module measured on training images held out of its training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleValidation {
    pub images: usize,
    /// Mean squared error of the module's margin against the model's, before and after.
    pub error: [f64; 2],
    /// Fraction of images whose module margin has the sign of the model's, before and after.
    pub agreement: [f64; 2],
}

/// One hold-out check during module training ([`ModuleTrainConfig::checks`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleCheck {
    /// Steps done when it measured.
    pub step: usize,
    /// Mean squared margin error and sign agreement on the held-out images.
    pub error: f64,
    pub agreement: f64,
}

/// What a module's training spent and achieved, recorded in the module file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModuleTraining {
    /// Training images seen (steps x batch size, the last batch possibly short).
    pub images: usize,
    /// `images` over the training images used (the split minus the hold-out).
    pub epochs: f64,
    /// Multiply-accumulates spent: `3 x module FLOPs x images` (forward, data and weight
    /// gradients) plus this module's share (`1 / classes`) of the model's forward passes
    /// over the training images that gave the targets.
    pub flops: f64,
    /// The same in epochs of the model's own training cost (`flops / (3 x model FLOPs x
    /// training images)`).
    pub model_epochs: f64,
    /// Wall-clock seconds of the steps and the hold-out measurements (the targets' share
    /// included; `flops` counts the steps and the targets only).
    pub seconds: f64,
    /// Joules over `seconds` where the machine's energy counters were read (set by the
    /// program that trained), else `None`.
    pub energy_j: Option<f64>,
    /// The module on the held-out training images before and after training (`None`
    /// without a hold-out).
    pub validation: Option<ModuleValidation>,
    /// Mean training loss of the first and the last 10% of the steps.
    pub train_loss: [f64; 2],
    pub config: ModuleTrainConfig,
    /// The hold-out checks in step order (format version 6; empty without checks).
    pub checks: Vec<ModuleCheck>,
    /// Steps of the module kept: 0 is the reconstructed module, `steps` the end; the module's
    /// `validation` "after" is the kept one's. Modules of older formats kept the end.
    pub kept_step: usize,
    /// Steps run.
    pub steps: usize,
}

/// [`ModuleTraining`]'s fields as format versions up to 5 wrote them.
#[derive(Deserialize)]
#[serde(rename = "ModuleTraining")]
struct ModuleTrainingV5 {
    images: usize,
    epochs: f64,
    flops: f64,
    model_epochs: f64,
    seconds: f64,
    energy_j: Option<f64>,
    validation: Option<ModuleValidation>,
    train_loss: [f64; 2],
    config: ModuleTrainConfig,
}

/// [`ModuleTraining`] in self-describing formats: without the version 6 fields, the end.
#[derive(Deserialize)]
struct NamedModuleTraining {
    #[serde(flatten)]
    v5: ModuleTrainingV5,
    #[serde(default)]
    checks: Vec<ModuleCheck>,
    kept_step: Option<usize>,
    steps: Option<usize>,
}

impl ModuleTrainingV5 {
    /// The steps a version-5 training ran (every batch full but possibly the last).
    fn steps(&self) -> usize {
        self.images.div_ceil(self.config.batch_size.max(1))
    }
}

impl<'de> Deserialize<'de> for ModuleTraining {
    /// Binary payloads up to format version 5 end at `config`: no checks, the end kept.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (v, checks, kept_step, steps) = if d.is_human_readable() {
            let n = NamedModuleTraining::deserialize(d)?;
            let end = n.v5.steps();
            (
                n.v5,
                n.checks,
                n.kept_step.unwrap_or(end),
                n.steps.unwrap_or(end),
            )
        } else if crate::artifact::decoding_version() < 6 {
            let v = ModuleTrainingV5::deserialize(d)?;
            let end = v.steps();
            (v, Vec::new(), end, end)
        } else {
            let (v, checks, kept_step, steps) =
                <(ModuleTrainingV5, Vec<ModuleCheck>, usize, usize)>::deserialize(d)?;
            (v, checks, kept_step, steps)
        };
        Ok(Self {
            images: v.images,
            epochs: v.epochs,
            flops: v.flops,
            model_epochs: v.model_epochs,
            seconds: v.seconds,
            energy_j: v.energy_j,
            validation: v.validation,
            train_loss: v.train_loss,
            config: v.config,
            checks,
            kept_step,
            steps,
        })
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            tau: 0.0,
            tau_neg: 0.0,
            rate: ActivationRate::MeanPositions,
            compensation: Compensation::Sample,
            budget: None,
            reconstruct: false,
            relu_passes: 3,
            fit_head: false,
            fit_images: 512,
            train: None,
        }
    }
}

/// Per-channel statistics of one mask site (a ReLU input `[c, h, w]`) over some images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteChannelStats {
    pub node: NodeId,
    /// Per channel: fraction of images with any position `> 0`.
    pub any_active: Vec<f32>,
    /// Per channel: fraction of positions `> 0`, averaged over images.
    pub frac_active: Vec<f32>,
    /// Per channel: mean of `max(x, 0)` over positions and images (the post-ReLU mean).
    pub mean_relu: Vec<f32>,
    /// Per channel: mean of `max(x, 0)^2` over positions and images.
    pub mean_sq_relu: Vec<f32>,
}

impl SiteChannelStats {
    /// Per-channel standard deviation of the post-ReLU output (positions and images).
    pub fn deviation(&self) -> Vec<f32> {
        self.mean_relu
            .iter()
            .zip(&self.mean_sq_relu)
            .map(|(m, q)| (q - m * m).max(0.0).sqrt())
            .collect()
    }

    /// The statistic `rate` selects, per channel, in `[0, 1]`.
    pub fn rate(&self, rate: ActivationRate) -> Vec<f32> {
        match rate {
            ActivationRate::MeanPositions => self.frac_active.clone(),
            ActivationRate::AnyPosition => self.any_active.clone(),
            ActivationRate::Deviation => {
                let d = self.deviation();
                let max = d.iter().copied().fold(0.0f32, f32::max);
                d.iter()
                    .map(|v| if max > 0.0 { v / max } else { 0.0 })
                    .collect()
            }
        }
    }
}

/// Statistics of every mask site over one set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub images: usize,
    pub sites: Vec<SiteChannelStats>,
}

impl ChannelStats {
    fn check(&self, what: &str) -> Result<(), String> {
        for s in &self.sites {
            let c = s.any_active.len();
            if s.frac_active.len() != c || s.mean_relu.len() != c {
                return Err(format!(
                    "{what}: site {} has {c}/{}/{} channel statistics",
                    s.node,
                    s.frac_active.len(),
                    s.mean_relu.len()
                ));
            }
            if s.any_active
                .iter()
                .chain(&s.frac_active)
                .any(|v| !(0.0..=1.0).contains(v))
            {
                return Err(format!("{what}: site {} has a rate outside [0, 1]", s.node));
            }
            if s.mean_relu
                .iter()
                .chain(&s.mean_sq_relu)
                .any(|v| !v.is_finite() || *v < 0.0)
            {
                return Err(format!(
                    "{what}: site {} has a negative or non-finite mean activation",
                    s.node
                ));
            }
        }
        Ok(())
    }

    /// Statistics for `sites` in that order, or the first one missing.
    pub fn site(&self, node: NodeId) -> Option<&SiteChannelStats> {
        self.sites.iter().find(|s| s.node == node)
    }
}

/// Channel statistics of the unconcerned sample of one class (tangling identification).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnconcernedStats {
    /// Dataset indices (training split) of the sample.
    pub images: Vec<usize>,
    pub per_class: usize,
    pub stats: ChannelStats,
}

/// Channel-level concern (and, once tangling identification ran, unconcerned) statistics
/// of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassChannels {
    pub class: usize,
    /// Dataset indices of the positives used (same selection as element-level concern
    /// identification with the same config).
    pub positives: Vec<usize>,
    pub concerned: ChannelStats,
    pub unconcerned: Option<UnconcernedStats>,
}

/// Output of channel-level concern identification: per class and mask site, per-channel
/// activation statistics. Thresholds are applied later, so one identification serves a
/// whole sweep of `tau` / `tau_neg`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelConcernSet {
    pub model_hash: String,
    pub model_path: String,
    pub dataset: String,
    pub config: DecompConfig,
    /// Mask sites (ReLU inputs).
    pub sites: Vec<NodeId>,
    pub classes: Vec<ClassChannels>,
    /// Seconds spent on the concerned and on the unconcerned images.
    pub seconds: f64,
    pub tangle_seconds: f64,
}

impl Artifact for ChannelConcernSet {
    const KIND: ArtifactKind = ArtifactKind::ChannelConcernSet;
    fn validate(&self) -> Result<(), String> {
        for c in &self.classes {
            let what = format!("class {}", c.class);
            c.concerned.check(&what)?;
            if let Some(u) = &c.unconcerned {
                u.stats.check(&format!("{what} (unconcerned)"))?;
            }
            for stats in
                std::iter::once(&c.concerned).chain(c.unconcerned.as_ref().map(|u| &u.stats))
            {
                let nodes: Vec<NodeId> = stats.sites.iter().map(|s| s.node).collect();
                if nodes != self.sites {
                    return Err(format!(
                        "{what}: statistics for sites {nodes:?}, the set lists {:?}",
                        self.sites
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A physically small module: its own two-output graph (`[mine, other]` logits) holding
/// only the kept channels of its source model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelModule {
    pub class: usize,
    pub class_name: String,
    /// [`ModelIr::content_hash`] of the source model.
    pub model_hash: String,
    pub model_path: String,
    /// The extracted graph; class names `[class name, "other"]`.
    pub module: ModelIr,
    /// Which channels of the source model it keeps.
    pub plan: ChannelPlan,
    pub config: DecompConfig,
    pub channel: ChannelConfig,
    pub counts: SampleCounts,
    /// Cost of `module`, and of the source model (with its K-way output layer).
    pub cost: Cost,
    pub model_cost: Cost,
    pub provenance: String,
    /// Module training's record, when [`ChannelConfig::train`] was set.
    pub training: Option<ModuleTraining>,
}

impl Artifact for ChannelModule {
    const KIND: ArtifactKind = ArtifactKind::ChannelModule;
    /// Version 2 added `ChannelConfig::relu_passes`, version 3 module training
    /// (`ChannelConfig::train`, `ChannelModule::training`), version 4 its warmup (older
    /// channel modules are rebuilt), version 6 its hold-out checks (version 4 and 5 modules
    /// read as trained without them).
    const MIN_VERSION: u16 = 4;
    fn validate(&self) -> Result<(), String> {
        let shapes = self.module.check().map_err(|e| e.to_string())?;
        if self.module.num_classes() != 2 {
            return Err(format!(
                "module graph has {} outputs, expected 2 (mine, other)",
                self.module.num_classes()
            ));
        }
        let cost = crate::analysis::cost(&self.module.graph, &shapes);
        if cost != self.cost {
            return Err(format!(
                "recorded cost {:?} does not match the module graph's {:?}",
                self.cost, cost
            ));
        }
        for (i, g) in self.plan.groups.iter().enumerate() {
            g.kept.check().map_err(|e| format!("plan group {i}: {e}"))?;
        }
        Ok(())
    }
}
