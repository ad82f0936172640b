//! Decomposition artifacts: the configuration every stage records, the concern set that
//! concern identification produces, and the per-class module files.

use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, ArtifactKind};
use crate::graph::{NodeId, TensorData};
use crate::mask::{BitSet, NodeMask};
use crate::model::ModelIr;

/// Concern modularization variant (METHOD.md section 2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Variant {
    /// `CI+TI+MC`: masks from CI and TI, binary head.
    CiTiMc,
    /// `CI+TI+MC-BLN`: also backtrack from the head to the last hidden layer.
    McBln,
    /// `CI+TI+MC-BLN+MC-BI`: also backtrack through conv layers to the input.
    McBlnBi,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::CiTiMc, Variant::McBln, Variant::McBlnBi];

    /// The name used in configs, file names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::CiTiMc => "ci-ti-mc",
            Variant::McBln => "mc-bln",
            Variant::McBlnBi => "mc-bln-bi",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// Which concerned images count as positives (METHOD.md 2.1, knob `positive_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PositiveFilter {
    /// Every training image of the class.
    All,
    /// Only images the model classifies correctly (default).
    Correct,
    /// Only correctly classified images with softmax confidence above the threshold.
    Confident(f32),
}

/// Where masks are recorded and applied (METHOD.md 2.1, knob `mask_site`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaskSite {
    /// Outputs that enter a ReLU (default): after each Add in residual blocks.
    ReluInput,
    /// Every conv output (after its BatchNorm when one follows), even before an Add.
    ConvOutput,
}

/// Which flatten units MC-BLN marks inactive (METHOD.md 2.3, knob `bln_rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlnRule {
    /// Paper's Algorithm 2: weight to `other` <= -delta and weight to `mine` >= +delta.
    Algorithm2,
    /// Paper's prose: only connected to the unconcerned node: |w_mine| < delta and
    /// w_other >= delta.
    OnlyOther,
}

/// How top-5 ranks modules (METHOD.md 3, knob `top5_ranking`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Top5Ranking {
    /// Voters before non-voters, each group by confidence (default).
    VotersFirst,
    /// By confidence alone.
    Confidence,
}

/// Every open choice of the method, recorded in each artifact and report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecompConfig {
    pub variant: Variant,
    /// Concerned images per class: `min(positives_per_class, available)`. Default 1000.
    pub positives_per_class: usize,
    pub positive_filter: PositiveFilter,
    pub mask_site: MaskSite,
    pub bln_rule: BlnRule,
    /// Threshold of MC-BLN. Default 0.5.
    pub bln_delta: f32,
    pub top5_ranking: Top5Ranking,
    /// Seed of every sampling choice (positives, unconcerned sample).
    pub seed: u64,
    /// Rare activity (not in the paper; `0` is the paper's rule): a position counts as active
    /// for a set of images (the concerned ones in CI, the unconcerned sample and each extra
    /// dataset in TI) only when it is `> 0` on more than this fraction of them, so a position
    /// that a few images activate can still be masked. In `[0, 1)`. Default 0. Artifacts of
    /// format version 4 and older have no such field and read as 0.
    pub min_active_fraction: f32,
}

impl Default for DecompConfig {
    fn default() -> Self {
        Self {
            variant: Variant::McBln,
            positives_per_class: 1000,
            positive_filter: PositiveFilter::Correct,
            mask_site: MaskSite::ReluInput,
            bln_rule: BlnRule::Algorithm2,
            bln_delta: 0.5,
            top5_ranking: Top5Ranking::VotersFirst,
            seed: 0,
            min_active_fraction: 0.0,
        }
    }
}

/// [`DecompConfig`]'s fields as format versions up to 4 wrote them (no
/// `min_active_fraction`).
#[derive(Deserialize)]
#[serde(rename = "DecompConfig")]
struct DecompConfigV4 {
    variant: Variant,
    positives_per_class: usize,
    positive_filter: PositiveFilter,
    mask_site: MaskSite,
    bln_rule: BlnRule,
    bln_delta: f32,
    top5_ranking: Top5Ranking,
    seed: u64,
}

impl From<DecompConfigV4> for DecompConfig {
    fn from(v: DecompConfigV4) -> Self {
        Self {
            variant: v.variant,
            positives_per_class: v.positives_per_class,
            positive_filter: v.positive_filter,
            mask_site: v.mask_site,
            bln_rule: v.bln_rule,
            bln_delta: v.bln_delta,
            top5_ranking: v.top5_ranking,
            seed: v.seed,
            min_active_fraction: 0.0,
        }
    }
}

/// [`DecompConfig`] in self-describing formats (JSON reports), where a missing
/// `min_active_fraction` (written before format version 5) reads as 0.
#[derive(Deserialize)]
struct NamedDecompConfig {
    #[serde(flatten)]
    v4: DecompConfigV4,
    #[serde(default)]
    min_active_fraction: f32,
}

impl<'de> Deserialize<'de> for DecompConfig {
    /// Binary payloads hold the fields in order: up to format version 4 (the version
    /// [`crate::artifact::decoding_version`] reports while an artifact decodes) without the
    /// last one. Self-describing formats name the fields and may omit the last one.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (v4, min_active_fraction) = if d.is_human_readable() {
            let n = NamedDecompConfig::deserialize(d)?;
            (n.v4, n.min_active_fraction)
        } else if crate::artifact::decoding_version() < 5 {
            (DecompConfigV4::deserialize(d)?, 0.0)
        } else {
            <(DecompConfigV4, f32)>::deserialize(d)?
        };
        Ok(Self {
            min_active_fraction,
            ..Self::from(v4)
        })
    }
}

/// Positions inactive (`<= 0`) at every mask site for every image seen so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteMasks {
    /// One mask per site: set bits are inactive positions.
    pub masks: Vec<NodeMask>,
}

/// Output of concern identification for one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassConcern {
    pub class: usize,
    pub inactive: SiteMasks,
    /// Dataset indices (into the training split) of the positives used.
    pub positives: Vec<usize>,
}

/// Output of the concern identification stage: every class of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConcernSet {
    pub model_hash: String,
    pub model_path: String,
    pub dataset: String,
    pub config: DecompConfig,
    pub sites: Vec<NodeId>,
    pub classes: Vec<ClassConcern>,
    pub seconds: f64,
}

impl ConcernSet {
    /// Checks that this set fits `model`: at least one class, every class one of the model's
    /// and listed once, every mask on an existing node with one bit per output.
    pub fn check_against(&self, model: &crate::ModelIr) -> Result<(), String> {
        if self.classes.is_empty() {
            return Err("the concern set holds no class".into());
        }
        let shapes = model.check().map_err(|e| e.to_string())?;
        let k = model.num_classes();
        for (i, c) in self.classes.iter().enumerate() {
            if c.class >= k {
                return Err(format!(
                    "class {} is beyond the model's {k} classes",
                    c.class
                ));
            }
            if self.classes[..i].iter().any(|o| o.class == c.class) {
                return Err(format!("class {} is listed twice", c.class));
            }
            for m in &c.inactive.masks {
                let Some(shape) = shapes.get(m.node) else {
                    return Err(format!(
                        "class {}: mask for node {} beyond the model's {} nodes",
                        c.class,
                        m.node,
                        shapes.len()
                    ));
                };
                let n: usize = shape.iter().product();
                if m.zeroed.len() != n {
                    return Err(format!(
                        "class {}: mask for node {} has {} bits, the node has {n} outputs",
                        c.class,
                        m.node,
                        m.zeroed.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Artifact for ConcernSet {
    const KIND: ArtifactKind = ArtifactKind::ConcernSet;
    fn validate(&self) -> Result<(), String> {
        for c in &self.classes {
            for m in &c.inactive.masks {
                m.zeroed.check()?;
            }
        }
        Ok(())
    }
}

/// The 2-way output layer of a module: row 0 = mine, row 1 = other. Head inputs removed
/// by MC-BLN have zero weight in both rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryHead {
    /// Node whose output feeds the head (the flatten input of the original linear layer).
    pub input: NodeId,
    /// `[2, features]`
    pub weight: TensorData,
    /// `[2]`
    pub bias: TensorData,
}

/// How many images each stage saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleCounts {
    pub positives: usize,
    pub unconcerned: usize,
    /// Unconcerned images per other class.
    pub unconcerned_per_class: usize,
}

/// One module: a binary "is this class c?" classifier carved out of a model. Carries the
/// model itself so that it can be composed without the run that produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleIr {
    pub class: usize,
    pub class_name: String,
    /// [`ModelIr::content_hash`] of the source model.
    pub model_hash: String,
    pub model_path: String,
    pub model: ModelIr,
    /// Positions forced to zero at inference, per node (concern and tangling
    /// identification).
    pub masks: Vec<NodeMask>,
    /// Positions removed by backtracking (MC-BLN, MC-BI) that cannot influence the module's
    /// output given `masks` and `head`: they count toward module size and physical
    /// extraction, and need not be applied at inference.
    pub dead: Vec<NodeMask>,
    pub head: BinaryHead,
    pub config: DecompConfig,
    pub counts: SampleCounts,
    /// Dataset, tool version and anything else needed to trace how it was made.
    pub provenance: String,
}

impl Artifact for ModuleIr {
    const KIND: ArtifactKind = ArtifactKind::Module;
    fn validate(&self) -> Result<(), String> {
        let shapes = self.model.check().map_err(|e| e.to_string())?;
        for m in self.masks.iter().chain(&self.dead) {
            m.zeroed.check()?;
            let Some(shape) = shapes.get(m.node) else {
                return Err(format!("mask for node {} beyond the graph", m.node));
            };
            let n: usize = shape.iter().product();
            if m.zeroed.len() != n {
                return Err(format!(
                    "mask for node {} has {} bits, the node has {n} outputs",
                    m.node,
                    m.zeroed.len()
                ));
            }
        }
        let Some(shape) = shapes.get(self.head.input) else {
            return Err(format!(
                "head input node {} beyond the graph",
                self.head.input
            ));
        };
        let f: usize = shape.iter().product();
        if self.head.weight.shape != [2, f] || self.head.weight.data.len() != 2 * f {
            return Err(format!(
                "head weight has shape {:?}, expected [2, {f}]",
                self.head.weight.shape
            ));
        }
        if self.head.bias.shape != [2] || self.head.bias.data.len() != 2 {
            return Err(format!(
                "head bias has shape {:?}, expected [2]",
                self.head.bias.shape
            ));
        }
        crate::graph::finite(&self.head.weight.data, "head weight")?;
        crate::graph::finite(&self.head.bias.data, "head bias")?;
        if self.class >= self.model.num_classes() {
            return Err(format!(
                "class {} out of range for a {}-class model",
                self.class,
                self.model.num_classes()
            ));
        }
        Ok(())
    }
}

impl BitSet {
    /// Sets every bit that is set in `other` (`self |= other`); lengths must match.
    pub fn union_with(&mut self, other: &BitSet) {
        assert_eq!(self.len(), other.len(), "bitset lengths differ");
        self.for_each_word(other, |a, b| *a |= b);
    }
}
