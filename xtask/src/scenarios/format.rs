//! Number and text formatting shared by the scenario reports.

use std::path::Path;

/// A path as a `decomp` argument.
pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `x` with two decimals, `-` when it is missing.
pub(crate) fn opt2(x: Option<f64>) -> String {
    x.map_or("-".into(), fixed2)
}

/// `x` with two decimals, `-` when it is not a number (missing in the artifacts).
pub(crate) fn fixed2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

/// `x` with a sign and two decimals, `-` when it is not a number.
pub(crate) fn signed(x: f64) -> String {
    if x.is_finite() {
        format!("{x:+.2}")
    } else {
        "-".into()
    }
}

/// `+1.23 [+0.50, +2.00]`: a difference with its 95% interval, or the difference alone
/// without one.
pub(crate) fn with_interval(d: f64, ci: Option<&crate::stats::Interval>) -> String {
    match ci {
        Some(c) => format!("{} [{}, {}]", signed(d), signed(c.lo), signed(c.hi)),
        None => signed(d),
    }
}

/// `1 epoch`, `40 epochs`, or `default` when a training spec names none.
pub(crate) fn epochs(e: Option<usize>, default: &str) -> String {
    e.map_or(default.into(), |e| {
        format!("{e} epoch{}", if e == 1 { "" } else { "s" })
    })
}

/// A training spec in words: "`resnet20`, recipe `finetune`, 2 epochs" plus the images it is
/// limited to and the weights it starts from (`--init`, with a new head when `--new-head`).
pub(crate) fn training(t: &crate::manifest::TrainSpec) -> String {
    let init = t.args.iter().position(|a| a == "--init");
    let from = init
        .and_then(|i| t.args.get(i + 1))
        .map_or(String::new(), |w| {
            let head = if t.args.iter().any(|a| a == "--new-head") {
                " with a freshly initialized head for its classes"
            } else {
                ""
            };
            format!(", fine-tuned from `{w}`{head}")
        });
    format!(
        "`{}`, recipe `{}`, {}{}{from}",
        t.arch,
        t.recipe,
        epochs(t.epochs, "the recipe's default epochs"),
        image_limit(t),
    )
}

/// " on the first N training images" when a training spec limits its images, else nothing.
fn image_limit(t: &crate::manifest::TrainSpec) -> String {
    t.train_limit.map_or(String::new(), |n| {
        format!(" on the first {n} training images")
    })
}

/// What differs between a baseline's training (`who`: TMA, M) and the paper's: its epochs,
/// recipe and images against the paper's 200 epochs.
pub(crate) fn schedule_vs_paper(who: &str, t: &crate::manifest::TrainSpec) -> String {
    format!(
        "our {who} trains {} of `{}`{}, the paper's models 200 epochs (METHOD.md section 6)",
        epochs(t.epochs, "the recipe's default epochs"),
        t.recipe,
        image_limit(t),
    )
}

/// The "Compare the differences, not the absolute accuracies: ..." paragraph of the
/// inter-dataset reports (Tables 3 and 5): how our setting differs from the paper's, `first`
/// (the data and modules), the count of `rows` when not the paper's 16 (`unit`: pairs,
/// cases), and the baseline `who`'s schedule.
pub(crate) fn differences_note(
    first: String,
    rows: usize,
    unit: &str,
    who: &str,
    t: Option<&crate::manifest::TrainSpec>,
) -> String {
    let mut differs = vec![first];
    if rows != 16 {
        differs.push(format!("{rows} {unit} instead of 16"));
    }
    if let Some(t) = t {
        differs.push(schedule_vs_paper(who, t));
    }
    format!(
        "Compare the differences, not the absolute accuracies: {}.\n\n",
        differs.join("; ")
    )
}
