//! Experiment manifests: `experiments/<name>.toml`, one per paper table.
//!
//! A manifest names a *scenario* (the chain of stages, in `scenarios.rs`) and every setting
//! that scenario reads; unknown fields are errors, so a typo cannot silently fall back to a
//! default. Paths in `weights` may start with `models:` (the `--models-dir` folder); dataset
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
    /// `motivating`, `co2e`.
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
}

/// A model: pretrained weights, or trained by the experiment on a dataset role.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `.th`/`.pt`/`.ir` path (`models:` prefix = `--models-dir`) or a known name.
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
}

impl Default for SelectSpec {
    fn default() -> Self {
        Self {
            classes: 4,
            second_classes: 4,
            seed: 0,
            fixed: None,
            second_fixed: None,
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
