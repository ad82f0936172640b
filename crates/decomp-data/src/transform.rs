//! Pixel transforms applied on decode: channel conversion and resizing of CHW `u8` images.

use crate::kind::LUMA;

/// Converts a CHW image with `from` channels to `to` channels: equal counts copy, 1 -> 3
/// replicates the gray plane, 3 -> 1 takes the ITU-R BT.601 luminance
/// (`0.299 R + 0.587 G + 0.114 B`, rounded). Callers check that the pair is supported.
pub(crate) fn convert_channels(src: &[u8], from: usize, to: usize, plane: usize) -> Vec<u8> {
    match (from, to) {
        (1, 3) => src.repeat(3),
        (3, 1) => {
            let (r, rest) = src.split_at(plane);
            let (g, b) = rest.split_at(plane);
            r.iter()
                .zip(g)
                .zip(b)
                .map(|((&r, &g), &b)| {
                    let y =
                        LUMA[0] * f32::from(r) + LUMA[1] * f32::from(g) + LUMA[2] * f32::from(b);
                    y.round().clamp(0.0, 255.0) as u8
                })
                .collect()
        }
        _ => src.to_vec(),
    }
}

/// For each output position along one axis, the input positions and weights (summing to 1).
///
/// Shrinking (`out <= in`) uses *area* resampling: every output pixel is the average of the
/// input pixels its footprint covers, weighted by the covered fraction (OpenCV `INTER_AREA`;
/// exactly a 2x2 mean for 64 -> 32). Enlarging uses *bilinear* interpolation with half-pixel
/// centres (PyTorch `interpolate(mode="bilinear", align_corners=False)`).
fn axis_weights(input: usize, output: usize) -> Vec<Vec<(usize, f32)>> {
    if output <= input {
        let scale = input as f64 / output as f64;
        (0..output)
            .map(|o| {
                let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
                let first = lo.floor() as usize;
                let last = (hi.ceil() as usize).min(input);
                (first..last)
                    .filter_map(|i| {
                        let overlap = hi.min((i + 1) as f64) - lo.max(i as f64);
                        (overlap > 1e-9).then_some((i, (overlap / scale) as f32))
                    })
                    .collect()
            })
            .collect()
    } else {
        let scale = input as f64 / output as f64;
        (0..output)
            .map(|o| {
                let x = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (input - 1) as f64);
                let i0 = x.floor() as usize;
                let i1 = (i0 + 1).min(input - 1);
                let t = (x - i0 as f64) as f32;
                if i1 == i0 || t == 0.0 {
                    vec![(i0, 1.0)]
                } else {
                    vec![(i0, 1.0 - t), (i1, t)]
                }
            })
            .collect()
    }
}

/// Resizes a CHW `u8` image from `h x w` to `out_h x out_w` (see [`axis_weights`] for the
/// filters), rounding to the nearest level. All sizes must be positive.
pub(crate) fn resize(
    src: &[u8],
    c: usize,
    [h, w]: [usize; 2],
    [out_h, out_w]: [usize; 2],
) -> Vec<u8> {
    if (h, w) == (out_h, out_w) {
        return src.to_vec();
    }
    let wx = axis_weights(w, out_w);
    let wy = axis_weights(h, out_h);
    let mut out = Vec::with_capacity(c * out_h * out_w);
    let mut rows = vec![0f32; h * out_w];
    for plane in src.chunks_exact(h * w).take(c) {
        // Horizontal pass: [h, w] -> [h, out_w].
        for (y, row) in plane.chunks_exact(w).enumerate() {
            for (x, taps) in wx.iter().enumerate() {
                rows[y * out_w + x] = taps.iter().map(|&(i, t)| t * f32::from(row[i])).sum();
            }
        }
        // Vertical pass: [h, out_w] -> [out_h, out_w].
        for taps in &wy {
            for x in 0..out_w {
                let v: f32 = taps.iter().map(|&(i, t)| t * rows[i * out_w + x]).sum();
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_resize(src: &[u8], hw: [usize; 2], out: [usize; 2], expected: &[u8]) {
        assert_eq!(
            resize(src, 1, hw, out),
            expected,
            "resize {hw:?} -> {out:?} of {src:?}"
        );
    }

    #[test]
    fn area_downscale_by_two_is_the_2x2_mean() {
        check_resize(
            &[
                0, 10, 20, 30, 40, 50, 60, 70, 1, 3, 5, 7, 100, 101, 102, 103,
            ],
            [4, 4],
            [2, 2],
            &[25, 45, 51, 54],
        );
    }

    #[test]
    fn area_downscale_fractional_weights() {
        // 3 -> 2: output 0 covers [0, 1.5) = pixel 0 + half of pixel 1.
        check_resize(&[0, 30, 90], [1, 3], [1, 2], &[10, 70]);
    }

    #[test]
    fn bilinear_upscale_half_pixel_centres() {
        check_resize(&[0, 100], [1, 2], [1, 4], &[0, 25, 75, 100]);
    }

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        check_resize(&[1, 2, 3, 4], [2, 2], [2, 2], &[1, 2, 3, 4]);
        check_resize(&[77; 25], [5, 5], [3, 7], &[77; 21]);
    }

    #[test]
    fn channel_conversion() {
        assert_eq!(convert_channels(&[1, 2], 1, 3, 2), vec![1, 2, 1, 2, 1, 2]);
        // white stays white, pure red is 0.299 * 255 = 76.2
        assert_eq!(
            convert_channels(&[255, 255, 255, 0, 255, 0], 3, 1, 2),
            vec![255, 76]
        );
    }

    #[test]
    fn axis_weights_sum_to_one() {
        for (i, o) in [(64, 32), (28, 32), (32, 28), (7, 3), (3, 7), (1, 5), (5, 1)] {
            for taps in axis_weights(i, o) {
                let s: f32 = taps.iter().map(|t| t.1).sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o}: {taps:?}");
                assert!(taps.iter().all(|t| t.0 < i));
            }
        }
    }
}
