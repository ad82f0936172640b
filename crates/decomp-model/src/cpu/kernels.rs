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
pub(super) fn wino_gemm_simd<const C: usize>(cin: usize, rows: usize, v: &[f32], u: &[f32], m: &mut [f32]) {
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
/// accumulators (see [`wino_gemm_simd`]). Callers check [`fma_available`].
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn small_gemm<S: macerator::Simd, const C: usize>(
    g: Small,
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [f32],
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
    while t0 + 4 <= rows {
        let row = |r: usize| &lhs[(t0 + r) * lhs_rs..][..k];
        let (v0, v1, v2, v3) = (row(0), row(1), row(2), row(3));
        let (mut a0, mut a1, mut a2, mut a3) = (
            init(dst, t0),
            init(dst, t0 + 1),
            init(dst, t0 + 2),
            init(dst, t0 + 3),
        );
        for ci in 0..k {
            let w: &[f32; C] = rhs[ci * C..(ci + 1) * C].try_into().expect("C columns");
            let (x0, x1, x2, x3) = (v0[ci], v1[ci], v2[ci], v3[ci]);
            for o in 0..C {
                a0[o] = x0.mul_add(w[o], a0[o]);
                a1[o] = x1.mul_add(w[o], a1[o]);
                a2[o] = x2.mul_add(w[o], a2[o]);
                a3[o] = x3.mul_add(w[o], a3[o]);
            }
        }
        for (r, a) in [a0, a1, a2, a3].iter().enumerate() {
            dst[(t0 + r) * dst_rs..][..C].copy_from_slice(a);
        }
        t0 += 4;
    }
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
