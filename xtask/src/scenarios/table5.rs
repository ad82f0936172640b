//! Table 5: inter-dataset replace (METHOD.md section 4).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use decomp_eval::report::{ComposeReport, ModelEval, VoteReport};

use super::format::{differences_note, epochs, fixed2, with_interval};
use super::paper::{Direction, PAPER_TABLE5_D_MINUS_M, against_paper};
use super::units::Ask;
use super::{Run, gate_inter_models, main_part, part, second_model, seeded_choice};
use crate::engine::{Kind, read};
use crate::manifest::Cases;
use crate::stats::{Interval, Paired, Side};

/// One case's artifacts: CIFAR-10 class `x` replaced by second class `t`, the vote of the
/// composed modules D, the model M's run folder with its per-image test evaluation, the
/// margins.
struct Case {
    x: usize,
    t: usize,
    d: Option<VoteReport>,
    m: Option<(PathBuf, Option<ModelEval>)>,
    margins: PathBuf,
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
        rows.push(Case {
            x,
            t,
            d: v,
            m,
            margins: mg,
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
    md.push_str("| replaced class → new class | test images | D top-1 % | D top-5 % | M top-1 % | M top-5 % | D − M top-1 [95% CI] | D − M top-5 [95% CI] | D on the new class % |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut csv = String::from(
        "x,new_class,name_x,name_new,n,d_top1,d_top5,m_top1,m_top5,delta_top1,delta_top1_lo,delta_top1_hi,delta_top5,delta_top5_lo,delta_top5_hi,d_new_class\n",
    );
    let mut js = Vec::new();
    let (mut p1, mut p5) = (Paired::default(), Paired::default());
    let (mut s_d1, mut s_d5, mut s_m1, mut s_m5) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (row_i, row) in rows.iter().enumerate() {
        let Some(v) = &row.d else { continue };
        let x = row.x;
        let names = read::<ComposeReport>(&row.margins.with_file_name("compose.json"))?.classes;
        let label = format!("{x} → {}", names.get(x).cloned().unwrap_or_default());
        let (m1, m5, ci1, ci5) = match &row.m {
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
                (test.top1, test.top5, ci[0], ci[1])
            }
            None => (f64::NAN, f64::NAN, None, None),
        };
        let (d1, d5) = (v.top1 - m1, v.top5 - m5);
        let new_class = v.per_class.get(x).copied();
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            v.n,
            fixed2(v.top1),
            fixed2(v.top5),
            fixed2(m1),
            fixed2(m5),
            with_interval(d1, ci1.as_ref()),
            with_interval(d5, ci5.as_ref()),
            new_class.unwrap_or(f64::NAN)
        );
        let ((l1, h1), (l5, h5)) = (Interval::bounds(ci1), Interval::bounds(ci5));
        let _ = writeln!(
            csv,
            "{x},{},,{},{},{},{},{m1},{m5},{d1},{l1},{h1},{d5},{l5},{h5},{}",
            row.t,
            names.get(x).cloned().unwrap_or_default(),
            v.n,
            json!(v.top1),
            json!(v.top5),
            json!(new_class)
        );
        // The per-image outcomes stay in the vote units; the report keeps the summary.
        let summary = VoteReport {
            per_image: None,
            ..v.clone()
        };
        js.push(json!({"x": x, "new_class": row.t, "vote": summary, "m_top1": m1, "m_top5": m5,
            "d_minus_m_top1": d1, "d_minus_m_top1_ci": ci1, "d_minus_m_top5": d5, "d_minus_m_top5_ci": ci5}));
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
        "| **mean** | | {} | {} | {} | {} | {} | {} | |\n",
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
        "mean,,,,,{md1},{md5},{mm1},{mm5},{},{l1},{h1},{},{l5},{h5},",
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
    md.push_str(&paper_section(r, &base.arch, js.len(), ci1, ci5));
    let (p_1, p_5) = PAPER_TABLE5_D_MINUS_M;
    r.finish(
        &md,
        &json!({"rows": js, "classes": classes, "second_classes": picked, "cases": r.m.select.cases,
            "mean": {"d_top1": md1, "d_top5": md5, "m_top1": mm1, "m_top5": mm5,
                "d_minus_m_top1": md1 - mm1, "d_minus_m_top1_ci": ci1,
                "d_minus_m_top5": md5 - mm5, "d_minus_m_top5_ci": ci5},
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
