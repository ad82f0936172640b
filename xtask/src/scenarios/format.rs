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
