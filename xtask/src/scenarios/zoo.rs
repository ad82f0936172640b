//! `zoo` (issue 15): the models the paper's tables need, trained here. Each `[models.*]`
//! with `train` is one resumable `train` unit (`decomp train --resume` in the unit's
//! `.partial` run folder; `--epochs-now N` stops after N epochs so a run continues in a
//! later session; `--shard I/N` splits the runs); each finished run's best model is
//! evaluated on the test split (an `eval` unit). The report (also while runs are in
//! progress) lists per run the metrics, the curves, wall time, energy and whether the
//! validation curve is flat over the last epochs; finished runs' weights are copied to the
//! zoo's weights folder with a `SHA256SUMS` file, and the experiment fails unless `decomp
//! eval` of each reproduces the test accuracy its training run recorded.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;

use decomp_eval::report::{ComposeReport, ModelEval, TrainMetrics};

use super::format::{fixed2, s, strings};
use super::paper::PAPER_TABLE1;
use super::units::{Ask, PlannedEpochs};
use super::{Data, Run};
use crate::engine::{Kind, read, write_report};
use crate::manifest::{Manifest, ZooSpec};

/// The zoo's weights folder: `weights_dir` relative to the workspace root unless absolute.
pub fn weights_dir(root: &Path, m: &Manifest) -> PathBuf {
    let d = m
        .zoo
        .as_ref()
        .map_or("models/zoo", |z| z.weights_dir.as_str());
    root.join(d)
}

/// Whether the validation curve stopped improving: over the last `window` epochs (the
/// last `flat_window` of the schedule, at least one) the best validation accuracy rose by
/// `gain` points over the best before them; `slope` is the least-squares slope of the
/// window (points per epoch). Flat when `gain <= flat_tolerance`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Convergence {
    pub window: usize,
    pub gain: f64,
    pub slope: f64,
    pub flat: bool,
}

/// [`Convergence`] of validation accuracies `val` (points, one per epoch, all done).
pub fn convergence(val: &[f64], flat_window: f64, tolerance: f64) -> Option<Convergence> {
    let e = val.len();
    let window = ((flat_window * e as f64).ceil() as usize).max(1);
    if e <= window || val.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let best = |s: &[f64]| s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (before, last) = val.split_at(e - window);
    let gain = best(last) - best(before);
    let n = last.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = last.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in last.iter().enumerate() {
        sxy += (i as f64 - mx) * (y - my);
        sxx += (i as f64 - mx).powi(2);
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    Some(Convergence {
        window,
        gain,
        slope,
        flat: gain <= tolerance,
    })
}

/// The reproduction check committed beside each published model (`<run>.check.json`):
/// its first classes decomposed with few positives and composed on the first test images,
/// small enough for CI (`decomp-cli`'s `zoo_models_reproduce_their_committed_check`).
const CHECK_CLASSES: [usize; 3] = [0, 1, 2];
const CHECK_VARIANT: &str = "mc-bln";
const CHECK_POSITIVES: usize = 64;
const CHECK_LIMIT: usize = 2000;

/// What `<run>.check.json` records: the settings (data relative to the data folder) and
/// the composed accuracy the experiment measured.
#[derive(Serialize)]
struct ZooCheck {
    model: String,
    sha256: String,
    dataset: String,
    /// The dataset's folder under the data folder, when not the official one.
    dataset_path: Option<String>,
    classes: Vec<usize>,
    variant: String,
    positives: usize,
    /// Further `decomp decompose` flags (the manifest's `[decompose] args`).
    args: Vec<String>,
    /// Test images counted before the class selection (`decomp compose --limit`).
    limit: usize,
    images: usize,
    composed_top1: f64,
    composed_top5: f64,
}

/// The check's unit: `decomp decompose` of [`CHECK_CLASSES`] of the model `ir` on its
/// training images (with the manifest's `[decompose] args`), then `decomp compose` of the modules on the first [`CHECK_LIMIT`] test
/// images (`compose.json` in the unit folder).
fn check_unit(
    r: &Run,
    name: &str,
    index: usize,
    ir: &Path,
    data: &Data,
) -> Result<Option<PathBuf>> {
    let classes = CHECK_CLASSES.map(|c| c.to_string()).join(",");
    let extra = &r.m.decompose.args;
    let mut key = json!({ "model": r.eng.file_hash(ir)?, "data": data.key, "classes": CHECK_CLASSES,
        "variant": CHECK_VARIANT, "positives": CHECK_POSITIVES, "limit": CHECK_LIMIT });
    if !extra.is_empty() {
        key["args"] = json!(extra);
    }
    r.eng.unit(
        "check",
        Kind::PerUnit,
        index,
        &format!("{name}-check"),
        &key,
        |work| {
            let mut a = strings(&["decompose", "--weights", &s(ir)]);
            a.extend(data.args.iter().cloned());
            a.extend(strings(&[
                "--classes",
                &classes,
                "--variants",
                CHECK_VARIANT,
                "--positives",
                &CHECK_POSITIVES.to_string(),
                "--device",
                &r.eng.device,
                "--out-dir",
                &s(&work.join("modules")),
            ]));
            a.extend(extra.iter().cloned());
            r.eng.decomp(&a)?;
            let mut a = vec!["compose".to_string()];
            a.extend(
                CHECK_CLASSES
                    .iter()
                    .map(|c| s(&work.join(format!("modules/{CHECK_VARIANT}/module_{c:03}.mod")))),
            );
            a.extend(data.test().args);
            a.extend(strings(&[
                "--split",
                "test",
                "--limit",
                &CHECK_LIMIT.to_string(),
                "--device",
                &r.eng.device,
                "--out",
                &s(&work.join("compose.json")),
            ]));
            r.eng.decomp(&a).map(drop)
        },
    )
}

/// `<weights_dir>/<run>.train.json`: the training unit's key (data, recipe, epochs, seed)
/// and the SHA-256 of the published model, so that a checkout without the run folder (a new
/// machine, a fresh clone) reuses the published model instead of training it again.
#[derive(Serialize, serde::Deserialize)]
struct Published {
    key: serde_json::Value,
    sha256: String,
}

/// Puts run `name`'s finished training unit in place from its published model
/// (`<weights_dir>/<name>.ir`) and committed metrics (`results/<zoo>/<name>/`) when the
/// unit's folder is missing and the published record's key is this run's: the test
/// evaluation then checks the published model against the recorded accuracy as for a run
/// trained here. A record of another key or a model whose hash differs is not adopted
/// (said on stderr): the run trains.
fn adopt_published(r: &Run, name: &str, key: &serde_json::Value) -> Result<()> {
    let dir = r.eng.unit_dir("train", name, key);
    let weights = weights_dir(&r.env.root, &r.m);
    let record = weights.join(format!("{name}.train.json"));
    if dir.join("unit.json").is_file() {
        return Ok(());
    }
    let Some(p) = published(&weights, name)? else {
        return Ok(());
    };
    let model = weights.join(format!("{name}.ir"));
    let metrics = r.out_dir().join(name);
    if p.key != *key {
        eprintln!(
            "[train] {name}: {} records another training configuration; not reused",
            record.display()
        );
        return Ok(());
    }
    if !model.is_file() || r.eng.file_hash(&model)? != p.sha256 {
        eprintln!(
            "[train] {name}: {} is missing or its SHA-256 is not the one {} records; not reused",
            model.display(),
            record.display()
        );
        return Ok(());
    }
    let files = ["metrics.json", "metrics.csv", "curves.svg"];
    if let Some(f) = files.iter().find(|f| !metrics.join(f).is_file()) {
        eprintln!(
            "[train] {name}: {} is missing; the published model is not reused",
            metrics.join(f).display()
        );
        return Ok(());
    }
    let mut copies = vec![(model, "best.ir")];
    copies.extend(files.iter().map(|f| (metrics.join(f), *f)));
    r.eng.adopt("train", name, key, &copies).map(drop)
}

/// Run `name`'s published record (`<weights>/<name>.train.json`), if there is one.
fn published(weights: &Path, name: &str) -> Result<Option<Published>> {
    let record = weights.join(format!("{name}.train.json"));
    if !record.is_file() {
        return Ok(None);
    }
    read(&record).map(Some)
}

/// Whether run `name`'s model in the weights folder (`<weights>/<name>.ir`) is the one the
/// zoo trains now: a published record (`<name>.train.json`) must hold the training key `key`
/// and the model's SHA-256; weights placed without a record are taken as they are. A run
/// given another configuration (more epochs) keeps its earlier model and record in the
/// folder until the retraining publishes; that model is not this run's.
pub(super) fn published_is_current(
    r: &Run,
    weights: &Path,
    name: &str,
    key: &serde_json::Value,
) -> Result<bool> {
    let model = weights.join(format!("{name}.ir"));
    if !model.is_file() {
        return Ok(false);
    }
    match published(weights, name)? {
        None => Ok(true),
        Some(p) => Ok(p.key == *key && r.eng.file_hash(&model)? == p.sha256),
    }
}

/// A training run's `metrics.json`, with the planned number of epochs of its configuration.
type Metrics = TrainMetrics<PlannedEpochs>;

/// What the report knows of one run.
struct Entry {
    name: String,
    dataset: String,
    /// The dataset's kind (`cifar10`, `tiny-imagenet`).
    kind: String,
    train: crate::manifest::TrainSpec,
    /// The training unit's key.
    key: serde_json::Value,
    /// Finished unit folder.
    done: Option<PathBuf>,
    /// Its `decomp eval` on the test split.
    eval: Option<ModelEval>,
    /// `metrics.json` of the finished run, or of the run in progress.
    metrics: Option<Metrics>,
    /// The reproduction check's unit folder ([`check_unit`]).
    check: Option<PathBuf>,
    /// The run folder the metrics come from.
    folder: Option<PathBuf>,
}

/// One row of the report (`zoo.json`).
#[derive(Serialize)]
struct Row {
    name: String,
    dataset: String,
    arch: String,
    recipe: String,
    train: crate::manifest::TrainSpec,
    /// `finished`, `in progress (e/E epochs)`, `not started`.
    status: String,
    epochs_done: usize,
    epochs_planned: Option<usize>,
    metrics: Option<Metrics>,
    /// `decomp eval` of the best model on the test split.
    test: Option<ModelEval>,
    convergence: Option<Convergence>,
    /// The published weights (relative to the workspace root unless absolute) and their
    /// SHA-256.
    weights: Option<String>,
    sha256: Option<String>,
    /// The least test top-1 (%) of a real model on this dataset (`[zoo] min_test_top1`).
    min_test_top1: Option<f64>,
}

pub fn zoo(r: &Run) -> Result<()> {
    let z: ZooSpec = r.m.zoo.clone().context("a zoo manifest needs [zoo]")?;
    for d in z.min_test_top1.keys() {
        if !r.m.data.values().any(|ds| &ds.dataset == d) {
            anyhow::bail!(
                "[zoo] min_test_top1: `{d}` is not the dataset of any [data.*] of this manifest"
            );
        }
    }
    let mut entries = Vec::new();
    let n = r.m.models.len();
    for (i, (name, spec)) in r.m.models.iter().enumerate() {
        let t = spec
            .train
            .clone()
            .with_context(|| format!("[models.{name}]: every zoo model needs `train`"))?;
        let data = r.spec_data(&spec.data)?;
        let key = r.train_key(&data, None, &t)?;
        adopt_published(r, name, &key)?;
        let done = r.train(name, i, &data, None, &t)?;
        let eval = match &done {
            Some(d) => r.eval(
                &format!("{name}-test"),
                n + i,
                &d.join("best.ir"),
                &data,
                Ask::default(),
            )?,
            None => None,
        };
        let check = match &done {
            Some(d) => check_unit(r, name, 2 * n + i, &d.join("best.ir"), &data)?,
            None => None,
        };
        let partial = r.eng.partial_dir("train", name, &key);
        let folder = done
            .clone()
            .or_else(|| partial.join("metrics.json").is_file().then_some(partial));
        let metrics: Option<Metrics> = folder
            .as_ref()
            .map(|f| read(&f.join("metrics.json")))
            .transpose()?;
        let ds = &r.m.data[&spec.data];
        entries.push(Entry {
            name: name.clone(),
            dataset: ds.path.clone().unwrap_or_else(|| ds.dataset.clone()),
            kind: ds.dataset.clone(),
            train: t,
            key,
            done,
            eval,
            metrics,
            folder,
            check,
        });
    }
    let reporting = r.eng.sel.shard.is_none()
        && match (&r.eng.sel.only, &r.eng.sel.from) {
            (Some(o), _) => o == "report",
            _ => true,
        };
    if !reporting {
        return Ok(());
    }
    let out = r.out_dir();
    let weights = weights_dir(&r.env.root, &r.m);
    let mut rows = Vec::new();
    let mut sums = Vec::new();
    for e in entries {
        let epochs_done = e.metrics.as_ref().map_or(0, |m| m.epochs.len());
        let planned = e.metrics.as_ref().map(|m| m.config.epochs);
        let val: Vec<f64> = e
            .metrics
            .iter()
            .flat_map(|m| &m.epochs)
            .map(|x| 100.0 * x.val_acc.unwrap_or(f64::NAN))
            .collect();
        let conv = e
            .done
            .as_ref()
            .and_then(|_| convergence(&val, z.flat_window, z.flat_tolerance));
        let (mut sha, mut test) = (None, None);
        if let (Some(dir), Some(ev)) = (&e.done, &e.eval) {
            let t = ev.clone();
            // The recorded test accuracy must be what `decomp eval` of the best model gives.
            let recorded = e
                .metrics
                .as_ref()
                .and_then(|m| m.test_top1)
                .unwrap_or(f64::NAN);
            if !recorded.is_finite() || (recorded - t.top1).abs() > 1e-9 {
                bail!(
                    "zoo run {}: its training run recorded test top-1 {recorded}, `decomp eval` of {} gives {}",
                    e.name,
                    dir.join("best.ir").display(),
                    t.top1
                );
            }
            r.gate_eval(&format!("zoo model {}", e.name), ev, t.class_names.len())?;
            let bytes = std::fs::read(dir.join("best.ir"))
                .with_context(|| format!("reading {}", dir.join("best.ir").display()))?;
            let dest = weights.join(format!("{}.ir", e.name));
            if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
                std::fs::create_dir_all(&weights)
                    .with_context(|| format!("creating {}", weights.display()))?;
                decomp_ir::write_atomic(&dest, &bytes)?;
            }
            let hex = r.eng.file_hash(&dest)?;
            sums.push(format!("{hex}  {}.ir", e.name));
            let published = Published {
                key: e.key.clone(),
                sha256: hex.clone(),
            };
            crate::engine::write_atomic(
                &weights.join(format!("{}.train.json", e.name)),
                &(serde_json::to_string_pretty(&published)? + "\n"),
            )?;
            let check = e
                .check
                .as_ref()
                .with_context(|| format!("zoo run {}: its check unit is missing", e.name))?;
            let c: ComposeReport = read(&check.join("compose.json"))?;
            let ds = &r.m.data[&r.m.models[&e.name].data];
            let record = ZooCheck {
                model: format!("{}.ir", e.name),
                sha256: hex.clone(),
                dataset: ds.dataset.clone(),
                dataset_path: ds.path.clone(),
                classes: CHECK_CLASSES.to_vec(),
                variant: CHECK_VARIANT.into(),
                positives: CHECK_POSITIVES,
                args: r.m.decompose.args.clone(),
                limit: CHECK_LIMIT,
                images: c.accuracy.n,
                composed_top1: c.accuracy.composed_top1,
                composed_top5: c.accuracy.composed_top5,
            };
            crate::engine::write_atomic(
                &weights.join(format!("{}.check.json", e.name)),
                &(serde_json::to_string_pretty(&record)? + "\n"),
            )?;
            sha = Some(hex);
            test = Some(t);
        }
        if let Some(f) = &e.folder {
            for file in ["metrics.json", "metrics.csv", "curves.svg"] {
                let text = std::fs::read_to_string(f.join(file))
                    .with_context(|| format!("reading {}", f.join(file).display()))?;
                write_report(&out.join(&e.name).join(file), &text)?;
            }
        }
        let status = match (&e.done, planned) {
            (Some(_), _) => "finished".to_string(),
            (None, Some(p)) => format!("in progress ({epochs_done}/{p} epochs)"),
            (None, None) => "not started".to_string(),
        };
        rows.push(Row {
            min_test_top1: z.min_test_top1.get(&e.kind).copied(),
            weights: e
                .done
                .as_ref()
                .map(|_| format!("{}/{}.ir", z.weights_dir, e.name)),
            name: e.name,
            dataset: e.dataset,
            arch: e.train.arch.clone(),
            recipe: e.train.recipe.clone(),
            train: e.train,
            status,
            epochs_done,
            epochs_planned: planned,
            metrics: e.metrics,
            test,
            convergence: conv,
            sha256: sha,
        });
    }
    if !sums.is_empty() {
        sums.sort_by(|a, b| a[66..].cmp(&b[66..]));
        crate::engine::write_atomic(&weights.join("SHA256SUMS"), &(sums.join("\n") + "\n"))?;
    }
    report(r, &z, &rows)
}

/// The paper's model accuracy (its Table 1) for a run's dataset and architecture.
fn paper_top1(dataset: &str, arch: &str) -> String {
    let d = if dataset.starts_with("cifar-10") || dataset == "cifar10" {
        "CIFAR-10"
    } else {
        "TinyImageNet"
    };
    PAPER_TABLE1
        .iter()
        .find(|p| p.0 == d && p.1 == arch)
        .map_or("-".into(), |p| format!("{} ({d})", p.2))
}

fn report(r: &Run, z: &ZooSpec, rows: &[Row]) -> Result<()> {
    let mut md = format!(
        "# {}\n\nGenerated by `cargo xtask run-experiment {}` (manifest `{}`). One resumable training unit per run \
         (`decomp train --resume` in its run folder; `--epochs-now N` trains N epochs per invocation, `--shard I/N` \
         splits the runs); test accuracy by `decomp eval` of the best-validation model, which must reproduce the \
         accuracy the training run recorded (checked). Converged = the validation curve is flat over the last {:.0}% of \
         the epochs: the best validation accuracy of those epochs exceeds the best before them by at most {} points \
         (gain; slope = least-squares slope of the window, points per epoch).\n\n",
        r.m.title,
        r.name,
        r.manifest,
        100.0 * z.flat_window,
        z.flat_tolerance
    );
    if !r.m.notes.trim().is_empty() {
        let _ = writeln!(md, "{}\n", r.m.notes.trim());
    }
    md.push_str("| run | data | arch | recipe | status | epochs | best epoch | best val % | test top-1 % | test top-5 % | the paper's model top-1 % | wall h | energy kWh (source) | device | converged (gain / slope) | weights |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut csv = String::from(
        "name,dataset,arch,recipe,status,epochs_done,epochs_planned,best_epoch,best_val_acc,test_top1,test_top5,wall_s,wall_s_to_best,energy_j,energy_source,device,converged,gain,slope,sha256\n",
    );
    for x in rows {
        let m = x.metrics.as_ref();
        let mf = |f: fn(&Metrics) -> Option<f64>| m.and_then(f);
        let (source, device) =
            m.map_or(("", ""), |m| (m.energy_source.as_str(), m.device.as_str()));
        let best_epoch = m.and_then(|m| m.best_epoch);
        let conv_s = x.convergence.map_or("-".to_string(), |c| {
            format!(
                "{} ({:+.2} / {:+.3})",
                if c.flat { "yes" } else { "**no**" },
                c.gain,
                c.slope
            )
        });
        let energy = match (m, mf(|m| m.energy_j)) {
            (_, Some(j)) => format!("{:.3} ({source})", j / 3.6e6),
            (Some(_), None) => format!("- ({source})"),
            (None, None) => "-".into(),
        };
        let opt = |v: Option<f64>| v.map_or("-".to_string(), fixed2);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {energy} | {} | {conv_s} | {} |",
            x.name,
            x.dataset,
            x.arch,
            x.recipe,
            x.status,
            x.epochs_done,
            x.epochs_planned.map_or("?".into(), |e| e.to_string()),
            best_epoch.map_or("-".into(), |e| e.to_string()),
            opt(mf(|m| m.best_val_acc).map(|a| 100.0 * a)),
            opt(x.test.as_ref().map(|t| t.top1)),
            opt(x.test.as_ref().map(|t| t.top5)),
            paper_top1(&x.dataset, &x.arch),
            m.map_or("-".into(), |m| format!("{:.2}", m.wall_s / 3600.0)),
            if m.is_some() { device } else { "-" },
            x.weights.as_ref().map_or("-".into(), |w| format!("`{w}`")),
        );
        let o = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            x.name,
            x.dataset,
            x.arch,
            x.recipe,
            x.status,
            x.epochs_done,
            x.epochs_planned.map_or(String::new(), |e| e.to_string()),
            best_epoch.map_or(String::new(), |e| e.to_string()),
            o(mf(|m| m.best_val_acc)),
            o(x.test.as_ref().map(|t| t.top1)),
            o(x.test.as_ref().map(|t| t.top5)),
            o(m.map(|m| m.wall_s)),
            o(mf(|m| m.wall_s_to_best)),
            o(mf(|m| m.energy_j)),
            source,
            device,
            x.convergence.map_or(String::new(), |c| c.flat.to_string()),
            o(x.convergence.map(|c| c.gain)),
            o(x.convergence.map(|c| c.slope)),
            x.sha256.as_deref().unwrap_or(""),
        );
    }
    if !z.min_test_top1.is_empty() {
        let bars: Vec<String> = z
            .min_test_top1
            .iter()
            .map(|(d, m)| format!("{m}% on {d}"))
            .collect();
        let below: Vec<String> = rows
            .iter()
            .filter_map(|x| {
                let (Some(min), Some(t)) = (x.min_test_top1, x.test.as_ref()) else {
                    return None;
                };
                (t.top1 < min).then(|| format!("`{}` ({:.2}%)", x.name, t.top1))
            })
            .collect();
        let _ = writeln!(
            md,
            "\nA real model scores at least {} (test top-1). {}",
            bars.join(", "),
            if below.is_empty() {
                "Every finished run does.".to_string()
            } else {
                format!("**Below it:** {}.", below.join(", "))
            }
        );
    }
    md.push_str(
        "\nPer run: `<run>/metrics.json` (every epoch, configuration, energy), `<run>/metrics.csv`, `<run>/curves.svg` \
         (loss and accuracy curves). Weights: `<weights folder>/<run>.ir` (a decomp model artifact, format version \
         in its header), checksums in `SHA256SUMS` beside them. The paper's model accuracies are on its own data \
         (CIFAR-10's original test set; Tiny ImageNet with 200 classes, chance 0.5%; ours: the 20-class subset, chance 5%).\n",
    );
    let out = r.out_dir();
    write_report(&out.join("report.md"), &md)?;
    write_report(&out.join("zoo.json"), &serde_json::to_string_pretty(rows)?)?;
    write_report(&out.join("zoo.csv"), &csv)?;
    write_report(
        &out.join("manifest.json"),
        &serde_json::to_string_pretty(&r.m)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_is_flat_when_its_last_fifth_adds_nothing() {
        // 10 epochs, window 2: the best of epochs 9-10 (80.3) over the best before (80.0).
        let v = [40.0, 60.0, 70.0, 75.0, 78.0, 79.0, 80.0, 79.5, 80.3, 80.1];
        let c = convergence(&v, 0.2, 0.5).expect("converged?");
        assert_eq!(c.window, 2);
        assert!((c.gain - 0.3).abs() < 1e-9 && c.flat, "{c:?}");
        assert!((c.slope + 0.2).abs() < 1e-9, "{c:?}");
        // Still climbing: +2 points in the last fifth.
        let v = [40.0, 60.0, 70.0, 75.0, 78.0, 79.0, 80.0, 80.5, 81.5, 82.5];
        let c = convergence(&v, 0.2, 0.5).expect("converged?");
        assert!(!c.flat && (c.gain - 2.0).abs() < 1e-9, "{c:?}");
        // Too short to tell, or no validation split.
        assert_eq!(convergence(&[50.0], 0.2, 0.5), None);
        assert_eq!(convergence(&[50.0, f64::NAN, 60.0], 0.2, 0.5), None);
    }
}
