//! Metrics and reports (leaf library, no tensor code): top-k accuracy and per-class
//! accuracy from logits or ranks, and the typed JSON reports of every stage ([`report`]).
//!
//! [`Accumulator`] takes batches of scores and labels (or ranks) and produces an
//! [`EvalReport`]. Ranking ties are broken by class index (lower first), like an argmax that
//! returns the first maximum, so results do not depend on sort stability. NaN and infinite
//! scores are errors ([`EvalError::NonFinite`]), never ranks.

pub mod report;

use serde::{Deserialize, Serialize};

/// Errors of metric computation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("batch has {scores} scores for {labels} labels and {classes} classes")]
    Shape {
        scores: usize,
        labels: usize,
        classes: usize,
    },
    #[error("label {label} at batch position {index} is out of range for {classes} classes")]
    Label {
        label: usize,
        index: usize,
        classes: usize,
    },
    /// A NaN or infinite score: it would never rank below the label (NaN compares false),
    /// so it would count as correct.
    #[error("image {image}: score {class} of node {node} is {value}, expected a finite number")]
    NonFinite {
        /// Position of the image among all images added, in order.
        image: usize,
        node: String,
        class: usize,
        value: f32,
    },
}

/// Accuracy of a classifier on one dataset split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent (top-k with k = min(5, classes)).
    pub top5: f64,
    /// Number of images evaluated.
    pub n: usize,
    /// Top-1 accuracy per class in percent (NaN-free: classes without images report 0).
    pub per_class: Vec<f64>,
    /// Images per class.
    pub per_class_n: Vec<usize>,
}

/// Rank of `label` among `scores` (0 = best); ties go to the lower class index.
pub fn rank_of(scores: &[f32], label: usize) -> usize {
    let s = scores[label];
    scores
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v > s || (v == s && i < label))
        .count()
}

/// Index of the highest score, first one on ties.
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in scores.iter().enumerate() {
        if v > scores[best] {
            best = i;
        }
    }
    best
}

/// The class most often predicted for images of class `c` other than `c` itself, with its
/// count, from `c`'s row of a confusion matrix; `None` when every image of `c` is right.
/// Ties go to the lower class index.
pub fn most_confused(row: &[usize], c: usize) -> Option<(usize, usize)> {
    row.iter()
        .enumerate()
        .filter(|&(p, &k)| p != c && k > 0)
        .fold(None, |best: Option<(usize, usize)>, (p, &k)| match best {
            Some((_, bk)) if bk >= k => best,
            _ => Some((p, k)),
        })
}

/// Streams batches of `[batch, classes]` scores into accuracy counts.
#[derive(Clone, Debug)]
pub struct Accumulator {
    classes: usize,
    top1: usize,
    top5: usize,
    n: usize,
    class_correct: Vec<usize>,
    class_n: Vec<usize>,
    /// Name of the node the scores come from, for errors.
    node: String,
    /// Every image's label and label rank, when asked for ([`Accumulator::keep_images`]).
    images: Option<report::PerImage>,
    /// `[label][predicted]` image counts of the images added with scores
    /// ([`Accumulator::add`]; [`Accumulator::add_rank`] knows no prediction).
    confusion: Vec<usize>,
    /// Images added by rank only.
    ranked_only: usize,
}

impl Accumulator {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            top1: 0,
            top5: 0,
            n: 0,
            class_correct: vec![0; classes],
            class_n: vec![0; classes],
            node: "output".into(),
            images: None,
            confusion: vec![0; classes * classes],
            ranked_only: 0,
        }
    }

    /// Also keeps every image's label and label rank, in the order added
    /// ([`Accumulator::per_image`]).
    pub fn keep_images(mut self) -> Self {
        self.images = Some(report::PerImage::default());
        self
    }

    /// The labels and ranks kept since [`Accumulator::keep_images`] (`None` without it).
    pub fn per_image(&self) -> Option<&report::PerImage> {
        self.images.as_ref()
    }

    /// Counts one image whose label is in range.
    fn count_image(&mut self, label: usize, rank: usize) {
        self.n += 1;
        self.class_n[label] += 1;
        if rank == 0 {
            self.top1 += 1;
            self.class_correct[label] += 1;
        }
        if rank < self.classes.min(5) {
            self.top5 += 1;
        }
        if let Some(p) = &mut self.images {
            p.labels.push(label);
            p.rank.push(rank);
        }
    }

    /// Names the node the scores of [`Accumulator::add`] come from (default `output`), so a
    /// non-finite score is reported with it.
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = node.to_string();
        self
    }

    /// Adds a batch: `scores` is row-major `[labels.len(), classes]`. A NaN or infinite
    /// score is an [`EvalError::NonFinite`] and adds nothing of the batch.
    pub fn add(&mut self, scores: &[f32], labels: &[usize]) -> Result<(), EvalError> {
        if scores.len() != labels.len() * self.classes {
            return Err(EvalError::Shape {
                scores: scores.len(),
                labels: labels.len(),
                classes: self.classes,
            });
        }
        if let Some(i) = scores.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite {
                image: self.n + i / self.classes,
                node: self.node.clone(),
                class: i % self.classes,
                value: scores[i],
            });
        }
        for (i, (row, &label)) in scores.chunks_exact(self.classes).zip(labels).enumerate() {
            if label >= self.classes {
                return Err(EvalError::Label {
                    label,
                    index: i,
                    classes: self.classes,
                });
            }
            self.count_image(label, rank_of(row, label));
            self.confusion[label * self.classes + argmax(row)] += 1;
        }
        Ok(())
    }

    /// Adds one image given the rank of its true label in some ranking (0 = predicted).
    pub fn add_rank(&mut self, label: usize, rank: usize) -> Result<(), EvalError> {
        if label >= self.classes {
            return Err(EvalError::Label {
                label,
                index: self.n,
                classes: self.classes,
            });
        }
        self.count_image(label, rank);
        self.ranked_only += 1;
        Ok(())
    }

    /// The confusion matrix, `[label][predicted]` image counts (the prediction is the
    /// highest score, the first on ties); `None` when some image was added by rank only.
    pub fn confusion(&self) -> Option<Vec<Vec<usize>>> {
        (self.ranked_only == 0).then(|| {
            self.confusion
                .chunks(self.classes.max(1))
                .map(<[usize]>::to_vec)
                .collect()
        })
    }

    /// Images seen so far.
    pub fn count(&self) -> usize {
        self.n
    }

    pub fn finish(&self) -> EvalReport {
        let pct = |a: usize, b: usize| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        EvalReport {
            top1: pct(self.top1, self.n),
            top5: pct(self.top5, self.n),
            n: self.n,
            per_class: self
                .class_correct
                .iter()
                .zip(&self.class_n)
                .map(|(&c, &n)| pct(c, n))
                .collect(),
            per_class_n: self.class_n.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(scores: &[f32], labels: &[usize], classes: usize, top1: f64, top5: f64) {
        let mut a = Accumulator::new(classes);
        a.add(scores, labels).expect("valid batch");
        let r = a.finish();
        assert_eq!(
            (r.top1, r.top5),
            (top1, top5),
            "scores {scores:?} labels {labels:?}"
        );
    }

    #[test]
    fn confusion_counts_predictions_and_finds_the_main_confusion() {
        // 3 classes; label 0 predicted 0, 2, 2; label 1 predicted 1.
        let scores = [
            3.0, 1.0, 0.0, //
            0.0, 1.0, 2.0, //
            1.0, 0.0, 5.0, //
            0.0, 4.0, 1.0,
        ];
        let mut a = Accumulator::new(3);
        a.add(&scores, &[0, 0, 0, 1]).expect("valid batch");
        let m = a.confusion().expect("scores give predictions");
        assert_eq!(m, vec![vec![1, 0, 2], vec![0, 1, 0], vec![0, 0, 0]]);
        assert_eq!(most_confused(&m[0], 0), Some((2, 2)));
        assert_eq!(most_confused(&m[1], 1), None);
        // Ties go to the lower class.
        assert_eq!(most_confused(&[0, 3, 3], 0), Some((1, 3)));
        // A rank carries no prediction: no confusion matrix.
        a.add_rank(2, 1).expect("label in range");
        assert_eq!(a.confusion(), None);
    }

    #[test]
    fn top1_and_top5() {
        // 6 classes: label 0 ranked 1st, label 5 ranked 6th, label 2 ranked 5th.
        let s = [9., 1., 2., 3., 4., 5.];
        check(&s, &[0], 6, 100.0, 100.0);
        check(&s, &[1], 6, 0.0, 0.0);
        check(&s, &[2], 6, 0.0, 100.0);
        check(&[s, s].concat(), &[0, 1], 6, 50.0, 50.0);
    }

    #[test]
    fn kept_images_are_labels_and_ranks_in_order() {
        let mut a = Accumulator::new(3).keep_images();
        a.add(&[3., 2., 1., 0., 5., 4.], &[2, 1]).expect("valid");
        a.add_rank(0, 1).expect("valid");
        let p = a.per_image().expect("kept");
        assert_eq!(p.labels, vec![2, 1, 0]);
        assert_eq!(p.rank, vec![2, 0, 1]);
        assert_eq!(p.top1_hits(), vec![false, true, false]);
        assert!(Accumulator::new(3).per_image().is_none());
    }

    #[test]
    fn ties_go_to_lower_index() {
        check(&[1., 1.], &[0], 2, 100.0, 100.0);
        check(&[1., 1.], &[1], 2, 0.0, 100.0);
        assert_eq!(argmax(&[0., 3., 3.]), 1);
    }

    #[test]
    fn per_class_and_errors() {
        let mut a = Accumulator::new(2);
        a.add(&[1., 0., 1., 0., 0., 1.], &[0, 1, 1]).expect("valid");
        let r = a.finish();
        assert_eq!(r.per_class, vec![100.0, 50.0]);
        assert_eq!(r.per_class_n, vec![1, 2]);
        assert!(a.add(&[1., 0.], &[2]).is_err());
        assert!(a.add(&[1., 0., 3.], &[0]).is_err());
    }

    #[test]
    fn non_finite_scores_never_count() {
        let mut a = Accumulator::new(2).for_node("linear");
        a.add(&[1., 0.], &[0]).expect("finite");
        for (scores, message) in [
            (
                [0., f32::NAN, 1., 0.],
                "image 1: score 1 of node linear is NaN",
            ),
            (
                [0., 1., f32::INFINITY, 0.],
                "image 2: score 0 of node linear is inf",
            ),
            (
                [0., 1., 1., f32::NEG_INFINITY],
                "image 2: score 1 of node linear is -inf",
            ),
        ] {
            let err = a.add(&scores, &[1, 0]).expect_err("non-finite").to_string();
            assert!(err.starts_with(message), "{err}");
        }
        assert_eq!(a.count(), 1, "a refused batch adds nothing");
    }
}
