//! A safe, bounds-checked `f32` matrix product on top of the [`gemm`] crate.
//!
//! [`sgemm`] computes `dst = (accumulate ? dst : 0) + lhs * rhs` for row-major matrices given as
//! slices with a row stride (columns are contiguous). It checks that every element the product
//! reads or writes lies inside its slice, so no caller can reach out of bounds.
//!
//! [`keep_freed_pages`] sets one option of mimalloc's C library (the workspace's other foreign
//! call, kept here beside the first).

mod allocator;

pub use allocator::keep_freed_pages;

/// Shape of one product: `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`, each matrix row-major
/// with its own row stride (elements between the starts of consecutive rows).
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs_rs: usize,
    pub rhs_rs: usize,
    pub dst_rs: usize,
}

/// Why a product was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GemmError {
    #[error(
        "{which}: slice of {len} elements is too short for {rows} rows of {cols} with row stride {stride}"
    )]
    TooShort {
        which: &'static str,
        len: usize,
        rows: usize,
        cols: usize,
        stride: usize,
    },
    #[error("{which}: row stride {stride} is smaller than the row length {cols}")]
    Stride {
        which: &'static str,
        stride: usize,
        cols: usize,
    },
}

fn check(
    which: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    stride: usize,
) -> Result<(), GemmError> {
    if rows > 1 && stride < cols {
        return Err(GemmError::Stride {
            which,
            stride,
            cols,
        });
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let need = (rows - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(cols))
        .ok_or(GemmError::TooShort {
            which,
            len,
            rows,
            cols,
            stride,
        })?;
    if need > len || isize::try_from(need).is_err() {
        return Err(GemmError::TooShort {
            which,
            len,
            rows,
            cols,
            stride,
        });
    }
    Ok(())
}

/// `dst = (accumulate ? dst : 0) + lhs * rhs`, single-threaded (callers parallelize over
/// independent products).
pub fn sgemm(
    g: Gemm,
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    accumulate: bool,
) -> Result<(), GemmError> {
    check("dst", dst.len(), g.m, g.n, g.dst_rs)?;
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    if g.k == 0 {
        if !accumulate {
            for r in 0..g.m {
                dst[r * g.dst_rs..r * g.dst_rs + g.n].fill(0.0);
            }
        }
        return Ok(());
    }
    check("lhs", lhs.len(), g.m, g.k, g.lhs_rs)?;
    check("rhs", rhs.len(), g.k, g.n, g.rhs_rs)?;
    // `dst` is a unique borrow, so it cannot alias `lhs` or `rhs` (shared borrows).
    #[allow(unsafe_code)]
    // SAFETY: `check` proved that for every row r < m (resp. k) and column c < n (resp. k) the
    // element r * stride + c lies inside its slice, and that these offsets fit in isize; gemm
    // only touches elements (r, c) with r < rows and c < cols at offset r * rs + c * cs with
    // cs = 1. `dst` is exclusively borrowed for the call and the inputs are shared borrows of
    // other memory (Rust's aliasing rules), so nothing else reads or writes it concurrently.
    // With `read_dst = false` gemm never reads `dst`, which may hold any f32 values anyway.
    unsafe {
        gemm::gemm(
            g.m,
            g.n,
            g.k,
            dst.as_mut_ptr(),
            1,
            g.dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            g.lhs_rs as isize,
            rhs.as_ptr(),
            1,
            g.rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(g: Gemm, dst: &mut [f32], lhs: &[f32], rhs: &[f32], acc: bool) {
        for i in 0..g.m {
            for j in 0..g.n {
                let mut s = if acc { dst[i * g.dst_rs + j] } else { 0.0 };
                for p in 0..g.k {
                    s += lhs[i * g.lhs_rs + p] * rhs[p * g.rhs_rs + j];
                }
                dst[i * g.dst_rs + j] = s;
            }
        }
    }

    #[test]
    fn matches_naive_product_with_strides() {
        for (m, n, k, extra, acc) in [
            (1, 1, 1, 0, false),
            (7, 5, 3, 2, true),
            (33, 17, 65, 1, false),
            (64, 16, 144, 0, true),
        ] {
            let g = Gemm {
                m,
                n,
                k,
                lhs_rs: k + extra,
                rhs_rs: n + extra,
                dst_rs: n + extra,
            };
            let lhs: Vec<f32> = (0..m * (k + extra))
                .map(|i| ((i as f32) * 0.37).sin())
                .collect();
            let rhs: Vec<f32> = (0..k * (n + extra))
                .map(|i| ((i as f32) * 0.71).cos())
                .collect();
            let init: Vec<f32> = (0..m * (n + extra)).map(|i| i as f32 * 0.01).collect();
            let (mut a, mut b) = (init.clone(), init);
            sgemm(g, &mut a, &lhs, &rhs, acc).expect("valid shapes");
            naive(g, &mut b, &lhs, &rhs, acc);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-4, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn refuses_short_slices() {
        let g = Gemm {
            m: 2,
            n: 2,
            k: 2,
            lhs_rs: 2,
            rhs_rs: 2,
            dst_rs: 2,
        };
        let mut dst = vec![0.0; 3];
        assert!(matches!(
            sgemm(g, &mut dst, &[0.0; 4], &[0.0; 4], false),
            Err(GemmError::TooShort { which: "dst", .. })
        ));
        let mut dst = vec![0.0; 4];
        assert!(matches!(
            sgemm(g, &mut dst, &[0.0; 3], &[0.0; 4], false),
            Err(GemmError::TooShort { which: "lhs", .. })
        ));
        let g = Gemm { lhs_rs: 1, ..g };
        assert!(matches!(
            sgemm(g, &mut dst, &[0.0; 4], &[0.0; 4], false),
            Err(GemmError::Stride { which: "lhs", .. })
        ));
    }
}
