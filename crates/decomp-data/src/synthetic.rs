//! Synthetic, learnable images for tests ([`crate::Dataset::synthetic`]).
//!
//! Class `k` of `K` is a soft round blob whose centre sits on a circle around the image centre
//! at angle `2 pi k / K` and whose colour is a hue at the same angle (a brightness level for
//! gray images), on a dark noisy background. Each image jitters the blob position and adds
//! per-pixel noise, so a tiny CNN (or even a linear model) separates the classes easily but
//! not trivially. Everything is deterministic from the seed (ChaCha8).

use std::f32::consts::TAU;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Normalization;
use crate::source::{Pixels, RecordChunk, Source};

/// Background level and its per-pixel noise amplitude.
const BACKGROUND: f32 = 30.0;
const BACKGROUND_NOISE: f32 = 40.0;
/// Noise added to every pixel, uniformly in `-NOISE..NOISE`.
const NOISE: f32 = 12.0;
/// Blob centre distance from the image centre, and blob radius, as fractions of the short side.
const ORBIT: f32 = 0.28;
const RADIUS: f32 = 0.18;
/// Random shift of the blob centre, as a fraction of the short side.
const JITTER: f32 = 0.06;

pub(crate) fn generate(
    num_classes: usize,
    per_class: usize,
    shape: [usize; 3],
    seed: u64,
) -> (Source, Vec<String>, Normalization) {
    let [c, h, w] = shape;
    let size = c * h * w;
    let n = num_classes * per_class;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::with_capacity(n * size);
    let mut labels = Vec::with_capacity(n);
    let short = h.min(w) as f32;
    for i in 0..n {
        let k = i % num_classes;
        let angle = TAU * k as f32 / num_classes as f32;
        let cx = (w as f32 - 1.0) / 2.0
            + ORBIT * short * angle.cos()
            + JITTER * short * rng.random_range(-1.0..=1.0);
        let cy = (h as f32 - 1.0) / 2.0
            + ORBIT * short * angle.sin()
            + JITTER * short * rng.random_range(-1.0..=1.0);
        let r2 = (RADIUS * short).max(1.0).powi(2);
        let colour: Vec<f32> = (0..c)
            .map(|ch| {
                let level = if c == 1 {
                    0.55 + 0.45 * ((k % 4) as f32 + 1.0) / 4.0
                } else {
                    0.5 + 0.45 * (angle + TAU * ch as f32 / c as f32).cos()
                };
                255.0 * level
            })
            .collect();
        for &blob in &colour {
            for y in 0..h {
                for x in 0..w {
                    let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                    let mask = (-d2 / (2.0 * r2)).exp();
                    let background = BACKGROUND + BACKGROUND_NOISE * rng.random::<f32>();
                    let v = background
                        + mask * (blob - background)
                        + NOISE * rng.random_range(-1.0..=1.0);
                    bytes.push(v.round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        labels.push(k);
    }
    let normalization = channel_statistics(&bytes, c, h * w);
    let chunk = RecordChunk {
        path: PathBuf::from("<synthetic>"),
        bytes,
        header: 0,
        stride: size,
        pixel_offset: 0,
        first_item: 0,
        count: n,
    };
    let source = Source {
        description: format!(
            "synthetic {num_classes} classes x {per_class}, shape {shape:?}, seed {seed}"
        ),
        shape,
        labels,
        pixels: Pixels::Records(vec![chunk]),
    };
    (
        source,
        (0..num_classes).map(|k| format!("class_{k}")).collect(),
        normalization,
    )
}

/// Exact per-channel mean and std on `[0, 1]` of CHW images stored back to back
/// (mean 0.5 / std 0.25 where there are no pixels, std 1 where the channel is constant).
fn channel_statistics(bytes: &[u8], c: usize, plane: usize) -> Normalization {
    let mut sum = vec![0f64; c];
    let mut sum_sq = vec![0f64; c];
    if plane > 0 && c > 0 {
        for image in bytes.chunks_exact(c * plane) {
            for (ch, pixels) in image.chunks_exact(plane).enumerate() {
                for &p in pixels {
                    let v = f64::from(p) / 255.0;
                    sum[ch] += v;
                    sum_sq[ch] += v * v;
                }
            }
        }
    }
    let count = (bytes.len() / (c * plane).max(1) * plane) as f64;
    if count == 0.0 {
        return Normalization {
            mean: vec![0.5; c],
            std: vec![0.25; c],
        };
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
    let std = sum
        .iter()
        .zip(&sum_sq)
        .map(|(s, sq)| {
            let m = s / count;
            let var = (sq / count - m * m).max(0.0);
            if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
        })
        .collect();
    Normalization { mean, std }
}
