//! Table 5: inter-dataset replace (METHOD.md section 4).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use decomp_eval::argmax;
use decomp_eval::report::{ComposeReport, Margins, ModelEval, VoteReport};

use super::format::{differences_note, epochs, fixed2, with_interval};
use super::paper::{Direction, PAPER_TABLE5_D_MINUS_M, against_paper};
use super::scaled::{
    Names, Scaled, ScaledRow, base_train_margins, push_scaled_section, scaled_vote,
    second_train_median,
};
use super::table4::medians_of;
use super::units::Ask;
use super::{Run, gate_inter_models, main_part, part, second_model, seeded_choice};
use crate::engine::{Kind, read};
use crate::manifest::Cases;
use crate::stats::{Interval, Paired, Side};

/// The compositions of the scaled vote's section (ours).
const NAMES: Names = Names {
    paper: "D",
    trained: "M",
    trained_first: false,
    class: "the new class",
};

/// One case's artifacts: CIFAR-10 class `x` replaced by second class `t`, the vote of the
/// composed modules D, the model M's run folder with its per-image test evaluation, the
/// margins.
struct Case {
    x: usize,
    t: usize,
    d: Option<VoteReport>,
    m: Option<(PathBuf, Option<ModelEval>)>,
    margins: PathBuf,
    /// With `[compose] scale_second`: the factor on the new module's margins and D's vote
    /// with it, or why it was not voted.
    scaled: Option<Scaled>,
}

/// Table 5: inter-dataset replace. Each case replaces CIFAR-10 class x's module by the
/// second model's module of class t (`[select] cases`: the i-th of each selection, or every
/// combination); D = the composed modules, M = a model trained on the new 10-class task;
/// both on its test images.
pub fn inter_replace(r: &Run) -> Result<()> {
    let Some(base) = r.model("base")? else {
        return Ok(());
    };
    let Some(second) = second_model(r)? else {
        return Ok(());
    };
    let picked = second.picked.clone();
    let base_test = r.model_test(&base, 0)?;
    let k = base.data.num_classes;
    let classes =
        r.m.select
            .fixed
            .clone()
            .unwrap_or_else(|| seeded_choice(k, r.m.select.classes, r.m.select.seed));
    let mut mods = Vec::new();
    for c in 0..k {
        mods.push(r.module(&base, c, c)?);
    }
    let mut b_mods = Vec::new();
    for j in 0..picked.len() {
        b_mods.push(second.module(r, j, k + j)?);
    }
    // `[compose] scale_second`: the base modules' margins on the base training images, the
    // kept modules' scale.
    let base_train = base_train_margins(r, &base, &mods, &(0..k).collect::<Vec<_>>(), "all")?;
    let mut rows = Vec::new();
    for (i, (xi, j)) in
        r.m.select
            .cases
            .of(classes.len(), picked.len())
            .into_iter()
            .enumerate()
    {
        let (x, t) = (classes[xi], picked[j]);
        let mut parts = Vec::new();
        for c in 0..k {
            if c == x {
                parts.push(part(r, "second", t)?);
            } else {
                parts.push(main_part(r, c)?);
            }
        }
        let Some(task) = r.mix(&format!("replace-{x}-with-{t}"), Kind::PerUnit, i, &parts)? else {
            continue;
        };
        let m = match &r.m.tma {
            Some(spec) => match r.train(&format!("task-{x}-with-{t}"), i, &task, None, spec)? {
                // M on the task's test images, image by image (the images the vote of D
                // sees, in the same order).
                Some(dir) => {
                    let test = r.eval(
                        &format!("task-{x}-with-{t}-test"),
                        i,
                        &dir.join("best.ir"),
                        &task,
                        Ask {
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
        let Some(mut ms) = mods.iter().cloned().collect::<Option<Vec<_>>>() else {
            continue;
        };
        let Some(mb) = b_mods[j].clone() else {
            continue;
        };
        ms[x] = mb;
        let all: Vec<usize> = (0..k).collect();
        let Some(mg) = r.margins(&format!("replace-{x}-with-{t}"), &ms, &task, &all)? else {
            continue;
        };
        let pick: Vec<String> = (0..k).map(|c| format!("0:{c}")).collect();
        let v = r.vote_per_image(
            &format!("replace-{x}-with-{t}"),
            std::slice::from_ref(&mg),
            &pick,
        )?;
        let scaled = match &base_train {
            Some(bt) => match second_train_median(r, &second, j, &ms[x])? {
                // The kept modules' median margin on their classes' training images.
                Some(have) => {
                    let want = scales(bt, x)
                        .context("the base modules' margins on their training images")?
                        .kept_own;
                    scaled_vote(
                        r,
                        &format!("replace-{x}-with-{t}-scaled"),
                        &mg,
                        &pick,
                        x,
                        (want, have),
                    )?
                }
                None => None,
            },
            None => None,
        };
        rows.push(Case {
            x,
            t,
            d: v,
            m,
            margins: mg,
            scaled,
        });
    }
    if !r.reporting()? {
        return Ok(());
    }
    gate_inter_models(r, &base, base_test.as_ref(), &second)?;
    for row in &rows {
        if let Some((dir, _)) = &row.m {
            r.gate_trained(
                &format!(
                    "the M of class {} replaced by {} ({})",
                    row.x,
                    row.t,
                    dir.display()
                ),
                dir,
                k,
            )?;
        }
    }
    let bs = r.m.bootstrap.unwrap_or_default();
    let mut md = String::new();
    r.header(&mut md);
    let spec2 = &r.m.data["second"];
    let _ = writeln!(
        md,
        "CIFAR-100 is not available here, so the second dataset is **{}** (`{}`, resized to 32x32). {} Each row is a \
         new 10-class task: CIFAR-10 with class x replaced by a {} class ({}). D = the 9 CIFAR-10 modules of `{}` + \
         the second model's module; M = a `{}` trained on the new task ({}). Both on the task's test images (9,000 \
         CIFAR-10 + 50 {} images), M evaluated by `decomp eval` on the same images as D's vote, in the same order.\n",
        spec2.dataset,
        spec2.path.clone().unwrap_or_default(),
        second.describe(&spec2.dataset)?,
        spec2.dataset,
        match r.m.select.cases {
            Cases::Zip => "the i-th drawn CIFAR-10 class with the i-th drawn class",
            Cases::Cross => "every drawn CIFAR-10 class with every drawn class",
        },
        base.arch,
        r.m.tma.as_ref().map_or("-".into(), |x| x.arch.clone()),
        r.m.tma.as_ref().map_or("not trained".into(), |x| format!(
            "recipe `{}`, {}{}{}, seed {}; best-validation checkpoint",
            x.recipe,
            epochs(x.epochs, "the recipe's epochs"),
            x.train_limit
                .map_or(", all of the task's training images".into(), |n| format!(
                    ", {n} images"
                )),
            x.val_fraction.map_or(String::new(), |f| format!(
                ", {:.0}% held out for validation",
                100.0 * f
            )),
            x.seed
        )),
        spec2.dataset
    );
    md.push_str("| replaced class → new class | test images | D top-1 % | D top-5 % | M top-1 % | M top-5 % | D − M top-1 [95% CI] | D − M top-5 [95% CI] | D on the new class % | M on the new class % |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut csv = String::from(
        "x,new_class,name_x,name_new,n,d_top1,d_top5,m_top1,m_top5,delta_top1,delta_top1_lo,delta_top1_hi,delta_top5,delta_top5_lo,delta_top5_hi,d_new_class,m_new_class\n",
    );
    let mut js = Vec::new();
    let (mut p1, mut p5) = (Paired::default(), Paired::default());
    let (mut s_d1, mut s_d5, mut s_m1, mut s_m5) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Per row with both evaluations (the rows of `p1`, in order): the replaced class and
    // every test image's label, to split the top-1 difference by part of the test images.
    let mut split_labels: Vec<(usize, Vec<usize>)> = Vec::new();
    // Per row with a vote: its label and the margins that decided it.
    let mut scale_rows: Vec<(String, Scales)> = Vec::new();
    // Per row of `split_labels`: the base model's own top-1 on the kept classes' test images.
    let mut base_kept: Vec<f64> = Vec::new();
    let mut scaled_rows: Vec<ScaledRow> = Vec::new();
    for (row_i, row) in rows.iter().enumerate() {
        let Some(v) = &row.d else { continue };
        let x = row.x;
        let names = read::<ComposeReport>(&row.margins.with_file_name("compose.json"))?.classes;
        // The replaced class's own name, from the base model's test evaluation.
        let name_x = base_test
            .as_ref()
            .and_then(|e| e.class_names.get(x).cloned())
            .unwrap_or_default();
        let label = format!(
            "{} → {}",
            if name_x.is_empty() {
                format!("{x}")
            } else {
                format!("{name_x} ({x})")
            },
            names.get(x).cloned().unwrap_or_default()
        );
        let (m1, m5, m_new, ci1, ci5) = match &row.m {
            Some((dir, test)) => {
                let test = test.as_ref().with_context(|| {
                    format!(
                        "the per-image test evaluation of the M in {} is missing",
                        dir.display()
                    )
                })?;
                let seed = bs.seed.wrapping_add(row_i as u64);
                let mut ci = [None, None];
                for (slot, (top_k, m_top, d_top, paired)) in ci.iter_mut().zip([
                    (1, test.top1, v.top1, &mut p1),
                    (5, test.top5, v.top5, &mut p5),
                ]) {
                    *slot = Some(paired.add(
                        top_k,
                        &Side {
                            what: format!("the M test evaluation of {label} ({})", dir.display()),
                            per_image: test.per_image.as_ref(),
                            reported: m_top,
                        },
                        &Side {
                            what: format!("the vote of D for {label}"),
                            per_image: v.per_image.as_ref(),
                            reported: d_top,
                        },
                        bs.resamples,
                        seed,
                    )?);
                }
                if let Some(p) = &v.per_image {
                    split_labels.push((x, p.labels.clone()));
                    if let Some(e) = &base_test {
                        base_kept.push(kept_top1(&e.per_class, &e.per_class_n, x)?);
                    }
                }
                (
                    test.top1,
                    test.top5,
                    test.per_class.get(x).copied(),
                    ci[0],
                    ci[1],
                )
            }
            None => (f64::NAN, f64::NAN, None, None, None),
        };
        let (d1, d5) = (v.top1 - m1, v.top5 - m5);
        let new_class = v.per_class.get(x).copied();
        let sc = scales(&read::<Margins>(&row.margins)?, x)
            .with_context(|| format!("the margins of {label} ({})", row.margins.display()))?;
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            v.n,
            fixed2(v.top1),
            fixed2(v.top5),
            fixed2(m1),
            fixed2(m5),
            with_interval(d1, ci1.as_ref()),
            with_interval(d5, ci5.as_ref()),
            new_class.unwrap_or(f64::NAN),
            m_new.unwrap_or(f64::NAN)
        );
        let ((l1, h1), (l5, h5)) = (Interval::bounds(ci1), Interval::bounds(ci5));
        let _ = writeln!(
            csv,
            "{x},{},{name_x},{},{},{},{},{m1},{m5},{d1},{l1},{h1},{d5},{l5},{h5},{},{}",
            row.t,
            names.get(x).cloned().unwrap_or_default(),
            v.n,
            json!(v.top1),
            json!(v.top5),
            json!(new_class),
            json!(m_new)
        );
        // The per-image outcomes stay in the vote units; the report keeps the summary.
        let summary = VoteReport {
            per_image: None,
            ..v.clone()
        };
        js.push(json!({"x": x, "new_class": row.t, "vote": summary, "m_top1": m1, "m_top5": m5,
            "m_new_class": m_new, "margins": sc, "d_minus_m_top1": d1, "d_minus_m_top1_ci": ci1, "d_minus_m_top5": d5, "d_minus_m_top5_ci": ci5}));
        if let (Some(s), Some((_, Some(test)))) = (&row.scaled, &row.m) {
            scaled_rows.push(ScaledRow::new(
                &label,
                s.clone(),
                v,
                test,
                x,
                &NAMES,
                bs.resamples,
                bs.seed.wrapping_add(row_i as u64),
            )?);
        }
        scale_rows.push((label, sc));
        s_d1.push(v.top1);
        s_d5.push(v.top5);
        s_m1.push(m1);
        s_m5.push(m5);
    }
    let n = js.len().max(1) as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
    let (md1, md5, mm1, mm5) = (mean(&s_d1), mean(&s_d5), mean(&s_m1), mean(&s_m5));
    let ci1 = p1.mean(js.len(), bs.resamples, bs.seed)?;
    let ci5 = p5.mean(js.len(), bs.resamples, bs.seed)?;
    let _ = writeln!(
        md,
        "| **mean** | | {} | {} | {} | {} | {} | {} | | |\n",
        fixed2(md1),
        fixed2(md5),
        fixed2(mm1),
        fixed2(mm5),
        with_interval(md1 - mm1, ci1.as_ref()),
        with_interval(md5 - mm5, ci5.as_ref()),
    );
    let ((l1, h1), (l5, h5)) = (Interval::bounds(ci1), Interval::bounds(ci5));
    let _ = writeln!(
        csv,
        "mean,,,,,{md1},{md5},{mm1},{mm5},{},{l1},{h1},{},{l5},{h5},,",
        md1 - mm1,
        md5 - mm5
    );
    if ci1.is_some() {
        let _ = writeln!(
            md,
            "95% intervals: paired bootstrap over the task's test images ({} resamples, seed {} + the case's row index; \
             top-1 and top-5 alike); the mean's interval resamples the images within each case and averages the {} \
             cases' differences per resample (seed {}).\n",
            bs.resamples,
            bs.seed,
            js.len(),
            bs.seed
        );
    }
    let base_kept_mean = (base_kept.len() == split_labels.len() && !base_kept.is_empty())
        .then(|| base_kept.iter().sum::<f64>() / base_kept.len() as f64);
    let parts = if ci1.is_some() {
        let parts = by_part(p1.rows(), &split_labels, bs.resamples, bs.seed)?;
        let source = base_kept_mean.map(|a| (base.arch.as_str(), a));
        md.push_str(&parts_note(&parts, &spec2.dataset, source));
        parts
    } else {
        Vec::new()
    };
    md.push_str(&scales_note(&scale_rows));
    let scaled_js = push_scaled_section(r, &mut md, &scaled_rows, rows.len(), &NAMES)?;
    md.push_str(&paper_section(r, &base.arch, js.len(), ci1, ci5));
    let (p_1, p_5) = PAPER_TABLE5_D_MINUS_M;
    r.finish(
        &md,
        &json!({"rows": js, "classes": classes, "second_classes": picked, "cases": r.m.select.cases,
            "mean": {"d_top1": md1, "d_top5": md5, "m_top1": mm1, "m_top5": mm5,
                "d_minus_m_top1": md1 - mm1, "d_minus_m_top1_ci": ci1,
                "d_minus_m_top5": md5 - mm5, "d_minus_m_top5_ci": ci5},
            "top1_by_part": parts, "base_top1_on_kept_classes": base_kept_mean, "scaled": scaled_js,
            "bootstrap": bs, "paper": {"d_minus_m_top1": p_1, "d_minus_m_top5": p_5}}),
        &csv,
    )?;
    Ok(())
}

/// The paper's Table 5 numbers, labelled as the paper's, what differs in our setting (read
/// from the manifest), and whether our mean differences go the paper's way.
fn paper_section(
    r: &Run,
    arch: &str,
    cases: usize,
    ci1: Option<Interval>,
    ci5: Option<Interval>,
) -> String {
    let (p1, p5) = PAPER_TABLE5_D_MINUS_M;
    let mut md = format!(
        "## The paper's numbers\n\nThe paper's Table 5 (inter-dataset replace, 16 cases: a CIFAR-10 module replaced by \
         a CIFAR-100 module): the composed modules D against the model M trained on the new task, D − M = \
         **{p1:+} top-1, {p5:+} top-5** on average (METHOD.md section 7). The abstract's \"0.5%\" is an aggregate over \
         all replacement scenarios, not this table's result.\n\n"
    );
    md.push_str(&differences_note(
        format!(
        "our new class comes from Tiny ImageNet-20 at 32x32 instead of CIFAR-100, and our CIFAR-10 modules are `{arch}`'s"
    ),
        cases,
        "cases",
        "M",
        r.m.tma.as_ref(),
    ));
    let d = Direction {
        pos_wins: "the composed modules D beat the trained model M",
        neg_wins: "the trained model M beats the composed modules D",
        pos_ahead: "D ahead",
        neg_ahead: "M ahead",
    };
    for (what, ci, paper) in [("top-1", ci1, p1), ("top-5", ci5, p5)] {
        if let Some(c) = ci {
            let _ = writeln!(
                md,
                "Ours: mean D − M {what} {}.\n",
                against_paper(&c, paper, &d)
            );
        }
    }
    md
}

/// The mean top-1 of D and M, and D − M with its interval, on one part of every case's test
/// images: the kept CIFAR-10 classes, or the new class.
#[derive(Clone, Debug, serde::Serialize)]
struct Part {
    part: &'static str,
    /// Whether this part is the new class's images (else the kept classes').
    new_class: bool,
    /// Images of this part per case (the same in every case of a full split).
    images_per_case: Vec<usize>,
    d_top1: f64,
    m_top1: f64,
    d_minus_m_top1_ci: Interval,
}

/// Splits each row's top-1 hits (`rows[i]` = (M, D), on the images labelled by
/// `labels[i]`, whose replaced class is `labels[i].0`) into the kept classes' images and the
/// new class's, and gives each part's mean accuracies over the rows with the interval of
/// their mean difference (resampling within each row's part, as the table's mean).
fn by_part(
    rows: &[(Vec<bool>, Vec<bool>)],
    labels: &[(usize, Vec<usize>)],
    resamples: usize,
    seed: u64,
) -> Result<Vec<Part>> {
    if rows.len() != labels.len() {
        anyhow::bail!(
            "{} cases with both evaluations but {} with per-image labels, expected one of each",
            rows.len(),
            labels.len()
        );
    }
    let mut out = Vec::new();
    for (name, new) in [("kept CIFAR-10 classes", false), ("new class", true)] {
        let mut kept: Vec<(Vec<bool>, Vec<bool>)> = Vec::new();
        for ((m, d), (x, l)) in rows.iter().zip(labels) {
            let keep = |i: &usize| (l[*i] == *x) == new;
            let pick =
                |h: &[bool]| -> Vec<bool> { (0..l.len()).filter(keep).map(|i| h[i]).collect() };
            kept.push((pick(m), pick(d)));
        }
        if kept.iter().any(|(m, _)| m.is_empty()) {
            continue;
        }
        let acc = |h: &[bool]| 100.0 * h.iter().filter(|&&b| b).count() as f64 / h.len() as f64;
        let n = kept.len() as f64;
        let cmp: Vec<(&[bool], &[bool])> = kept
            .iter()
            .map(|(m, d)| (m.as_slice(), d.as_slice()))
            .collect();
        out.push(Part {
            part: name,
            new_class: new,
            images_per_case: kept.iter().map(|(m, _)| m.len()).collect(),
            d_top1: kept.iter().map(|(_, d)| acc(d)).sum::<f64>() / n,
            m_top1: kept.iter().map(|(m, _)| acc(m)).sum::<f64>() / n,
            d_minus_m_top1_ci: crate::stats::mean_paired_bootstrap(&cmp, resamples, seed)?,
        });
    }
    Ok(out)
}

/// A model's top-1 on its test images of every class but `x` (the classes a case keeps),
/// from its per-class accuracies (%) and image counts.
fn kept_top1(per_class: &[f64], per_class_n: &[usize], x: usize) -> Result<f64> {
    if per_class.len() != per_class_n.len() || x >= per_class.len() {
        anyhow::bail!(
            "the base model's test evaluation has {} class accuracies and {} class counts, expected one of each \
             for class {x}",
            per_class.len(),
            per_class_n.len()
        );
    }
    let (mut hits, mut n) = (0.0, 0usize);
    for (c, (&a, &k)) in per_class.iter().zip(per_class_n).enumerate() {
        if c != x {
            hits += a * k as f64 / 100.0;
            n += k;
        }
    }
    if n == 0 {
        anyhow::bail!("the base model's test evaluation has no image outside class {x}");
    }
    Ok(100.0 * hits / n as f64)
}

/// The paragraph of [`by_part`]: where the mean top-1 difference comes from, with the base
/// model's own accuracy on the kept classes' images (`source`: its architecture and the mean
/// over the cases) where known.
fn parts_note(parts: &[Part], second: &str, source: Option<(&str, f64)>) -> String {
    if parts.is_empty() {
        return String::new();
    }
    let mut md = String::from("Top-1 by part of the test images (mean over the cases):");
    for (i, p) in parts.iter().enumerate() {
        let per = match (
            p.images_per_case.iter().min(),
            p.images_per_case.iter().max(),
        ) {
            (Some(a), Some(b)) if a == b => format!("{a}"),
            (Some(a), Some(b)) => format!("{a}-{b}"),
            _ => "0".into(),
        };
        let what = if p.new_class {
            format!("the {per} {second} images of the new class")
        } else {
            format!("the {per} images of the 9 kept CIFAR-10 classes")
        };
        let _ = write!(
            md,
            "{} on {what}, D {} and M {}, D − M {}",
            if i == 0 { "" } else { ";" },
            fixed2(p.d_top1),
            fixed2(p.m_top1),
            with_interval(p.d_minus_m_top1_ci.diff, Some(&p.d_minus_m_top1_ci)),
        );
        if let (false, Some((arch, acc))) = (p.new_class, source) {
            let _ = write!(
                md,
                " (the `{arch}` whose modules D keeps scores {} on these images itself)",
                fixed2(acc)
            );
        }
    }
    md.push_str(".\n\n");
    md
}

/// Medians of the margins (`z_mine − z_other`) that decide D's vote in one case, over its
/// test images: the new class's module against the kept ones, and the kept classes' images
/// that the new module wins.
#[derive(Clone, Debug, serde::Serialize)]
struct Scales {
    /// The new class's module on its class's images.
    new_own: f64,
    /// The strongest other module on the new class's images.
    rival: f64,
    /// Each kept module on its own class's images.
    kept_own: f64,
    /// The new class's module on the kept classes' images.
    new_elsewhere: f64,
    /// Kept classes' images on which the new class's module has the highest margin.
    taken: usize,
    /// Kept classes' images.
    kept_n: usize,
}

/// [`Scales`] of the margin file `f` whose column `x` is the new class's module.
fn scales(f: &Margins, x: usize) -> Result<Scales> {
    if let Some(i) = f
        .margins
        .iter()
        .position(|r| r.iter().any(|m| !m.is_finite()))
    {
        anyhow::bail!("image {i}: a margin is not a finite number");
    }
    let new = medians_of(f, x)?;
    let (mut kept_own, mut taken) = (Vec::new(), 0);
    for (i, (row, &label)) in f.margins.iter().zip(&f.labels).enumerate() {
        if label == x {
            continue;
        }
        let own = row.get(label).with_context(|| {
            format!(
                "image {i}: label {label} but {} modules, expected one per class",
                row.len()
            )
        })?;
        kept_own.push(f64::from(*own));
        if argmax(row) == x {
            taken += 1;
        }
    }
    Ok(Scales {
        new_own: new.own,
        rival: new.rival,
        kept_own: crate::stats::median(kept_own.clone()),
        new_elsewhere: new.elsewhere,
        taken,
        kept_n: kept_own.len(),
    })
}

/// The table of [`Scales`], one row per case: why the new class's module wins or loses the
/// vote.
fn scales_note(rows: &[(String, Scales)]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "Why D's vote goes the way it does: medians of the modules' margins (`z_mine − z_other`, each module's \
         own output) over the case's test images. The vote gives an image to the module with the highest margin, \
         and the new class's module comes from another model than the kept ones, so its margins have another \
         scale. (A description of the test images, not a setting: nothing is chosen from it.)\n\n\
         | replaced class → new class | new module on the new class's images | strongest other module there | \
         kept modules on their own images | new module on the kept images | kept images the new module wins |\n\
         |---|---|---|---|---|---|\n",
    );
    for (label, s) in rows {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} of {} |",
            fixed2(s.new_own),
            fixed2(s.rival),
            fixed2(s.kept_own),
            fixed2(s.new_elsewhere),
            s.taken,
            s.kept_n
        );
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_part_splits_the_new_class_from_the_kept_ones() {
        // Row 0 replaces class 3: images 0 and 3 are the new class.
        let rows = vec![
            (
                vec![true, true, false, false],
                vec![false, true, true, true],
            ),
            (vec![true, true, true], vec![true, false, true]),
        ];
        let labels = vec![(3, vec![3, 0, 1, 3]), (0, vec![0, 2, 2])];
        let parts = by_part(&rows, &labels, 200, 0).unwrap();
        let kept = &parts[0];
        assert_eq!(kept.images_per_case, vec![2, 2]);
        // Row 0 kept: M 50, D 100; row 1 kept: M 100, D 50.
        assert!((kept.m_top1 - 75.0).abs() < 1e-9);
        assert!((kept.d_top1 - 75.0).abs() < 1e-9);
        let new = &parts[1];
        assert_eq!(new.images_per_case, vec![2, 1]);
        // Row 0 new: M 50, D 50; row 1 new: M 100, D 100.
        assert!((new.m_top1 - 75.0).abs() < 1e-9);
        assert!((new.d_minus_m_top1_ci.diff).abs() < 1e-9);
        let note = parts_note(&parts, "tiny-imagenet", Some(("resnet56", 83.2)));
        assert!(
            note.contains("the 1-2 tiny-imagenet images of the new class"),
            "{note}"
        );
        assert!(
            note.contains(
                "(the `resnet56` whose modules D keeps scores 83.20 on these images itself)"
            ),
            "{note}"
        );
        assert!(by_part(&rows, &labels[..1], 200, 0).is_err());
    }

    #[test]
    fn kept_top1_leaves_the_replaced_class_out() {
        let (acc, n) = (vec![50.0, 100.0, 0.0], vec![10, 30, 20]);
        // Classes 0 and 1: 5 + 30 of 40.
        assert!((kept_top1(&acc, &n, 2).unwrap() - 87.5).abs() < 1e-9);
        assert!(kept_top1(&acc, &n, 3).is_err());
        assert!(kept_top1(&acc, &n[..2], 0).is_err());
    }

    #[test]
    fn scales_compare_the_new_module_with_the_kept_ones() {
        // Column 1 is the new class's module: small margins on its own images (images 2
        // and 3), and it wins kept image 1.
        let margins = vec![
            vec![9.0, -1.0, -4.0],
            vec![1.0, 2.0, -3.0],
            vec![5.0, 1.0, -2.0],
            vec![-1.0, 3.0, 6.0],
            vec![-2.0, -5.0, 7.0],
        ];
        let f = Margins::new(
            "test".into(),
            vec!["a".into(), "new".into(), "c".into()],
            Vec::new(),
            vec![0, 0, 1, 1, 2],
            margins,
            None,
            0.0,
        );
        let s = scales(&f, 1).unwrap();
        assert_eq!((s.taken, s.kept_n), (1, 3));
        // Own: 1 and 3; rival: 5 and 6; kept own: 9, 1, 7; new elsewhere: -1, 2, -5.
        assert!((s.new_own - 2.0).abs() < 1e-9);
        assert!((s.rival - 5.5).abs() < 1e-9);
        assert!((s.kept_own - 7.0).abs() < 1e-9);
        assert!((s.new_elsewhere + 1.0).abs() < 1e-9);
        let note = scales_note(&[("a (0) → new".into(), s)]);
        assert!(
            note.contains("| a (0) → new | 2.00 | 5.50 | 7.00 | -1.00 | 1 of 3 |"),
            "{note}"
        );
        // A label without its module is an error, not a panic.
        let bad = Margins::new(
            String::new(),
            Vec::new(),
            Vec::new(),
            vec![5],
            vec![vec![1.0]],
            None,
            0.0,
        );
        assert!(scales(&bad, 0).is_err());
        let nan = Margins::new(
            String::new(),
            Vec::new(),
            Vec::new(),
            vec![0],
            vec![vec![f32::NAN]],
            None,
            0.0,
        );
        assert!(scales(&nan, 0).is_err());
    }
}
