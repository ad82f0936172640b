//! Convolutions of a [`CpuPlan`]: Winograd F(2x2, 3x3) for 3x3 stride-1 padding-1, im2col
//! over cache-sized blocks followed by one product for every other.

use super::*;

impl CpuPlan {
    /// 3x3 stride-1 padding-1 convolution of `n` channels-last images as Winograd
    /// F(2x2, 3x3): per block of 2x2 output tiles, the input transform `B^T d B` (adds over
    /// channel vectors), 16 products `[tiles, cin] x [cin, cout]`, and the output transform
    /// `A^T m A` plus bias.
    #[inline(never)]
    pub(super) fn winograd(
        &self,
        c: &Conv,
        u: &[f32],
        x: &[f32],
        n: usize,
        scratch: &mut Vec<f32>,
    ) -> Vec<f32> {
        let [h, w] = c.in_hw;
        let (cin, cout, cp) = (c.cin, c.cout, c.cp);
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = n * th * tw;
        // Every output is written by the output transform.
        let mut y = super::pool::take(n * h * w * cout);
        let tb = (self.tuning.block / (16 * cin.max(cp))).clamp(1, tiles);
        let (v, m) =
            super::pool::scratch_of(scratch, tb * 16 * (cin + cp)).split_at_mut(tb * 16 * cin);
        let zero = vec![0.0f32; 4 * cin];
        let mut tmp = vec![0.0f32; 32 * cin.max(cp)];
        let geo = Wino {
            h,
            w,
            cin,
            cout,
            cp,
            th,
            tw,
        };
        for t0 in (0..tiles).step_by(tb) {
            let t1 = (t0 + tb).min(tiles);
            wino_input(geo, x, t0, t1, v, &mut tmp, &zero);
            let rows = t1 - t0;
            if !(self.tuning.small_kernels && wino_gemm(geo, rows, v, u, m)) {
                for xi in 0..16 {
                    let g = Gemm {
                        m: rows,
                        n: cp,
                        k: cin,
                        lhs_rs: 16 * cin,
                        rhs_rs: cp,
                        dst_rs: 16 * cp,
                    };
                    sgemm(
                        g,
                        &mut m[xi * cp..],
                        &v[xi * cin..],
                        &u[xi * cin * cp..(xi + 1) * cin * cp],
                        false,
                    )
                    .expect("winograd shapes are consistent");
                }
            }
            wino_output(geo, m, t0, t1, &mut y, &mut tmp, &c.bias);
        }
        y
    }

    /// Convolution of `n` channels-last images: im2col over blocks of output pixels, then one
    /// product per block into the bias-initialized output.
    #[inline(never)]
    pub(super) fn conv(&self, c: &Conv, x: &[f32], n: usize, scratch: &mut Vec<f32>) -> Vec<f32> {
        let [ho, wo] = c.out_hw;
        let rows = n * ho * wo;
        let k = c.kernel[0] * c.kernel[1] * c.cin;
        let mut y = repeat_rows(&c.bias, rows);
        let pointwise = c.kernel == [1, 1] && c.stride == [1, 1] && c.pad == [0, 0];
        if pointwise {
            self.conv_product(c, x, rows, k, &mut y, scratch);
            return y;
        }
        let block = (self.tuning.block / k).clamp(1, rows);
        let cols = super::pool::scratch_of(scratch, block * k);
        let mut padded = Vec::new();
        for r0 in (0..rows).step_by(block) {
            let r1 = (r0 + block).min(rows);
            im2col(c, x, r0, r1, cols);
            let (dst, lhs) = (&mut y[r0 * c.cout..r1 * c.cout], &cols[..(r1 - r0) * k]);
            self.conv_product(c, lhs, r1 - r0, k, dst, &mut padded);
        }
        y
    }

    /// `dst += lhs x w` for `rows` rows of `k` (`dst` `[rows][cout]`, bias preloaded): the
    /// register-blocked kernel for `cp` columns, straight into `dst` when `cout == cp`, else
    /// into `padded` (`[rows][cp]`) and added to `dst` in one pass; the `gemm` crate without
    /// the kernels.
    pub(super) fn conv_product(
        &self,
        c: &Conv,
        lhs: &[f32],
        rows: usize,
        k: usize,
        dst: &mut [f32],
        padded: &mut Vec<f32>,
    ) {
        let small = |dst_rs: usize, accumulate: bool, out: &mut [f32]| {
            let g = Small {
                rows,
                k,
                lhs_rs: k,
                dst_rs,
                accumulate,
            };
            self.tuning.small_kernels && small_product(g, c.cp, lhs, &c.w, out)
        };
        if c.cout == c.cp {
            if small(c.cout, true, dst) {
                return;
            }
        } else {
            padded.resize(rows * c.cp, 0.0);
            if small(c.cp, false, padded) {
                for (d, p) in dst.chunks_exact_mut(c.cout).zip(padded.chunks_exact(c.cp)) {
                    for (x, y) in d.iter_mut().zip(p) {
                        *x += y;
                    }
                }
                return;
            }
        }
        let g = Gemm {
            m: rows,
            n: c.cout,
            k,
            lhs_rs: k,
            rhs_rs: c.cp,
            dst_rs: c.cout,
        };
        sgemm(g, dst, lhs, &c.w, true).expect("conv shapes checked by validation");
    }
}

/// Rows `r0..r1` of the im2col matrix of `x` (channels-last images) for convolution `c`
/// into `dst` (`[r1 - r0][kh * kw * cin]`, row `(ky * kw + kx) * cin + ci`): output pixel
/// `r` (image-major) reads its receptive field, zeros outside the image.
pub(super) fn im2col(c: &Conv, x: &[f32], r0: usize, r1: usize, dst: &mut [f32]) {
    let [h, w] = c.in_hw;
    let [ho, wo] = c.out_hw;
    let k = c.kernel[0] * c.kernel[1] * c.cin;
    let row_len = c.kernel[1] * c.cin;
    for (r, patch) in (r0..r1).zip(dst.chunks_exact_mut(k)) {
        let img = r / (ho * wo);
        let q = r % (ho * wo);
        let (oy, ox) = (q / wo, q % wo);
        let base = img * h * w * c.cin;
        for (ky, prow) in patch.chunks_exact_mut(row_len).enumerate() {
            let Some(iy) = (oy * c.stride[0] + ky)
                .checked_sub(c.pad[0])
                .filter(|&y| y < h)
            else {
                prow.fill(0.0);
                continue;
            };
            let x0 = (ox * c.stride[1]) as isize - c.pad[1] as isize;
            let line = &x[base + iy * w * c.cin..base + (iy + 1) * w * c.cin];
            if x0 >= 0 && x0 as usize + c.kernel[1] <= w {
                let s = x0 as usize * c.cin;
                prow.copy_from_slice(&line[s..s + row_len]);
            } else {
                for (kx, seg) in prow.chunks_exact_mut(c.cin).enumerate() {
                    let ix = x0 + kx as isize;
                    if ix < 0 || ix as usize >= w {
                        seg.fill(0.0);
                    } else {
                        let s = ix as usize * c.cin;
                        seg.copy_from_slice(&line[s..s + c.cin]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds rows `r0..r1` of the column-gradient matrix `dcol`
/// (`[r1 - r0][kh * kw * cin]`) into the channels-last image gradient `dx` at the pixels each
/// row was read from (positions outside the image dropped).
pub(super) fn col2im(c: &Conv, dcol: &[f32], r0: usize, r1: usize, dx: &mut [f32]) {
    let [h, w] = c.in_hw;
    let [ho, wo] = c.out_hw;
    let k = c.kernel[0] * c.kernel[1] * c.cin;
    let row_len = c.kernel[1] * c.cin;
    for (r, patch) in (r0..r1).zip(dcol.chunks_exact(k)) {
        let img = r / (ho * wo);
        let q = r % (ho * wo);
        let (oy, ox) = (q / wo, q % wo);
        let base = img * h * w * c.cin;
        for (ky, prow) in patch.chunks_exact(row_len).enumerate() {
            let Some(iy) = (oy * c.stride[0] + ky)
                .checked_sub(c.pad[0])
                .filter(|&y| y < h)
            else {
                continue;
            };
            let x0 = (ox * c.stride[1]) as isize - c.pad[1] as isize;
            let line = &mut dx[base + iy * w * c.cin..base + (iy + 1) * w * c.cin];
            for (kx, seg) in prow.chunks_exact(c.cin).enumerate() {
                let ix = x0 + kx as isize;
                if ix >= 0 && (ix as usize) < w {
                    let s = ix as usize * c.cin;
                    for (d, g) in line[s..s + c.cin].iter_mut().zip(seg) {
                        *d += g;
                    }
                }
            }
        }
    }
}
