//! Table 4: intra-dataset replace (METHOD.md section 4).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use decomp_eval::argmax;
use decomp_eval::report::{ComposeReport, Margins, VoteReport};

use super::format::{fixed2, opt2, with_interval};
use super::paper::{Direction, PAPER_TABLE4_C10_MEAN, against_paper};
use super::{Model, Run};
use crate::engine::read;
use crate::plot;
use crate::stats::{Interval, Paired, Side, median};

/// Medians of the margins of the module voting for class `w`: on `w`'s test images
/// (`own`), the strongest other module's there (`rival`), and on the other images
/// (`elsewhere`).
#[derive(Clone, Copy, Debug)]
pub(super) struct MarginMedians {
    pub own: f64,
    pub rival: f64,
    pub elsewhere: f64,
}

/// [`MarginMedians`] of the module in column `w` of the margin file `path`.
pub(super) fn margin_medians(path: &std::path::Path, w: usize) -> Result<MarginMedians> {
    medians_of(&read(path)?, w)
}

/// [`MarginMedians`] of the module in column `w` of `f`.
pub(super) fn medians_of(f: &Margins, w: usize) -> Result<MarginMedians> {
    let (mut own, mut rival, mut elsewhere) = (Vec::new(), Vec::new(), Vec::new());
    for (row, &label) in f.margins.iter().zip(&f.labels) {
        let m = f64::from(
            *row.get(w)
                .context("margin file: fewer modules than classes")?,
        );
        if label == w {
            own.push(m);
            let best = (0..row.len())
                .filter(|&x| x != w)
                .map(|x| f64::from(row[x]));
            rival.push(best.fold(f64::NEG_INFINITY, f64::max));
        } else {
            elsewhere.push(m);
        }
    }
    Ok(MarginMedians {
        own: median(own),
        rival: median(rival),
        elsewhere: median(elsewhere),
    })
}

/// What Tables 4 and 6 share: every module of a recipient model (manifest role `weak`, the
/// paper's weaker model) and a donor (`strong`), their margins on the full test split, and
/// the two models' own compositions.
pub(super) struct Replace {
    pub weak: Model,
    pub strong: Model,
    /// The margin files of the recipient and the donor (vote file 0 and 1).
    pub files: Vec<PathBuf>,
    /// The recipient's module files, class by class.
    pub modules_w: Vec<PathBuf>,
    /// The recipient's composed modules, with every image's rank (the paired intervals'
    /// reference).
    pub base_w: VoteReport,
    pub base_s: VoteReport,
    pub cw: ComposeReport,
    pub cs: ComposeReport,
    pub class_names: Vec<String>,
}

/// The units of [`Replace`]; `None` when this process does not hold them all (a shard).
pub(super) fn setup(r: &Run) -> Result<Option<Replace>> {
    let (Some(weak), Some(strong)) = (r.model("weak")?, r.model("strong")?) else {
        return Ok(None);
    };
    let data = weak.data.clone();
    let k = data.num_classes;
    let classes: Vec<usize> = (0..k).collect();
    let mut wm = Vec::new();
    let mut sm = Vec::new();
    for c in 0..k {
        wm.push(r.module(&weak, c, c)?);
    }
    for c in 0..k {
        sm.push(r.module(&strong, c, k + c)?);
    }
    let (Some(wm), Some(sm)) = (
        wm.into_iter().collect::<Option<Vec<_>>>(),
        sm.into_iter().collect::<Option<Vec<_>>>(),
    ) else {
        return Ok(None);
    };
    let (Some(mw), Some(ms)) = (
        r.margins(&format!("{}-all", weak.arch), &wm, &weak.data, &classes)?,
        r.margins(&format!("{}-all", strong.arch), &sm, &strong.data, &classes)?,
    ) else {
        return Ok(None);
    };
    let files = vec![mw.clone(), ms.clone()];
    let modules_w = wm;
    let base_w = r
        .vote_per_image("weak-all", &files, &all(0, k))?
        .context("vote")?;
    let base_s = r.vote("strong-all", &files, &all(1, k))?.context("vote")?;
    let cw: ComposeReport = read(&mw.with_file_name("compose.json"))?;
    let cs: ComposeReport = read(&ms.with_file_name("compose.json"))?;
    let class_names = cw.classes.clone();
    Ok(Some(Replace {
        weak,
        strong,
        files,
        modules_w,
        base_w,
        base_s,
        cw,
        cs,
        class_names,
    }))
}

/// A vote as one side of a paired top-`k` comparison (`k` 1 or 5).
pub(super) fn side(what: String, v: &VoteReport, top_k: usize) -> Side<'_> {
    Side {
        what,
        per_image: v.per_image.as_ref(),
        reported: if top_k == 1 { v.top1 } else { v.top5 },
    }
}

/// Every module of margin file `f` (classes `0..k`), as `decomp vote --pick` entries.
pub(super) fn all(f: usize, k: usize) -> Vec<String> {
    (0..k).map(|c| format!("{f}:{c}")).collect()
}

/// Table 4: intra-dataset replace, module of class x of the recipient replaced by the
/// donor's, x = 0..k-1, each change with its paired bootstrap interval.
pub fn intra_replace(r: &Run) -> Result<()> {
    let Some(Replace {
        weak,
        strong,
        files,
        modules_w: _,
        base_w,
        base_s,
        cw,
        cs,
        class_names,
    }) = setup(r)?
    else {
        return Ok(());
    };
    let k = weak.data.num_classes;
    let all = |f: usize| all(f, k);
    // The classes whose module is replaced: all, or a seeded draw (`[select] replace_classes`).
    let xs: Vec<usize> = match r.m.select.replace_classes {
        None => (0..k).collect(),
        Some(n) if n == 0 || n > k => anyhow::bail!(
            "[select] replace_classes = {n}: between 1 and the {k} classes of the recipient's data expected"
        ),
        Some(n) => super::seeded_choice(k, n, r.m.select.seed),
    };
    let nx = xs.len();
    let mut replaced = Vec::new();
    for &x in &xs {
        let mut pick = all(0);
        pick[x] = format!("1:{x}");
        replaced.push(
            r.vote_per_image(&format!("replace-{x}"), &files, &pick)?
                .context("vote")?,
        );
    }
    if !r.reporting()? {
        return Ok(());
    }
    r.gate_compose(&format!("the recipient model {}", weak.arch), &cw, k)?;
    r.gate_compose(&format!("the donor model {}", strong.arch), &cs, k)?;
    let bs = r.m.bootstrap.unwrap_or_default();
    let mut md = String::new();
    r.header(&mut md);
    let _ = writeln!(
        md,
        "Recipient: `{}`; donor: `{}`. Each row composes all {k} modules of the recipient with the module of class x \
         taken from the donor, evaluated on the full test split ({} images){}. Here the donor's composed modules score \
         {:.2}% top-1 against the recipient's {:.2}%: the donor is the {} model.\n",
        weak.arch,
        strong.arch,
        base_w.n,
        if nx < k {
            format!(
                "; x runs over {nx} of the {k} classes, drawn with seed {} (`[select] replace_classes`)",
                r.m.select.seed
            )
        } else {
            String::new()
        },
        base_s.top1,
        base_w.top1,
        if base_s.top1 > base_w.top1 {
            "stronger"
        } else {
            "weaker"
        }
    );
    md.push_str("| composition | top-1 % | top-5 % | Δ top-1 vs recipient composed [95% interval] | Δ top-5 [95% interval] | class x accuracy % (recipient → replaced) |\n|---|---|---|---|---|---|\n");
    for (name, kind, top1, top5) in [
        (
            &weak.arch,
            "model",
            cw.accuracy.model_top1,
            cw.accuracy.model_top5,
        ),
        (
            &strong.arch,
            "model",
            cs.accuracy.model_top1,
            cs.accuracy.model_top5,
        ),
        (&weak.arch, "modules", Some(base_w.top1), Some(base_w.top5)),
        (
            &strong.arch,
            "modules",
            Some(base_s.top1),
            Some(base_s.top5),
        ),
    ] {
        let _ = writeln!(
            md,
            "| {name} {kind} | {} | {} | | | |",
            opt2(top1),
            opt2(top5)
        );
    }
    let mut csv = String::from(
        "x,class,top1,top5,delta_top1,delta_top1_lo,delta_top1_hi,delta_top5,delta_top5_lo,delta_top5_hi,class_acc_before,class_acc_after\n",
    );
    let mut rows = Vec::new();
    let (mut sum1, mut sum5) = (0.0, 0.0);
    let (mut p1, mut p5) = (Paired::default(), Paired::default());
    for (&x, v) in xs.iter().zip(&replaced) {
        let (d1, d5) = (v.top1 - base_w.top1, v.top5 - base_w.top5);
        sum1 += d1;
        sum5 += d5;
        let seed = bs.seed.wrapping_add(x as u64);
        let mut ci = [None, None];
        for (slot, (top_k, paired)) in ci.iter_mut().zip([(1, &mut p1), (5, &mut p5)]) {
            *slot = Some(paired.add(
                top_k,
                &side(
                    format!("the vote of {}'s modules", weak.arch),
                    &base_w,
                    top_k,
                ),
                &side(format!("the vote with class {x} replaced"), v, top_k),
                bs.resamples,
                seed,
            )?);
        }
        let before = base_w.per_class[x];
        let after = v.per_class[x];
        let _ = writeln!(
            md,
            "| replace {x} ({}) | {} | {} | {} | {} | {before:.1} → {after:.1} |",
            class_names[x],
            fixed2(v.top1),
            fixed2(v.top5),
            with_interval(d1, ci[0].as_ref()),
            with_interval(d5, ci[1].as_ref()),
        );
        let ((l1, h1), (l5, h5)) = (Interval::bounds(ci[0]), Interval::bounds(ci[1]));
        let _ = writeln!(
            csv,
            "{x},{},{},{},{d1},{l1},{h1},{d5},{l5},{h5},{before},{after}",
            class_names[x],
            json!(v.top1),
            json!(v.top5)
        );
        // The per-image outcomes stay in the vote units; the report keeps the summary.
        let summary = VoteReport {
            per_image: None,
            ..v.clone()
        };
        rows.push(
            json!({"x": x, "class": class_names[x], "vote": summary, "delta_top1": d1,
            "delta_top1_ci": ci[0], "delta_top5": d5, "delta_top5_ci": ci[1]}),
        );
    }
    let (m1, m5) = (sum1 / nx as f64, sum5 / nx as f64);
    let (ci1, ci5) = (
        p1.mean_shared(nx, bs.resamples, bs.seed)?,
        p5.mean_shared(nx, bs.resamples, bs.seed)?,
    );
    let (better1, better5) = (
        replaced.iter().filter(|v| v.top1 >= base_w.top1).count(),
        replaced.iter().filter(|v| v.top5 >= base_w.top5).count(),
    );
    let _ = writeln!(
        md,
        "\nMean change over x: **{} top-1**, {} top-5 (points); at or above the recipient's composition in {better1} \
         of {nx} cases (top-1), {better5} of {nx} (top-5).\n\n95% intervals: paired bootstrap over the test images ({} \
         resamples, seed {} + x); the mean's interval draws one resample of the test images for all {nx} rows (they \
         share the images) and averages their differences (seed {}).\n",
        with_interval(m1, ci1.as_ref()),
        with_interval(m5, ci5.as_ref()),
        bs.resamples,
        bs.seed,
        bs.seed
    );
    let ((l1, h1), (l5, h5)) = (Interval::bounds(ci1), Interval::bounds(ci5));
    let _ = writeln!(csv, "mean,,,,{m1},{l1},{h1},{m5},{l5},{h5},,");
    md.push_str(
        "## The paper's numbers\n\nTable 4 of the paper replaces modules of its ResNet-32 by its ResNet-20's on CIFAR-10 \
         (its models without BatchNorm, original test set): the ResNet-32's composed modules score 78.6% top-1, the ten \
         replacements 79.2-80.9%, a mean change of **+1.4 points** (its ResNet-32 model: 85.3%); over its three datasets \
         the mean change is +0.79 top-1 / +1.00 top-5, at or above the prior composition in 24 of 30 cases (METHOD.md \
         section 7). The abstract's \"0.5%\" is an aggregate over all replacement scenarios, not this table's result.\n\n",
    );
    if let Some(c) = ci1 {
        let d = Direction {
            pos_wins: "replacing a module raises the composition",
            neg_wins: "replacing a module lowers the composition",
            pos_ahead: "replacement ahead",
            neg_ahead: "the recipient's composition ahead",
        };
        let _ = writeln!(
            md,
            "Ours: mean change {}. The paper's number is its CIFAR-10 mean, with the stronger model as donor; here \
             the donor's composed modules are {} than the recipient's ({:+.2} points).\n",
            against_paper(&c, PAPER_TABLE4_C10_MEAN, &d),
            if base_s.top1 > base_w.top1 {
                "stronger"
            } else {
                "weaker"
            },
            base_s.top1 - base_w.top1
        );
    }
    where_from(&mut md, &files, &xs, &class_names)?;
    md.push_str("![per-class accuracy](per_class.svg)\n\n![module size](module_size.svg)\n");
    // The classes x that were replaced (all, or the drawn ones).
    let per = |v: &VoteReport| xs.iter().map(|&x| v.per_class[x]).collect::<Vec<_>>();
    let replaced_x: Vec<f64> = xs
        .iter()
        .zip(&replaced)
        .map(|(&x, v)| v.per_class[x])
        .collect();
    let names_x: Vec<String> = xs.iter().map(|&x| class_names[x].clone()).collect();
    plot::bars(
        &r.out_dir().join("per_class.svg"),
        "Per-class top-1: recipient modules, donor modules, class x replaced",
        "top-1 %",
        &names_x,
        &[
            (&format!("{} modules", weak.arch), per(&base_w)),
            (&format!("{} modules", strong.arch), per(&base_s)),
            ("x replaced", replaced_x),
        ],
    )?;
    let size = |v: &ComposeReport| v.module_size[..k].to_vec();
    plot::bars(
        &r.out_dir().join("module_size.svg"),
        "Module size per class",
        "fraction of positions kept",
        &class_names,
        &[(&weak.arch, size(&cw)), (&strong.arch, size(&cs))],
    )?;
    let base_w = VoteReport {
        per_image: None,
        ..base_w
    };
    r.finish(&md, &json!({"weak": base_w, "strong": base_s, "weak_compose": cw, "strong_compose": cs, "replace": rows,
        "replaced_classes": xs, "mean_delta_top1": m1, "mean_delta_top1_ci": ci1, "mean_delta_top5": m5, "mean_delta_top5_ci": ci5,
        "bootstrap": bs}), &csv)?;
    Ok(())
}

/// One replacement's effect on the vote, image by image: the images the vote gives class x
/// and the right answers it gains and loses (and how many of those go to x).
#[derive(Default)]
struct Moved {
    to_x_before: usize,
    to_x_after: usize,
    gained: usize,
    lost: usize,
    lost_to_x: usize,
}

/// [`Moved`] when column `x` of the recipient's margins `w` is replaced by the donor's `s`
/// (the vote picks the largest margin, ties to the lower class as `decomp vote`).
fn moved(w: &Margins, s: &Margins, x: usize) -> Result<Moved> {
    let mut m = Moved::default();
    for ((row, donor), &label) in w.margins.iter().zip(&s.margins).zip(&w.labels) {
        let mut swapped = row.clone();
        *swapped
            .get_mut(x)
            .context("margin file: fewer modules than classes")? = *donor
            .get(x)
            .context("margin file: fewer modules than classes")?;
        let (before, after) = (argmax(row), argmax(&swapped));
        m.to_x_before += usize::from(before == x);
        m.to_x_after += usize::from(after == x);
        m.gained += usize::from(before != label && after == label);
        let lost = before == label && after != label;
        m.lost += usize::from(lost);
        m.lost_to_x += usize::from(lost && after == x);
    }
    Ok(m)
}

/// The report's account of where each replacement's change comes from: images moved to and
/// from class x, and the scale of module x's margins in the recipient and in the donor.
fn where_from(md: &mut String, files: &[PathBuf], xs: &[usize], names: &[String]) -> Result<()> {
    let (w, s): (Margins, Margins) = (read(&files[0])?, read(&files[1])?);
    if w.labels != s.labels {
        anyhow::bail!(
            "{} and {}: the margin files cover different images",
            files[0].display(),
            files[1].display()
        );
    }
    md.push_str(
        "## Where the changes come from\n\nImage by image (from the two margin files): the images the vote gives class x \
         before and after the swap (each class has its own test images), the right answers gained and lost (lost to \
         x: those the swapped module took), and module x's median margin on class x's images and on the others, in the \
         recipient and in the donor.\n\n| x | images voted x: recipient → replaced (class size) | right answers gained / \
         lost (lost to x) | module x's median margin on x's images: recipient → donor | on the other images |\n\
         |---|---|---|---|---|\n",
    );
    let (mut before, mut after, mut size, mut lost, mut lost_to_x, mut gained) = (0, 0, 0, 0, 0, 0);
    let (mut larger_own, mut larger_else) = (0, 0);
    for &x in xs {
        let m = moved(&w, &s, x)?;
        let (mw, ms) = (medians_of(&w, x)?, medians_of(&s, x)?);
        let n_x = w.labels.iter().filter(|&&l| l == x).count();
        let _ = writeln!(
            md,
            "| {x} ({}) | {} → {} ({n_x}) | {} / {} ({}) | {:.2} → {:.2} | {:.2} → {:.2} |",
            names[x],
            m.to_x_before,
            m.to_x_after,
            m.gained,
            m.lost,
            m.lost_to_x,
            mw.own,
            ms.own,
            mw.elsewhere,
            ms.elsewhere
        );
        before += m.to_x_before;
        after += m.to_x_after;
        size += n_x;
        gained += m.gained;
        lost += m.lost;
        lost_to_x += m.lost_to_x;
        larger_own += usize::from(ms.own > mw.own);
        larger_else += usize::from(ms.elsewhere > mw.elsewhere);
    }
    let nx = xs.len();
    let _ = write!(
        md,
        "\nOver the {nx} rows the swapped-in modules take {after} images against the recipient modules' {before} \
         ({size} test images belong to these classes); {gained} right answers are gained and {lost} lost, {lost_to_x} \
         of the lost to class x. The donor module's median margin is the larger on its class's images in {larger_own} \
         of {nx} rows and on the other images in {larger_else}."
    );
    if after > before {
        let _ = write!(
            md,
            " The vote compares the margins of two models as each model scales them (no calibration), and the \
             swapped-in modules claim {} more images than the ones they replace.",
            after - before
        );
    }
    md.push_str("\n\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn margins(labels: Vec<usize>, rows: Vec<Vec<f32>>) -> Margins {
        Margins::new(
            "test".into(),
            vec!["a".into(), "b".into(), "c".into()],
            Vec::new(),
            labels,
            rows,
            None,
            0.0,
        )
    }

    /// Swapping in a module with larger margins moves images to its class: one right answer
    /// gained, two lost to the swapped class (both on ties, which go to the lower class as in
    /// the vote), counted image by image.
    #[test]
    fn moved_counts_images_won_and_lost_by_the_swapped_module() {
        let labels = vec![0, 1, 1, 2, 2];
        let w = margins(
            labels.clone(),
            vec![
                vec![1.0, 2.0, 0.0], // class 0, voted 1: wrong before
                vec![0.0, 3.0, 1.0], // class 1, right
                vec![0.0, 3.0, 2.0], // class 1, right
                vec![0.0, 1.0, 2.0], // class 2, right
                vec![3.0, 1.0, 0.0], // class 2, voted 0: wrong
            ],
        );
        let s = margins(
            labels,
            vec![
                vec![5.0, 0.0, 0.0],  // now class 0 wins: gained
                vec![3.0, 0.0, 0.0],  // tie 3 / 3: the lower class, 0: lost to x
                vec![0.0, 0.0, 0.0],  // 0 vs 3: unchanged
                vec![2.0, 0.0, 0.0],  // 2 / 1 / 2: tie, class 0 wins: lost to x
                vec![-1.0, 0.0, 0.0], // 1 vs 0: voted 1, still wrong
            ],
        );
        let m = moved(&w, &s, 0).expect("equal image sets");
        assert_eq!((m.to_x_before, m.to_x_after), (1, 3));
        assert_eq!((m.gained, m.lost, m.lost_to_x), (1, 2, 2));
    }
}
