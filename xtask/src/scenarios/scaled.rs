//! A vote of ours beside the paper's in the inter-dataset scenarios (`[compose]
//! scale_second`, Tables 3 and 5): the second model's module's margins multiplied by the
//! ratio of the base modules' median margin to its own, both on training images, because
//! the vote compares margins of two models whose scales differ.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use decomp_eval::report::{Margins, ModelEval, VoteReport};

use super::format::{fixed2, with_interval};
use super::table4::medians_of;
use super::{Model, Run, Second};
use crate::engine::read;
use crate::stats::{Interval, Paired, Side};

/// The factor, the scaled vote, or why there is none.
pub(super) type Scaled = Result<(f64, VoteReport), String>;

/// With `[compose] scale_second`: the margins of the base model's `modules` (one per class
/// of `classes`, in order) on those classes' training images, one unit for every pair or
/// case (`what`: its name after the architecture), read once; `None` without the option or
/// while a module or the unit is not this process's.
pub(super) fn base_train_margins(
    r: &Run,
    base: &Model,
    modules: &[Option<PathBuf>],
    classes: &[usize],
    what: &str,
) -> Result<Option<Margins>> {
    if !r.m.compose.scale_second {
        return Ok(None);
    }
    let Some(ms) = modules.iter().cloned().collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    r.train_margins(
        &format!("{}-{what}-train", base.arch),
        &ms,
        &base.data,
        classes,
    )?
    .map(|f| read::<Margins>(&f))
    .transpose()
}

/// The median margin of the second model's module of drawn class `j` (the file `module`)
/// on its class's training images (a margins unit of that module alone); `None` while the
/// unit is not this process's.
pub(super) fn second_train_median(
    r: &Run,
    second: &Second,
    j: usize,
    module: &Path,
) -> Result<Option<f64>> {
    let own = second.model_class[j];
    let Some(f) = r.train_margins(
        &format!("{}-class{own:03}-train", second.model.arch),
        &[module.to_path_buf()],
        &second.model.data,
        &[own],
    )?
    else {
        return Ok(None);
    };
    medians_of(&read::<Margins>(&f)?, 0)
        .with_context(|| format!("the margins in {}", f.display()))
        .map(|m| Some(m.own))
}

/// The vote of the margin file `mg` with entry `col` of `pick` multiplied by `want / have`
/// (the base modules' and the second module's median margins on training images), as the
/// vote unit `name`; `Some(Err)`: why there is no factor.
pub(super) fn scaled_vote(
    r: &Run,
    name: &str,
    mg: &Path,
    pick: &[String],
    col: usize,
    (want, have): (f64, f64),
) -> Result<Option<Scaled>> {
    let factor = want / have;
    if !(want > 0.0 && have > 0.0 && factor.is_finite()) {
        return Ok(Some(Err(format!(
            "the median margins on the training images are not both positive (the base modules {want:.2}, the \
             second model's module {have:.2})"
        ))));
    }
    let mut pick = pick.to_vec();
    pick[col] = format!("0:{col}*{factor:.6}");
    let v = r.vote_per_image(name, &[PathBuf::from(mg)], &pick)?;
    Ok(v.map(|v| Ok((factor, v))))
}

/// How a scenario names the three compositions of the section.
pub(super) struct Names {
    /// The paper's vote (`D`, `MA`).
    pub paper: &'static str,
    /// The trained baseline (`M`, `TMA`).
    pub trained: &'static str,
    /// Whether the scenario's differences are `trained − composed` (Table 3's TMA − MA)
    /// rather than `composed − trained` (Table 5's D − M).
    pub trained_first: bool,
    /// The second model's class in the table's last column (`the new class`).
    pub class: &'static str,
}

impl Names {
    fn ours(&self) -> String {
        format!("scaled {}", self.paper)
    }

    fn vs_trained(&self) -> String {
        if self.trained_first {
            format!("{} − {}", self.trained, self.ours())
        } else {
            format!("{} − {}", self.ours(), self.trained)
        }
    }
}

/// One row of the scaled vote: against the trained baseline and against the paper's vote,
/// top-1 on all the row's test images with paired intervals.
pub(super) struct ScaledRow {
    label: String,
    vote: Scaled,
    /// Per-image top-1 hits of the two comparisons (`a`, `b` of [`Paired`]), for the means.
    vs_trained: Option<(Vec<bool>, Vec<bool>)>,
    vs_paper: Option<(Vec<bool>, Vec<bool>)>,
    ci_trained: Option<Interval>,
    ci_paper: Option<Interval>,
    class_acc: Option<f64>,
}

impl ScaledRow {
    /// The row `label`: `vote` against the paper's vote `paper` and the trained baseline's
    /// evaluation `trained` on the same images; `col`: the second model's class's entry.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: &str,
        vote: Scaled,
        paper: &VoteReport,
        trained: &ModelEval,
        col: usize,
        names: &Names,
        resamples: usize,
        seed: u64,
    ) -> Result<Self> {
        let mut row = Self {
            label: label.into(),
            vote,
            vs_trained: None,
            vs_paper: None,
            ci_trained: None,
            ci_paper: None,
            class_acc: None,
        };
        if let Ok((_, s)) = &row.vote {
            let ours = Side {
                what: format!("the {} vote of {label}", names.ours()),
                per_image: s.per_image.as_ref(),
                reported: s.top1,
            };
            let base = Side {
                what: format!("the {} test evaluation of {label}", names.trained),
                per_image: trained.per_image.as_ref(),
                reported: trained.top1,
            };
            let (mut pt, mut pp) = (Paired::default(), Paired::default());
            let (a, b) = if names.trained_first {
                (&ours, &base)
            } else {
                (&base, &ours)
            };
            row.ci_trained = Some(pt.add(1, a, b, resamples, seed)?);
            row.ci_paper = Some(pp.add(
                1,
                &Side {
                    what: format!("the {} vote of {label}", names.paper),
                    per_image: paper.per_image.as_ref(),
                    reported: paper.top1,
                },
                &ours,
                resamples,
                seed,
            )?);
            row.vs_trained = pt.rows().first().cloned();
            row.vs_paper = pp.rows().first().cloned();
            row.class_acc = s.per_class.get(col).copied();
        }
        Ok(row)
    }
}

/// With `[compose] scale_second`: [`scaled_section`] appended to the report `md`, its json;
/// `None` without the option.
pub(super) fn push_scaled_section(
    r: &Run,
    md: &mut String,
    rows: &[ScaledRow],
    cases: usize,
    names: &Names,
) -> Result<Option<Value>> {
    if !r.m.compose.scale_second {
        return Ok(None);
    }
    let bs = r.m.bootstrap.unwrap_or_default();
    let (text, js) = scaled_section(rows, cases, names, bs.resamples, bs.seed)?;
    md.push_str(&text);
    Ok(Some(js))
}

/// The section of the scaled vote (ours, not the paper's): a row per case, the mean of the
/// rows with both differences' intervals (`cases`: the table's rows; no mean unless every
/// one has a scaled vote), and its json.
fn scaled_section(
    rows: &[ScaledRow],
    cases: usize,
    names: &Names,
    resamples: usize,
    seed: u64,
) -> Result<(String, Value)> {
    let ours = names.ours();
    let mut md = format!(
        "## {} with the second model's module's margins scaled (ours, not the paper's)\n\n\
         The paper's vote compares margins of two models; here the second model's module's margins are multiplied by \
         the ratio of the base modules' median margin (each on its class's training images) to the second module's \
         median margin on its class's training images, then the modules vote again ({ours}). The factor is chosen on \
         training images only.\n\n\
         | case | factor | {ours} top-1 % | {ours} top-5 % | {} top-1 [95% CI] | {ours} − {} top-1 [95% CI] | {ours} on \
         {} % |\n|---|---|---|---|---|---|---|\n",
        names.paper,
        names.vs_trained(),
        names.paper,
        names.class
    );
    let mut js = Vec::new();
    let (mut vs_t, mut vs_p, mut tops) = (Vec::new(), Vec::new(), Vec::new());
    let mut notes = Vec::new();
    let cell = |c: &Option<Interval>| {
        c.as_ref()
            .map_or("-".into(), |c| with_interval(c.diff, Some(c)))
    };
    for row in rows {
        match &row.vote {
            Ok((factor, v)) => {
                let _ = writeln!(
                    md,
                    "| {} | {factor:.2} | {} | {} | {} | {} | {:.1} |",
                    row.label,
                    fixed2(v.top1),
                    fixed2(v.top5),
                    cell(&row.ci_trained),
                    cell(&row.ci_paper),
                    row.class_acc.unwrap_or(f64::NAN)
                );
                js.push(
                    json!({"case": row.label, "factor": factor, "top1": v.top1, "top5": v.top5,
                    "vs_trained_top1_ci": row.ci_trained, "minus_paper_top1_ci": row.ci_paper,
                    "second_class": row.class_acc}),
                );
                if let (Some(a), Some(b)) = (&row.vs_trained, &row.vs_paper) {
                    vs_t.push(a.clone());
                    vs_p.push(b.clone());
                    tops.push(v.top1);
                }
            }
            Err(why) => {
                let _ = writeln!(md, "| {} | - | - | - | - | - | - |", row.label);
                js.push(json!({"case": row.label, "not_voted": why}));
                notes.push(format!("{}: not voted, {why}.", row.label));
            }
        }
    }
    let mean = if !vs_t.is_empty() && vs_t.len() == cases {
        let cmp = |v: &[(Vec<bool>, Vec<bool>)]| -> Result<Interval> {
            let c: Vec<(&[bool], &[bool])> = v
                .iter()
                .map(|(a, b)| (a.as_slice(), b.as_slice()))
                .collect();
            crate::stats::mean_paired_bootstrap(&c, resamples, seed)
        };
        let (ct, cp) = (cmp(&vs_t)?, cmp(&vs_p)?);
        let top1 = tops.iter().sum::<f64>() / tops.len() as f64;
        let _ = writeln!(
            md,
            "| **mean** | | {} | | {} | {} | |",
            fixed2(top1),
            with_interval(ct.diff, Some(&ct)),
            with_interval(cp.diff, Some(&cp))
        );
        Some(json!({"top1": top1, "vs_trained_top1_ci": ct, "minus_paper_top1_ci": cp}))
    } else {
        None
    };
    md.push('\n');
    for n in notes {
        let _ = writeln!(md, "{n}\n");
    }
    Ok((
        md,
        json!({"vs_trained": names.vs_trained(), "minus_paper": format!("{ours} − {}", names.paper),
            "rows": js, "mean": mean}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vote or evaluation of 4 images (labels 0, 0, 1, 1) with the given label ranks.
    fn report<T: serde::de::DeserializeOwned>(rank: [usize; 4]) -> T {
        let hits = rank.iter().filter(|&&r| r == 0).count() as f64;
        let class =
            |c: usize| 50.0 * rank[2 * c..2 * c + 2].iter().filter(|&&r| r == 0).count() as f64;
        serde_json::from_value(json!({
            "pick": [], "classes": [], "modules": [], "model": "m", "weights": "w", "dataset": "d",
            "split": "file", "n": 4, "top1": 25.0 * hits, "top5": 100.0, "per_class": [class(0), class(1)],
            "per_class_n": [2, 2], "class_names": [], "seconds": 0.0, "images_per_second": 0.0,
            "per_image": {"labels": [0, 0, 1, 1], "rank": rank}
        }))
        .expect("a report")
    }

    #[test]
    fn the_scaled_vote_is_compared_with_both_baselines_image_by_image() {
        let d: VoteReport = report([0, 1, 0, 1]);
        let m: ModelEval = report([0, 0, 0, 1]);
        let scaled: VoteReport = report([0, 0, 1, 0]);
        let t5 = Names {
            paper: "D",
            trained: "M",
            trained_first: false,
            class: "the new class",
        };
        let row = |label: &str, vote: Scaled, col, names: &Names| {
            ScaledRow::new(label, vote, &d, &m, col, names, 200, 0).expect("a row")
        };
        let ok = row("a (1) → b", Ok((2.0, scaled.clone())), 1, &t5);
        assert!(ok.ci_trained.as_ref().is_some_and(|c| c.diff.abs() < 1e-9));
        assert!(
            ok.ci_paper
                .as_ref()
                .is_some_and(|c| (c.diff - 25.0).abs() < 1e-9)
        );
        assert_eq!(ok.class_acc, Some(50.0));
        let (md, js) = scaled_section(std::slice::from_ref(&ok), 1, &t5, 200, 0).expect("md");
        assert!(md.contains("| scaled D − M top-1 [95% CI] |"), "{md}");
        assert!(
            md.contains("| a (1) → b | 2.00 | 75.00 | 100.00 | +0.00 ["),
            "{md}"
        );
        assert!(
            (js["mean"]["minus_paper_top1_ci"]["diff"]
                .as_f64()
                .expect("diff")
                - 25.0)
                .abs()
                < 1e-9
        );
        // A case without a factor is a row that says why, and the mean needs every case.
        let err = row("c (0) → e", Err("no factor".into()), 0, &t5);
        let (md, js) = scaled_section(&[ok, err], 2, &t5, 200, 0).expect("md");
        assert!(md.contains("c (0) → e: not voted, no factor."), "{md}");
        assert!(js["mean"].is_null(), "{js}");
        assert_eq!(js["rows"][1]["not_voted"], "no factor");
        // Table 3's sign: the trained baseline minus ours (M beats the scaled vote by 25 here).
        let t3 = Names {
            paper: "MA",
            trained: "TMA",
            trained_first: true,
            class: "the second class",
        };
        let worse: VoteReport = report([0, 1, 1, 0]);
        let r3 = row("x", Ok((1.5, worse)), 1, &t3);
        assert!(
            r3.ci_trained
                .as_ref()
                .is_some_and(|c| (c.diff - 25.0).abs() < 1e-9)
        );
        let (md, _) = scaled_section(&[r3], 1, &t3, 200, 0).expect("md");
        assert!(
            md.contains("| TMA − scaled MA top-1 [95% CI] | scaled MA − MA top-1"),
            "{md}"
        );
    }
}
