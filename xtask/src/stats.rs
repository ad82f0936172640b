//! Paired bootstrap intervals over test images (issue 15/16: a 95% interval for each
//! composed-minus-model difference).

use anyhow::{Result, bail};
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

/// The 95% paired bootstrap interval of `mean(b) - mean(a)` (in percentage points) for
/// per-image outcomes `a` and `b` of the same images (1 = correct): `resamples` times, draw
/// as many images as there are with replacement (ChaCha8 seeded by `seed`), compute the
/// difference; the interval is the `floor(0.025 R)`-th and `ceil(0.975 R)`-th smallest of
/// the R differences (1-based). Pairs stay together, so what both get right or wrong adds
/// no noise.
pub fn paired_bootstrap(a: &[bool], b: &[bool], resamples: usize, seed: u64) -> Result<Interval> {
    if a.len() != b.len() {
        bail!(
            "paired bootstrap: {} outcomes against {}, expected the same images",
            a.len(),
            b.len()
        );
    }
    if a.is_empty() {
        bail!("paired bootstrap: no images");
    }
    if resamples < 40 {
        bail!("paired bootstrap: {resamples} resamples, expected at least 40 for a 95% interval");
    }
    let d: Vec<i8> = a.iter().zip(b).map(|(&x, &y)| y as i8 - x as i8).collect();
    let n = d.len();
    let points = |sum: i64| 100.0 * sum as f64 / n as f64;
    let diff = points(d.iter().map(|&x| x as i64).sum());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| points((0..n).map(|_| d[rng.random_range(0..n)] as i64).sum()))
        .collect();
    stats.sort_by(f64::total_cmp);
    let lo = stats[((0.025 * resamples as f64).floor() as usize).max(1) - 1];
    let hi = stats[((0.975 * resamples as f64).ceil() as usize).min(resamples) - 1];
    Ok(Interval { diff, lo, hi })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
