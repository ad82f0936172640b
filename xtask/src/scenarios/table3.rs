//! Table 3: inter-dataset reuse, with and without continuous learning (METHOD.md section 4).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use decomp_eval::report::{ComposeReport, Margins, ModelEval, VoteReport};

use super::format::{differences_note, epochs, fixed2, with_interval};
use super::paper::{Direction, PAPER_TABLE3, against_paper, verdict};
use super::scaled::{
    Names, Scaled, ScaledRow, base_train_margins, push_scaled_section, scaled_vote,
    second_train_median,
};
use super::table4::{MarginMedians, medians_of};
use super::units::Ask;
use super::{Run, gate_inter_models, main_part, part, second_model, seeded_choice};
use crate::engine::{Kind, read};
use crate::plot;
use crate::stats::{Interval, Paired, Side};

/// One pair's artifacts: classes, votes of the modules without and with continuous
/// learning, the TMA's run folder with its per-image test evaluation, the MA margins.
struct Pair {
    c: usize,
    t: usize,
    ma: Option<VoteReport>,
    mma: Option<VoteReport>,
    tma: Option<(PathBuf, Option<ModelEval>)>,
    margins: PathBuf,
    /// With `[compose] scale_second`: the factor on the second module's margins and MA's
    /// vote with it, or why it was not voted.
    scaled: Option<Scaled>,
}

/// The compositions of the scaled vote's section (ours).
const NAMES: Names = Names {
    paper: "MA",
    trained: "TMA",
    trained_first: true,
    class: "the second class",
};

/// Table 3: inter-dataset reuse, without and with continuous learning.
pub fn inter_reuse(r: &Run) -> Result<()> {
    let Some(base) = r.model("base")? else {
        return Ok(());
    };
    let Some(second) = second_model(r)? else {
        return Ok(());
    };
    let picked = second.picked.clone();
    let base_test = r.model_test(&base, 0)?;
    let classes = r.m.select.fixed.clone().unwrap_or_else(|| {
        seeded_choice(base.data.num_classes, r.m.select.classes, r.m.select.seed)
    });
    let mut a_mods = Vec::new();
    for (i, &c) in classes.iter().enumerate() {
        a_mods.push(r.module(&base, c, i)?);
    }
    let mut b_mods = Vec::new();
    for j in 0..picked.len() {
        b_mods.push(second.module(r, j, classes.len() + j)?);
    }
    // `[compose] scale_second`: the drawn base modules' margins on their classes' training
    // images (column i: class `classes[i]`).
    let base_train = base_train_margins(r, &base, &a_mods, &classes, "drawn")?;
    let mut rows = Vec::new();
    let mut p = 0;
    for (i, &c) in classes.iter().enumerate() {
        for (j, &t) in picked.iter().enumerate() {
            let idx = p;
            p += 1;
            let parts = vec![main_part(r, c)?, part(r, "second", t)?];
            let Some(pair) = r.mix(&format!("pair-{c}-{t}"), Kind::PerUnit, idx, &parts)? else {
                continue;
            };
            let tma = match &r.m.tma {
                Some(spec) => match r.train(&format!("tma-{c}-{t}"), idx, &pair, None, spec)? {
                    // The TMA on the pair's test images, image by image (the images the
                    // votes of the pair's modules see, in the same order).
                    Some(dir) => {
                        let test = r.eval(
                            &format!("tma-{c}-{t}-test"),
                            idx,
                            &dir.join("best.ir"),
                            &pair,
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
            let (Some(ma), Some(mb)) = (a_mods[i].clone(), b_mods[j].clone()) else {
                continue;
            };
            let la = r.relearn(
                &format!("{}-class{c:03}-with-{t}", base.arch),
                idx,
                &base,
                c,
                &ma,
                &pair,
                &[1],
            )?;
            let own = second.model_class[j];
            let lb = r.relearn(
                &format!("{}-class{own:03}-with-{c}", second.model.arch),
                idx,
                &second.model,
                own,
                &mb,
                &pair,
                &[0],
            )?;
            let Some(m_ma) =
                r.margins(&format!("pair-{c}-{t}"), &[ma, mb.clone()], &pair, &[0, 1])?
            else {
                continue;
            };
            let pick = ["0:0".to_string(), "0:1".to_string()];
            let v_ma =
                r.vote_per_image(&format!("pair-{c}-{t}"), std::slice::from_ref(&m_ma), &pick)?;
            let scaled = match &base_train {
                Some(bt) => match second_train_median(r, &second, j, &mb)? {
                    Some(have) => scaled_vote(
                        r,
                        &format!("pair-{c}-{t}-scaled"),
                        &m_ma,
                        &pick,
                        1,
                        (medians_of(bt, i)?.own, have),
                    )?,
                    None => None,
                },
                None => None,
            };
            let (Some(la), Some(lb)) = (la, lb) else {
                continue;
            };
            let Some(m_mma) = r.margins(
                &format!("pair-{c}-{t}-relearned"),
                &[la, lb],
                &pair,
                &[0, 1],
            )?
            else {
                continue;
            };
            let v_mma = r.vote_per_image(
                &format!("pair-{c}-{t}-relearned"),
                std::slice::from_ref(&m_mma),
                &pick,
            )?;
            rows.push(Pair {
                c,
                t,
                ma: v_ma,
                mma: v_mma,
                tma,
                margins: m_ma,
                scaled,
            });
        }
    }
    if !r.reporting()? {
        return Ok(());
    }
    gate_inter_models(r, &base, base_test.as_ref(), &second)?;
    for row in &rows {
        if let Some((dir, _)) = &row.tma {
            r.gate_trained(
                &format!("the TMA of {}/{} ({})", row.c, row.t, dir.display()),
                dir,
                2,
            )?;
        }
    }
    let bs = r.m.bootstrap.unwrap_or_default();
    let mut md = String::new();
    r.header(&mut md);
    let spec2 = &r.m.data["second"];
    let tma_text = r.m.tma.as_ref().map_or("not trained".into(), |x| {
        format!(
            "recipe `{}`, {}{}{}, seed {}; best-validation checkpoint",
            x.recipe,
            epochs(x.epochs, "the recipe's epochs"),
            x.train_limit
                .map_or(", all of the pair's training images".into(), |n| format!(
                    ", {n} images"
                )),
            x.val_fraction.map_or(String::new(), |f| format!(
                ", {:.0}% held out for validation",
                100.0 * f
            )),
            x.seed
        )
    });
    let _ = writeln!(
        md,
        "CIFAR-100 is not available here, so the second dataset is **{}** (`{}`, resized to 32x32 by area \
         resampling). {} The CIFAR-10 model is `{}` (pretrained). CIFAR-10 classes (seed {}): {:?}; {} classes: {:?}.\n\n\
         MA = the two modules composed; MMA = the same after continuous learning (tangling identification re-run \
         with up to {} training images of the other module's class as extra unconcerned inputs); TMA = a `{}` \
         trained on the pair's training images ({}). All three on the pair's test images (1,000 CIFAR-10 + 50 {} \
         images: accuracy is dominated by the CIFAR-10 class), the TMA evaluated by `decomp eval` on the same images \
         as the votes, in the same order.\n",
        spec2.dataset,
        spec2.path.clone().unwrap_or_default(),
        second.describe(&spec2.dataset)?,
        base.arch,
        r.m.select.seed,
        classes,
        spec2.dataset,
        picked,
        r.m.decompose.positives,
        r.m.tma.as_ref().map_or("-".into(), |x| x.arch.clone()),
        tma_text,
        spec2.dataset,
    );
    md.push_str("| pair | test images | MA top-1 % | MMA top-1 % | TMA top-1 % | TMA − MA [95% CI] | TMA − MMA [95% CI] | second class: MA % | MMA % | TMA % |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut csv = String::from(
        "class_main,class_second,name_main,name_second,n,ma,mma,tma,tma_minus_ma,tma_minus_ma_lo,tma_minus_ma_hi,tma_minus_mma,tma_minus_mma_lo,tma_minus_mma_hi,ma_second_class,mma_second_class,tma_second_class\n",
    );
    let mut js = Vec::new();
    let (mut vs_ma, mut vs_mma) = (Paired::default(), Paired::default());
    // Continuous learning's own effect, MMA − MA, on the same images.
    let mut cl = Paired::default();
    let (mut cats, mut b1, mut b2, mut b3) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut scaled_rows = Vec::new();
    // Per pair: the medians of the base module's (column 0) and the second module's (1)
    // margins on the pair's test images.
    let mut medians = Vec::new();
    for (k, row) in rows.iter().enumerate() {
        let (Some(v_ma), Some(v_mma)) = (&row.ma, &row.mma) else {
            continue;
        };
        let (c, t) = (row.c, row.t);
        let names = read::<ComposeReport>(&row.margins.with_file_name("compose.json"))?.classes;
        let label = format!(
            "{}/{}",
            names.first().cloned().unwrap_or_default(),
            names.get(1).cloned().unwrap_or_default()
        );
        fn side<'v>(label: &str, what: &str, v: &'v VoteReport) -> Side<'v> {
            Side {
                what: format!("the vote of {label}'s {what}"),
                per_image: v.per_image.as_ref(),
                reported: v.top1,
            }
        }
        cl.add(
            1,
            &side(&label, "modules", v_ma),
            &side(&label, "relearned modules", v_mma),
            bs.resamples,
            bs.seed.wrapping_add(k as u64),
        )?;
        let (tma_top1, tma_second, ci_ma, ci_mma) = match &row.tma {
            Some((dir, test)) => {
                let test = test.as_ref().with_context(|| {
                    format!(
                        "the per-image test evaluation of the TMA in {} is missing",
                        dir.display()
                    )
                })?;
                let tma = Side {
                    what: format!("the TMA test evaluation of {label} ({})", dir.display()),
                    per_image: test.per_image.as_ref(),
                    reported: test.top1,
                };
                let seed = bs.seed.wrapping_add(k as u64);
                if let Some(s) = &row.scaled {
                    scaled_rows.push(ScaledRow::new(
                        &label,
                        s.clone(),
                        v_ma,
                        test,
                        1,
                        &NAMES,
                        bs.resamples,
                        seed,
                    )?);
                }
                let ci_ma =
                    vs_ma.add(1, &side(&label, "modules", v_ma), &tma, bs.resamples, seed)?;
                let ci_mma = vs_mma.add(
                    1,
                    &side(&label, "relearned modules", v_mma),
                    &tma,
                    bs.resamples,
                    seed,
                )?;
                (
                    test.top1,
                    test.per_class.get(1).copied().unwrap_or(f64::NAN),
                    Some(ci_ma),
                    Some(ci_mma),
                )
            }
            None => (f64::NAN, f64::NAN, None, None),
        };
        let (ma, mma) = (v_ma.top1, v_mma.top1);
        let second_class = |v: &VoteReport| v.per_class.get(1).copied().unwrap_or(f64::NAN);
        let (d1, d2) = (tma_top1 - ma, tma_top1 - mma);
        let _ = writeln!(
            md,
            "| {label} | {} | {ma:.2} | {mma:.2} | {} | {} | {} | {:.1} | {:.1} | {} |",
            v_ma.n,
            fixed2(tma_top1),
            with_interval(d1, ci_ma.as_ref()),
            with_interval(d2, ci_mma.as_ref()),
            second_class(v_ma),
            second_class(v_mma),
            fixed2(tma_second)
        );
        let ((l1, h1), (l2, h2)) = (Interval::bounds(ci_ma), Interval::bounds(ci_mma));
        let _ = writeln!(
            csv,
            "{c},{t},{},{},{},{ma},{mma},{tma_top1},{d1},{l1},{h1},{d2},{l2},{h2},{},{},{tma_second}",
            names.first().cloned().unwrap_or_default(),
            names.get(1).cloned().unwrap_or_default(),
            v_ma.n,
            json!(v_ma.per_class.get(1)),
            json!(v_mma.per_class.get(1))
        );
        // The per-image outcomes stay in the vote units; the report keeps the summaries.
        let summary = |v: &VoteReport| VoteReport {
            per_image: None,
            ..v.clone()
        };
        js.push(
            json!({"classes": [c, t], "names": names, "ma": summary(v_ma), "mma": summary(v_mma),
            "tma_top1": tma_top1, "tma_minus_ma": d1, "tma_minus_ma_ci": ci_ma,
            "tma_minus_mma": d2, "tma_minus_mma_ci": ci_mma}),
        );
        let f = read::<Margins>(&row.margins)?;
        medians.push((label.clone(), medians_of(&f, 0)?, medians_of(&f, 1)?));
        cats.push(label);
        b1.push(ma);
        b2.push(mma);
        b3.push(tma_top1);
    }
    let n = js.len().max(1) as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
    let (m_ma, m_mma, m_tma) = (mean(&b1), mean(&b2), mean(&b3));
    let ci_ma = vs_ma.mean(js.len(), bs.resamples, bs.seed)?;
    let ci_mma = vs_mma.mean(js.len(), bs.resamples, bs.seed)?;
    let _ = writeln!(
        md,
        "| **mean** | | {m_ma:.2} | {m_mma:.2} | {} | {} | {} | | | |\n",
        fixed2(m_tma),
        with_interval(m_tma - m_ma, ci_ma.as_ref()),
        with_interval(m_tma - m_mma, ci_mma.as_ref()),
    );
    let ((l1, h1), (l2, h2)) = (Interval::bounds(ci_ma), Interval::bounds(ci_mma));
    let _ = writeln!(
        csv,
        "mean,,,,,{m_ma},{m_mma},{m_tma},{},{l1},{h1},{},{l2},{h2},,,",
        m_tma - m_ma,
        m_tma - m_mma
    );
    if ci_ma.is_some() {
        let _ = writeln!(
            md,
            "95% intervals: paired bootstrap over the pair's test images ({} resamples, seed {} + the pair's row index); \
             the mean's interval resamples the images within each pair and averages the {} pairs' differences per \
             resample (seed {}).\n",
            bs.resamples,
            bs.seed,
            js.len(),
            bs.seed
        );
    }
    let ci_cl = cl.mean(js.len(), bs.resamples, bs.seed)?;
    md.push_str(&continuous_learning_note(
        ci_cl.as_ref(),
        js.iter()
            .filter(|j| j["ma"]["top1"] != j["mma"]["top1"])
            .count(),
        js.len(),
    ));
    md.push_str(&medians_note(&medians));
    let scaled_js = push_scaled_section(r, &mut md, &scaled_rows, js.len(), &NAMES)?;
    md.push_str(&paper_section(r, &base.arch, js.len(), ci_ma, ci_mma));
    md.push_str("\n![MA, MMA and TMA per pair](pairs.svg)\n");
    plot::bars(
        &r.out_dir().join("pairs.svg"),
        "Inter-dataset reuse: MA, MMA (continuous learning), TMA",
        "top-1 %",
        &cats,
        &[("MA", b1), ("MMA", b2), ("TMA", b3)],
    )?;
    let p = &PAPER_TABLE3;
    r.finish(
        &md,
        &json!({"classes": classes, "second_classes": picked, "pairs": js,
            "mean": {"ma": m_ma, "mma": m_mma, "tma": m_tma,
                "tma_minus_ma": m_tma - m_ma, "tma_minus_ma_ci": ci_ma,
                "tma_minus_mma": m_tma - m_mma, "tma_minus_mma_ci": ci_mma,
                "mma_minus_ma": m_mma - m_ma, "mma_minus_ma_ci": ci_cl},
            "bootstrap": bs,
            "paper": {"tma": p.tma, "ma": p.ma, "mma": p.mma, "tma_minus_ma": p.tma_minus_ma, "tma_minus_mma": p.tma_minus_mma},
            "second_model_test_top1": second.test_top1()?, "scaled": scaled_js}),
        &csv,
    )?;
    Ok(())
}

/// The table of the margins that decide each pair's vote (`rows`: the pair, then the
/// medians of its base module's and its second module's margins on the pair's test images).
fn medians_note(rows: &[(String, MarginMedians, MarginMedians)]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "Why MA's vote goes the way it does: medians of the two modules' margins (`z_mine − z_other`, each module's \
         own output) over the pair's test images; the vote gives an image to the module with the higher margin. \
         (A description of the test images, not a setting: nothing is chosen from it.)\n\n\
         | pair | base module on its class's images | second module on its class's images | second module on the \
         base class's images | base module on the second class's images |\n|---|---|---|---|---|\n",
    );
    for (label, a, b) in rows {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} |",
            fixed2(a.own),
            fixed2(b.own),
            fixed2(b.elsewhere),
            fixed2(b.rival)
        );
    }
    md.push('\n');
    md
}

/// What continuous learning did: the mean MMA − MA of `pairs` pairs with its interval `ci`,
/// how many pairs it changed, against the paper's MMA − MA with [`verdict`], and why it can do
/// little when it brings no measurable gain: it only unmasks positions. Empty without pairs.
fn continuous_learning_note(ci: Option<&Interval>, changed: usize, pairs: usize) -> String {
    let Some(c) = ci else {
        return String::new();
    };
    let p = &PAPER_TABLE3;
    let d = Direction {
        pos_wins: "continuous learning improves the composition",
        neg_wins: "continuous learning lowers the composition",
        pos_ahead: "continuous learning ahead",
        neg_ahead: "continuous learning behind",
    };
    let mut md = format!(
        "Continuous learning (MMA − MA): mean {} over the {pairs} pairs, {changed} of which changed at all, \
         against the paper's **{:+.2}** (its MMA {} − MA {}): {}.",
        with_interval(c.diff, Some(c)),
        p.mma - p.ma,
        p.mma,
        p.ma,
        verdict(c, p.mma - p.ma, &d)
    );
    if c.lo <= 0.0 {
        md.push_str(
            " Continuous learning re-runs tangling identification with the other class's images as extra \
             unconcerned inputs, which can only bring back masked positions; the modules' masks (MC-BLN at ReLU \
             inputs) hold positions that are inactive for nearly every image, so few come back (compare \
             `decomp inspect` of a `runs/store/decompose` module with its `runs/store/relearn` counterpart), and \
             the votes stay decided by the two models' margin scales.",
        );
    }
    md.push_str("\n\n");
    md
}

/// The paper's Table 3 numbers, labelled as the paper's, what differs in our setting (read
/// from the manifest), and whether our mean differences go the paper's way.
fn paper_section(
    r: &Run,
    arch: &str,
    pairs: usize,
    ci_ma: Option<Interval>,
    ci_mma: Option<Interval>,
) -> String {
    let p = &PAPER_TABLE3;
    let mut md = format!(
        "## The paper's numbers\n\nThe paper's Table 3 (inter-dataset reuse, 16 pairs of a CIFAR-10 and a CIFAR-100 class, \
         modules of its own ResNets without BatchNorm, TMA = ResNet-20 trained on the pair): mean TMA {}, MA {}, MMA {} \
         top-1 %, so TMA − MA = **{}** points without continuous learning and TMA − MMA = **{}** with it (METHOD.md \
         section 7; the paper's text says 12.06 / 4.4, which do not match its table).\n\n",
        p.tma, p.ma, p.mma, p.tma_minus_ma, p.tma_minus_mma
    );
    md.push_str(&differences_note(
        format!(
        "our second dataset is Tiny ImageNet-20 at 32x32 instead of CIFAR-100, and our CIFAR-10 modules are `{arch}`'s"
    ),
        pairs,
        "pairs",
        "TMA",
        r.m.tma.as_ref(),
    ));
    let d = Direction {
        pos_wins: "the TMA beats the composed modules",
        neg_wins: "the composed modules beat the TMA",
        pos_ahead: "the TMA ahead",
        neg_ahead: "the modules ahead",
    };
    for (what, ci, paper) in [
        ("TMA − MA", ci_ma, p.tma_minus_ma),
        ("TMA − MMA", ci_mma, p.tma_minus_mma),
    ] {
        if let Some(c) = ci {
            let _ = writeln!(md, "Ours: mean {what} {}.\n", against_paper(&c, paper, &d));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_note_reads_both_modules_on_both_classes() {
        // Images 0-1 of the base class, 2-3 of the second class; column 1 the second module.
        let f = Margins::new(
            "test".into(),
            vec!["cat".into(), "Egyptian cat".into()],
            Vec::new(),
            vec![0, 0, 1, 1],
            vec![
                vec![10.0, 3.0],
                vec![12.0, 5.0],
                vec![-1.0, 4.0],
                vec![1.0, 6.0],
            ],
            None,
            0.0,
        );
        let (a, b) = (medians_of(&f, 0).expect("0"), medians_of(&f, 1).expect("1"));
        let md = medians_note(&[("cat/Egyptian cat".into(), a, b)]);
        // Base on its own 11; second on its own 5, on the base class's images 4; base on the
        // second class's images 0.
        assert!(
            md.contains("| cat/Egyptian cat | 11.00 | 5.00 | 4.00 | 0.00 |"),
            "{md}"
        );
        assert!(medians_note(&[]).is_empty());
    }
}
