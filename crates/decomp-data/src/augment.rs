//! On-the-fly training augmentation of decoded batches.
//!
//! Two families, as the two training recipes use them:
//! - **pad + crop** (He et al. 2016, torchvision `RandomCrop(32, padding=4)`): the image is
//!   padded with black pixels on every side and a window of the original size is cut at a
//!   uniformly random offset;
//! - **shift** (Keras `ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1)`):
//!   the image moves by a random whole number of pixels up to `shift * size`, and the
//!   uncovered border repeats the nearest edge pixel (Keras `fill_mode="nearest"`; Keras
//!   draws real-valued shifts and interpolates, whole pixels are the usual approximation).
//!
//! Both are followed by an optional horizontal flip with probability 1/2. Everything runs on
//! the normalized `f32` batch, so "black" is the normalized value of pixel 0 per channel.
//! The random draws come from the caller's generator, in a fixed order (per image: flip,
//! then the offsets), so a seeded generator gives the same batch every time.

use rand::Rng;

use crate::{Batch, Normalization};

/// Which augmentation to apply to each training image.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Augmentation {
    /// Pixels of black padding on every side before a random crop back to the original
    /// size (0 = no crop). He et al. 2016 use 4 on 32x32 images.
    pub pad_crop: usize,
    /// Largest random shift as a fraction of the height/width, edges repeated (0 = none).
    pub shift: f32,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
}

impl Augmentation {
    /// True when the augmentation leaves every image as it is.
    pub fn is_identity(&self) -> bool {
        self.pad_crop == 0 && self.shift <= 0.0 && !self.flip
    }

    /// Augments every image of `batch` in place; `norm` gives the padding colour (pixel 0).
    pub fn apply<R: Rng>(&self, batch: &mut Batch, norm: &Normalization, rng: &mut R) {
        if self.is_identity() {
            return;
        }
        let [n, c, h, w] = batch.shape;
        let black: Vec<f32> = (0..c)
            .map(|ch| {
                let (m, s) = (
                    norm.mean.get(ch).copied().unwrap_or(0.0),
                    norm.std.get(ch).copied().unwrap_or(1.0),
                );
                -m / s
            })
            .collect();
        let max_dy = (self.shift * h as f32).round() as i64;
        let max_dx = (self.shift * w as f32).round() as i64;
        let pad = self.pad_crop as i64;
        let mut scratch = vec![0.0f32; c * h * w];
        for image in batch.images.chunks_exact_mut(c * h * w).take(n) {
            let flip = self.flip && rng.random_bool(0.5);
            // Offset of the output window in input coordinates, and how to fill outside.
            let (dy, dx, edge) = if pad > 0 {
                (
                    rng.random_range(-pad..=pad),
                    rng.random_range(-pad..=pad),
                    false,
                )
            } else if max_dy > 0 || max_dx > 0 {
                (
                    rng.random_range(-max_dy..=max_dy),
                    rng.random_range(-max_dx..=max_dx),
                    true,
                )
            } else {
                (0, 0, false)
            };
            let (dy, dx) = (dy as isize, dx as isize);
            if dy == 0 && dx == 0 && !flip {
                continue;
            }
            for ch in 0..c {
                let plane = &image[ch * h * w..(ch + 1) * h * w];
                let out = &mut scratch[ch * h * w..(ch + 1) * h * w];
                for y in 0..h {
                    let sy = y as isize + dy;
                    for x in 0..w {
                        let xo = if flip { w - 1 - x } else { x };
                        let sx = xo as isize + dx;
                        let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                        out[y * w + x] = if inside {
                            plane[sy as usize * w + sx as usize]
                        } else if edge {
                            let cy = sy.clamp(0, h as isize - 1) as usize;
                            let cx = sx.clamp(0, w as isize - 1) as usize;
                            plane[cy * w + cx]
                        } else {
                            black[ch]
                        };
                    }
                }
            }
            image.copy_from_slice(&scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn batch(n: usize, c: usize, h: usize, w: usize) -> Batch {
        Batch {
            images: (0..n * c * h * w).map(|i| i as f32).collect(),
            labels: vec![0; n],
            shape: [n, c, h, w],
        }
    }

    #[test]
    fn identity_leaves_the_batch_alone() {
        let mut b = batch(2, 3, 4, 4);
        let before = b.clone();
        Augmentation::default().apply(
            &mut b,
            &Normalization::unit(3),
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        assert_eq!(b, before);
    }

    #[test]
    fn flip_only_mirrors_rows() {
        let mut b = batch(64, 1, 2, 3);
        let before = b.clone();
        let aug = Augmentation {
            flip: true,
            ..Default::default()
        };
        aug.apply(
            &mut b,
            &Normalization::unit(1),
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        let mut flipped = 0;
        for (img, orig) in b.images.chunks(6).zip(before.images.chunks(6)) {
            let mirrored: Vec<f32> = orig
                .chunks(3)
                .flat_map(|r| r.iter().rev().copied())
                .collect();
            assert!(
                img == orig || img == mirrored.as_slice(),
                "{img:?} vs {orig:?}"
            );
            flipped += usize::from(img != orig);
        }
        assert!((16..=48).contains(&flipped), "flipped {flipped} of 64");
    }

    #[test]
    fn pad_crop_keeps_pixels_or_pads_black() {
        let norm = Normalization::new(&[0.5], &[0.25]);
        let mut b = batch(32, 1, 5, 5);
        let before = b.clone();
        let aug = Augmentation {
            pad_crop: 2,
            ..Default::default()
        };
        aug.apply(&mut b, &norm, &mut ChaCha8Rng::seed_from_u64(2));
        let mut moved = 0;
        for (img, orig) in b.images.chunks(25).zip(before.images.chunks(25)) {
            // Every output pixel is black (-2) or an input pixel shifted by one common offset.
            let offsets: std::collections::BTreeSet<isize> = img
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != -2.0)
                .map(|(i, v)| (*v - orig[0]) as isize - i as isize)
                .collect();
            assert!(offsets.len() <= 1, "{offsets:?}");
            moved += usize::from(img != orig);
        }
        assert!(moved > 16);
    }

    #[test]
    fn shift_repeats_the_edge() {
        let mut b = batch(16, 1, 10, 10);
        let aug = Augmentation {
            shift: 0.2,
            ..Default::default()
        };
        aug.apply(
            &mut b,
            &Normalization::unit(1),
            &mut ChaCha8Rng::seed_from_u64(3),
        );
        // Edge fill: no value outside the original range appears.
        for (k, img) in b.images.chunks(100).enumerate() {
            let lo = (k * 100) as f32;
            assert!(img.iter().all(|v| (lo..lo + 100.0).contains(v)));
        }
    }

    #[test]
    fn same_seed_same_batch() {
        let aug = Augmentation {
            pad_crop: 4,
            flip: true,
            shift: 0.0,
        };
        let norm = Normalization::imagenet();
        let run = |seed| {
            let mut b = batch(8, 3, 8, 8);
            aug.apply(&mut b, &norm, &mut ChaCha8Rng::seed_from_u64(seed));
            b
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
