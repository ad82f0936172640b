//! The validity gate (issue 16): a model or trained baseline that is not a real model must
//! not land in a table. A model fails when its top-1 on its own test images is at most
//! [`CHANCE_MARGIN`] points above chance (100 / classes; below chance fails too), or when
//! it predicts one class for every image: that class at 100% and every other at 0%
//! (on an imbalanced image set, such as a pair of 1,000 CIFAR-10 and 50 Tiny ImageNet
//! images, such a model scores far above chance).

use anyhow::{Result, bail};

/// Points above chance a model must exceed.
pub const CHANCE_MARGIN: f64 = 5.0;

/// What the gate knows of a model's predictions on its own test images.
#[derive(Clone, Copy, Debug)]
pub struct Scores<'a> {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Classes the model predicts among.
    pub classes: usize,
    /// Top-1 accuracy per class in percent, when known.
    pub per_class: Option<&'a [f64]>,
    /// Class names (for the message), when known.
    pub names: Option<&'a [String]>,
}

/// Fails naming `what` (a model, a baseline) when `s` shows no real model.
pub fn check(what: &str, s: Scores) -> Result<()> {
    if !s.top1.is_finite() {
        bail!(
            "validity gate: {what} has no test accuracy ({}), expected a number",
            s.top1
        );
    }
    if s.classes < 2 {
        bail!(
            "validity gate: {what} predicts {} classes, expected at least 2",
            s.classes
        );
    }
    let chance = 100.0 / s.classes as f64;
    if s.top1 <= chance + CHANCE_MARGIN {
        bail!(
            "validity gate: {what} scores {:.2}% top-1 on its own test images, not more than {CHANCE_MARGIN} points above chance ({chance:.2}% for {} classes): it is not a trained model, so it cannot be a baseline or a source of modules; train it longer (or set validity_gate = false for a toy test)",
            s.top1,
            s.classes
        );
    }
    if let Some(c) = s.per_class.and_then(one_class) {
        let name = s
            .names
            .and_then(|n| n.get(c))
            .map_or(String::new(), |n| format!(" ({n})"));
        bail!(
            "validity gate: {what} predicts class {c}{name} for every test image (100% on it, 0% on every other class; {:.2}% top-1 only because the image set is imbalanced): it is not a trained model",
            s.top1
        );
    }
    Ok(())
}

/// The class a model predicts for every image, read off per-class accuracies: one class
/// at 100% and all others at 0%.
fn one_class(per_class: &[f64]) -> Option<usize> {
    let full: Vec<usize> = (0..per_class.len())
        .filter(|&i| per_class[i] >= 100.0 - 1e-9)
        .collect();
    let others_zero = per_class
        .iter()
        .enumerate()
        .all(|(i, &a)| full.contains(&i) || a <= 1e-9);
    (per_class.len() >= 2 && full.len() == 1 && others_zero).then(|| full[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(top1: f64, classes: usize, per_class: Option<&[f64]>) -> Scores<'_> {
        Scores {
            top1,
            classes,
            per_class,
            names: None,
        }
    }

    #[test]
    fn models_at_chance_fail() {
        // Table 2's deer/frog TMA: 48.9% on 2 classes.
        let e = check("TMA deer/frog", scores(48.9, 2, None)).expect_err("at chance");
        assert!(e.to_string().contains("TMA deer/frog scores 48.90%"), "{e}");
        assert!(
            check("m", scores(55.0, 2, None)).is_err(),
            "5 points above chance"
        );
        assert!(check("m", scores(55.01, 2, None)).is_ok());
        assert!(check("m", scores(14.9, 10, None)).is_err());
        assert!(check("m", scores(24.97, 10, None)).is_ok());
        assert!(
            check("m", scores(20.0, 2, None)).is_err(),
            "below chance fails too"
        );
        assert!(check("m", scores(f64::NAN, 2, None)).is_err());
    }

    #[test]
    fn a_model_that_predicts_one_class_fails_on_an_imbalanced_set() {
        // Table 3's TMA: every image called the CIFAR-10 class, 1,000 of 1,050 right.
        let names = ["cat".to_string(), "gorilla".to_string()];
        let s = Scores {
            top1: 95.24,
            classes: 2,
            per_class: Some(&[100.0, 0.0]),
            names: Some(&names),
        };
        let e = check("TMA cat/gorilla", s).expect_err("one class");
        assert!(
            e.to_string()
                .contains("predicts class 0 (cat) for every test image"),
            "{e}"
        );
        assert!(check("m", scores(95.0, 2, Some(&[100.0, 2.0]))).is_ok());
        assert!(
            check(
                "m",
                scores(
                    90.0,
                    10,
                    Some(&[100.0, 0.0, 0.0, 90.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
                )
            )
            .is_ok()
        );
        assert_eq!(one_class(&[0.0, 100.0, 0.0]), Some(1));
        assert_eq!(one_class(&[100.0, 100.0]), None);
    }
}
