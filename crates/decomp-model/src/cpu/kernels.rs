//! Register-blocked products for the widths channel modules have (multiples of 8 up to 64)
//! and the FMA check that gates them.

use super::*;

/// The 16 Winograd products of one block of `rows` tiles, `m[t][xi][co] = sum over ci of
/// v[t][xi][ci] * u[xi][ci][co]`, with [`wino_gemm_simd`]; `false` (nothing done) when the
/// channel count has no kernel or the CPU has no FMA (there `mul_add` would be a libm call).
pub(super) fn wino_gemm(geo: Wino, rows: usize, v: &[f32], u: &[f32], m: &mut [f32]) -> bool {
    if !fma_available() {
        return false;
    }
    match geo.cp {
        64 => wino_gemm_simd::<64>(geo.cin, rows, v, u, m),
        56 => wino_gemm_simd::<56>(geo.cin, rows, v, u, m),
        48 => wino_gemm_simd::<48>(geo.cin, rows, v, u, m),
        40 => wino_gemm_simd::<40>(geo.cin, rows, v, u, m),
        32 => wino_gemm_simd::<32>(geo.cin, rows, v, u, m),
        24 => wino_gemm_simd::<24>(geo.cin, rows, v, u, m),
        16 => wino_gemm_simd::<16>(geo.cin, rows, v, u, m),
        8 => wino_gemm_simd::<8>(geo.cin, rows, v, u, m),
        _ => return false,
    }
    true
}

pub(super) fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Products for `C` output channels, four tiles at a time: the four `[f32; C]`
/// accumulators are separate variables so they stay in vector registers while the input
/// channels stream through (`mul_add` is one FMA in the SIMD-dispatched instantiation). This
/// beats the general `gemm` call here, where `cin` is only 16 to 64 and each call is small.
pub(super) fn wino_gemm_simd<const C: usize>(
    cin: usize,
    rows: usize,
    v: &[f32],
    u: &[f32],
    m: &mut [f32],
) {
    for xi in 0..16 {
        let g = Small {
            rows,
            k: cin,
            lhs_rs: 16 * cin,
            dst_rs: 16 * C,
            accumulate: false,
        };
        small_gemm::<C>(
            g,
            &v[xi * cin..],
            &u[xi * cin * C..(xi + 1) * cin * C],
            &mut m[xi * C..],
        );
    }
}

/// Shape of one [`small_gemm`]: `rows` rows of `k` (row stride `lhs_rs`) times `[k][C]`
/// into rows of `C` (row stride `dst_rs`), added to `dst` when `accumulate`.
#[derive(Clone, Copy)]
pub(super) struct Small {
    pub(super) rows: usize,
    pub(super) k: usize,
    pub(super) lhs_rs: usize,
    pub(super) dst_rs: usize,
    pub(super) accumulate: bool,
}

/// `dst[r][..C] (+)= lhs[r][..k] x rhs[k][C]`, four rows at a time with register-resident
/// accumulators (see [`wino_gemm_simd`]), eight where one accumulator is one vector (`C` up
/// to the vector width: 16 with AVX-512), so that eight FMA chains run side by side instead
/// of four. Callers check [`fma_available`].
#[macerator::with_simd]
pub(super) fn small_gemm<S: macerator::Simd, const C: usize>(
    g: Small,
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [f32],
) {
    let eight = C <= S::lanes32();
    // As many input channels as outputs (every Winograd product between convolutions of one
    // stage): a constant `k`, so that the channel loop unrolls without a bounds check and
    // address arithmetic per step.
    if g.k == C {
        small_gemm_rows::<C>(Small { k: C, ..g }, lhs, rhs, dst, eight);
    } else {
        small_gemm_rows::<C>(g, lhs, rhs, dst, eight);
    }
}

/// [`small_gemm`]'s body, inlined into each SIMD level's instantiation (and for a constant `k`);
/// eight-row blocks when `eight`.
#[inline(always)]
fn small_gemm_rows<const C: usize>(
    g: Small,
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [f32],
    eight: bool,
) {
    let Small {
        rows,
        k,
        lhs_rs,
        dst_rs,
        accumulate,
    } = g;
    let rhs = &rhs[..k * C];
    let init = |dst: &[f32], r: usize| -> [f32; C] {
        if accumulate {
            dst[r * dst_rs..][..C].try_into().expect("C columns")
        } else {
            [0.0; C]
        }
    };
    let mut t0 = 0;
    // Blocks of rows `t0 + r` for the listed `r`, one named `[f32; C]` accumulator each (an
    // array of accumulators was left on the stack, with scalar FMAs).
    macro_rules! rows {
        ($($r:literal => $v:ident, $a:ident);+) => {
            let n = [$($r),+].len();
            while t0 + n <= rows {
                $(let $v = &lhs[(t0 + $r) * lhs_rs..][..k];)+
                $(let mut $a = init(dst, t0 + $r);)+
                // Four input channels per step: the rows' addresses are computed once per
                // step, not per channel (their per-channel recomputation made the loop
                // instruction-bound rather than FMA-bound).
                let mut ci = 0;
                while ci + 4 <= k {
                    for u in 0..4 {
                        let w: &[f32; C] =
                            rhs[(ci + u) * C..][..C].try_into().expect("C columns");
                        $(let $v = $v[ci + u];)+
                        for o in 0..C {
                            $($a[o] = $v.mul_add(w[o], $a[o]);)+
                        }
                    }
                    ci += 4;
                }
                for ci in ci..k {
                    let w: &[f32; C] = rhs[ci * C..(ci + 1) * C].try_into().expect("C columns");
                    $(let $v = $v[ci];)+
                    for o in 0..C {
                        $($a[o] = $v.mul_add(w[o], $a[o]);)+
                    }
                }
                // Stored through a copy: taking an accumulator's address kept it on the stack.
                for (r, a) in [$($a),+].iter().enumerate() {
                    dst[(t0 + r) * dst_rs..][..C].copy_from_slice(a);
                }
                t0 += n;
            }
        };
    }
    if eight {
        rows!(0 => v0, a0; 1 => v1, a1; 2 => v2, a2; 3 => v3, a3;
              4 => v4, a4; 5 => v5, a5; 6 => v6, a6; 7 => v7, a7);
    }
    rows!(0 => v0, a0; 1 => v1, a1; 2 => v2, a2; 3 => v3, a3);
    while t0 < rows {
        let mut acc = init(dst, t0);
        for (ci, &a) in lhs[t0 * lhs_rs..][..k].iter().enumerate() {
            for (o, w) in acc.iter_mut().zip(&rhs[ci * C..(ci + 1) * C]) {
                *o = a.mul_add(*w, *o);
            }
        }
        dst[t0 * dst_rs..][..C].copy_from_slice(&acc);
        t0 += 1;
    }
}

/// `dst (+)= lhs x rhs` (row-major, `rhs` `[k][n]` contiguous) with [`small_gemm`] when `n` is
/// a multiple of 8 up to 64 and the CPU has FMA; `false` (nothing done) otherwise.
pub(super) fn small_product(g: Small, n: usize, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) -> bool {
    if !fma_available() {
        return false;
    }
    match n {
        64 => small_gemm::<64>(g, lhs, rhs, dst),
        56 => small_gemm::<56>(g, lhs, rhs, dst),
        48 => small_gemm::<48>(g, lhs, rhs, dst),
        40 => small_gemm::<40>(g, lhs, rhs, dst),
        32 => small_gemm::<32>(g, lhs, rhs, dst),
        24 => small_gemm::<24>(g, lhs, rhs, dst),
        16 => small_gemm::<16>(g, lhs, rhs, dst),
        8 => small_gemm::<8>(g, lhs, rhs, dst),
        _ => return false,
    }
    true
}

/// Shape of one [`tn_gemm`]: `dst[r][..C] += sum over k of lhs[k * lhs_rs + r] * rhs[k *
/// rhs_rs..][..C]` for `r < rows`, i.e. `dst += lhs^T x rhs` for two row-major operands that
/// share their long dimension `k` (a weight gradient's sum over pixels or Winograd tiles).
#[derive(Clone, Copy)]
pub(super) struct Tn {
    pub(super) rows: usize,
    pub(super) k: usize,
    pub(super) lhs_rs: usize,
    pub(super) rhs_rs: usize,
    pub(super) dst_rs: usize,
}

/// [`Tn`]'s product, four rows at a time (eight as in [`small_gemm`]): the `[f32; C]`
/// accumulators are separate variables (as in [`small_gemm`]) so they stay in vector
/// registers while `k` streams (one `C`-wide load and a broadcast per row per step);
/// remaining rows one at a time. Callers check [`fma_available`].
#[macerator::with_simd]
pub(super) fn tn_gemm<S: macerator::Simd, const C: usize>(
    g: Tn,
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [f32],
) {
    let Tn {
        rows,
        k,
        lhs_rs,
        rhs_rs,
        dst_rs,
    } = g;
    let load = |dst: &[f32], r: usize| -> [f32; C] {
        dst[r * dst_rs..][..C].try_into().expect("C columns")
    };
    let mut r0 = 0;
    // One block of rows `r0 + r` for the listed `r` (as in `small_gemm`).
    macro_rules! rows {
        ($($r:literal => $a:ident);+) => {
            let n = [$($r),+].len();
            while r0 + n <= rows {
                $(let mut $a = load(dst, r0 + $r);)+
                for kk in 0..k {
                    let w: &[f32; C] = rhs[kk * rhs_rs..][..C].try_into().expect("C columns");
                    let x = &lhs[kk * lhs_rs + r0..][..n];
                    for o in 0..C {
                        $($a[o] = x[$r].mul_add(w[o], $a[o]);)+
                    }
                }
                // Stored through a copy (see `small_gemm`).
                for (r, a) in [$($a),+].iter().enumerate() {
                    dst[(r0 + r) * dst_rs..][..C].copy_from_slice(a);
                }
                r0 += n;
            }
        };
    }
    if C <= S::lanes32() {
        rows!(0 => a0; 1 => a1; 2 => a2; 3 => a3; 4 => a4; 5 => a5; 6 => a6; 7 => a7);
    }
    rows!(0 => a0; 1 => a1; 2 => a2; 3 => a3);
    for r in r0..rows {
        let mut acc = load(dst, r);
        for kk in 0..k {
            let x = lhs[kk * lhs_rs + r];
            for (o, w) in acc.iter_mut().zip(&rhs[kk * rhs_rs..][..C]) {
                *o = x.mul_add(*w, *o);
            }
        }
        dst[r * dst_rs..][..C].copy_from_slice(&acc);
    }
}

/// Whether the register-blocked kernels take width `n`: a multiple of 8 up to 64, or of 64.
pub(super) fn kernel_width(n: usize) -> bool {
    n > 0 && n.is_multiple_of(8) && (n <= 64 || n.is_multiple_of(64))
}

/// `dst[rows][n] += lhs^T x rhs` ([`Tn`], `n` columns) with [`tn_gemm`] when the CPU has FMA
/// and `n` is a [`kernel_width`] (columns in chunks of 64); `false` (nothing done) otherwise.
pub(super) fn tn_product(g: Tn, n: usize, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) -> bool {
    if !fma_available() || !kernel_width(n) {
        return false;
    }
    let chunk = n.min(64);
    for c0 in (0..n).step_by(chunk) {
        let (rhs, dst) = (&rhs[c0..], &mut dst[c0..]);
        match chunk {
            64 => tn_gemm::<64>(g, lhs, rhs, dst),
            56 => tn_gemm::<56>(g, lhs, rhs, dst),
            48 => tn_gemm::<48>(g, lhs, rhs, dst),
            40 => tn_gemm::<40>(g, lhs, rhs, dst),
            32 => tn_gemm::<32>(g, lhs, rhs, dst),
            24 => tn_gemm::<24>(g, lhs, rhs, dst),
            16 => tn_gemm::<16>(g, lhs, rhs, dst),
            8 => tn_gemm::<8>(g, lhs, rhs, dst),
            _ => unreachable!("chunk is a multiple of 8 up to 64"),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tn_product` equals the naive `dst += lhs^T rhs` for every supported width (chunks of
    /// 64 included), row counts that leave a remainder, and strided operands.
    #[test]
    fn tn_product_equals_naive() {
        if !fma_available() {
            return;
        }
        for n in [8usize, 16, 24, 32, 40, 48, 56, 64, 128, 192] {
            for (rows, k) in [(1usize, 1usize), (7, 5), (16, 33), (13, 64)] {
                let (lhs_rs, rhs_rs) = (rows + 3, n + 5);
                let lhs: Vec<f32> = (0..k * lhs_rs).map(|i| (i as f32 * 0.37).sin()).collect();
                let rhs: Vec<f32> = (0..k * rhs_rs).map(|i| (i as f32 * 0.11).cos()).collect();
                let start: Vec<f32> = (0..rows * n).map(|i| (i as f32 * 0.05).sin()).collect();
                let mut dst = start.clone();
                let g = Tn {
                    rows,
                    k,
                    lhs_rs,
                    rhs_rs,
                    dst_rs: n,
                };
                assert!(tn_product(g, n, &lhs, &rhs, &mut dst));
                for r in 0..rows {
                    for o in 0..n {
                        let want: f64 = f64::from(start[r * n + o])
                            + (0..k)
                                .map(|kk| {
                                    f64::from(lhs[kk * lhs_rs + r])
                                        * f64::from(rhs[kk * rhs_rs + o])
                                })
                                .sum::<f64>();
                        let got = f64::from(dst[r * n + o]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "n {n} rows {rows} k {k} at ({r}, {o}): {got} vs {want}"
                        );
                    }
                }
            }
        }
        let g = Tn {
            rows: 1,
            k: 1,
            lhs_rs: 1,
            rhs_rs: 12,
            dst_rs: 12,
        };
        assert!(!tn_product(g, 12, &[0.0], &[0.0; 12], &mut [0.0; 12]));
    }
}
