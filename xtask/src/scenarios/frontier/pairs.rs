//! Table 2's pairs from a frontier model's trained small modules (issue 17): every 2-class
//! reuse of the manifest's `[select]` classes composed from each trained point's modules,
//! from the model's element-level modules (`[decompose]`, Table 2's modules) and from a
//! model of the same architecture trained on the pair (the TMA, `[tma]` with the frontier
//! model's `arch`), on the same test images: accuracy, the paired interval against the TMA,
//! and the time per image each one took.
//!
//! The units are Table 2's own (the same names and keys): with the same `[select]`,
//! `[decompose]` and `[tma]` as `table2-c10.toml`, the ResNet-56 pairs reuse that
//! experiment's element modules, TMAs and their evaluations, and the other way round.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::super::format::{fixed2, with_interval};
use super::super::units::Ask;
use super::super::{Data, Model, Run, join, pairs, seeded_choice};
use crate::engine::read;
use crate::stats::{Interval, Paired, Side};
use decomp_eval::report::{ChannelComposeReport, ComposeReport, ModelEval, VoteReport};

/// One trained frontier point of a model: its modules (`module_<class>.mod`).
pub(super) struct TrainedPoint {
    /// The point's unit name (`resnet56-budget0.2-...`).
    pub name: String,
    /// The point as the report names it.
    pub label: String,
    pub flops_percent: f64,
    pub modules: Vec<PathBuf>,
}

/// One way of building the pairs: its vote per pair and the seconds per composed image of
/// a pair.
struct Approach {
    label: String,
    flops_percent: Option<f64>,
    votes: Vec<VoteReport>,
    pair_seconds: Vec<f64>,
}

/// The pairs of `model` (the frontier model's import unit) for its trained `points`:
/// `Ok(None)` while a unit is unfinished (or not this shard's), else the report's JSON, whose
/// Markdown is [`markdown`]. Needs `[tma]`.
pub(super) fn reuse_pairs(
    r: &Run,
    model: &Model,
    data: &Data,
    points: &[TrainedPoint],
) -> Result<Option<Value>> {
    let Some(tma_spec) = &r.m.tma else {
        bail!("frontier pairs need a [tma] section");
    };
    let classes =
        r.m.select.fixed.clone().unwrap_or_else(|| {
            seeded_choice(data.num_classes, r.m.select.classes, r.m.select.seed)
        });
    if let Some(&c) = classes.iter().find(|&&c| c >= data.num_classes) {
        bail!(
            "[select] names class {c}, but the dataset has {} classes",
            data.num_classes
        );
    }
    let ps = pairs(&classes);
    let mut spec = tma_spec.clone();
    spec.arch = model.arch.clone();
    let mut done = true;
    // The TMA of each pair and its evaluation on the pair's test images, image by image.
    let mut tmas: Vec<Option<(PathBuf, ModelEval)>> = Vec::new();
    for (j, &(a, b)) in ps.iter().enumerate() {
        let pc = [classes[a], classes[b]];
        let name = format!("tma-{}-{}", pc[0], pc[1]);
        let got = match r.train(&name, j, data, Some(&pc), &spec)? {
            Some(dir) => {
                let ask = Ask {
                    classes: Some(&pc),
                    per_image: true,
                    ..Ask::default()
                };
                r.eval(&format!("{name}-test"), j, &dir.join("best.ir"), data, ask)?
                    .map(|e| (dir, e))
            }
            None => None,
        };
        done &= got.is_some();
        tmas.push(got);
    }
    // Element-level modules of the selected classes (Table 2's).
    let mut element = Vec::new();
    for (i, &c) in classes.iter().enumerate() {
        element.push(r.module(model, c, i)?);
    }
    // (label, module FLOPs % or None for element-level modules, unit name, module files).
    let mut sets: Vec<(String, Option<f64>, String, Vec<PathBuf>)> = Vec::new();
    match element.into_iter().collect::<Option<Vec<_>>>() {
        Some(m) => sets.push((
            format!(
                "element-level modules ({}, the whole model each)",
                r.m.decompose.variant
            ),
            None,
            format!("{}-{}", model.arch, join(&classes).replace(',', "-")),
            m,
        )),
        None => done = false,
    }
    for p in points {
        let modules = classes
            .iter()
            .map(|&c| {
                let file = format!("module_{c:03}.mod");
                p.modules
                    .iter()
                    .find(|m| m.file_name().is_some_and(|n| n == file.as_str()))
                    .cloned()
                    .with_context(|| format!("frontier point {}: no {file}", p.name))
            })
            .collect::<Result<Vec<_>>>()?;
        sets.push((
            p.label.clone(),
            Some(p.flops_percent),
            format!("{}-pairs-{}", p.name, join(&classes).replace(',', "-")),
            modules,
        ));
    }
    let mut approaches = Vec::new();
    // The selected classes' names, as the margins runs read them.
    let mut names: Vec<String> = Vec::new();
    for (label, flops_percent, name, modules) in sets {
        let Some(margins) = r.margins(&name, &modules, data, &classes)? else {
            done = false;
            continue;
        };
        let mut votes = Vec::new();
        for &(a, b) in &ps {
            let pick = [format!("0:{a}"), format!("0:{b}")];
            let vote = format!("{name}-pair-{}-{}", classes[a], classes[b]);
            match r.vote_per_image(&vote, std::slice::from_ref(&margins), &pick)? {
                Some(v) => votes.push(v),
                None => done = false,
            }
        }
        if !done {
            continue;
        }
        // Seconds per image of a pair. Channel modules run one by one, so the margins run's
        // forward time of each of the pair's two modules is the pair's. Element modules of
        // one model run in one batched pass that shares what their masks leave equal, so a
        // pair's cost is not a share of the four's: each pair's two modules are composed
        // on the pair's test images and that run is timed.
        let compose = margins.with_file_name("compose.json");
        let pair_seconds = if flops_percent.is_some() {
            let c: ChannelComposeReport = read(&compose)?;
            let per = |i: usize| c.per_module[i].seconds / c.accuracy.n.max(1) as f64;
            names = c.classes.clone();
            ps.iter().map(|&(a, b)| per(a) + per(b)).collect()
        } else {
            let c: ComposeReport = read(&compose)?;
            names = c.classes.clone();
            let mut seconds = Vec::new();
            for &(a, b) in &ps {
                let timed = format!("{name}-pair-{}-{}-timed", classes[a], classes[b]);
                let pair = [modules[a].clone(), modules[b].clone()];
                match r.margins(&timed, &pair, data, &[classes[a], classes[b]])? {
                    Some(m) => {
                        let c: ComposeReport = read(&m.with_file_name("compose.json"))?;
                        seconds.push(c.seconds / c.accuracy.n.max(1) as f64);
                    }
                    None => done = false,
                }
            }
            seconds
        };
        if !done {
            continue;
        }
        approaches.push(Approach {
            label,
            flops_percent,
            votes,
            pair_seconds,
        });
    }
    if !done {
        return Ok(None);
    }
    let tmas: Vec<(PathBuf, ModelEval)> = tmas.into_iter().flatten().collect();
    for (k, (dir, e)) in tmas.iter().enumerate() {
        let (a, b) = ps[k];
        r.gate_eval(
            &format!(
                "the TMA of classes {}/{} ({})",
                classes[a],
                classes[b],
                dir.display()
            ),
            e,
            2,
        )?;
    }
    let bs = r.m.bootstrap.unwrap_or_default();
    let mut out = Vec::new();
    for ap in &approaches {
        let mut paired = Paired::default();
        let mut rows = Vec::new();
        for (k, &(a, b)) in ps.iter().enumerate() {
            let (dir, tma) = &tmas[k];
            let v = &ap.votes[k];
            let label = format!("{}/{}", classes[a], classes[b]);
            let ci = paired.add(
                1,
                &Side {
                    what: format!("the TMA test evaluation of {label} ({})", dir.display()),
                    per_image: tma.per_image.as_ref(),
                    reported: tma.top1,
                },
                &Side {
                    what: format!("the vote of {label} from {}", ap.label),
                    per_image: v.per_image.as_ref(),
                    reported: v.top1,
                },
                bs.resamples,
                bs.seed.wrapping_add(k as u64),
            )?;
            rows.push(json!({
                "classes": [classes[a], classes[b]],
                "names": v.classes,
                "n": v.n,
                "top1": v.top1,
                "delta_vs_tma": v.top1 - tma.top1,
                "delta_ci": ci,
                "ms_per_image": 1e3 * ap.pair_seconds[k],
            }));
        }
        let mean = |key: &str| {
            rows.iter()
                .map(|x| x[key].as_f64().unwrap_or(f64::NAN))
                .sum::<f64>()
                / rows.len().max(1) as f64
        };
        let ci: Option<Interval> = paired.mean(ps.len(), bs.resamples, bs.seed)?;
        out.push(json!({
            "approach": ap.label,
            "module_flops_percent": ap.flops_percent,
            "pairs": rows,
            "mean_top1": mean("top1"),
            "mean_delta_vs_tma": mean("delta_vs_tma"),
            "mean_delta_ci": ci,
            "mean_ms_per_image": mean("ms_per_image"),
        }));
    }
    let tma_rows: Vec<Value> = tmas
        .iter()
        .enumerate()
        .map(|(k, (dir, e))| {
            let (a, b) = ps[k];
            json!({
                "classes": [classes[a], classes[b]],
                "names": e.class_names,
                "n": e.n,
                "top1": e.top1,
                "ms_per_image": 1e3 * e.seconds / e.n.max(1) as f64,
                "run": dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            })
        })
        .collect();
    let mean_tma = |key: &str| {
        tma_rows
            .iter()
            .map(|x| x[key].as_f64().unwrap_or(f64::NAN))
            .sum::<f64>()
            / tma_rows.len().max(1) as f64
    };
    Ok(Some(json!({
        "model": model.arch,
        "classes": classes,
        "class_names": names,
        "tma": {
            "spec": spec,
            "pairs": tma_rows,
            "mean_top1": mean_tma("top1"),
            "mean_ms_per_image": mean_tma("ms_per_image"),
        },
        "approaches": out,
        "bootstrap": bs,
    })))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The Markdown of one model's [`reuse_pairs`].
pub(super) fn markdown(p: &Value) -> String {
    let mut md = String::new();
    let names: Vec<&str> = p["class_names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let tma = &p["tma"];
    let k = names.len();
    let _ = writeln!(
        md,
        "\n## Table 2's pairs from {}'s modules\n\n\
         The classes of Table 2 ({}), every pair composed by voting on all of the pair's test images, against\n\
         the TMA: {} trained on the pair (recipe `{}`, epochs {}, seed {}; best-validation checkpoint), on the same\n\
         images in the same order. Time: milliseconds per image of a pair on this machine, every approach on the\n\
         same CPU engine at the commands' default batch size, the data read before the clock starts: small\n\
         modules, the two modules' forward passes as `decomp compose` timed them in the run of all {k} classes\n\
         (one module after the other); element-level modules, a `decomp compose` of the pair's two modules on\n\
         the pair's test images (one batched masked pass of both, which shares the layers their masks leave\n\
         equal; building their executors included); TMA, `decomp eval`'s passes over the same images.\n",
        p["model"].as_str().unwrap_or("?"),
        p["classes"]
            .as_array()
            .map(|c| c
                .iter()
                .zip(&names)
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        tma["spec"]["arch"].as_str().unwrap_or("?"),
        tma["spec"]["recipe"].as_str().unwrap_or("?"),
        tma["spec"]["epochs"],
        tma["spec"]["seed"],
    );
    let approaches = p["approaches"].as_array().cloned().unwrap_or_default();
    md.push_str("| pair | test images | TMA top-1 |");
    for a in &approaches {
        let _ = write!(md, " {} |", a["approach"].as_str().unwrap_or("?"));
    }
    md.push_str("\n|---|---|---|");
    md.push_str(&"---|".repeat(approaches.len()));
    md.push('\n');
    let tma_pairs = tma["pairs"].as_array().cloned().unwrap_or_default();
    for (k, t) in tma_pairs.iter().enumerate() {
        let label = t["names"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        let _ = write!(md, "| {label} | {} | {} |", t["n"], fixed2(f(&t["top1"])));
        for a in &approaches {
            let row = &a["pairs"][k];
            let _ = write!(
                md,
                " {} ({:+.2}) |",
                fixed2(f(&row["top1"])),
                f(&row["delta_vs_tma"])
            );
        }
        md.push('\n');
    }
    let tma_ms = f(&tma["mean_ms_per_image"]);
    let _ = writeln!(
        md,
        "\n| approach | module FLOPs % of the model | mean top-1 | mean − TMA [95% CI] | ms / image | vs TMA |\n|---|---|---|---|---|---|\n\
         | TMA (one {} per pair) | 100 | {} | | {tma_ms:.3} | 1.00 |",
        tma["spec"]["arch"].as_str().unwrap_or("?"),
        fixed2(f(&tma["mean_top1"])),
    );
    for a in &approaches {
        let c = &a["mean_delta_ci"];
        let ci = (!c.is_null()).then(|| Interval {
            diff: f(&c["diff"]),
            lo: f(&c["lo"]),
            hi: f(&c["hi"]),
        });
        let ms = f(&a["mean_ms_per_image"]);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {ms:.3} | {:.2} |",
            a["approach"].as_str().unwrap_or("?"),
            a["module_flops_percent"]
                .as_f64()
                .map_or("100 (masked)".into(), |x| format!("{x:.1} (x 2 modules)")),
            fixed2(f(&a["mean_top1"])),
            with_interval(f(&a["mean_delta_vs_tma"]), ci.as_ref()),
            ms / tma_ms,
        );
    }
    let bs = &p["bootstrap"];
    let _ = writeln!(
        md,
        "\n95% intervals: paired bootstrap over each pair's test images ({} resamples, seed {}), the mean's\n\
         averaging the pairs' differences per resample. A TMA is one model of the source model's\n\
         architecture, so its time per image is one forward of the whole model.",
        bs["resamples"], bs["seed"]
    );
    md
}
