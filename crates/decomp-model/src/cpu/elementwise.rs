//! The training engine's elementwise and per-channel passes over channels-last maps
//! (`[pixel][channel]`, `c` channels), compiled per SIMD level and dispatched at run time
//! (macerator) like the product kernels: the crate is built for baseline x86-64, where these
//! loops would run four lanes wide. Per-channel sums run in `f32` over runs of [`RUN`] pixels
//! and in `f64` across runs: vector-width arithmetic, `f64` accuracy over a whole batch.

/// Pixels per `f32` partial sum.
pub(super) const RUN: usize = 64;

/// Adds the per-channel sums of `x` into `sum` (`c = sum.len()` channels).
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn channel_sum<S: macerator::Simd>(x: &[f32], sum: &mut [f64]) {
    let c = sum.len();
    let mut run = vec![0.0f32; c];
    for xr in x.chunks(RUN * c) {
        run.fill(0.0);
        for px in xr.chunks_exact(c) {
            for (r, &v) in run.iter_mut().zip(px) {
                *r += v;
            }
        }
        for (s, &r) in sum.iter_mut().zip(&run) {
            *s += f64::from(r);
        }
    }
}

/// Adds the per-channel sums of `(x - mean)^2` into `sq`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn channel_sq_dev<S: macerator::Simd>(x: &[f32], mean: &[f32], sq: &mut [f64]) {
    let c = sq.len();
    let mean = &mean[..c];
    let mut run = vec![0.0f32; c];
    for xr in x.chunks(RUN * c) {
        run.fill(0.0);
        for px in xr.chunks_exact(c) {
            for ((r, &v), &m) in run.iter_mut().zip(px).zip(mean) {
                let d = v - m;
                *r += d * d;
            }
        }
        for (s, &r) in sq.iter_mut().zip(&run) {
            *s += f64::from(r);
        }
    }
}

/// BatchNorm's backward sums: adds `sum(dy)` into `sd` and `sum(dy (x - mean))` into `sdx`,
/// per channel; with `relu_out`, `dy` counts as zero where that following ReLU's output is
/// `<= 0` (the ReLU's backward, fused).
// macerator's `with_simd` needs the lifetime named.
#[allow(clippy::extra_unused_type_parameters, clippy::needless_lifetimes)]
#[macerator::with_simd]
pub(super) fn bn_grad_sums<'a, S: macerator::Simd>(
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&'a [f32]>,
    mean: &[f32],
    sd: &mut [f64],
    sdx: &mut [f64],
) {
    let c = sd.len();
    let (mean, sdx) = (&mean[..c], &mut sdx[..c]);
    let (mut rd, mut rdx) = (vec![0.0f32; c], vec![0.0f32; c]);
    let mut start = 0;
    for (xr, dr) in x.chunks(RUN * c).zip(dy.chunks(RUN * c)) {
        rd.fill(0.0);
        rdx.fill(0.0);
        match relu_out {
            None => {
                for (px, dp) in xr.chunks_exact(c).zip(dr.chunks_exact(c)) {
                    for ch in 0..c {
                        rd[ch] += dp[ch];
                        rdx[ch] += dp[ch] * (px[ch] - mean[ch]);
                    }
                }
            }
            Some(y) => {
                let yr = &y[start..start + xr.len()];
                for ((px, dp), yp) in xr
                    .chunks_exact(c)
                    .zip(dr.chunks_exact(c))
                    .zip(yr.chunks_exact(c))
                {
                    for ch in 0..c {
                        let d = if yp[ch] <= 0.0 { 0.0 } else { dp[ch] };
                        rd[ch] += d;
                        rdx[ch] += d * (px[ch] - mean[ch]);
                    }
                }
            }
        }
        start += xr.len();
        for ch in 0..c {
            sd[ch] += f64::from(rd[ch]);
            sdx[ch] += f64::from(rdx[ch]);
        }
    }
}

/// `out = a x + b` per channel (`c = a.len()`), or `max(a x + b, 0)` with `relu` (a
/// following ReLU, fused), appended to `out`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn affine<S: macerator::Simd>(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    relu: bool,
    out: &mut Vec<f32>,
) {
    let c = a.len();
    let b = &b[..c];
    out.reserve(x.len());
    for px in x.chunks_exact(c) {
        if relu {
            out.extend(
                px.iter()
                    .zip(a)
                    .zip(b)
                    .map(|((&v, &s), &t)| (v * s + t).max(0.0)),
            );
        } else {
            out.extend(px.iter().zip(a).zip(b).map(|((&v, &s), &t)| v * s + t));
        }
    }
}

/// `dy = a dy + k x + b` per channel (`c = a.len()`): BatchNorm's data gradient with its
/// per-channel coefficients, written over `dy`; with `relu_out`, `dy` counts as zero where
/// that following ReLU's output is `<= 0` (as in [`bn_grad_sums`]).
// macerator's `with_simd` needs the lifetime named.
#[allow(clippy::extra_unused_type_parameters, clippy::needless_lifetimes)]
#[macerator::with_simd]
pub(super) fn affine2<'a, S: macerator::Simd>(
    dy: &mut [f32],
    x: &[f32],
    relu_out: Option<&'a [f32]>,
    a: &[f32],
    k: &[f32],
    b: &[f32],
) {
    let c = a.len();
    let (k, b) = (&k[..c], &b[..c]);
    match relu_out {
        None => {
            for (dp, px) in dy.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                for ch in 0..c {
                    dp[ch] = a[ch] * dp[ch] + k[ch] * px[ch] + b[ch];
                }
            }
        }
        Some(y) => {
            for ((dp, px), yp) in dy
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(y.chunks_exact(c))
            {
                for ch in 0..c {
                    let d = if yp[ch] <= 0.0 { 0.0 } else { dp[ch] };
                    dp[ch] = a[ch] * d + k[ch] * px[ch] + b[ch];
                }
            }
        }
    }
}

/// ReLU's backward: `d = 0` where the ReLU's output `y <= 0`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn relu_mask<S: macerator::Simd>(d: &mut [f32], y: &[f32]) {
    for (d, &y) in d.iter_mut().zip(y) {
        *d = if y <= 0.0 { 0.0 } else { *d };
    }
}

/// `a += b`, elementwise.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn add_into<S: macerator::Simd>(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}
