//! The JSON files the stages write and the experiment runner (`xtask`) reads, one serde type
//! per file, defined once here so that writer and reader cannot drift. Field order is the
//! files' key order: a type written by this build gives the same bytes as before it was
//! typed.
//!
//! | file | type | written by |
//! |---|---|---|
//! | `decomp eval --json` | [`ModelEval`] | `decomp eval` |
//! | `decomp compose --json` / `--out` (element modules) | [`ComposeReport`] | `decomp compose` |
//! | the same for channel modules | [`ChannelComposeReport`] | `decomp compose` |
//! | `--save-margins` file | [`Margins`] | `decomp compose`, read by `decomp vote` |
//! | `decomp vote --json` / `--out` | [`VoteReport`] | `decomp vote` |
//! | `<out-dir>/summary.json` (element) | [`DecomposeSummary`] | `decomp tangle` / `decompose` |
//! | `<out-dir>/summary.json` (channel) | [`ChannelSummary`] | the same with `--granularity channel` |
//! | `<run>/metrics.json` | [`TrainMetrics`] | `decomp train` |
//!
//! A reader that does not need a field still gets it typed; [`TrainMetrics`] leaves its
//! training configuration generic ([`serde::de::IgnoredAny`] by default), since that type
//! belongs to the training library.

use decomp_ir::analysis::Cost;
use decomp_ir::{ChannelConfig, DecompConfig};
use serde::{Deserialize, Serialize};

use crate::EvalReport;

/// `part` as a percentage of `whole` (0 wholes count as 1).
pub fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// Mean of `values` (0 for none).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// `decomp eval --json`: a model's accuracy on a dataset split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEval {
    /// Architecture name.
    pub model: String,
    /// `--weights` as given.
    pub weights: String,
    pub dataset: String,
    /// `train`, `test`, or `file` for one file of records.
    pub split: String,
    pub top1: f64,
    pub top5: f64,
    pub n: usize,
    pub per_class: Vec<f64>,
    pub per_class_n: Vec<usize>,
    pub class_names: Vec<String>,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Every image's label and label rank (`decomp eval --per-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<PerImage>,
    /// `[label][predicted]` image counts (absent in files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<usize>>>,
}

/// Per image, in the order the images were evaluated: its label and the rank of its label
/// (0 = top-1), so two evaluations of the same images can be compared image by image
/// (paired statistics). Written by `decomp eval --per-image` and `decomp vote --per-image`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerImage {
    pub labels: Vec<usize>,
    pub rank: Vec<usize>,
}

impl PerImage {
    /// Whether each image's label ranked first.
    pub fn top1_hits(&self) -> Vec<bool> {
        self.rank.iter().map(|&r| r == 0).collect()
    }
}

/// Accuracy of a composition on its images, and of the modules' source model on the same
/// images when it ran: the part [`ComposeReport`] and [`ChannelComposeReport`] share
/// (flattened into both, so the keys stand where they always stood).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComposedAccuracy {
    pub n: usize,
    pub composed_top1: f64,
    pub composed_top5: f64,
    pub composed_per_class: Vec<f64>,
    /// The source model, when the modules are all its classes in order.
    pub model_top1: Option<f64>,
    pub model_top5: Option<f64>,
}

impl ComposedAccuracy {
    pub fn new(composed: &EvalReport, model: Option<&EvalReport>) -> Self {
        Self {
            n: composed.n,
            composed_top1: composed.top1,
            composed_top5: composed.top5,
            composed_per_class: composed.per_class.clone(),
            model_top1: model.map(|m| m.top1),
            model_top5: model.map(|m| m.top5),
        }
    }
}

/// `decomp compose` of element-level modules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComposeReport {
    /// Module files as given.
    pub modules: Vec<String>,
    /// Class name of each module.
    pub classes: Vec<String>,
    /// Variant of the first module.
    pub variant: String,
    /// Configuration of the first module.
    pub config: DecompConfig,
    #[serde(flatten)]
    pub accuracy: ComposedAccuracy,
    pub model_per_class: Option<Vec<f64>>,
    /// Fraction of the model's positions each module keeps.
    pub module_size: Vec<f64>,
    pub mean_module_size: f64,
    pub mean_overlap: f64,
    /// Jaccard overlap of every pair of modules of one model (`None` across models).
    pub overlap: Vec<Vec<Option<f64>>>,
    pub seconds: f64,
    /// `batched` or `naive`.
    pub mode: String,
}

/// One module's entry of [`ChannelComposeReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelModuleReport {
    pub path: String,
    pub class: usize,
    pub class_name: String,
    pub cost: Cost,
    pub flops_percent: f64,
    pub params_percent: f64,
    /// Size of the module file.
    pub bytes: u64,
    /// Forward-pass seconds over all images, and relative to the reference model's.
    pub seconds: f64,
    pub time_ratio: Option<f64>,
    pub kept_channels: usize,
    pub total_channels: usize,
    /// The module's training record, where it was trained (issue 17).
    #[serde(default)]
    pub training: Option<decomp_ir::ModuleTraining>,
}

/// `decomp compose` of channel modules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelComposeReport {
    /// Always `channel`.
    pub granularity: String,
    pub classes: Vec<String>,
    pub config: DecompConfig,
    pub channel: ChannelConfig,
    #[serde(flatten)]
    pub accuracy: ComposedAccuracy,
    pub model_cost: Cost,
    /// Size of the reference model as a `.ir` artifact.
    pub model_bytes: Option<u64>,
    pub model_seconds: Option<f64>,
    pub per_module: Vec<ChannelModuleReport>,
    pub mean_flops_percent: f64,
    pub mean_params_percent: f64,
    pub mean_bytes: f64,
    pub mean_time_ratio: Option<f64>,
    /// How the modules ran (`separate` passes), and the FLOPs of the alternative: one pass
    /// over the union of their channels, branching per module after the shared stem.
    pub passes: String,
    pub separate_flops: u64,
    pub union_flops: Option<u64>,
    pub seconds: f64,
}

/// Format tag of [`Margins`] files.
pub const MARGINS_FORMAT: &str = "decomp-margins/1";

/// What `decomp compose --save-margins` writes: every module's margin on every image, for
/// `decomp vote` to compose any selection without running a model again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Margins {
    /// [`MARGINS_FORMAT`].
    pub format: String,
    /// The image set (dataset, split, classes, limit): margin files of one vote must agree.
    pub images: String,
    /// Class names of the labels (label `i` = the class of module `i`).
    pub class_names: Vec<String>,
    pub modules: Vec<MarginModule>,
    pub labels: Vec<usize>,
    /// `[images][modules]`: `z_mine - z_other` of each module on each image.
    pub margins: Vec<Vec<f32>>,
    pub model_top1: Option<f64>,
    pub model_top5: Option<f64>,
    pub model_per_class: Option<Vec<f64>>,
    pub seconds: f64,
    /// Per image: the rank of its label when all modules of this file are composed (0 =
    /// top-1), for paired statistics over images (absent in files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composed_rank: Option<Vec<usize>>,
    /// Per image: the rank of its label among the source model's own logits, when the model
    /// ran in the same pass (modules of one model covering its classes in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_rank: Option<Vec<usize>>,
}

/// One column of [`Margins`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarginModule {
    pub path: String,
    pub class: usize,
    pub class_name: String,
    pub model_hash: String,
}

impl Margins {
    /// The margins file of `labels` and `margins` (`[images][modules]`) over the image set
    /// `images`, one `modules` entry per column, with the source model's accuracy on the
    /// same images when it ran.
    pub fn new(
        images: String,
        class_names: Vec<String>,
        modules: Vec<MarginModule>,
        labels: Vec<usize>,
        margins: Vec<Vec<f32>>,
        model: Option<&EvalReport>,
        seconds: f64,
    ) -> Self {
        Self {
            format: MARGINS_FORMAT.into(),
            images,
            class_names,
            modules,
            labels,
            margins,
            model_top1: model.map(|m| m.top1),
            model_top5: model.map(|m| m.top5),
            model_per_class: model.map(|m| m.per_class.clone()),
            seconds,
            composed_rank: None,
            model_rank: None,
        }
    }
}

/// `decomp vote`: one composition of modules picked from margin files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VoteReport {
    /// The `--pick` entries as given.
    pub pick: Vec<String>,
    /// Class name of each entry (from its first part's file).
    pub classes: Vec<String>,
    /// Source module of each entry's first part.
    pub modules: Vec<String>,
    pub n: usize,
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<f64>,
    pub per_class_n: Vec<usize>,
    /// Every voted image's label (the entry it stands for) and label rank, in the margin
    /// files' image order (`decomp vote --per-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<PerImage>,
}

/// `summary.json` of element-level `decomp tangle` / `decompose`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecomposeSummary {
    /// The model as the concern set (or `--weights`) names it.
    pub model: String,
    pub model_hash: String,
    pub concern_seconds: f64,
    pub tangle_seconds: f64,
    /// `--variants` as given.
    pub variants: Vec<String>,
    /// Module files written.
    pub modules: Vec<String>,
}

/// `summary.json` of channel-level `decomp tangle` / `decompose`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelSummary {
    pub model: String,
    pub model_hash: String,
    pub concern_seconds: f64,
    pub tangle_seconds: f64,
    /// Seconds of thresholding and extraction for all modules.
    pub extract_seconds: f64,
    /// The channel statistics the modules were cut from.
    pub rates: String,
    pub channel: ChannelConfig,
    pub model_cost: Cost,
    pub modules: Vec<String>,
    /// Per module: FLOPs and parameters as % of the model's.
    pub flops_percent: Vec<f64>,
    pub params_percent: Vec<f64>,
    pub mean_flops_percent: f64,
    pub mean_params_percent: f64,
}

/// What one training epoch measured (a row of `metrics.json` and `metrics.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the start of the epoch.
    pub lr: f64,
    /// Mean cross-entropy over the epoch's (augmented) training batches.
    pub train_loss: f64,
    /// Top-1 accuracy on the augmented training batches, as seen while training.
    pub train_acc: f64,
    /// Cross-entropy and top-1 on the validation split (`None` without one).
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    /// Wall time of the epoch (training + validation), seconds.
    pub wall_s: f64,
    /// Training images per second (training steps only).
    pub images_per_s: f64,
    /// Measured energy of the epoch in joules, filled in by the caller when a meter exists.
    pub energy_j: Option<f64>,
}

/// `<run>/metrics.json` of `decomp train`: per-epoch rows and the run summary. `C` is the
/// training configuration (the training library's type when written; readers that do not
/// look at it keep the default, which skips it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics<C = serde::de::IgnoredAny> {
    pub recipe: String,
    pub config: C,
    /// Architecture name.
    pub model: String,
    /// `--init` as given (fine-tuning), or `None` from scratch.
    pub init: Option<String>,
    pub dataset: String,
    pub classes: Vec<String>,
    pub train_images: usize,
    pub val_images: usize,
    pub epochs: Vec<EpochMetrics>,
    pub best_epoch: Option<usize>,
    pub best_val_acc: Option<f64>,
    /// Sum of the epochs' wall times (over all invocations of a resumed run).
    pub wall_s: f64,
    /// Seconds until the best epoch finished.
    pub wall_s_to_best: Option<f64>,
    pub energy_j: Option<f64>,
    /// Where the energy was measured (or that it was not).
    pub energy_source: String,
    pub power_w_declared: Option<f64>,
    pub test_top1: Option<f64>,
    pub test_top5: Option<f64>,
    pub test_images: Option<usize>,
    /// `--device` as given.
    pub device: String,
}
