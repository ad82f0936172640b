//! Table 2: intra-dataset reuse (METHOD.md section 4).

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use decomp_eval::report::{ComposeReport, TrainMetrics, VoteReport};

use super::format::{epochs, fixed2, with_interval};
use super::paper::{Direction, PAPER_TABLE2, PAPER_TABLE2_MEAN, against_paper};
use super::units::Ask;
use super::{Run, join, pairs, seeded_choice};
use crate::engine::read;
use crate::plot;
use crate::stats::{Interval, Paired, Side};

/// Table 2: intra-dataset reuse.
pub fn intra_reuse(r: &Run) -> Result<()> {
    let Some(base) = r.model("base")? else {
        return Ok(());
    };
    let data = base.data.clone();
    let base_test = r.model_test(&base, 0)?;
    let classes =
        r.m.select.fixed.clone().unwrap_or_else(|| {
            seeded_choice(data.num_classes, r.m.select.classes, r.m.select.seed)
        });
    let mut modules = Vec::new();
    for (i, &c) in classes.iter().enumerate() {
        modules.push(r.module(&base, c, i)?);
    }
    let ps = pairs(&classes);
    // Per pair: the TMA's run folder and its evaluation on the pair's test images, image by
    // image (the images the vote of the pair's modules sees, in the same order).
    let mut tma = Vec::new();
    for (j, &(a, b)) in ps.iter().enumerate() {
        let (ca, cb) = (classes[a], classes[b]);
        let pc = [ca, cb];
        let got = match &r.m.tma {
            Some(t) => match r.train(&format!("tma-{ca}-{cb}"), j, &data, Some(&pc), t)? {
                Some(dir) => {
                    let test = r.eval(
                        &format!("tma-{ca}-{cb}-test"),
                        j,
                        &dir.join("best.ir"),
                        &data,
                        Ask {
                            classes: Some(&pc),
                            per_image: true,
                            ..Ask::default()
                        },
                    )?;
                    Some((dir, test))
                }
                None => None,
            },
            None => None,
        };
        tma.push(got);
    }
    let Some(modules) = modules.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(());
    };
    let Some(margins) = r.margins(
        &format!("{}-{}", base.arch, join(&classes).replace(',', "-")),
        &modules,
        &base.data,
        &classes,
    )?
    else {
        return Ok(());
    };
    let mut votes = Vec::new();
    for &(a, b) in &ps {
        let pick = vec![format!("0:{a}"), format!("0:{b}")];
        votes.push(r.vote_per_image(
            &format!("pair-{}-{}", classes[a], classes[b]),
            std::slice::from_ref(&margins),
            &pick,
        )?);
    }
    if !r.reporting()? {
        return Ok(());
    }
    let compose: ComposeReport = read(&margins.with_file_name("compose.json"))?;
    let class_names = compose.classes.clone();
    r.gate_model_test("the base model", &base, base_test.as_ref())?;
    for (k, &(a, b)) in ps.iter().enumerate() {
        if let Some((dir, _)) = &tma[k] {
            r.gate_trained(
                &format!(
                    "the TMA of {}/{} ({})",
                    class_names[a],
                    class_names[b],
                    dir.display()
                ),
                dir,
                2,
            )?;
        }
    }
    let bs = r.m.bootstrap.unwrap_or_default();
    let mut md = String::new();
    r.header(&mut md);
    let _ = writeln!(
        md,
        "Model: `{}` ({}). Classes drawn with seed {}: {}.\n",
        r.m.models["base"].weights.clone().unwrap_or_default(),
        base.arch,
        r.m.select.seed,
        classes
            .iter()
            .zip(&class_names)
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(t) = &r.m.tma {
        let _ = writeln!(
            md,
            "TMA: `{}` trained on the pair's training images with recipe `{}`, {}{}{}{}, seed {}; best-validation checkpoint, evaluated by `decomp eval` on the same test images as the pair's modules, in the same order.\n",
            t.arch,
            t.recipe,
            epochs(t.epochs, "recipe default epochs"),
            t.train_limit
                .map_or(String::new(), |n| format!(", first {n} training images")),
            t.val_fraction.map_or(String::new(), |f| format!(
                ", {:.0}% held out for validation",
                100.0 * f
            )),
            t.batch_size
                .map_or(String::new(), |b| format!(", batch {b}")),
            t.seed
        );
    }
    md.push_str("| pair | test images | composed modules (MA) top-1 % | TMA top-1 % | MA − TMA [95% CI] | TMA best epoch / epochs |\n|---|---|---|---|---|---|\n");
    let mut csv = String::from(
        "class_a,class_b,name_a,name_b,n,composed_top1,tma_top1,delta,delta_lo,delta_hi,tma_best_epoch,tma_epochs\n",
    );
    let mut rows = Vec::new();
    let mut cats = Vec::new();
    let (mut ma_s, mut tma_s) = (Vec::new(), Vec::new());
    let mut paired = Paired::default();
    for (k, &(a, b)) in ps.iter().enumerate() {
        let v = votes[k].as_ref().context("vote missing")?;
        let label = format!("{}/{}", class_names[a], class_names[b]);
        let ma = v.top1;
        let (tma_top1, ci, best, epochs) = match &tma[k] {
            Some((dir, test)) => {
                let test = test.as_ref().with_context(|| {
                    format!(
                        "the test evaluation of the TMA in {} is missing",
                        dir.display()
                    )
                })?;
                let m: TrainMetrics = read(&dir.join("metrics.json"))?;
                let ci = paired.add(
                    1,
                    &Side {
                        what: format!("the TMA test evaluation of {label} ({})", dir.display()),
                        per_image: test.per_image.as_ref(),
                        reported: test.top1,
                    },
                    &Side {
                        what: format!("the vote of {label}'s modules"),
                        per_image: v.per_image.as_ref(),
                        reported: v.top1,
                    },
                    bs.resamples,
                    bs.seed.wrapping_add(k as u64),
                )?;
                (test.top1, Some(ci), json!(m.best_epoch), m.epochs.len())
            }
            None => (f64::NAN, None, Value::Null, 0),
        };
        let d = ma - tma_top1;
        let _ = writeln!(
            md,
            "| {label} | {} | {ma:.2} | {} | {} | {} |",
            v.n,
            fixed2(tma_top1),
            with_interval(d, ci.as_ref()),
            if best.is_null() {
                "-".into()
            } else {
                format!("{best} / {epochs}")
            }
        );
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{ma},{tma_top1},{d},{},{},{best},{epochs}",
            classes[a],
            classes[b],
            class_names[a],
            class_names[b],
            v.n,
            ci.map_or(f64::NAN, |c| c.lo),
            ci.map_or(f64::NAN, |c| c.hi),
        );
        // The per-image outcomes stay in the vote units; the report keeps the summary.
        let summary = VoteReport {
            per_image: None,
            ..v.clone()
        };
        rows.push(json!({"classes": [classes[a], classes[b]], "names": [class_names[a], class_names[b]], "vote": summary, "tma_top1": tma_top1, "delta": d, "delta_ci": ci, "tma_best_epoch": best, "tma_epochs": epochs}));
        cats.push(label);
        ma_s.push(ma);
        tma_s.push(tma_top1);
    }
    let n = ps.len().max(1) as f64;
    let mean_ma = ma_s.iter().sum::<f64>() / n;
    let mean_tma = tma_s.iter().sum::<f64>() / n;
    // The mean's interval needs every pair's TMA; without a TMA there is no delta at all.
    let mean_ci = paired.mean(ps.len(), bs.resamples, bs.seed)?;
    let mean_d = mean_ma - mean_tma;
    let _ = writeln!(
        md,
        "| **mean** | | {mean_ma:.2} | {} | {} | |\n",
        fixed2(mean_tma),
        with_interval(mean_d, mean_ci.as_ref())
    );
    let _ = writeln!(
        csv,
        "mean,,,,,{mean_ma},{mean_tma},{mean_d},{},{},,",
        mean_ci.map_or(f64::NAN, |c| c.lo),
        mean_ci.map_or(f64::NAN, |c| c.hi),
    );
    if mean_ci.is_some() {
        let _ = writeln!(
            md,
            "95% intervals: paired bootstrap over the pair's test images ({} resamples, seed {} + the pair's row index); \
             the mean's interval resamples the images within each pair and averages the six deltas per resample (seed {}).\n",
            bs.resamples, bs.seed, bs.seed
        );
    }
    let _ = writeln!(
        md,
        "Module size (fraction of the model's positions kept) per class: {}.\n",
        classes
            .iter()
            .enumerate()
            .map(|(i, _)| format!("{} {:.3}", class_names[i], compose.module_size[i]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dataset =
        r.m.data
            .get(&r.m.models["base"].data)
            .map_or(String::new(), |d| d.dataset.clone());
    md.push_str(&paper_section(r, &dataset, &base.arch, mean_ci.as_ref()));
    md.push_str("\n![MA vs TMA per pair](pairs.svg)\n");
    plot::bars(
        &r.out_dir().join("pairs.svg"),
        "Intra-dataset reuse: composed modules vs TMA",
        "top-1 %",
        &cats,
        &[("modules (MA)", ma_s), ("TMA", tma_s)],
    )?;
    let paper = PAPER_TABLE2
        .iter()
        .find(|p| p.ours.contains(&dataset.as_str()))
        .map(|p| json!({"dataset": p.dataset, "arch": p.arch, "delta": p.delta}));
    r.finish(
        &md,
        &json!({"classes": classes, "names": class_names, "pairs": rows,
            "mean": {"composed_top1": mean_ma, "tma_top1": mean_tma, "delta": mean_d, "delta_ci": mean_ci},
            "bootstrap": bs, "paper": paper, "compose": compose}),
        &csv,
    )?;
    Ok(())
}

/// The paper's Table 2 number for this manifest's dataset (decomp's name `dataset`), labelled
/// as the paper's, with what differs between its setting and ours, read from the manifest.
fn paper_section(r: &Run, dataset: &str, arch: &str, ours: Option<&Interval>) -> String {
    let mut md = String::from("## The paper's numbers\n\n");
    let others = |skip: &str| {
        PAPER_TABLE2
            .iter()
            .filter(|p| p.dataset != skip)
            .map(|p| format!("{} {:+} ({} modules)", p.dataset, p.delta, p.arch))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(p) = PAPER_TABLE2.iter().find(|p| p.ours.contains(&dataset)) else {
        let _ = writeln!(
            md,
            "The paper's Table 2 has no {dataset} rows. Its MA − TMA: {}; {:+} over the three (METHOD.md section 7).",
            others(""),
            PAPER_TABLE2_MEAN
        );
        return md;
    };
    let pairs = if p.pairs.is_empty() {
        String::new()
    } else {
        format!(
            " (pairs MA/TMA {})",
            p.pairs
                .iter()
                .map(|(m, t)| format!("{m}/{t}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let _ = write!(
        md,
        "The paper's Table 2 on {} (its own {} without BatchNorm, modules and TMA, 6 pairs of 4 classes): \
         MA − TMA = **{:+} points**{pairs}. Its other datasets: {}; {:+} over the three (METHOD.md section 7).",
        p.dataset,
        p.arch,
        p.delta,
        others(p.dataset),
        PAPER_TABLE2_MEAN
    );
    if dataset == "tiny-imagenet" {
        md.push_str(
            " Our Tiny ImageNet-20 (20 of Tiny ImageNet's 200 classes at 64x64, 50 test images per class) \
             stands in for the paper's ImageNet-200; CIFAR-100 is not available here.",
        );
    }
    md.push_str("\n\n");
    let mut differs = Vec::new();
    if arch != p.arch {
        differs.push(format!(
            "our modules are {arch}'s, the paper's {}'s",
            p.arch
        ));
    }
    if let Some(t) = &r.m.tma {
        let epochs = t
            .epochs
            .map_or(format!("the `{}` recipe's default epochs", t.recipe), |e| {
                format!(
                    "{e} epoch{} of `{}`",
                    if e == 1 { "" } else { "s" },
                    t.recipe
                )
            });
        let images = t
            .train_limit
            .map_or("all of the pair's training images".into(), |n| {
                format!("the first {n} of the pair's training images")
            });
        differs.push(format!(
            "our TMA trains {epochs} on {images}, the paper's models 200 epochs (METHOD.md section 6)"
        ));
    }
    if dataset == "cifar10" {
        differs.push(
            "the CIFAR-10 in `shared/datasets` is a JPEG rebuild on which models score about 10 points below \
             their published accuracy"
                .into(),
        );
    }
    let _ = writeln!(
        md,
        "Compare the deltas, not the absolute accuracies: {}.\n",
        differs.join("; ")
    );
    if let Some(c) = ours {
        let d = Direction {
            pos_wins: "the modules beat the TMA",
            neg_wins: "the TMA beats the modules",
            pos_ahead: "the modules ahead",
            neg_ahead: "the TMA ahead",
        };
        let _ = writeln!(md, "Ours: mean MA − TMA {}.", against_paper(c, p.delta, &d));
    }
    md
}
