//! Flag groups shared by several commands (where a model and a dataset come from, the
//! method's choices, how a stage runs, channel-level choices), and the one place the
//! environment's engine settings are read ([`runtime`]).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use decomp_ir::{
    ActivationRate, BlnRule, ChannelConfig, Compensation, DecompConfig, MaskSite, ModelIr,
    ModuleTrainConfig, PositiveFilter, Top5Ranking, Variant,
};
use decomp_model::{Runtime, parse_device};

use crate::flags;

/// Where a model comes from: a decomp IR file, a PyTorch checkpoint, an ONNX model, or a
/// known name.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Architecture (`resnet20`, `resnet32`, `resnet44`, `resnet56`, ...); checked against
    /// the checkpoint, detected from it when omitted. Ignored for `.ir` files.
    #[arg(long)]
    pub arch: Option<String>,
    /// Weights: a decomp `.ir` model, a PyTorch checkpoint (`.th`/`.pth` legacy or zip
    /// `.pt`), an ONNX model (`.onnx`: any CNN of the ops decomp knows), or a known name
    /// (`akamaster/resnet20`, ...) downloaded into the cache.
    #[arg(long)]
    pub weights: String,
    /// Cache folder for downloaded weights.
    #[arg(long, env = "DECOMP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub onnx: OnnxFlags,
}

/// What an ONNX model may not say about itself (its metadata can: `class_names`,
/// `input_mean`, `input_std`); the flags override the metadata.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OnnxFlags {
    /// ONNX models: per-channel mean of x / 255 the model was trained with, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = crate::flags::finite_f32, requires = "input_std")]
    pub input_mean: Option<Vec<f32>>,
    /// ONNX models: per-channel std of x / 255, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = crate::flags::finite_f32, requires = "input_mean")]
    pub input_std: Option<Vec<f32>>,
    /// ONNX models: class names in logit order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub class_names: Option<Vec<String>>,
    /// ONNX models with symbolic spatial sizes: the input as C,H,W.
    #[arg(long, value_delimiter = ',', value_parser = crate::flags::positive_usize)]
    pub input_shape: Option<Vec<usize>>,
}

impl OnnxFlags {
    /// Whether any ONNX flag was given.
    pub fn given(&self) -> bool {
        self.input_mean.is_some() || self.class_names.is_some() || self.input_shape.is_some()
    }

    /// The import options these flags ask for.
    pub fn options(&self) -> anyhow::Result<decomp_model::onnx::OnnxOptions> {
        let input_shape = match self.input_shape.as_deref() {
            None => None,
            Some(&[c, h, w]) => Some([c, h, w]),
            Some(v) => anyhow::bail!("--input-shape {v:?}: expected C,H,W"),
        };
        Ok(decomp_model::onnx::OnnxOptions {
            input_norm: self
                .input_mean
                .clone()
                .zip(self.input_std.clone())
                .map(|(mean, std)| decomp_ir::InputNorm { mean, std }),
            class_names: self.class_names.clone(),
            input_shape,
        })
    }
}

/// Where a dataset comes from.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Dataset: cifar10, cifar100, cifar100-coarse, tiny-imagenet, fashion-mnist, mnist.
    #[arg(long, default_value = "cifar10")]
    pub dataset: String,
    /// Folder holding the dataset folder (e.g. the one containing `cifar-10-batches-bin/`),
    /// or a single file of CIFAR records. Default: $DECOMP_DATA_DIR, else
    /// `../shared/datasets` when it exists, else the user cache ($DECOMP_CACHE_DIR/datasets,
    /// default ~/.cache/decomp/datasets). A missing dataset is downloaded there (verified)
    /// unless --offline.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The dataset folder itself (e.g. `.../tiny-imagenet-subset20`), overriding
    /// `--data-dir`'s naming convention.
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// One file of CIFAR-10/100 binary records (e.g. `train_first4000.bin`); `--split`
    /// does not apply to it.
    #[arg(long, conflicts_with = "dataset_path")]
    pub data_file: Option<PathBuf>,
    /// Split: train or test (Tiny ImageNet: test = the labelled val split). Default: test for
    /// `eval` and `compose`, train for `concern`, `tangle` and `decompose`.
    #[arg(long, value_parser = flags::split)]
    pub split: Option<decomp_data::Split>,
    /// Accepted for old scripts: a missing dataset is always downloaded unless --offline.
    #[arg(long, hide = true)]
    pub download: bool,
    /// Use only the first N images (at least 1).
    #[arg(long, value_parser = flags::positive_usize)]
    pub limit: Option<usize>,
}

/// The device `name` names (`cpu`, `cuda[:N]`, `wgpu`) with the engine settings of the
/// environment: `DECOMP_ENGINE` (`auto`, `burn`, `cpu`) and the CPU plan's `DECOMP_CPU_*`.
/// The libraries read no environment; every executor of a command is built from this.
pub fn runtime(name: &str) -> Result<Runtime> {
    Ok(Runtime::from_vars(parse_device(name)?, |k| {
        std::env::var(k).ok()
    })?)
}

/// Every open choice of the method, as flags (defaults from METHOD.md).
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Concerned images per class (`min(N, available)`).
    #[arg(long, default_value_t = 1000)]
    positives: usize,
    /// Which concerned images count: `correct` (classified correctly), `all`, or
    /// `confident:T` (correct with softmax confidence > T).
    #[arg(long, default_value = "correct")]
    positive_filter: String,
    /// Where masks are recorded and applied: `relu-input` or `conv-output`.
    #[arg(long, default_value = "relu-input")]
    mask_site: String,
    /// MC-BLN rule: `algorithm2` (paper's Algorithm 2) or `only-other` (paper's prose).
    #[arg(long, default_value = "algorithm2")]
    bln_rule: String,
    /// MC-BLN threshold (finite, >= 0).
    #[arg(long, default_value_t = 0.5, value_parser = flags::finite_f32)]
    bln_delta: f32,
    /// Top-5 ranking: `voters-first` or `confidence`.
    #[arg(long, default_value = "voters-first")]
    top5_ranking: String,
    /// Seed of every sampling choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rare activity (not in the paper): a position counts as active for the concerned images
    /// (CI) or the unconcerned ones (TI) only when it is > 0 on more than this fraction of
    /// them, in [0, 1). 0, the default, is the paper's rule (active on any one image).
    #[arg(long, default_value_t = 0.0, value_parser = flags::finite_f32)]
    min_active_fraction: f32,
}

impl ConfigArgs {
    pub fn config(&self, variant: Variant) -> Result<DecompConfig> {
        let positive_filter = match self.positive_filter.as_str() {
            "correct" => PositiveFilter::Correct,
            "all" => PositiveFilter::All,
            s => match s
                .strip_prefix("confident:")
                .and_then(|t| t.parse::<f32>().ok())
            {
                Some(t) if (0.0..1.0).contains(&t) => PositiveFilter::Confident(t),
                _ => bail!(
                    "--positive-filter {s:?}: expected correct, all or confident:T with 0 <= T < 1"
                ),
            },
        };
        let mask_site = match self.mask_site.as_str() {
            "relu-input" => MaskSite::ReluInput,
            "conv-output" => MaskSite::ConvOutput,
            s => bail!("--mask-site {s:?}: expected relu-input or conv-output"),
        };
        let bln_rule = match self.bln_rule.as_str() {
            "algorithm2" => BlnRule::Algorithm2,
            "only-other" => BlnRule::OnlyOther,
            s => bail!("--bln-rule {s:?}: expected algorithm2 or only-other"),
        };
        let top5_ranking = top5_ranking(&self.top5_ranking)?;
        if self.positives == 0 {
            bail!("--positives must be at least 1");
        }
        if self.bln_delta < 0.0 {
            bail!("--bln-delta {}: expected a threshold >= 0", self.bln_delta);
        }
        if !(0.0..1.0).contains(&self.min_active_fraction) {
            bail!(
                "--min-active-fraction {}: expected a fraction in [0, 1)",
                self.min_active_fraction
            );
        }
        Ok(DecompConfig {
            variant,
            positives_per_class: self.positives,
            positive_filter,
            mask_site,
            bln_rule,
            bln_delta: self.bln_delta,
            top5_ranking,
            seed: self.seed,
            min_active_fraction: self.min_active_fraction,
        })
    }
}

/// `--top5-ranking`: `voters-first` or `confidence`.
pub fn top5_ranking(s: &str) -> Result<Top5Ranking> {
    Ok(match s {
        "voters-first" => Top5Ranking::VotersFirst,
        "confidence" => Top5Ranking::Confidence,
        s => bail!("--top5-ranking {s:?}: expected voters-first or confidence"),
    })
}

/// The module variants `tangle` and `decompose` build.
#[derive(clap::Args, Clone, Debug)]
pub struct VariantArgs {
    /// Variants to build (comma-separated): ci-ti-mc, mc-bln, mc-bln-bi.
    #[arg(long = "variants", value_delimiter = ',', default_value = "mc-bln")]
    pub names: Vec<String>,
}

impl VariantArgs {
    /// The variants, each once.
    pub fn variants(&self) -> Result<Vec<Variant>> {
        flags::no_duplicates("--variants", &self.names)?;
        self.names
            .iter()
            .map(|s| {
                Variant::parse(s).with_context(|| {
                    format!("unknown variant {s:?}: expected ci-ti-mc, mc-bln or mc-bln-bi")
                })
            })
            .collect()
    }
}

/// Flags shared by the stages that run a model over training data.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Classes to decompose (names or indices, comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Reuse an `--out-dir` that holds modules of another model or configuration: its module
    /// files are removed first.
    #[arg(long)]
    pub force: bool,
    /// Images per forward pass (at least 1).
    #[arg(long, default_value_t = 128, value_parser = flags::positive_usize)]
    pub batch_size: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl RunArgs {
    /// The classes `--classes` names (indices into `model`'s classes), or all of them.
    pub fn class_list(&self, model: &ModelIr) -> Result<Vec<usize>> {
        match &self.classes {
            Some(c) => {
                flags::resolve_classes("--classes", c, &model.meta.class_names, model.num_classes())
            }
            None => Ok((0..model.num_classes()).collect()),
        }
    }

    /// `--classes` for a stage that reads a concern set: names resolve against `model`'s,
    /// indices are taken as given, so that one the set lacks is refused naming the set.
    pub fn classes_of_set(&self, model: &ModelIr) -> Result<Option<Vec<usize>>> {
        self.classes
            .as_ref()
            .map(|c| flags::resolve_classes("--classes", c, &model.meta.class_names, usize::MAX))
            .transpose()
    }
}

/// Granularity of decomposition and the channel-level choices (issue 6; definitions in
/// `decomp_ir::ChannelConfig`).
#[derive(clap::Args, Clone, Debug)]
pub struct ChannelArgs {
    /// `element`: the paper's masks over positions (modules keep the whole model);
    /// `channel`: keep or remove whole channels and write physically small modules.
    #[arg(long, default_value = "element")]
    pub granularity: String,
    /// Channel level: keep a channel whose activation rate on the concerned images is >= tau
    /// (and > 0; 0 keeps every channel that is ever active).
    #[arg(long, default_value_t = 0.0, value_parser = flags::finite_f32)]
    pub tau: f32,
    /// Channel level: bring back a channel whose rate on the unconcerned sample is >= this
    /// (and > 0); above 1 brings back nothing.
    #[arg(long, default_value_t = 0.0, value_parser = flags::finite_f32)]
    pub tau_neg: f32,
    /// Channel level: `mean-positions` (fraction of positions > 0, averaged over images),
    /// `any-position` (fraction of images with any position > 0) or `deviation` (standard
    /// deviation of the post-ReLU output relative to the largest at its site).
    #[arg(long, default_value = "mean-positions")]
    pub rate: String,
    /// Channel level: what a removed channel outputs after its ReLU: `off` (zero),
    /// `concerned` (its mean on the concerned images) or `sample` (its mean on the concerned
    /// and unconcerned images), folded exactly into the next layer.
    #[arg(long, default_value = "sample")]
    pub compensation: String,
    /// Channel level: select channels by first-order importance for the module's margin
    /// (per FLOP saved) until the module has at most this fraction of the model's FLOPs,
    /// instead of the rate thresholds (`--tau`, `--tau-neg`, `--rate` are then unused).
    #[arg(long, value_parser = flags::finite_f32)]
    pub budget: Option<f32>,
    /// Channel level: refit the convolutions of the pruned module by closed-form least
    /// squares so that it reproduces the model's own pre-activations on the module's sample
    /// (no labels, no gradient steps; the binary head is the model's).
    #[arg(long)]
    pub reconstruct: bool,
    /// Channel level, with `--reconstruct`: least-squares passes per convolution. 1 = plain
    /// least squares; each further pass is ReLU-aware (where the model's pre-activation is
    /// <= 0, any prediction <= 0 is as good, so the target becomes min(prediction, 0)).
    #[arg(long, default_value_t = 3)]
    pub relu_passes: u32,
    /// Channel level, TRAINING: fit the module's binary head (closed-form least squares) so
    /// that its margin reproduces the model's on the module's sample. Off by default.
    #[arg(long)]
    pub fit_head: bool,
    /// Channel level: images of the module's sample (half concerned, half unconcerned) that
    /// `--budget` and `--reconstruct` look at.
    #[arg(long, default_value_t = 512)]
    pub fit_images: usize,
    /// Channel level, TRAINING (issue 17): after selection and reconstruction, train every
    /// weight of each module (Adam, frozen BatchNorms, cosine decay) so that its margin
    /// reproduces the model's on the training images (distillation; no labels).
    #[arg(long)]
    pub train: bool,
    /// With `--train`: the budget of all the model's modules together, in epochs of the
    /// model's own training cost (each module gets `1/classes` of it, spent as images at
    /// three times its FLOPs, after its share of the model's forward passes for the targets).
    #[arg(long, default_value_t = 2.0, value_parser = flags::finite_f64)]
    pub train_budget: f64,
    /// With `--train`: Adam's largest learning rate (after the warmup; cosine decay to 0).
    #[arg(long, default_value_t = 1e-3, value_parser = flags::finite_f64)]
    pub train_lr: f64,
    /// With `--train`: images per step.
    #[arg(long, default_value_t = 64)]
    pub train_batch: usize,
    /// With `--train`: training images held out to measure each module before and after.
    #[arg(long, default_value_t = 2000)]
    pub train_validation: usize,
    /// With `--train`: composition-aware distillation. Where the model's margin for the
    /// module's class is more than this many logits below the image's largest margin (the
    /// class cannot win), the module's margin only has to stay below that line.
    #[arg(long, value_parser = flags::finite_f32)]
    pub train_competitive: Option<f32>,
    /// With `--train`: the fraction of the steps over which the learning rate rises
    /// linearly to `--train-lr` before its cosine decay.
    #[arg(long, default_value_t = 0.1, value_parser = flags::finite_f64)]
    pub train_warmup: f64,
    /// With `--train`: hold-out checks. The held-out images measure the module at every
    /// `N`-th of the steps, and the best of the reconstructed module and the checked ones
    /// (by margin error) is kept; 0 keeps the end, whatever it measures.
    #[arg(long, default_value_t = 5)]
    pub train_checks: usize,
}

impl ChannelArgs {
    /// The channel configuration, or `None` for element granularity.
    pub fn config(&self) -> Result<Option<ChannelConfig>> {
        match self.granularity.as_str() {
            "element" => {
                let set: Vec<&str> = [
                    ("--tau", self.tau != 0.0),
                    ("--tau-neg", self.tau_neg != 0.0),
                    ("--rate", self.rate != "mean-positions"),
                    ("--compensation", self.compensation != "sample"),
                    ("--budget", self.budget.is_some()),
                    ("--reconstruct", self.reconstruct),
                    ("--relu-passes", self.relu_passes != 3),
                    ("--fit-head", self.fit_head),
                    ("--fit-images", self.fit_images != 512),
                    ("--train", self.train),
                ]
                .into_iter()
                .filter_map(|(flag, given)| given.then_some(flag))
                .collect();
                if !set.is_empty() {
                    bail!(
                        "{} apply to --granularity channel only (this run is element-level)",
                        set.join(", ")
                    );
                }
                return Ok(None);
            }
            "channel" => {}
            g => bail!("--granularity {g:?}: expected element or channel"),
        }
        let rate = ActivationRate::parse(&self.rate).with_context(|| {
            format!(
                "--rate {:?}: expected mean-positions, any-position or deviation",
                self.rate
            )
        })?;
        let compensation = Compensation::parse(&self.compensation).with_context(|| {
            format!(
                "--compensation {:?}: expected off, concerned or sample",
                self.compensation
            )
        })?;
        for (name, v) in [("--tau", self.tau), ("--tau-neg", self.tau_neg)] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} {v}: expected a rate >= 0");
            }
        }
        if let Some(b) = self.budget
            && !(b > 0.0 && b <= 1.0)
        {
            bail!("--budget {b}: expected a fraction of the model's FLOPs in (0, 1]");
        }
        if (self.budget.is_some() || self.reconstruct || self.fit_head) && self.fit_images < 2 {
            bail!("--fit-images {}: expected at least 2", self.fit_images);
        }
        if !(1..=16).contains(&self.relu_passes) {
            bail!("--relu-passes {}: expected 1 to 16", self.relu_passes);
        }
        let d = ModuleTrainConfig::default();
        let train_flags = [
            ("--train-budget", self.train_budget != d.budget_epochs),
            ("--train-lr", self.train_lr != d.lr),
            ("--train-batch", self.train_batch != d.batch_size),
            (
                "--train-validation",
                self.train_validation != d.validation_images,
            ),
            ("--train-competitive", self.train_competitive.is_some()),
            ("--train-warmup", self.train_warmup != d.warmup),
            ("--train-checks", self.train_checks != d.checks),
        ];
        if !self.train
            && let Some((flag, _)) = train_flags.iter().find(|(_, given)| *given)
        {
            bail!("{flag} applies with --train only");
        }
        if self.train_budget <= 0.0 {
            bail!("--train-budget {}: expected epochs > 0", self.train_budget);
        }
        if self.train_lr <= 0.0 {
            bail!("--train-lr {}: expected a learning rate > 0", self.train_lr);
        }
        if let Some(d) = self.train_competitive
            && d <= 0.0
        {
            bail!("--train-competitive {d}: expected logits > 0");
        }
        if !(0.0..=1.0).contains(&self.train_warmup) {
            bail!(
                "--train-warmup {}: expected a fraction of the steps in [0, 1]",
                self.train_warmup
            );
        }
        if self.train_batch == 0 {
            bail!("--train-batch 0: expected at least 1 image per step");
        }
        let train = self.train.then_some(ModuleTrainConfig {
            budget_epochs: self.train_budget,
            lr: self.train_lr,
            batch_size: self.train_batch,
            validation_images: self.train_validation,
            seed: 0,
            competitive: self.train_competitive,
            warmup: self.train_warmup,
            checks: self.train_checks,
        });
        Ok(Some(ChannelConfig {
            tau: self.tau,
            tau_neg: self.tau_neg,
            rate,
            compensation,
            budget: self.budget,
            reconstruct: self.reconstruct,
            relu_passes: self.relu_passes,
            fit_head: self.fit_head,
            fit_images: self.fit_images,
            train,
        }))
    }
}
