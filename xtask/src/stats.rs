//! Paired bootstrap intervals over test images (issue 15/16: a 95% interval for each
//! composed-minus-model difference, and for a mean of such differences over pairs).

use anyhow::{Context, Result, bail};
use decomp_eval::report::PerImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A difference in percentage points with its bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Interval {
    /// `mean(b) - mean(a)` on the images themselves, in points.
    pub diff: f64,
    /// The 2.5% and 97.5% quantiles of the resampled differences.
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// `(lo, hi)` of an interval that may be missing (NaN then), for csv columns.
    pub fn bounds(ci: Option<Interval>) -> (f64, f64) {
        ci.map_or((f64::NAN, f64::NAN), |c| (c.lo, c.hi))
    }
}

/// The 95% paired bootstrap interval of `mean(b) - mean(a)` (in percentage points) for
/// per-image outcomes `a` and `b` of the same images (1 = correct): `resamples` times, draw
/// as many images as there are with replacement (ChaCha8 seeded by `seed`), compute the
/// difference; the interval is the `floor(0.025 R)`-th and `ceil(0.975 R)`-th smallest of
/// the R differences (1-based). Pairs stay together, so what both get right or wrong adds
/// no noise.
pub fn paired_bootstrap(a: &[bool], b: &[bool], resamples: usize, seed: u64) -> Result<Interval> {
    mean_paired_bootstrap(&[(a, b)], resamples, seed)
}

/// [`paired_bootstrap`] of the mean over several comparisons, each on its own images
/// (Table 2's pairs of classes): the statistic is the mean over comparisons of
/// `mean(b) - mean(a)`, and each resample redraws every comparison's images within that
/// comparison (as many as it has, with replacement) before averaging. With one comparison
/// it is [`paired_bootstrap`], draw for draw.
pub fn mean_paired_bootstrap(
    comparisons: &[(&[bool], &[bool])],
    resamples: usize,
    seed: u64,
) -> Result<Interval> {
    if comparisons.is_empty() {
        bail!("paired bootstrap: no comparisons");
    }
    for (k, (a, b)) in comparisons.iter().enumerate() {
        if a.len() != b.len() {
            bail!(
                "paired bootstrap: comparison {k}: {} outcomes against {}, expected the same images",
                a.len(),
                b.len()
            );
        }
        if a.is_empty() {
            bail!("paired bootstrap: comparison {k}: no images");
        }
    }
    check_resamples(resamples)?;
    let d: Vec<Vec<i8>> = comparisons
        .iter()
        .map(|(a, b)| a.iter().zip(*b).map(|(&x, &y)| y as i8 - x as i8).collect())
        .collect();
    let points = |sum: i64, n: usize| 100.0 * sum as f64 / n as f64;
    let mean =
        |per: &mut dyn FnMut(&[i8]) -> f64| d.iter().map(|x| per(x)).sum::<f64>() / d.len() as f64;
    let diff = mean(&mut |x: &[i8]| points(x.iter().map(|&v| v as i64).sum(), x.len()));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let stats: Vec<f64> = (0..resamples)
        .map(|_| {
            mean(&mut |x: &[i8]| {
                let n = x.len();
                points((0..n).map(|_| x[rng.random_range(0..n)] as i64).sum(), n)
            })
        })
        .collect();
    Ok(quantiles(diff, stats))
}

/// The median of `v` (the mean of the two middle values for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// At least 40 resamples, so that both 2.5% tails hold a resampled value.
fn check_resamples(resamples: usize) -> Result<()> {
    if resamples < 40 {
        bail!("paired bootstrap: {resamples} resamples, expected at least 40 for a 95% interval");
    }
    Ok(())
}

/// The interval of `diff` from its resampled values: the `floor(0.025 R)`-th and
/// `ceil(0.975 R)`-th smallest of the R values (1-based).
fn quantiles(diff: f64, mut stats: Vec<f64>) -> Interval {
    let resamples = stats.len();
    stats.sort_by(f64::total_cmp);
    let lo = stats[((0.025 * resamples as f64).floor() as usize).max(1) - 1];
    let hi = stats[((0.975 * resamples as f64).ceil() as usize).min(resamples) - 1];
    Interval { diff, lo, hi }
}

/// Per-image top-`k` outcomes (label rank below `k`; `k` = 1: top-1) of two evaluations
/// that must cover the same images in the same order (`a_what` / `b_what` name them in the
/// error): the counts and every image's label must agree.
pub fn paired_hits(
    a: &PerImage,
    a_what: &str,
    b: &PerImage,
    b_what: &str,
    k: usize,
) -> Result<(Vec<bool>, Vec<bool>)> {
    for (p, what) in [(a, a_what), (b, b_what)] {
        if p.labels.len() != p.rank.len() {
            bail!(
                "{what}: {} labels but {} ranks, expected one of each per image",
                p.labels.len(),
                p.rank.len()
            );
        }
    }
    if a.labels.len() != b.labels.len() {
        bail!(
            "{a_what} has {} images, {b_what} {}: a paired comparison needs the same images in the same order",
            a.labels.len(),
            b.labels.len()
        );
    }
    if let Some(i) = (0..a.labels.len()).find(|&i| a.labels[i] != b.labels[i]) {
        bail!(
            "image {i}: label {} in {a_what}, {} in {b_what}: a paired comparison needs the same images in the same order",
            a.labels[i],
            b.labels[i]
        );
    }
    let hits = |p: &PerImage| p.rank.iter().map(|&r| r < k).collect();
    Ok((hits(a), hits(b)))
}

/// One side of a paired comparison: an evaluation (named for errors), its per-image ranks
/// (`None`: an artifact of a decomp without `--per-image`) and the top-k accuracy it
/// reported.
pub struct Side<'a> {
    pub what: String,
    pub per_image: Option<&'a PerImage>,
    pub reported: f64,
}

/// [`paired_hits`] of two reported evaluations, each checked against its own report: the
/// top-`k` accuracy its per-image ranks give must be the one it reported.
pub fn checked_hits<'a>(k: usize, a: &Side<'a>, b: &Side<'a>) -> Result<(Vec<bool>, Vec<bool>)> {
    let rerun = "(a unit of an older decomp without per-image ranks: remove its folder and rerun)";
    let ranks = |s: &Side<'a>| -> Result<&'a PerImage> {
        s.per_image
            .with_context(|| format!("{} has no per-image ranks {rerun}", s.what))
    };
    let (ha, hb) = paired_hits(ranks(a)?, &a.what, ranks(b)?, &b.what, k)?;
    for (s, hits) in [(a, &ha), (b, &hb)] {
        let got = 100.0 * hits.iter().filter(|&&h| h).count() as f64 / hits.len().max(1) as f64;
        if (got - s.reported).abs() > 1e-6 {
            bail!(
                "{}: top-{k} from its per-image ranks is {got}, its report says {}",
                s.what,
                s.reported
            );
        }
    }
    Ok((ha, hb))
}

/// The paired differences of a table's rows (pairs, cases), each on its own images, kept
/// for the interval of their mean.
#[derive(Default)]
pub struct Paired {
    rows: Vec<(Vec<bool>, Vec<bool>)>,
}

impl Paired {
    /// The rows added so far: per row, the per-image hits of its two evaluations (`a`, `b`).
    pub fn rows(&self) -> &[(Vec<bool>, Vec<bool>)] {
        &self.rows
    }

    /// `b - a` in top-`k` points of one row's two evaluations of the same images (checked
    /// by [`checked_hits`]), with its [`paired_bootstrap`] interval; kept for
    /// [`Paired::mean`].
    pub fn add(
        &mut self,
        k: usize,
        a: &Side,
        b: &Side,
        resamples: usize,
        seed: u64,
    ) -> Result<Interval> {
        let (ha, hb) = checked_hits(k, a, b)?;
        let ci = paired_bootstrap(&ha, &hb, resamples, seed)?;
        self.rows.push((ha, hb));
        Ok(ci)
    }

    /// The [`mean_paired_bootstrap`] interval of the rows added, when all `rows` of the
    /// table have one (a row without both evaluations has no difference, so no mean).
    pub fn mean(&self, rows: usize, resamples: usize, seed: u64) -> Result<Option<Interval>> {
        if self.rows.is_empty() || self.rows.len() != rows {
            return Ok(None);
        }
        let cmp: Vec<(&[bool], &[bool])> = self
            .rows
            .iter()
            .map(|(a, b)| (a.as_slice(), b.as_slice()))
            .collect();
        mean_paired_bootstrap(&cmp, resamples, seed).map(Some)
    }

    /// The 95% interval of the mean of the rows' differences when every row is on the same
    /// images (Table 4's replacements, Table 6's options): each resample draws one set of
    /// images for all rows, so the rows' correlation through shared images stays in the
    /// interval. `None` as in [`Paired::mean`].
    pub fn mean_shared(
        &self,
        rows: usize,
        resamples: usize,
        seed: u64,
    ) -> Result<Option<Interval>> {
        if self.rows.is_empty() || self.rows.len() != rows {
            return Ok(None);
        }
        let n = self.rows[0].0.len();
        if let Some(i) = self.rows.iter().position(|(a, _)| a.len() != n) {
            bail!(
                "paired bootstrap: row {i} has {} images, row 0 {n}: a shared-image mean needs the same images in every row",
                self.rows[i].0.len()
            );
        }
        if n == 0 {
            bail!("paired bootstrap: no images");
        }
        check_resamples(resamples)?;
        // Per image: the sum over rows of (b - a).
        let d: Vec<i64> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|(a, b)| b[i] as i64 - a[i] as i64)
                    .sum()
            })
            .collect();
        let points = |sum: i64| 100.0 * sum as f64 / (n * rows) as f64;
        let diff = points(d.iter().sum());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let stats = (0..resamples)
            .map(|_| points((0..n).map(|_| d[rng.random_range(0..n)]).sum()))
            .collect();
        Ok(Some(quantiles(diff, stats)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn shared_image_means_keep_the_rows_correlation() {
        // `a` right on 300 of 400 images; `gain` also on 50 more, `lose` wrong on 50 of them.
        let a: Vec<bool> = (0..400).map(|i| i % 4 != 0).collect();
        let gain: Vec<bool> = (0..400).map(|i| i % 4 != 0 || i % 8 == 0).collect();
        let lose: Vec<bool> = (0..400).map(|i| i % 4 != 0 && i % 8 != 1).collect();
        let rows = |bs: &[&Vec<bool>]| {
            let mut p = Paired::default();
            for b in bs {
                p.rows.push((a.clone(), (*b).clone()));
            }
            p
        };
        // The same change twice: the shared mean is that change, with its own interval;
        // resampling each row on its own would narrow it by about sqrt(2).
        let one = paired_bootstrap(&a, &gain, 2000, 5).expect("ci");
        let twice = rows(&[&gain, &gain]);
        let shared = twice
            .mean_shared(2, 2000, 5)
            .expect("ci")
            .expect("all rows");
        let apart = twice.mean(2, 2000, 5).expect("ci").expect("all rows");
        assert_eq!(
            (shared.diff, shared.lo, shared.hi),
            (one.diff, one.lo, one.hi)
        );
        assert!(
            apart.hi - apart.lo < 0.8 * (shared.hi - shared.lo),
            "{apart:?} {shared:?}"
        );
        // +12.5 and -12.5 points: a mean of 0, inside its interval.
        let m = rows(&[&gain, &lose])
            .mean_shared(2, 500, 1)
            .expect("ci")
            .expect("all rows");
        assert_eq!(m.diff, 0.0);
        assert!(m.lo < 0.0 && m.hi > 0.0, "{m:?}");
        // Rows on different images are refused; a missing row gives no interval.
        let mut bad = rows(&[&gain]);
        bad.rows.push((vec![true; 3], vec![true; 3]));
        assert!(bad.mean_shared(2, 100, 1).is_err());
        assert_eq!(rows(&[&gain]).mean_shared(2, 100, 1).expect("ok"), None);
    }

    #[test]
    fn intervals_of_known_data() {
        // Identical outcomes: no difference in any resample.
        let a = [true, false, true, true];
        let i = paired_bootstrap(&a, &a, 1000, 1).expect("ci");
        assert_eq!((i.diff, i.lo, i.hi), (0.0, 0.0, 0.0));
        // b right everywhere a is wrong: +100 in every resample.
        let i = paired_bootstrap(&[false; 50], &[true; 50], 200, 1).expect("ci");
        assert_eq!((i.diff, i.lo, i.hi), (100.0, 100.0, 100.0));
        // 1,000 images, b gains on 500 of them: the difference is 50 points and its
        // standard error sqrt(0.25 / 1000) = 1.58 points, so the interval is about
        // 50 -/+ 3.1 points.
        let a = vec![false; 1000];
        let b: Vec<bool> = (0..1000).map(|i| i % 2 == 0).collect();
        let i = paired_bootstrap(&a, &b, 4000, 7).expect("ci");
        assert_eq!(i.diff, 50.0);
        assert!((46.4..47.6).contains(&i.lo), "{i:?}");
        assert!((52.4..53.6).contains(&i.hi), "{i:?}");
        // Pairing matters: b = a except 10 images b gets wrong out of 1,000. The unpaired
        // spread of two 90% accuracies would be about +/- 2.6 points; paired, about +/- 0.6.
        let a: Vec<bool> = (0..1000).map(|i| i % 10 != 0).collect();
        let mut b = a.clone();
        for x in b.iter_mut().filter(|x| **x).take(10) {
            *x = false;
        }
        let i = paired_bootstrap(&a, &b, 2000, 3).expect("ci");
        assert!((i.diff + 1.0).abs() < 1e-12, "{i:?}");
        assert!(
            i.lo >= -1.8 && i.lo <= -1.3 && i.hi <= -0.3 && i.hi >= -0.7,
            "{i:?}"
        );
        // Same seed, same interval.
        assert_eq!(paired_bootstrap(&a, &b, 2000, 3).expect("ci"), i);
        assert!(paired_bootstrap(&a, &b[1..], 2000, 3).is_err());
        assert!(paired_bootstrap(&[], &[], 2000, 3).is_err());
    }

    #[test]
    fn mean_over_comparisons_resamples_within_each() {
        // One comparison: the same draws as paired_bootstrap.
        let a: Vec<bool> = (0..200).map(|i| i % 3 != 0).collect();
        let b: Vec<bool> = (0..200).map(|i| i % 4 != 0).collect();
        assert_eq!(
            mean_paired_bootstrap(&[(&a, &b)], 500, 9).expect("ci"),
            paired_bootstrap(&a, &b, 500, 9).expect("ci")
        );
        // Two comparisons with fixed deltas: +100 on 10 images and 0 on 1,000 images. The
        // mean of the deltas is +50 in every resample whatever the image counts (pooling the
        // images instead would give 100 * 10 / 1010 = +0.99).
        let (z10, o10, z1000) = (vec![false; 10], vec![true; 10], vec![false; 1000]);
        let i = mean_paired_bootstrap(&[(&z10, &o10), (&z1000, &z1000)], 400, 1).expect("ci");
        assert_eq!((i.diff, i.lo, i.hi), (50.0, 50.0, 50.0));
        // Two noisy comparisons of 1,000 images, each gaining on half of them (delta 50,
        // standard error 1.58 points each): the mean's standard error is 1.58 / sqrt(2) =
        // 1.12, so the interval is about 50 -/+ 2.2 points, narrower than one comparison's
        // -/+ 3.1.
        let zero = vec![false; 1000];
        let half: Vec<bool> = (0..1000).map(|i| i % 2 == 0).collect();
        let i = mean_paired_bootstrap(&[(&zero, &half), (&zero, &half)], 4000, 7).expect("ci");
        assert_eq!(i.diff, 50.0);
        assert!((47.3..48.3).contains(&i.lo), "{i:?}");
        assert!((51.7..52.7).contains(&i.hi), "{i:?}");
        // A mismatched or empty comparison is an error naming it.
        let e = mean_paired_bootstrap(&[(&zero, &half), (&zero, &half[1..])], 400, 1)
            .expect_err("mismatch")
            .to_string();
        assert!(e.contains("comparison 1"), "{e}");
        assert!(mean_paired_bootstrap(&[], 400, 1).is_err());
    }

    #[test]
    fn paired_hits_need_the_same_images_in_order() {
        let p = |labels: &[usize], rank: &[usize]| PerImage {
            labels: labels.to_vec(),
            rank: rank.to_vec(),
        };
        let (a, b) = paired_hits(
            &p(&[0, 1, 1], &[0, 1, 0]),
            "A",
            &p(&[0, 1, 1], &[1, 0, 0]),
            "B",
            1,
        )
        .expect("same images");
        assert_eq!((a, b), (vec![true, false, true], vec![false, true, true]));
        let e = paired_hits(
            &p(&[0, 1], &[0, 0]),
            "A",
            &p(&[0, 1, 1], &[0, 0, 0]),
            "B",
            1,
        )
        .expect_err("count")
        .to_string();
        assert!(e.contains("A has 2 images, B 3"), "{e}");
        let e = paired_hits(
            &p(&[0, 1, 0], &[0, 0, 0]),
            "A",
            &p(&[0, 0, 1], &[0, 0, 0]),
            "B",
            1,
        )
        .expect_err("order")
        .to_string();
        assert!(e.starts_with("image 1: label 1 in A, 0 in B"), "{e}");
        assert!(paired_hits(&p(&[0], &[]), "A", &p(&[0], &[0]), "B", 1).is_err());
        // Top-5: a rank below 5.
        let (a, b) = paired_hits(
            &p(&[0, 1, 2], &[4, 5, 0]),
            "A",
            &p(&[0, 1, 2], &[9, 1, 5]),
            "B",
            5,
        )
        .expect("same images");
        assert_eq!((a, b), (vec![true, false, true], vec![false, true, false]));
    }

    #[test]
    fn checked_hits_agree_with_the_reported_accuracy() {
        let pa = PerImage {
            labels: vec![0, 1, 1, 0],
            rank: vec![0, 1, 6, 0],
        };
        let pb = PerImage {
            labels: vec![0, 1, 1, 0],
            rank: vec![1, 0, 0, 0],
        };
        fn side<'a>(what: &str, p: Option<&'a PerImage>, reported: f64) -> Side<'a> {
            Side {
                what: what.into(),
                per_image: p,
                reported,
            }
        }
        let (pa, pb) = (&pa, &pb);
        let (a, b) =
            checked_hits(1, &side("A", Some(pa), 50.0), &side("B", Some(pb), 75.0)).expect("agree");
        assert_eq!(
            (a, b),
            (
                vec![true, false, false, true],
                vec![false, true, true, true]
            )
        );
        let (a, _) = checked_hits(5, &side("A", Some(pa), 75.0), &side("B", Some(pb), 100.0))
            .expect("agree");
        assert_eq!(a, vec![true, true, false, true]);
        // A report that its ranks contradict, and ranks that are missing, are errors.
        let e = checked_hits(1, &side("A", Some(pa), 50.0), &side("B", Some(pb), 50.0))
            .expect_err("B reported 50")
            .to_string();
        assert!(
            e.starts_with("B: top-1 from its per-image ranks is 75"),
            "{e}"
        );
        let e = checked_hits(1, &side("A", None, 50.0), &side("B", Some(pb), 75.0))
            .expect_err("no ranks")
            .to_string();
        assert!(e.starts_with("A has no per-image ranks"), "{e}");
    }
}
