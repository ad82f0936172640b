//! `cargo xtask run-experiment frontier` (issues 6 and 17): channel-level decomposition of the
//! pretrained CIFAR-10 ResNet-20 and ResNet-56 swept over the thresholds `tau` / `tau_neg`
//! and the compensation of removed channels, each point composed and evaluated on the test
//! split. Writes `results/frontier/` (Markdown, CSV, JSON and an SVG plot of the frontier).
//!
//! The points are data (`experiments/frontier.toml`). Units: per model the statistics are
//! computed once (`concern`: `decomp concern --granularity channel`), the first point's
//! `tangle` adds the unconcerned sample's and keeps them in `channel-rates.ccs`; every
//! further point's `tangle` unit only thresholds them (or selects to a budget) and extracts
//! the small modules, and a `compose` unit evaluates them (a second one on the whole test
//! split where asked). Finished units are reused; `--shard` splits the points.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use serde_json::{Value, json};

mod pairs;

use super::Run;
use super::format::{s, strings, with_interval};
use super::units::Ask;
use crate::engine::{Kind, read};
use crate::manifest::FrontierPoint;
use crate::stats::{Interval, Paired, Side};
use decomp_eval::report::{ChannelComposeReport, ChannelModuleReport, ModelEval};

/// Test images per evaluation when `--limit` is not given (CPU time: 2 cores shared).
const DEFAULT_LIMIT: usize = 2000;

/// Published numbers on other models (not reproduced here): (label, FLOPs % low, high,
/// top-1 change in points).
const PUBLISHED: &[(&str, f64, f64, f64)] = &[
    (
        "Pan & Rajan element masks (paper, R20, no BN)",
        100.0,
        100.0,
        -0.1,
    ),
    (
        "Pan & Rajan element masks (paper, R56, no BN)",
        100.0,
        100.0,
        -2.2,
    ),
    (
        "CNNSplitter / GradSplitter (published, CIFAR-10)",
        43.0,
        57.0,
        -2.9,
    ),
    (
        "MwT, training-time (published; % of kernels)",
        14.6,
        14.6,
        -1.1,
    ),
];

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A threshold as written on the command line (thresholds are f32 in the modules).
fn round2(v: &Value) -> String {
    format!("{}", (f(v) * 100.0).round() / 100.0)
}

/// The change a row is drawn at: on the whole test split where the point was composed
/// there (issue 17: every figure on all 10,000 images), else on the first `n` images.
fn plotted_delta(r: &Value) -> f64 {
    let w = &r["whole_split"];
    if w.is_null() {
        f(&r["composed_top1"]) - f(&r["model_top1"])
    } else {
        f(&w["composed_top1"]) - f(&w["model_top1"])
    }
}

/// How row `r`'s channels were chosen, for the whole-split table: its FLOPs budget and
/// reconstruction, or its rate thresholds and compensation.
fn selection_label(r: &Value) -> String {
    if r["budget"].is_null() {
        format!(
            "{} tau {}, tau_neg {}, compensation {}",
            r["rate"].as_str().unwrap_or("?"),
            round2(&r["tau"]),
            round2(&r["tau_neg"]),
            r["compensation"].as_str().unwrap_or("?"),
        )
    } else {
        format!("budget {}, {}", round2(&r["budget"]), rec_label(r))
    }
}

/// The training budget of a trained row (epochs of the model's training cost for all its
/// modules together); `None` for an untrained row.
fn train_budget(r: &Value) -> Option<f64> {
    r["train"]["budget"].as_f64()
}

/// Lowest change drawn; points below it sit on the bottom edge as open circles.
const Y_FLOOR: f64 = -30.0;

/// The `rec.` column of row `r`: reconstruction, its passes, the head fit and module
/// training (both training).
fn rec_label(r: &Value) -> String {
    let trained = if r["train"].is_null() {
        String::new()
    } else {
        // Which module each module's hold-out checks kept (rows written before the checks
        // existed have no `kept`).
        let kept = r["train"]["kept"].as_array().map_or(String::new(), |k| {
            let count = |what: &str| k.iter().filter(|v| v.as_str() == Some(what)).count();
            format!(
                "; kept: {} end, {} earlier check, {} reconstruction",
                count("end"),
                count("check"),
                count("reconstruction")
            )
        });
        format!(
            " + **module training ({:.2} model epochs{kept})**",
            f(&r["train"]["model_epochs"])
        )
    };
    let base = match (
        r["reconstruct"].as_bool(),
        r["relu_passes"].as_u64().unwrap_or(1),
        r["fit_head"].as_bool(),
    ) {
        (Some(true), p, head) => format!(
            "yes{}{}",
            if p > 1 {
                format!(", {p} passes (ReLU-aware)")
            } else {
                String::new()
            },
            if head == Some(true) {
                " + **head fit (training)**"
            } else {
                ""
            }
        ),
        _ => "no".into(),
    };
    base + &trained
}

pub fn frontier(r: &Run) -> Result<()> {
    let limit = r.env.limit.unwrap_or(DEFAULT_LIMIT);
    let mut rows: Vec<Value> = Vec::new();
    // Table 2's pairs per model from its trained points (with `[tma]`).
    let mut pair_reports: Vec<Value> = Vec::new();
    let mut index = 0;
    let mut complete = true;
    for fm in &r.m.frontier {
        let spec = r.m.models.get(&fm.model).with_context(|| {
            format!(
                "[[frontier]] names model {:?}, which has no [models.{0}]",
                fm.model
            )
        })?;
        let arch = spec.arch.clone().unwrap_or_else(|| fm.model.clone());
        let (weights, wkey) =
            r.resolve_weights(spec.weights.as_deref().with_context(|| {
                format!("[models.{}]: the frontier needs `weights`", fm.model)
            })?)?;
        let data = r.spec_data(&spec.data)?;
        let mut model_args = strings(&["--weights", &weights, "--arch", &arch]);
        model_args.extend(data.args.iter().cloned());
        model_args.extend(strings(&["--device", &r.eng.device]));
        let first = fm.points.first().context("[[frontier]] without points")?;
        if !is_t0(first) {
            bail!(
                "[[frontier]] {}: the first point must be tau = tau_neg = 0 with compensation off (its tangling writes the statistics the other points threshold)",
                fm.model
            );
        }
        // `[decompose] args` (METHOD.md knobs such as `--positive-filter`) apply to the
        // channel statistics.
        let knobs = &r.m.decompose.args;
        let model_key = json!({ "weights": wkey, "arch": arch, "data": data.key, "knobs": knobs });
        let concern = r
            .eng
            .unit("concern", Kind::PerUnit, index, &arch, &model_key, |work| {
                let mut a = strings(&[
                    "concern",
                    "--granularity",
                    "channel",
                    "--out",
                    &s(&work.join("concern.ccs")),
                ]);
                a.extend(model_args.clone());
                a.extend(knobs.iter().cloned());
                r.eng.decomp(&a).map(drop)
            })?;
        index += 1;
        // The t0 point's statistics file and that point's key.
        let mut rates: Option<(PathBuf, Value)> = None;
        let mut trained_points: Vec<pairs::TrainedPoint> = Vec::new();
        // The model as an import unit, once per model: its per-image evaluation of the whole
        // test split (the whole-split intervals) and Table 2's element modules (`[tma]`).
        let whole_split = fm.whole_split || fm.points.iter().any(|p| p.whole_split);
        let model = if whole_split || r.m.tma.is_some() {
            r.model(&fm.model)?
        } else {
            None
        };
        let model_eval = match (&model, whole_split) {
            (Some(m), true) => {
                let ask = Ask {
                    per_image: true,
                    all_images: true,
                    ..Ask::default()
                };
                r.eval(&format!("{arch}-test-per-image"), 0, &m.ir, &data, ask)?
            }
            _ => None,
        };
        for pt in &fm.points {
            let idx = index;
            index += 3;
            let name = point_name(pt);
            // The first point thresholds the concern statistics (and adds the unconcerned
            // sample's, kept as channel-rates.ccs); every other point reads those.
            // A point is keyed by the key of the unit whose statistics it reads, not by the
            // file's bytes: the statistics record their own run time, so a recomputed (or
            // another machine's) copy would otherwise orphan every trained unit after it.
            let source = if is_t0(pt) {
                concern
                    .as_ref()
                    .map(|c| (c.join("concern.ccs"), json!("concern")))
            } else {
                rates.clone()
            };
            let Some((source, source_key)) = source else {
                complete = false;
                continue;
            };
            let key = json!({ "model": model_key, "source": source_key, "point": pt });
            let unit_name = format!("{arch}-{name}");
            // A point's tangling, of every class at once or (`class`) of one.
            let tangle = |class: Option<usize>, idx: usize| -> Result<Option<PathBuf>> {
                let (name, key) = match class {
                    None => (unit_name.clone(), key.clone()),
                    Some(c) => {
                        let mut k = key.clone();
                        k["class"] = json!(c);
                        (format!("{unit_name}-class{c:03}"), k)
                    }
                };
                r.eng
                    .unit("tangle", Kind::PerUnit, idx, &name, &key, |work| {
                        let mut a = strings(&[
                            "tangle",
                            "--granularity",
                            "channel",
                            "--concern",
                            &s(&source),
                        ]);
                        a.extend(strings(&["--compensation", &pt.compensation]));
                        match pt.budget {
                            Some(b) => a.extend(strings(&["--budget", &b.to_string()])),
                            None => a.extend(strings(&[
                                "--tau",
                                &pt.tau.to_string(),
                                "--tau-neg",
                                &pt.tau_neg.to_string(),
                                "--rate",
                                &pt.rate,
                            ])),
                        }
                        if pt.reconstruct {
                            a.extend(strings(&[
                                "--reconstruct",
                                "--relu-passes",
                                &pt.relu_passes.to_string(),
                            ]));
                        }
                        if pt.fit_head {
                            a.push("--fit-head".into());
                        }
                        if let Some(t) = &pt.train {
                            a.push("--train".into());
                            if let Some(b) = t.budget {
                                a.extend(strings(&["--train-budget", &b.to_string()]));
                            }
                            if let Some(lr) = t.lr {
                                a.extend(strings(&["--train-lr", &lr.to_string()]));
                            }
                            if let Some(k) = t.checks {
                                a.extend(strings(&["--train-checks", &k.to_string()]));
                            }
                        }
                        if let Some(c) = class {
                            a.extend(strings(&["--classes", &c.to_string()]));
                        }
                        a.extend(strings(&["--out-dir", &s(work)]));
                        a.extend(model_args.clone());
                        r.eng.decomp(&a).map(drop)
                    })
            };
            // Module training takes minutes per module: one unit per class, so that a run
            // stopped (or sharded) between modules keeps the finished ones.
            let pdirs: Vec<PathBuf> = if pt.train.is_some() {
                let mut dirs = Vec::new();
                for c in 0..data.num_classes {
                    if let Some(d) = tangle(Some(c), idx + c)? {
                        dirs.push(d);
                    }
                }
                if dirs.len() < data.num_classes {
                    complete = false;
                    continue;
                }
                dirs
            } else {
                match tangle(None, idx)? {
                    Some(d) => vec![d],
                    None => {
                        complete = false;
                        continue;
                    }
                }
            };
            let pdir = pdirs[0].clone();
            if is_t0(pt) {
                rates = Some((pdir.join("channel-rates.ccs"), key.clone()));
            }
            let mut modules: Vec<PathBuf> = Vec::new();
            for d in &pdirs {
                modules.extend(
                    std::fs::read_dir(d)
                        .with_context(|| format!("listing {}", d.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|e| e == "mod")),
                );
            }
            modules.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
            // Composes the point's modules on the first `limit` test images (all without,
            // keeping every module's margins for the paired interval against the model).
            let compose = |what: &str,
                           idx: usize,
                           limit: Option<usize>|
             -> Result<Option<(ChannelComposeReport, PathBuf)>> {
                let mut key = json!({ "modules": r.hashes(&modules)?, "data": data.key, "reference": wkey, "limit": limit });
                if limit.is_none() {
                    key["margins"] = json!(true);
                }
                let dir = r.eng.unit(
                    "compose",
                    Kind::PerUnit,
                    idx,
                    &format!("{unit_name}-{what}"),
                    &key,
                    |work| {
                        let mut a = vec!["compose".to_string()];
                        a.extend(modules.iter().map(|p| s(p)));
                        a.extend(data.args.iter().cloned());
                        a.extend(strings(&[
                            "--split",
                            "test",
                            "--device",
                            &r.eng.device,
                            "--reference-model",
                            &weights,
                            "--out",
                            &s(&work.join("compose.json")),
                        ]));
                        match limit {
                            Some(l) => a.extend(["--limit".into(), l.to_string()]),
                            None => {
                                a.extend(["--save-margins".into(), s(&work.join("margins.json"))])
                            }
                        }
                        r.eng.decomp(&a).map(drop)
                    },
                )?;
                dir.map(|d| Ok((read(&d.join("compose.json"))?, d)))
                    .transpose()
            };
            let v = compose("first", idx + 1, Some(limit))?.map(|(v, _)| v);
            let pt_whole = pt.whole_split || fm.whole_split;
            let whole = if pt_whole {
                compose("whole", idx + 2, None)?
            } else {
                None
            };
            let Some(v) = v else {
                complete = false;
                continue;
            };
            let whole = match (pt_whole, whole) {
                (false, _) => Value::Null,
                (true, Some((w, dir))) => {
                    let Some(ci) =
                        whole_interval(r, &arch, &unit_name, &w, &dir, model_eval.as_ref())?
                    else {
                        complete = false;
                        continue;
                    };
                    json!({
                        "n": w.accuracy.n,
                        "model_top1": w.accuracy.model_top1,
                        "composed_top1": w.accuracy.composed_top1,
                        "delta_ci": ci,
                    })
                }
                (true, None) => {
                    complete = false;
                    continue;
                }
            };
            // Module training's totals over the point's modules (issue 17).
            let trained: Vec<_> = v
                .per_module
                .iter()
                .filter_map(|m| m.training.as_ref())
                .collect();
            let train = match (&pt.train, trained.len() == v.per_module.len()) {
                (None, _) => Value::Null,
                (Some(_), false) => bail!(
                    "frontier point {unit_name}: asked for training, but not every module records it"
                ),
                (Some(_), true) => json!({
                    "budget": trained[0].config.budget_epochs,
                    "lr": trained[0].config.lr,
                    "model_epochs": trained.iter().map(|t| t.model_epochs).sum::<f64>(),
                    "flops": trained.iter().map(|t| t.flops).sum::<f64>(),
                    "seconds": trained.iter().map(|t| t.seconds).sum::<f64>(),
                    "energy_j": trained
                        .iter()
                        .map(|t| t.energy_j)
                        .sum::<Option<f64>>(),
                    "images_per_module": trained.iter().map(|t| t.images).sum::<usize>() / trained.len(),
                    "checks": trained[0].config.checks,
                    // Per module, what its hold-out checks kept.
                    "kept": trained
                        .iter()
                        .map(|t| match t.kept_step {
                            0 => "reconstruction",
                            k if k == t.steps => "end",
                            _ => "check",
                        })
                        .collect::<Vec<_>>(),
                }),
            };
            if pt.train.is_some() {
                trained_points.push(pairs::TrainedPoint {
                    name: unit_name.clone(),
                    label: format!(
                        "trained, {:.0}% FLOPs budget, {:.1} model epochs",
                        100.0 * pt.budget.map_or(f64::NAN, f64::from),
                        f(&train["model_epochs"])
                    ),
                    flops_percent: v.mean_flops_percent,
                    modules: modules.clone(),
                });
            }
            rows.push(json!({
                "model": arch,
                "tau": pt.tau,
                "tau_neg": pt.tau_neg,
                "compensation": pt.compensation,
                "rate": pt.rate,
                "budget": pt.budget,
                "reconstruct": pt.reconstruct,
                "relu_passes": if pt.reconstruct { Some(pt.relu_passes) } else { None },
                "fit_head": pt.fit_head,
                "train": train,
                "n": v.accuracy.n,
                "model_top1": v.accuracy.model_top1,
                "composed_top1": v.accuracy.composed_top1,
                "composed_top5": v.accuracy.composed_top5,
                "model_top5": v.accuracy.model_top5,
                "mean_flops_percent": v.mean_flops_percent,
                "mean_params_percent": v.mean_params_percent,
                "mean_bytes": v.mean_bytes,
                "model_bytes": v.model_bytes,
                "mean_time_ratio": v.mean_time_ratio,
                "separate_flops": v.separate_flops,
                "union_flops": v.union_flops,
                "model_flops": v.model_cost.flops,
                "compose_seconds": v.seconds,
                "per_module": in_run_folder(v.per_module),
                "whole_split": whole,
                "run": if pdirs.len() == 1 {
                    json!(pdir.display().to_string())
                } else {
                    json!(pdirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>())
                },
            }));
        }
        if r.m.tma.is_some() && !trained_points.is_empty() {
            let got = match &model {
                Some(m) => pairs::reuse_pairs(r, m, &data, &trained_points)?,
                None => None,
            };
            match got {
                Some(p) => pair_reports.push(p),
                None => complete = false,
            }
        }
    }
    if !complete || !r.reporting()? {
        return Ok(());
    }
    let out = r.out_dir();
    crate::engine::write_report(
        &out.join("frontier.json"),
        &serde_json::to_string_pretty(&rows)?,
    )?;
    let mut csv = String::from(
        "model,rate,tau,tau_neg,budget,reconstruct,relu_passes,fit_head,compensation,n,model_top1,composed_top1,delta_top1,composed_top5,mean_flops_percent,mean_params_percent,mean_bytes,model_bytes,mean_time_ratio,separate_flops,union_flops,model_flops\n",
    );
    let mut md = String::from(
        "# Size-vs-accuracy frontier of channel-level modules (issues 6 and 17)\n\n\
         Generated by `cargo xtask run-experiment frontier`: pretrained CIFAR-10 ResNets (akamaster, BatchNorm,\n\
         option-A shortcuts) decomposed at channel granularity, 10 modules composed by voting on the CIFAR-10\n\
         test split in `shared/datasets` (JPEG rebuild; first `n` images, the same for model and modules). A channel\n\
         is kept when its rate on the class's 1000 positives is >= tau: `mean-positions` = fraction of positions\n\
         > 0, averaged over images; `deviation` = standard deviation of the post-ReLU output over positions and\n\
         images, relative to the largest at its site. Tangling brings back channels whose rate on the 1:1\n\
         unconcerned sample is >= tau_neg (2 = off). Residual streams keep the union over their sites.\n\
         Compensation `sample`: a removed channel outputs its mean post-ReLU activation on the module's\n\
         positives + unconcerned sample, folded exactly into the next layer; `off`: zero.\n\
         Rate `importance` (`--budget B`): instead of thresholds, channels are removed in 4 rounds by least\n\
         first-order importance per FLOP saved (importance = squared change of the module's margin `mine - other`\n\
         when the channel is held at its compensation value, averaged over 256 positives + 256 unconcerned\n\
         training images; one backward pass per batch) until the module has at most B of the model's FLOPs\n\
         (the bias maps of removed inputs come on top). `rec. = yes`: every convolution feeding a ReLU is then\n\
         refitted in graph order by ridge least squares so that the pruned module reproduces the model's own\n\
         pre-activations of its kept channels on those images (closed form, no labels, no gradient steps; the\n\
         binary head is the model's, unchanged); `N passes (ReLU-aware)`: after the first solve, each further pass\n\
         replaces the target by `min(prediction, 0)` where the model's pre-activation is <= 0 (its ReLU outputs 0\n\
         for any such value) and solves again. `head fit (training)`: on top of that the module's binary head\n\
         is fitted (ridge least squares, same images) so that its margin reproduces the model's (issue 6 item 5,\n\
         training, reported separately), and `module training` rows train every weight (see below).\n\
         FLOPs / parameters / bytes / time are per module relative to the full model (time: forward passes\n\
         over the test images, measured interleaved with the full model in the same run).\n\n\
         `10 modules / model`: the FLOPs of composing all modules (one pass each) over one forward of the model.\n\
         `module training`: every module's weights trained after reconstruction by distilling the model's margin\n\
         (issue 17; `decomp tangle --train`), its cost in epochs of the model's own training (3 x model FLOPs per\n\
         training image), summed over the 10 modules; the pretrained models trained 200 epochs (akamaster's recipe).\n\n\
         | model | n | rate | tau / budget | tau_neg | comp. | rec. | model top-1 | composed top-1 | Δ top-1 | top-5 | mean FLOPs % | mean params % | mean bytes | model bytes | time ratio | union / separate FLOPs | 10 modules / model |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let d = f(&r["composed_top1"]) - f(&r["model_top1"]);
        let uf = f(&r["union_flops"]) / f(&r["separate_flops"]);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:+.2} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            r["model"].as_str().unwrap_or(""),
            r["n"],
            r["rate"].as_str().unwrap_or(""),
            if r["budget"].is_null() {
                round2(&r["tau"])
            } else {
                round2(&r["budget"])
            },
            if r["budget"].is_null() {
                round2(&r["tau_neg"])
            } else {
                "–".into()
            },
            r["compensation"].as_str().unwrap_or(""),
            rec_label(r),
            f(&r["model_top1"]),
            f(&r["composed_top1"]),
            d,
            f(&r["composed_top5"]),
            f(&r["mean_flops_percent"]),
            f(&r["mean_params_percent"]),
            f(&r["mean_bytes"]),
            f(&r["model_bytes"]),
            f(&r["mean_time_ratio"]),
            uf,
            f(&r["separate_flops"]) / f(&r["model_flops"]),
        ));
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{:.4},{},{},{},{},{},{},{},{},{}\n",
            r["model"].as_str().unwrap_or(""),
            r["rate"].as_str().unwrap_or(""),
            round2(&r["tau"]),
            round2(&r["tau_neg"]),
            if r["budget"].is_null() {
                String::new()
            } else {
                round2(&r["budget"])
            },
            r["reconstruct"].as_bool() == Some(true),
            r["relu_passes"]
                .as_u64()
                .map_or(String::new(), |p| p.to_string()),
            r["fit_head"].as_bool() == Some(true),
            r["compensation"].as_str().unwrap_or(""),
            r["n"],
            r["model_top1"],
            r["composed_top1"],
            d,
            r["composed_top5"],
            r["mean_flops_percent"],
            r["mean_params_percent"],
            r["mean_bytes"],
            r["model_bytes"],
            r["mean_time_ratio"],
            r["separate_flops"],
            r["union_flops"],
            r["model_flops"],
        ));
    }
    md.push_str(
        "\n## Whole test split\n\nThe same modules composed on all test images, against the estimate from the first `n`; the interval is a\n\
         paired bootstrap over the test images (the composition's vote against the model's own evaluation, image by\n\
         image; `[bootstrap]` resamples and seed):\n\n\
         | model | selection | mean FLOPs % | n | model top-1 | composed top-1 | Δ top-1 [95% CI] | Δ on the first n |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| !r["whole_split"].is_null()) {
        let w = &r["whole_split"];
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} | {:.2} | {:.2} | {} | {:+.2} (n = {}) |\n",
            r["model"].as_str().unwrap_or("?"),
            selection_label(r),
            f(&r["mean_flops_percent"]),
            w["n"],
            f(&w["model_top1"]),
            f(&w["composed_top1"]),
            with_interval(
                f(&w["composed_top1"]) - f(&w["model_top1"]),
                Some(&Interval {
                    diff: f(&w["delta_ci"]["diff"]),
                    lo: f(&w["delta_ci"]["lo"]),
                    hi: f(&w["delta_ci"]["hi"]),
                }),
            ),
            f(&r["composed_top1"]) - f(&r["model_top1"]),
            r["n"],
        ));
    }
    md.push_str(
        "\n`union / separate FLOPs`: running the 10 modules as one pass over the union of their channels (shared up\n\
         to the first mask site, one branch per module after it, since their channel sets and constants differ)\n\
         over running each small module separately; above 1 means separate passes are cheaper, which is what\n\
         `decomp compose` does.\n\n## Published points on the plot (different models; not reproduced here)\n\n\
         | method | module FLOPs % | top-1 change |\n|---|---|---|\n",
    );
    for (label, lo, hi, d) in PUBLISHED {
        let x = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}-{hi}")
        };
        md.push_str(&format!("| {label} | {x} | {d:+} |\n"));
    }
    md.push_str(&format!("\nPlot: `frontier.svg` (y = composed top-1 minus the model's own top-1 on the same images, on the whole test\nsplit where the point was composed there (the table above), else on the first `n`, so that published losses\non other models share the axis; points below {Y_FLOOR} are drawn as open circles on the bottom edge; one\njoined curve per training budget).\n"));
    for p in &pair_reports {
        md.push_str(&pairs::markdown(p));
    }
    if !pair_reports.is_empty() {
        crate::engine::write_report(
            &out.join("pairs.json"),
            &serde_json::to_string_pretty(&pair_reports)?,
        )?;
    }
    crate::engine::write_report(&out.join("frontier.md"), &md)?;
    crate::engine::write_report(&out.join("frontier.csv"), &csv)?;
    plot(&out.join("frontier.svg"), &rows)?;
    Ok(())
}

/// The 95% paired bootstrap interval of a point's composed top-1 minus the model's on the
/// whole test split: the vote of the point's saved margins (`dir`, its whole-split compose
/// unit) against the model's own evaluation, image by image, each checked against the
/// compose report's accuracy. `None` while a unit (`eval` among them) is unfinished.
fn whole_interval(
    r: &Run,
    arch: &str,
    unit_name: &str,
    w: &ChannelComposeReport,
    dir: &Path,
    eval: Option<&ModelEval>,
) -> Result<Option<Interval>> {
    let Some(eval) = eval else {
        return Ok(None);
    };
    let pick: Vec<String> = (0..w.per_module.len()).map(|i| format!("0:{i}")).collect();
    let margins = dir.join("margins.json");
    let Some(vote) = r.vote_per_image(
        &format!("{unit_name}-whole"),
        std::slice::from_ref(&margins),
        &pick,
    )?
    else {
        return Ok(None);
    };
    let composed_top1 = w.accuracy.composed_top1;
    let Some(model_top1) = w.accuracy.model_top1 else {
        bail!(
            "{unit_name}: the whole-split composition has no model accuracy (no --reference-model?)"
        );
    };
    let bs = r.m.bootstrap.unwrap_or_default();
    let ci = Paired::default().add(
        1,
        &Side {
            what: format!("{arch}'s own evaluation of the test split"),
            per_image: eval.per_image.as_ref(),
            reported: model_top1,
        },
        &Side {
            what: format!("the vote of {unit_name}'s saved margins"),
            per_image: vote.per_image.as_ref(),
            reported: composed_top1,
        },
        bs.resamples,
        bs.seed,
    )?;
    Ok(Some(ci))
}

/// The `tau = tau_neg = 0`, compensation `off` point: the element method's "keep if ever
/// active" at channel granularity, whose tangling adds the unconcerned statistics.
fn is_t0(pt: &FrontierPoint) -> bool {
    pt.budget.is_none() && pt.tau == 0.0 && pt.tau_neg == 0.0 && pt.compensation == "off"
}

/// A point's name in unit folders (as the run folders were named before).
fn point_name(pt: &FrontierPoint) -> String {
    if is_t0(pt) {
        return "t0".into();
    }
    match pt.budget {
        Some(b) => format!(
            "budget{b}-{}{}{}{}{}",
            pt.compensation,
            if pt.reconstruct { "-reconstruct" } else { "" },
            if pt.reconstruct && pt.relu_passes > 1 {
                format!("-relu{}", pt.relu_passes)
            } else {
                String::new()
            },
            if pt.fit_head { "-fithead" } else { "" },
            match &pt.train {
                None => String::new(),
                Some(t) => match t.budget {
                    Some(e) => format!("-trained{e}ep"),
                    None => "-trained".into(),
                },
            }
        ),
        None => format!(
            "{}-tau{}-neg{}-{}",
            pt.rate, pt.tau, pt.tau_neg, pt.compensation
        ),
    }
}

/// The marker of point kind `k` (see `plot`) at `at`, on the chart and in the legend (a
/// macro: the two need different coordinate types). Published points are gray triangles.
macro_rules! marker {
    ($k:expr, $c:expr, $at:expr) => {
        match $k {
            0 => Circle::new($at, 5, $c.filled()).into_dyn(),
            1 => Cross::new($at, 6, $c.stroke_width(3)).into_dyn(),
            3 => TriangleMarker::new($at, 7, $c.filled()).into_dyn(),
            4 => TriangleMarker::new($at, 8, $c.stroke_width(2)).into_dyn(),
            _ => Circle::new($at, 6, $c.stroke_width(2)).into_dyn(),
        }
    };
}

/// The filled square of a trained curve at a larger budget (kind 6 in `plot`), on the chart
/// and in the legend (a macro for the same reason as `marker!`).
macro_rules! square {
    ($at:expr, $c:expr) => {
        EmptyElement::at($at) + Rectangle::new([(-5, -5), (5, 5)], $c.filled())
    };
}

fn plot(path: &Path, rows: &[Value]) -> Result<()> {
    let mut svg = String::new();
    {
        // The legend has its own panel right of the chart, so it never covers a point.
        let root = SVGBackend::with_string(&mut svg, (1200, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (root, panel) = root.split_horizontally(800);
        let mut legend: Vec<(String, usize, RGBColor)> = Vec::new();
        let ys: Vec<f64> = rows
            .iter()
            .map(plotted_delta)
            .filter(|v| v.is_finite())
            .collect();
        let lo = ys
            .iter()
            .copied()
            .fold(-4.0f64, f64::min)
            .floor()
            .max(Y_FLOOR)
            - 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Channel modules: composed top-1 change vs module FLOPs (CIFAR-10)",
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0f64..105.0, lo..1.0f64)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("mean module FLOPs, % of the model")
            .y_desc("composed top-1 - model top-1 (points)")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
        // Kinds of the untrained rows: 0 rate thresholds, 1 importance budget (+ least
        // squares), 2 with head fit, 3 budget + ReLU-aware least squares. Trained rows (issue
        // 17) form one series per training budget: 4 the smallest in the rows, 6 any larger.
        let kind = |r: &Value| match (
            r["budget"].is_null(),
            r["fit_head"].as_bool(),
            r["relu_passes"].as_u64().unwrap_or(1) > 1,
        ) {
            (true, _, _) => 0,
            (false, Some(true), _) => 2,
            (false, _, true) => 3,
            (false, _, false) => 1,
        };
        let mut budgets: Vec<f64> = rows.iter().filter_map(train_budget).collect();
        budgets.sort_by(f64::total_cmp);
        budgets.dedup();
        let mut series: Vec<(&str, usize, Option<f64>)> = Vec::new();
        for k in [0, 1, 3, 2] {
            series.extend(["resnet20", "resnet56"].map(|a| (a, k, None)));
        }
        for (j, b) in budgets.iter().enumerate() {
            let k = if j == 0 { 4 } else { 6 };
            series.extend(["resnet20", "resnet56"].map(|a| (a, k, Some(*b))));
        }
        for (i, (arch, k, budget)) in series.into_iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| {
                    // A trained series holds its budget's rows; an untrained one its kind's.
                    r["model"] == arch
                        && train_budget(r) == budget
                        && (budget.is_some() || kind(r) == k)
                })
                .map(|r| (f(&r["mean_flops_percent"]), plotted_delta(r)))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.is_empty() {
                continue;
            }
            let c = colors[i % 2];
            let what = match budget {
                Some(b) => {
                    format!("the same + module training, {b} model epochs for the 10 (TRAINING)")
                }
                None => [
                    "rate thresholds",
                    "importance budget + least squares",
                    "budget + least squares + head fit (TRAINING)",
                    "importance budget + ReLU-aware least squares",
                ][k]
                    .to_string(),
            };
            let drawn = pts.iter().filter(|p| p.1 >= Y_FLOOR);
            if k == 6 {
                chart.draw_series(drawn.map(|&at| square!(at, c)))
            } else {
                chart.draw_series(drawn.map(
                    move |&(x, y)| -> DynElement<'static, SVGBackend, (f64, f64)> {
                        marker!(k, c, (x, y))
                    },
                ))
            }
            .map_err(|e| anyhow!("{e}"))?;
            if budget.is_some() {
                // A trained curve: joined in FLOPs order.
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().copied().filter(|p| p.1 >= Y_FLOOR),
                        c.stroke_width(1),
                    ))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            legend.push((format!("{arch}: {what}"), k, c));
            chart
                .draw_series(
                    pts.iter()
                        .filter(|p| p.1 < Y_FLOOR)
                        .map(|&(x, _)| Circle::new((x, Y_FLOOR - 0.5), 5, c.stroke_width(2))),
                )
                .map_err(|e| anyhow!("{e}"))?;
        }
        let gray = RGBColor(90, 90, 90);
        for (label, lo_x, hi_x, d) in PUBLISHED {
            if lo_x != hi_x {
                chart
                    .draw_series(LineSeries::new(
                        [(*lo_x, *d), (*hi_x, *d)],
                        gray.stroke_width(2),
                    ))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            let x = (lo_x + hi_x) / 2.0;
            chart
                .draw_series(std::iter::once(TriangleMarker::new(
                    (x, *d),
                    7,
                    gray.filled(),
                )))
                .map_err(|e| anyhow!("{e}"))?;
            legend.push((label.to_string(), 5, gray));
        }
        // Measured here (colour = model) above, published (gray triangles) below.
        let text = |t: &str, at: (i32, i32), size: u32| {
            panel
                .draw(&Text::new(t, at, ("sans-serif", size).into_font()))
                .map_err(|e| anyhow!("{e}"))
        };
        let mut y = 40;
        text("this work, measured:", (8, y - 24), 14)?;
        for (i, (label, k, c)) in legend.iter().enumerate() {
            if *k == 5 && (i == 0 || legend[i - 1].1 != 5) {
                y += 14;
                text("published, other models (not reproduced):", (8, y - 4), 14)?;
                y += 20;
            }
            let at = (18, y);
            if *k == 5 {
                panel.draw(&TriangleMarker::new(at, 6, c.filled()))
            } else if *k == 6 {
                panel.draw(&square!(at, *c))
            } else {
                panel.draw(&marker!(*k, *c, at))
            }
            .map_err(|e| anyhow!("{e}"))?;
            text(label, (32, y - 7), 12)?;
            y += 20;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
        panel.present().map_err(|e| anyhow!("{e}"))?;
    }
    crate::engine::write_atomic(path, &svg)
}

/// The modules of a row as its report keeps them: each `path` relative to the row's `run`
/// folder (the tangle unit the modules were listed from), so that the committed report holds
/// no path of this machine.
fn in_run_folder(modules: Vec<ChannelModuleReport>) -> Vec<ChannelModuleReport> {
    modules
        .into_iter()
        .map(|mut m| {
            if let Some(name) = Path::new(&m.path).file_name() {
                m.path = name.to_string_lossy().into_owned();
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        model: &str,
        flops: f64,
        delta_first: f64,
        whole: Option<f64>,
        budget: Option<f64>,
    ) -> Value {
        json!({
            "model": model,
            "budget": 0.2,
            "fit_head": false,
            "relu_passes": 3,
            "mean_flops_percent": flops,
            "model_top1": 80.0,
            "composed_top1": 80.0 + delta_first,
            "whole_split": whole.map(|d| json!({ "n": 10000, "model_top1": 81.0, "composed_top1": 81.0 + d })),
            "train": budget.map(|b| json!({ "budget": b })),
        })
    }

    #[test]
    fn a_point_is_drawn_at_its_whole_split_change_where_it_has_one() {
        assert_eq!(
            plotted_delta(&row("resnet20", 40.0, -3.0, None, None)),
            -3.0
        );
        assert_eq!(
            plotted_delta(&row("resnet20", 40.0, -3.0, Some(-2.5), None)),
            -2.5
        );
    }

    #[test]
    fn the_whole_split_table_names_thresholds_or_budget() {
        let threshold = json!({
            "budget": null, "rate": "deviation", "tau": 0.2, "tau_neg": 2.0,
            "compensation": "sample", "reconstruct": false,
        });
        assert_eq!(
            selection_label(&threshold),
            "deviation tau 0.2, tau_neg 2, compensation sample"
        );
        let budget = json!({ "budget": 0.4, "reconstruct": false });
        assert_eq!(
            selection_label(&budget),
            format!("budget 0.4, {}", rec_label(&budget))
        );
    }

    /// A trained row says what its modules' hold-out checks kept; a row written before the
    /// checks existed (no `kept`) says only its cost.
    #[test]
    fn a_trained_row_says_what_its_checks_kept() {
        let mut r = json!({
            "budget": 0.4, "reconstruct": true, "relu_passes": 3, "fit_head": false,
            "train": { "model_epochs": 2.0, "kept": ["end", "check", "reconstruction", "end"] },
        });
        let l = rec_label(&r);
        assert!(
            l.contains(
                "module training (2.00 model epochs; kept: 2 end, 1 earlier check, 1 reconstruction)"
            ),
            "{l}"
        );
        r["train"].as_object_mut().unwrap().remove("kept");
        let l = rec_label(&r);
        assert!(l.contains("module training (2.00 model epochs)**"), "{l}");
    }

    #[test]
    fn each_training_budget_gets_its_own_labelled_curve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frontier.svg");
        let rows = vec![
            row("resnet20", 40.0, -6.0, Some(-6.5), None),
            row("resnet20", 40.0, -1.0, Some(-0.5), Some(2.0)),
            row("resnet20", 20.0, -2.0, Some(-2.2), Some(2.0)),
            row("resnet20", 20.0, -1.5, Some(-1.6), Some(10.0)),
        ];
        plot(&path, &rows).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("module training, 2 model epochs"), "{svg}");
        assert!(svg.contains("module training, 10 model epochs"), "{svg}");
        assert!(svg.contains("ReLU-aware least squares"), "{svg}");
        // The larger budget's markers (one point, one legend entry) are filled squares.
        let squares = |s: &str| s.matches("<rect").count();
        let without = dir.path().join("without.svg");
        plot(&without, &rows[..3]).unwrap();
        let base = squares(&std::fs::read_to_string(&without).unwrap());
        assert_eq!(squares(&svg), base + 2, "{svg}");
    }
}
