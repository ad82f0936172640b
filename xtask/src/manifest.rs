//! Experiment manifests: `experiments/<name>.toml`, one per paper table.
//!
//! A manifest names a *scenario* (the chain of stages, in `scenarios.rs`) and every setting
//! that scenario reads; unknown fields are errors, so a typo cannot silently fall back to a
//! default. Paths in `weights` may start with `models:` (the `--models-dir` folder), others
//! are relative to the workspace root (models committed under `models/`); dataset
//! folders are relative to the data folder. [`Manifest::needs`] lists the datasets and
//! weights a manifest (with its members) reads, so they can be fetched before a run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `suite`, `intra-reuse`, `inter-reuse`, `intra-replace`, `inter-replace`,
    /// `motivating`, `co2e`, `eval`, `table1`, `frontier`, `zoo`.
    pub scenario: String,
    pub title: String,
    /// Free text for the report (what was reduced and why).
    #[serde(default)]
    pub notes: String,
    /// For `suite`: the manifests it runs, in order.
    #[serde(default)]
    pub members: Vec<String>,
    /// Models by role (`base`, `weak`, `strong`, ...).
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    /// Datasets by role (`main`, `second`).
    #[serde(default)]
    pub data: BTreeMap<String, DataSpec>,
    #[serde(default)]
    pub decompose: DecomposeSpec,
    #[serde(default)]
    pub select: SelectSpec,
    /// The TMA baseline: the same architecture trained on the reused classes.
    pub tma: Option<TrainSpec>,
    #[serde(default)]
    pub compose: ComposeSpec,
    #[serde(default)]
    pub co2e: Co2eSpec,
    /// `eval`: the image sets every model is evaluated on, in order (`[[eval]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval: Vec<EvalImages>,
    /// `table1`: variants, mask sites, zoo models, ablations, bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table1: Option<Table1Spec>,
    /// `frontier`: the channel-module sweep per model (`[[frontier]]`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frontier: Vec<FrontierModel>,
    /// `zoo`: where trained weights go and when a run counts as converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoo: Option<ZooSpec>,
    /// `motivating` (Table 6): the classes to fix and option 2's 2-class models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motivating: Option<MotivatingSpec>,
    /// Paired bootstrap of the scenario reports' differences (Table 2's MA - TMA); Table 1
    /// keeps its own in `[table1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// The validity gate (issue 16): a model or trained baseline within
    /// [`crate::gate::CHANCE_MARGIN`] points of chance on its own test images, or one that
    /// predicts one class for every image, fails the experiment. Off only for tests on
    /// untrained toy models; the report says so.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub validity_gate: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Table 6's settings: which classes of the recipient (`[models.weak]`) are fixed, and
/// option 2 (a module from a 2-class model).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MotivatingSpec {
    /// The classes to fix: names or indices of the recipient's classes, or `weakest` (the
    /// class its composed modules handle worst).
    #[serde(default = "weakest")]
    pub classes: Vec<String>,
    /// Option 2: for each class fixed, a model of this spec trained on that class and the
    /// class the recipient's composed modules most often predict for its images; its module
    /// of the fixed class replaces the recipient's. Absent: option 2 does not run.
    pub pair: Option<TrainSpec>,
    /// With `pair`: also vote option 2's module with its margins scaled to the recipient's
    /// module's (the ratio of their medians on the class's training images), a row of ours
    /// beside the paper's four options.
    #[serde(default)]
    pub scale_pair: bool,
}

impl Default for MotivatingSpec {
    fn default() -> Self {
        Self {
            classes: weakest(),
            pair: None,
            scale_pair: false,
        }
    }
}

fn weakest() -> Vec<String> {
    vec!["weakest".into()]
}

/// One image set of the `eval` scenario: a dataset role's split, or a file of records in
/// the role's folder.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalImages {
    /// The label in the report (`test`, `train_first4000_lossless`).
    pub label: String,
    /// Dataset role (`[data.<role>]`).
    pub data: String,
    /// A file of CIFAR records inside the role's folder, instead of a split.
    pub file: Option<String>,
    /// The split (default test).
    pub split: Option<String>,
}

/// The paper's Table 1 over pretrained and zoo models.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Table1Spec {
    /// Variants composed for every model (one decomposition per class makes all of them).
    #[serde(default = "all_variants")]
    pub variants: Vec<String>,
    /// Mask sites of models without BatchNorm (with BatchNorm only the default site: both
    /// sites give the same masks up to the BatchNorm, see METHOD.md 2.1).
    #[serde(default = "both_sites")]
    pub no_bn_mask_sites: Vec<String>,
    /// A `zoo` manifest whose trained models (weights in its `weights_dir`) join the table;
    /// models not trained yet are listed as such.
    pub zoo: Option<String>,
    /// Further rows: a model with further `decomp decompose` flags.
    #[serde(default)]
    pub ablations: Vec<Ablation>,
    /// Paired bootstrap resamples of the test images for each difference's 95% interval.
    #[serde(default = "default_resamples")]
    pub bootstrap: usize,
    #[serde(default)]
    pub bootstrap_seed: u64,
}

fn all_variants() -> Vec<String> {
    ["ci-ti-mc", "mc-bln", "mc-bln-bi"]
        .map(String::from)
        .to_vec()
}
fn both_sites() -> Vec<String> {
    ["relu-input", "conv-output"].map(String::from).to_vec()
}
fn default_resamples() -> usize {
    2000
}

/// Paired bootstrap settings: resamples of the test images and the generator's seed.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSpec {
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    #[serde(default)]
    pub seed: u64,
}

impl Default for BootstrapSpec {
    fn default() -> Self {
        Self {
            resamples: default_resamples(),
            seed: 0,
        }
    }
}

/// A Table 1 row set with further decomposition flags (`--bln-delta 0.1`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ablation {
    /// Model role (`[models.<role>]`).
    pub model: String,
    pub args: Vec<String>,
    pub variants: Vec<String>,
}

/// The channel-module sweep of one model (`[[frontier]]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontierModel {
    /// Model role (`[models.<role>]`).
    pub model: String,
    /// The points in order; the first must be the `tau = tau_neg = 0`, `off` point, whose
    /// tangling writes the channel statistics every other point thresholds.
    pub points: Vec<FrontierPoint>,
    /// Every point also composed on the whole test split (as each point's own
    /// `whole_split`; not part of any unit's key, so that turning it on reuses every
    /// finished tangling).
    #[serde(default)]
    pub whole_split: bool,
}

/// One point of the sweep (`decomp tangle --granularity channel` flags).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FrontierPoint {
    #[serde(default)]
    pub tau: f32,
    #[serde(default = "two")]
    pub tau_neg: f32,
    /// `mean-positions`, `any-position`, `deviation`; `importance` with a budget.
    #[serde(default = "mean_positions")]
    pub rate: String,
    /// `off`, `concerned`, `sample`.
    #[serde(default = "off")]
    pub compensation: String,
    /// Importance selection to this fraction of the model's FLOPs instead of thresholds.
    pub budget: Option<f32>,
    /// Least-squares reconstruction of the pruned convolutions.
    #[serde(default)]
    pub reconstruct: bool,
    /// Least-squares passes with `reconstruct` (more than 1: ReLU-aware).
    #[serde(default = "one")]
    pub relu_passes: u32,
    /// Least-squares fit of the binary head (training; reported as such).
    #[serde(default)]
    pub fit_head: bool,
    /// Module training (issue 17): `decomp tangle --train` with its budget (epochs of the
    /// model's training cost for all modules together) and learning rate; `None` keeps the
    /// CLI defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<PointTraining>,
    /// Also composed on the whole test split.
    #[serde(default)]
    pub whole_split: bool,
}

/// A frontier point's module training (`decomp tangle --train` flags).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PointTraining {
    pub budget: Option<f64>,
    pub lr: Option<f64>,
    /// `--train-checks` (hold-out checks, keeping the best; `None`: decomp's default, 5).
    /// In the unit's key (`null` when unset), except `0`: modules trained before the checks
    /// existed kept the end, as `checks = 0` does, so such a point keeps their keys and
    /// reuses them, and no other point does.
    #[serde(default, skip_serializing_if = "keeps_the_end")]
    pub checks: Option<usize>,
}

/// `checks = 0`: training keeps the end, as it did before the checks existed.
fn keeps_the_end(checks: &Option<usize>) -> bool {
    *checks == Some(0)
}

fn two() -> f32 {
    2.0
}
fn one() -> u32 {
    1
}
fn mean_positions() -> String {
    "mean-positions".into()
}
fn off() -> String {
    "off".into()
}

/// The model zoo's settings; its runs are the `[models.*]` with `train`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZooSpec {
    /// Where finished runs' weights go (`<name>.ir`, with `SHA256SUMS`), relative to the
    /// workspace root unless absolute.
    #[serde(default = "zoo_dir")]
    pub weights_dir: String,
    /// Convergence: the last `flat_window` of the epochs...
    #[serde(default = "flat_window")]
    pub flat_window: f64,
    /// ...raised the best validation accuracy by at most this many points.
    #[serde(default = "flat_tolerance")]
    pub flat_tolerance: f64,
    /// A real model's least test top-1 (%) per dataset (`cifar10`, `tiny-imagenet`): the
    /// report names every finished run below it.
    #[serde(default)]
    pub min_test_top1: std::collections::BTreeMap<String, f64>,
}

fn zoo_dir() -> String {
    "models/zoo".into()
}
fn flat_window() -> f64 {
    0.2
}
fn flat_tolerance() -> f64 {
    0.5
}

/// A model: pretrained weights, or trained by the experiment on a dataset role.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `.th`/`.pt`/`.ir`/`.onnx` path (`models:` prefix = `--models-dir`; else relative to
    /// the workspace root) or a known name.
    pub weights: Option<String>,
    pub arch: Option<String>,
    /// Train this model instead (on all classes of `data`).
    pub train: Option<TrainSpec>,
    /// Dataset role the model classifies (default `main`).
    #[serde(default = "main_role")]
    pub data: String,
}

fn main_role() -> String {
    "main".into()
}

/// A dataset: `dataset` is decomp's name; `path` the dataset folder relative to
/// `--data-dir` when it differs from the official folder name.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub dataset: String,
    pub path: Option<String>,
    /// Skipped (with the image sets that read it) when the folder is absent, instead of
    /// fetched; for folders without an official source.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecomposeSpec {
    #[serde(default = "default_variant")]
    pub variant: String,
    #[serde(default = "default_positives")]
    pub positives: usize,
    /// Further `decomp decompose` flags (METHOD.md knobs).
    #[serde(default)]
    pub args: Vec<String>,
}

impl Default for DecomposeSpec {
    fn default() -> Self {
        Self {
            variant: default_variant(),
            positives: default_positives(),
            args: Vec::new(),
        }
    }
}

fn default_variant() -> String {
    "mc-bln".into()
}
fn default_positives() -> usize {
    1000
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectSpec {
    /// Classes drawn (seeded) from the main dataset.
    #[serde(default = "default_four")]
    pub classes: usize,
    /// Classes drawn from the second dataset (inter-dataset scenarios).
    #[serde(default = "default_four")]
    pub second_classes: usize,
    #[serde(default)]
    pub seed: u64,
    /// Explicit classes instead of a seeded draw.
    pub fixed: Option<Vec<usize>>,
    pub second_fixed: Option<Vec<usize>>,
    /// `inter-replace`: which (main class, second class) cases it runs.
    #[serde(default, skip_serializing_if = "Cases::is_zip")]
    pub cases: Cases,
    /// `intra-replace`: replace the modules of this many classes (a draw with `seed`)
    /// instead of every class's; the compositions keep every class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_classes: Option<usize>,
}

/// The cases of `inter-replace` (Table 5): main class x replaced by second class t.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Cases {
    /// The i-th class of each selection (as many cases as the shorter selection).
    #[default]
    Zip,
    /// Every combination: the paper's 4 x 4 = 16.
    Cross,
}

impl Cases {
    fn is_zip(&self) -> bool {
        *self == Cases::Zip
    }

    /// The cases as (index into the main selection, index into the second selection), in
    /// row order (main class first).
    pub fn of(self, main: usize, second: usize) -> Vec<(usize, usize)> {
        match self {
            Cases::Zip => (0..main.min(second)).map(|i| (i, i)).collect(),
            Cases::Cross => (0..main)
                .flat_map(|i| (0..second).map(move |j| (i, j)))
                .collect(),
        }
    }
}

impl Default for SelectSpec {
    fn default() -> Self {
        Self {
            classes: 4,
            second_classes: 4,
            seed: 0,
            fixed: None,
            second_fixed: None,
            cases: Cases::Zip,
            replace_classes: None,
        }
    }
}

fn default_four() -> usize {
    4
}

/// `decomp train` settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default = "default_recipe")]
    pub recipe: String,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    /// Training images per class... as `decomp train --train-limit` (total).
    pub train_limit: Option<usize>,
    pub val_fraction: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub no_batch_norm: bool,
    /// Further `decomp train` flags.
    #[serde(default)]
    pub args: Vec<String>,
}

fn default_arch() -> String {
    "resnet20".into()
}
fn default_recipe() -> String {
    "he2016".into()
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    /// Evaluate on the first N test images of the selection only (quick runs).
    pub limit: Option<usize>,
    /// Tables 3 and 5 (`inter-reuse`, `inter-replace`): also vote with the second model's
    /// module's margins multiplied by the ratio of the base modules' median margin on their
    /// classes' training images to the second module's on its class's training images, a
    /// section of ours beside the paper's MA or D (the two models' margins have different
    /// scales; the factor never sees a test image).
    #[serde(default)]
    pub scale_second: bool,
}

/// The cost model of METHOD.md section 5.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Co2eSpec {
    /// Declared CPU package power (W) when nothing is measured.
    #[serde(default = "default_cpu_w")]
    pub cpu_w: f64,
    /// Declared DRAM power (W).
    #[serde(default = "default_dram_w")]
    pub dram_w: f64,
    /// Number of GPUs and their declared power (W).
    #[serde(default)]
    pub gpus: f64,
    #[serde(default)]
    pub gpu_w: f64,
    /// Datacenter PUE (paper: 1.58).
    #[serde(default = "default_pue")]
    pub pue: f64,
    /// lbs CO2e per kWh (paper: 0.954).
    #[serde(default = "default_lbs")]
    pub lbs_per_kwh: f64,
    /// Epochs of the "fixed epochs" from-scratch baseline (paper: 200).
    #[serde(default = "default_epochs")]
    pub scratch_epochs: usize,
    /// The `metrics.json` of a finished training run of the base model (a zoo run under
    /// `results/zoo/`, relative to the workspace): its training is measured instead of a
    /// short `[tma]` run extrapolated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_metrics: Option<String>,
}

impl Default for Co2eSpec {
    fn default() -> Self {
        Self {
            cpu_w: default_cpu_w(),
            dram_w: default_dram_w(),
            gpus: 0.0,
            gpu_w: 0.0,
            pue: default_pue(),
            lbs_per_kwh: default_lbs(),
            scratch_epochs: default_epochs(),
            training_metrics: None,
        }
    }
}

fn default_cpu_w() -> f64 {
    65.0
}
fn default_dram_w() -> f64 {
    5.0
}
fn default_pue() -> f64 {
    1.58
}
fn default_lbs() -> f64 {
    0.954
}
fn default_epochs() -> usize {
    200
}

impl Manifest {
    /// Reads `experiments/<name>.toml`, or `name` itself when it is a path to a `.toml` file.
    pub fn load(root: &Path, name: &str) -> Result<(String, Manifest)> {
        let (path, short) = if name.ends_with(".toml") {
            let p = Path::new(name).to_path_buf();
            let short = p
                .file_stem()
                .map_or(name.to_string(), |s| s.to_string_lossy().to_string());
            (p, short)
        } else {
            (
                root.join("experiments").join(format!("{name}.toml")),
                name.to_string(),
            )
        };
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no experiment {name:?}: cannot read {} (known: {})",
                path.display(),
                known(root).join(", ")
            )
        })?;
        let m: Manifest = toml::from_str(&text)
            .with_context(|| format!("{}: invalid manifest", path.display()))?;
        Ok((short, m))
    }
}

/// The datasets and weights an experiment reads.
#[derive(Debug, Default, PartialEq)]
pub struct Needs {
    /// `[data.*]` entries, without repeats.
    pub data: Vec<DataSpec>,
    /// `[models.*] weights`, without repeats (`models:FILE`, a path or a known name).
    pub weights: Vec<String>,
}

impl Needs {
    fn add(&mut self, m: &Manifest) {
        for d in m.data.values() {
            if !self
                .data
                .iter()
                .any(|x| x.dataset == d.dataset && x.path == d.path)
            {
                self.data.push(d.clone());
            }
        }
        for w in m.models.values().filter_map(|m| m.weights.as_ref()) {
            if !self.weights.contains(w) {
                self.weights.push(w.clone());
            }
        }
    }
}

impl Manifest {
    /// What manifest `name` and, for a suite, its members need.
    pub fn needs(root: &Path, name: &str) -> Result<Needs> {
        let mut needs = Needs::default();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            let (_, m) = Manifest::load(root, &n)?;
            needs.add(&m);
            todo.extend(m.members.iter().rev().cloned());
            todo.extend(m.table1.iter().filter_map(|t| t.zoo.clone()));
        }
        Ok(needs)
    }
}

/// Names of the manifests under `experiments/`.
pub fn known(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("experiments"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.path()
                        .file_name()?
                        .to_str()?
                        .strip_suffix(".toml")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trained point's key names its hold-out checks (`null`: decomp's default), except
    /// `checks = 0`, which keeps the key that points had before the checks existed (their
    /// modules kept the end, as `checks = 0` does).
    #[test]
    fn training_keys_name_the_checks_except_keeping_the_end() {
        let t: PointTraining = toml::from_str("budget = 10.0\nchecks = 0").expect("parses");
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({ "budget": 10.0, "lr": null })
        );
        let t: PointTraining = toml::from_str("budget = 10.0").expect("parses");
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({ "budget": 10.0, "lr": null, "checks": null })
        );
        let t: PointTraining = toml::from_str("checks = 3").expect("parses");
        assert_eq!(serde_json::to_value(&t).unwrap()["checks"], 3);
    }

    /// Every committed manifest parses (unknown fields are errors), names only recipes
    /// that exist, and the full-scale Table 2, 3 and 5 manifests hold the paper's setting.
    #[test]
    fn committed_manifests_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let recipes: toml::Table = toml::from_str(
            &std::fs::read_to_string(root.join("experiments/recipes.toml")).expect("recipes"),
        )
        .expect("recipes.toml parses");
        let recipes = recipes["recipes"].as_table().expect("[recipes.*]");
        let names = known(&root);
        for want in [
            "table2",
            "table2-c10",
            "table2-ti64",
            "table3-full",
            "table5-full",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        for n in names.iter().filter(|n| *n != "recipes") {
            let (_, m) = Manifest::load(&root, n).unwrap_or_else(|e| panic!("{n}: {e:#}"));
            Manifest::needs(&root, n).unwrap_or_else(|e| panic!("{n}: {e:#}"));
            let trains = m
                .tma
                .iter()
                .chain(m.models.values().filter_map(|s| s.train.as_ref()));
            for t in trains {
                assert!(recipes.contains_key(&t.recipe), "{n}: recipe {}", t.recipe);
            }
        }
        let load = |n: &str| Manifest::load(&root, n).expect(n).1;
        for (n, dataset, arch, weights, recipe, epochs) in [
            (
                "table2-c10",
                "cifar10",
                "resnet56",
                "models:resnet56-4bfd9763.th",
                "he2016",
                40,
            ),
            (
                "table2-ti64",
                "tiny-imagenet",
                "resnet20",
                "models/zoo/ti64-r20.ir",
                "paper-keras",
                60,
            ),
        ] {
            let m = load(n);
            assert_eq!(m.scenario, "intra-reuse", "{n}");
            assert_eq!(m.data["main"].dataset, dataset, "{n}");
            let base = &m.models["base"];
            assert_eq!(base.weights.as_deref(), Some(weights), "{n}");
            assert_eq!(base.arch.as_deref(), Some(arch), "{n}");
            if !weights.starts_with("models:") {
                assert!(root.join(weights).is_file(), "{n}: {weights} is committed");
            }
            assert_eq!(
                (m.select.classes, m.select.fixed.as_ref()),
                (4, None),
                "{n}"
            );
            let t = m.tma.as_ref().expect("a TMA");
            assert_eq!((t.arch.as_str(), t.recipe.as_str()), (arch, recipe), "{n}");
            assert_eq!(t.epochs, Some(epochs), "{n}");
            assert_eq!(
                (t.train_limit, t.val_fraction),
                (None, Some(0.1)),
                "{n}: all images"
            );
            assert!(m.validity_gate, "{n}");
        }
        // The full-scale Tables 3 and 5: the pretrained ResNet-56 x the zoo's ResNet-20 at
        // 32x32, 4 x 4 classes (Table 5: every combination, 16 cases), converged baselines.
        for (n, scenario, epochs) in [
            ("table3-full", "inter-reuse", 60),
            ("table5-full", "inter-replace", 30),
        ] {
            let m = load(n);
            assert_eq!(m.scenario, scenario, "{n}");
            assert_eq!(m.data["main"].dataset, "cifar10", "{n}");
            assert_eq!(m.data["second"].dataset, "tiny-imagenet", "{n}");
            let base = &m.models["base"];
            assert_eq!(
                base.weights.as_deref(),
                Some("models:resnet56-4bfd9763.th"),
                "{n}"
            );
            assert_eq!(base.arch.as_deref(), Some("resnet56"), "{n}");
            let second = &m.models["second"];
            let w = second.weights.as_deref().expect("a given second model");
            assert_eq!(w, "models/zoo/ti32-r20.ir", "{n}");
            assert!(root.join(w).is_file(), "{n}: {w} is committed");
            assert!(second.train.is_none() && second.data == "second", "{n}");
            let s = &m.select;
            assert_eq!(
                (s.classes, s.second_classes, s.fixed.as_ref()),
                (4, 4, None),
                "{n}"
            );
            // Table 3 pairs every class with every class; Table 5 runs `cases`.
            let rows = if scenario == "inter-reuse" {
                s.classes * s.second_classes
            } else {
                s.cases.of(s.classes, s.second_classes).len()
            };
            assert_eq!(rows, 16, "{n}: the paper's 16 pairs / cases");
            let t = m.tma.as_ref().expect("a TMA / M");
            assert_eq!(
                (t.arch.as_str(), t.epochs),
                ("resnet20", Some(epochs)),
                "{n}"
            );
            assert_eq!(
                (t.train_limit, t.val_fraction),
                (None, Some(0.1)),
                "{n}: all images"
            );
            assert!(m.validity_gate && m.bootstrap.is_some(), "{n}");
        }
        // The committed cut-down Tables 3 and 5 keep their setting but take the zoo's real
        // Tiny ImageNet-20 model (a 4-epoch model of two classes was at chance).
        for n in ["table3", "table5"] {
            let m = load(n);
            assert_eq!(m.select.cases, Cases::Zip, "{n}");
            let second = &m.models["second"];
            assert_eq!(
                second.weights.as_deref(),
                Some("models/zoo/ti32-r20.ir"),
                "{n}"
            );
            assert!(second.train.is_none(), "{n}");
        }
        // Table 4 on Tiny ImageNet-20: the zoo's ResNet-32 modules, the ResNet-20's as donors
        // (the paper's direction), 10 replaced classes; the other Tables 4 replace every class.
        let m = load("table4-ti64");
        assert_eq!(m.scenario, "intra-replace");
        assert_eq!(
            (
                m.models["weak"].weights.as_deref(),
                m.models["strong"].weights.as_deref()
            ),
            (
                Some("models/zoo/ti64-r32.ir"),
                Some("models/zoo/ti64-r20.ir")
            )
        );
        assert_eq!(m.select.replace_classes, Some(10));
        for n in ["table4", "table4-c10"] {
            assert_eq!(load(n).select.replace_classes, None, "{n}");
        }
        // The zoo names its runs under issue 15's bars.
        let z = load("zoo").zoo.expect("[zoo]");
        assert_eq!(
            z.min_test_top1.into_iter().collect::<Vec<_>>(),
            [
                ("cifar10".to_string(), 80.0),
                ("tiny-imagenet".to_string(), 50.0)
            ]
        );
        // The default experiment's cut-down Table 2 stays cut down (it must fit ~15 minutes).
        let t = load("table2").tma.expect("a TMA");
        assert_eq!((t.epochs, t.train_limit), (Some(6), Some(4000)));
    }

    #[test]
    fn cases_zip_or_cross() {
        assert_eq!(Cases::Zip.of(2, 3), vec![(0, 0), (1, 1)]);
        assert_eq!(
            Cases::Cross.of(2, 3),
            vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        );
        let s: SelectSpec = toml::from_str("cases = \"cross\"").expect("parses");
        assert_eq!(s.cases, Cases::Cross);
        assert!(toml::from_str::<SelectSpec>("cases = \"all\"").is_err());
        // The default is not written, so older reports' manifest.json stay the same.
        let j = serde_json::to_value(SelectSpec::default()).expect("json");
        assert!(j.get("cases").is_none(), "{j}");
    }
}
