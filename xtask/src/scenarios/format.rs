//! Number and text formatting shared by the scenario reports.

use std::path::Path;

use serde_json::Value;

/// A path as a `decomp` argument.
pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn f2(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
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

pub(crate) fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}
