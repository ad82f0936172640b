//! The reuse/replace scenarios of METHOD.md sections 4-5, as chains of engine units.
//!
//! Every scenario follows the same shape: resolve models (import or train), decompose the
//! classes it needs (one unit per class: what shards split), train TMA baselines (one unit
//! per pair), then in the merge step run each model's modules once over the test images
//! (`decomp compose --save-margins`), evaluate every composition from those margins
//! (`decomp vote`) and write the report from artifacts only.
//!
//! `units.rs` holds the units, `format.rs` the number formatting; one file per scenario.

mod co2e;
mod eval;
mod format;
mod frontier;
mod paper;
mod scaled;
mod table1;
mod table2;
mod table3;
mod table4;
mod table5;
mod table6;
mod units;
mod zoo;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::engine::{Engine, Kind, write_report};
use crate::manifest::{DataSpec, Manifest};
use decomp_eval::report::{ComposeReport, ModelEval, TrainMetrics};
use format::{s, strings};

/// Runs a manifest (a suite runs its members in order) and prints where the reports are.
pub fn run_manifest(eng: &Engine, env: &Env, name: &str) -> Result<()> {
    let (short, m) = Manifest::load(&env.root, name)?;
    if m.scenario == "suite" {
        for member in &m.members {
            run_manifest(eng, env, member)?;
        }
        return Ok(());
    }
    let stages: Vec<&'static str> = match m.scenario.as_str() {
        // `eval` after `train`: it also evaluates each TMA on its pair's test images.
        "intra-reuse" => vec![
            "import",
            "decompose",
            "train",
            "eval",
            "margins",
            "vote",
            "report",
        ],
        "intra-replace" => vec!["import", "decompose", "margins", "vote", "report"],
        // `eval` on the recipient's training images picks the classes; `train`: option 2's models.
        "motivating" => vec![
            "import",
            "eval",
            "train",
            "decompose",
            "margins",
            "vote",
            "report",
        ],
        "co2e" => vec!["import", "decompose", "train", "margins", "vote", "report"],
        // `eval` after `train`: it also evaluates each TMA / M on its test images.
        "inter-reuse" | "inter-replace" => vec![
            "import",
            "mix",
            "train",
            "eval",
            "decompose",
            "relearn",
            "margins",
            "vote",
            "report",
        ],
        "eval" => vec!["eval", "report"],
        "table1" => vec!["import", "decompose", "margins", "report"],
        "frontier" => vec!["import", "concern", "tangle", "compose", "report"],
        // `check`: each published model's reproduction check for CI.
        "zoo" => vec!["train", "eval", "check", "report"],
        other => bail!(
            "{name}: unknown scenario {other:?}; known: suite, intra-reuse, inter-reuse, intra-replace, inter-replace, motivating, co2e, eval, table1, frontier, zoo"
        ),
    };
    // The engine is shared by suite members; each member sets its own stage list.
    let mut eng = eng.clone_settings();
    eng.stages = stages;
    let manifest = if name.ends_with(".toml") {
        name.to_string()
    } else {
        format!("experiments/{name}.toml")
    };
    let run = Run {
        eng: &eng,
        env,
        name: short.clone(),
        manifest,
        m,
    };
    match run.m.scenario.as_str() {
        "intra-reuse" => table2::intra_reuse(&run)?,
        "intra-replace" => table4::intra_replace(&run)?,
        "motivating" => table6::motivating(&run)?,
        "co2e" => co2e::co2e(&run)?,
        "inter-reuse" => table3::inter_reuse(&run)?,
        "inter-replace" => table5::inter_replace(&run)?,
        "eval" => eval::eval(&run)?,
        "table1" => table1::table1(&run)?,
        "frontier" => frontier::frontier(&run)?,
        "zoo" => zoo::zoo(&run)?,
        _ => unreachable!("checked above"),
    }
    let main_file = match run.m.scenario.as_str() {
        "table1" => "table1.md",
        "frontier" => "frontier.md",
        _ => "report.md",
    };
    let report = env.results.join(&short).join(main_file);
    let ran = eng.ran.lock().expect("ran").len();
    let paused = eng.paused.lock().expect("paused").clone();
    if !paused.is_empty() {
        println!(
            "{short}: {} units paused by --epochs-now ({}); rerun to continue them",
            paused.len(),
            paused.join(", ")
        );
    }
    if eng.sel.shard.is_some()
        || !report.is_file()
        || (!paused.is_empty() && run.m.scenario != "zoo")
    {
        println!(
            "{short}: {ran} units run; no report from this process (shard, paused training, or --only of an earlier stage)"
        );
    } else {
        println!("report: {}", report.display());
    }
    Ok(())
}

/// Where things are.
pub struct Env {
    pub root: PathBuf,
    /// Where datasets are found (and fetched when missing): `decomp_data::locate`.
    pub data: decomp_data::DataRoot,
    pub models_dir: Option<PathBuf>,
    pub results: PathBuf,
    /// `--limit`: evaluate on the first N images of each split.
    pub limit: Option<usize>,
}

pub struct Run<'a> {
    pub eng: &'a Engine,
    pub env: &'a Env,
    pub name: String,
    /// The manifest as given (`experiments/<name>.toml` or a path).
    pub manifest: String,
    pub m: Manifest,
}

/// A dataset as `decomp` flags plus the key that identifies its contents.
#[derive(Clone)]
struct Data {
    args: Vec<String>,
    key: Value,
    num_classes: usize,
    /// For a `decomp mix` folder: the test records (the flags name the training records).
    test_file: Option<PathBuf>,
}

impl Data {
    /// The same dataset's test split, as flags.
    fn test(&self) -> Data {
        match &self.test_file {
            Some(t) => Data {
                args: strings(&["--dataset", "cifar10", "--data-file", &s(t)]),
                test_file: None,
                ..self.clone()
            },
            None => self.clone(),
        }
    }
}

/// A model as an `.ir` file.
#[derive(Clone)]
struct Model {
    ir: PathBuf,
    hash: String,
    data: Data,
    arch: String,
}

/// `k` distinct classes of `0..n`, drawn with a SplitMix64 Fisher-Yates shuffle from `seed`
/// and sorted.
pub fn seeded_choice(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x05EE_DC1A_55E5_u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + (next() % (n - i) as u64) as usize;
        v.swap(i, j);
    }
    let mut out = v[..k.min(n)].to_vec();
    out.sort_unstable();
    out
}

impl Env {
    /// The folder of dataset `spec` (`path`, or the official folder), fetched if missing;
    /// an `optional` folder is only looked for (see [`optional_folder`]).
    fn dataset_folder(&self, spec: &DataSpec) -> Result<PathBuf> {
        if spec.optional {
            return optional_folder(&self.data, spec).with_context(|| {
                format!(
                    "{} is in none of {:?}",
                    spec.path.as_deref().unwrap_or(&spec.dataset),
                    self.data.search()
                )
            });
        }
        let kind = decomp_data::DatasetKind::parse(&spec.dataset)?;
        let want = match &spec.path {
            Some(p) => decomp_data::DatasetFolder::named(kind, p),
            None => decomp_data::DatasetFolder::official(kind),
        };
        Ok(self.data.ensure(&want)?)
    }
}

/// An optional dataset folder (no official source; it may hold single files of records
/// rather than a whole split): the first searched data folder that has it.
pub fn optional_folder(data: &decomp_data::DataRoot, spec: &DataSpec) -> Option<PathBuf> {
    let name = spec.path.as_deref().unwrap_or(&spec.dataset);
    data.search()
        .into_iter()
        .map(|d| d.join(name))
        .find(|f| f.is_dir())
}

/// A part of a mix: class `class` of the dataset of role `role` (`main`, `second`).
fn part(r: &Run, role: &str, class: usize) -> Result<Value> {
    let spec =
        r.m.data
            .get(role)
            .with_context(|| format!("manifest has no [data.{role}]"))?;
    let folder = r.env.dataset_folder(spec)?;
    Ok(json!({ "dataset": spec.dataset, "dataset_path": s(&folder), "class": class }))
}

impl Run<'_> {
    /// The validity gate (`crate::gate`) on a model's own result over all its classes
    /// (`classes`: the model's class count; `names`: the classes of `per_class`).
    fn gate(
        &self,
        what: &str,
        top1: f64,
        per_class: Option<&[f64]>,
        names: &[String],
        classes: usize,
    ) -> Result<()> {
        if !self.m.validity_gate {
            return Ok(());
        }
        crate::gate::check(
            what,
            crate::gate::Scores {
                top1,
                classes,
                per_class,
                names: Some(names),
            },
        )
    }

    /// [`Run::gate`] on a `decomp eval` result.
    fn gate_eval(&self, what: &str, e: &ModelEval, classes: usize) -> Result<()> {
        self.gate(what, e.top1, Some(&e.per_class), &e.class_names, classes)
    }

    /// [`Run::gate`] on a composition over all of a model's classes (the model ran in the
    /// same pass).
    fn gate_compose(&self, what: &str, c: &ComposeReport, classes: usize) -> Result<()> {
        let top1 = c.accuracy.model_top1.unwrap_or(f64::NAN);
        self.gate(
            what,
            top1,
            c.model_per_class.as_deref(),
            &c.classes,
            classes,
        )
    }

    /// [`Run::gate`] on a training run (unit folder `dir`): its test result, `test.json`
    /// (mixed data: with per-class accuracies) or the run's own `--eval-test`.
    fn gate_trained(&self, what: &str, dir: &std::path::Path, classes: usize) -> Result<()> {
        let t = dir.join("test.json");
        if t.is_file() {
            return self.gate_eval(what, &crate::engine::read(&t)?, classes);
        }
        let m: TrainMetrics = crate::engine::read(&dir.join("metrics.json"))?;
        self.gate(
            what,
            m.test_top1.unwrap_or(f64::NAN),
            None,
            &m.classes,
            classes,
        )
    }

    /// [`Run::gate_eval`] of `model`'s own test evaluation ([`Run::eval_model`]).
    fn gate_model_test(&self, role: &str, model: &Model, test: Option<&ModelEval>) -> Result<()> {
        let what = format!("{role} {} ({})", model.arch, model.ir.display());
        let test = test.with_context(|| format!("the test evaluation of {what} is missing"))?;
        self.gate_eval(&what, test, model.data.num_classes)
    }

    fn out_dir(&self) -> PathBuf {
        self.env.results.join(&self.name)
    }

    /// Whether this process builds reports (not under `--shard`, no training unit paused
    /// by `--epochs-now`, and `report` selected).
    fn reporting(&self) -> Result<bool> {
        if self.eng.sel.shard.is_some() || !self.eng.paused.lock().expect("paused").is_empty() {
            return Ok(false);
        }
        Ok(match (&self.eng.sel.only, &self.eng.sel.from) {
            (Some(o), _) => o == "report",
            _ => true,
        })
    }

    fn header(&self, md: &mut String) {
        let _ = writeln!(md, "# {}\n", self.m.title);
        let _ = writeln!(
            md,
            "Generated by `cargo xtask run-experiment {}` from the artifacts of the experiment (manifest \
             `{}`). Decomposition: variant `{}`, {} positives per class{}.\n",
            self.name,
            self.manifest,
            self.m.decompose.variant,
            self.m.decompose.positives,
            if self.m.decompose.args.is_empty() {
                String::new()
            } else {
                format!(", flags `{}`", self.m.decompose.args.join(" "))
            }
        );
        if !self.m.notes.trim().is_empty() {
            let _ = writeln!(md, "{}\n", self.m.notes.trim());
        }
    }

    fn finish(&self, md: &str, json_rows: &Value, csv: &str) -> Result<()> {
        let out = self.out_dir();
        write_report(&out.join("report.md"), md)?;
        write_report(
            &out.join(format!("{}.json", self.name)),
            &serde_json::to_string_pretty(json_rows)?,
        )?;
        write_report(&out.join(format!("{}.csv", self.name)), csv)?;
        write_report(
            &out.join("manifest.json"),
            &serde_json::to_string_pretty(&self.m)?,
        )?;
        Ok(())
    }
}

fn join(c: &[usize]) -> String {
    c.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn pairs(classes: &[usize]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for i in 0..classes.len() {
        for j in i + 1..classes.len() {
            v.push((i, j));
        }
    }
    v
}

/// The second dataset's model of an inter-dataset scenario, with the classes drawn from that
/// dataset.
struct Second {
    model: Model,
    /// The classes drawn from the second dataset (its own indices).
    picked: Vec<usize>,
    /// The model's own class index of each drawn class: the class itself for a given model
    /// of the whole dataset, its position for a model trained here on the drawn classes.
    model_class: Vec<usize>,
    origin: SecondOrigin,
}

enum SecondOrigin {
    /// Trained here on the drawn classes (a mix of them): its run folder and settings.
    Trained {
        dir: PathBuf,
        spec: crate::manifest::TrainSpec,
    },
    /// Given weights (`[models.second] weights`, e.g. a zoo model of all the dataset's
    /// classes): its evaluation on the dataset's test split.
    Given {
        weights: String,
        test: Option<ModelEval>,
    },
}

/// The second dataset's model: `[models.second]` with `weights` (a model of the whole
/// second dataset at the main dataset's input size, e.g. `models/zoo/ti32-r20.ir`) or with
/// `train` (trained here on the drawn classes only, written as a mix).
fn second_model(r: &Run) -> Result<Option<Second>> {
    let second = r.spec_data("second")?;
    let spec =
        r.m.data
            .get("second")
            .context("manifest has no [data.second]")?;
    let picked = r.m.select.second_fixed.clone().unwrap_or_else(|| {
        seeded_choice(
            second.num_classes,
            r.m.select.second_classes,
            r.m.select.seed.wrapping_add(1),
        )
    });
    if let Some(&c) = picked.iter().find(|&&c| c >= second.num_classes) {
        bail!(
            "[select] second_fixed: class {c} of {}, which has {} classes",
            spec.dataset,
            second.num_classes
        );
    }
    let m =
        r.m.models
            .get("second")
            .context("manifest has no [models.second]")?;
    if let Some(weights) = &m.weights {
        if m.data != "second" {
            bail!(
                "[models.second] data = {:?}: a given second model classifies the second dataset, expected data = \"second\"",
                m.data
            );
        }
        let Some(mut model) = r.model("second")? else {
            return Ok(None);
        };
        model.arch = format!("{}-{}", model.arch, spec.dataset);
        let test = r.model_test(&model, 1)?;
        return Ok(Some(Second {
            model,
            model_class: picked.clone(),
            picked,
            origin: SecondOrigin::Given {
                weights: weights.clone(),
                test,
            },
        }));
    }
    let parts: Vec<Value> = picked
        .iter()
        .map(|&c| part(r, "second", c))
        .collect::<Result<_>>()?;
    let Some(set) = r.mix("second-set", Kind::Shared, 0, &parts)? else {
        return Ok(None);
    };
    let t = m.train.as_ref().context(
        "[models.second] needs `weights` (a model of the second dataset) or `train` (trained here on the drawn classes)",
    )?;
    let Some(dir) = r.train("second-model", 0, &set, None, t)? else {
        return Ok(None);
    };
    let ir = dir.join("best.ir");
    let model = Model {
        hash: r.eng.file_hash(&ir)?,
        ir,
        data: set,
        arch: format!("{}-{}", t.arch, spec.dataset),
    };
    Ok(Some(Second {
        model,
        model_class: (0..picked.len()).collect(),
        picked,
        origin: SecondOrigin::Trained {
            dir,
            spec: t.clone(),
        },
    }))
}

impl Second {
    /// The module of drawn class `j` (one decomposition unit, unit index `index`).
    fn module(&self, r: &Run, j: usize, index: usize) -> Result<Option<PathBuf>> {
        r.module(&self.model, self.model_class[j], index)
    }

    /// Its test top-1 (%): a trained model on the drawn classes' test images, a given one
    /// on its dataset's test split.
    fn test_top1(&self) -> Result<f64> {
        match &self.origin {
            SecondOrigin::Trained { dir, .. } => Run::test_top1(dir),
            SecondOrigin::Given { test, .. } => Ok(test.as_ref().map_or(f64::NAN, |t| t.top1)),
        }
    }

    /// The sentence of the reports that says what the model is.
    fn describe(&self, dataset: &str) -> Result<String> {
        Ok(match &self.origin {
            SecondOrigin::Trained { dir, spec: t } => {
                let metrics: TrainMetrics = crate::engine::read(&dir.join("metrics.json"))?;
                format!(
                    "Its model is a `{}` trained here on the {} selected classes only (recipe `{}`, {} epochs{}), best \
                     validation epoch {}, **{:.2}%** top-1 on those classes' test images.",
                    t.arch,
                    self.picked.len(),
                    t.recipe,
                    t.epochs.map_or("recipe".into(), |e| e.to_string()),
                    t.train_limit
                        .map_or(String::new(), |n| format!(", {n} images")),
                    json!(metrics.best_epoch),
                    self.test_top1()?
                )
            }
            SecondOrigin::Given { weights, .. } => format!(
                "Its model is `{weights}` (`{}`, given, not trained by this experiment), a model of all {} classes of \
                 {dataset}: **{:.2}%** top-1 on their test images at its input size (the validity gate's test); the \
                 modules of the drawn classes are decomposed on its training images at that size.",
                self.model.arch,
                self.model.data.num_classes,
                self.test_top1()?
            ),
        })
    }
}

/// The validity gate on the two models of an inter-dataset scenario: the base model on its
/// own test split, the second dataset's model on its own test images (a trained one: its
/// classes' test images).
fn gate_inter_models(
    r: &Run,
    base: &Model,
    base_test: Option<&ModelEval>,
    second: &Second,
) -> Result<()> {
    r.gate_model_test("the base model", base, base_test)?;
    match &second.origin {
        SecondOrigin::Trained { dir, .. } => r.gate_trained(
            &format!("the second dataset's model ({})", second.model.ir.display()),
            dir,
            second.picked.len(),
        ),
        SecondOrigin::Given { test, .. } => {
            r.gate_model_test("the second dataset's model", &second.model, test.as_ref())
        }
    }
}

/// A part of a mix: one class of the main dataset.
fn main_part(r: &Run, class: usize) -> Result<Value> {
    part(r, "main", class)
}
