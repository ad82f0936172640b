//! The training engine's elementwise and per-channel passes over channels-last maps
//! (`[pixel][channel]`, `c` channels), compiled per SIMD level and dispatched at run time
//! (macerator) like the product kernels: the crate is built for baseline x86-64, where these
//! loops would run four lanes wide. Per-channel sums run in `f32` over runs of [`RUN`] pixels
//! and in `f64` across runs: vector-width arithmetic, `f64` accuracy over a whole batch.

/// Pixels per `f32` partial sum.
const RUN: usize = 64;

/// Channels the passes handle as one fixed-size block (one AVX-512 vector, two AVX2 ones):
/// loops over such arrays compile to whole vectors, where loops over a run-time channel count
/// (bounds checks, possible overlap of the slices) stayed scalar.
const BLOCK: usize = 16;

/// Pixels summed side by side into their own accumulators: with one running sum per channel
/// every pixel waits for the previous pixel's add.
const LANES: usize = 4;

/// One per-channel sum's terms: `add::<W>(at, b0, acc)` adds the terms of the `W` channels
/// from `b0` of the pixel whose first value is at `at` into the `K` accumulators `acc`. A
/// trait with inlined methods rather than a closure: closures do not take on the SIMD level
/// of the function that calls them, so their loops would run in scalar code.
trait Terms<const K: usize> {
    fn add<const W: usize>(&self, at: usize, b0: usize, acc: &mut [[f32; BLOCK]; K]);
}

/// The first `W` values of `s` from `at`, as an array (so that loops over them compile to
/// whole vectors without bounds checks).
#[inline(always)]
fn block<const W: usize>(s: &[f32], at: usize) -> &[f32; W] {
    s[at..at + W].try_into().expect("W values")
}

/// Adds the per-channel sums of `terms` over `pixels` channels-last pixels of `c` channels
/// into `out` (`K` sums per channel): blocks of [`BLOCK`] channels (the last ones one at a
/// time), [`LANES`] pixels side by side in `f32` over runs of [`RUN`] pixels, the runs added
/// in `f64`.
#[inline(always)]
fn blocked_sums<const K: usize>(
    pixels: usize,
    c: usize,
    mut out: [&mut [f64]; K],
    terms: &impl Terms<K>,
) {
    let full = c / BLOCK * BLOCK;
    for b0 in (0..full).step_by(BLOCK) {
        sums_of_block::<K, BLOCK>(pixels, c, b0, &mut out, terms);
    }
    for b0 in full..c {
        sums_of_block::<K, 1>(pixels, c, b0, &mut out, terms);
    }
}

#[inline(always)]
fn sums_of_block<const K: usize, const W: usize>(
    pixels: usize,
    c: usize,
    b0: usize,
    out: &mut [&mut [f64]; K],
    terms: &impl Terms<K>,
) {
    let mut p0 = 0;
    while p0 < pixels {
        let end = (p0 + RUN).min(pixels);
        let mut acc = [[[0.0f32; BLOCK]; K]; LANES];
        let mut p = p0;
        while p + LANES <= end {
            for (l, a) in acc.iter_mut().enumerate() {
                terms.add::<W>((p + l) * c + b0, b0, a);
            }
            p += LANES;
        }
        for q in p..end {
            terms.add::<W>(q * c + b0, b0, &mut acc[0]);
        }
        for a in &acc {
            for (o, s) in out.iter_mut().zip(a) {
                for (o, &s) in o[b0..b0 + W].iter_mut().zip(s) {
                    *o += f64::from(s);
                }
            }
        }
        p0 = end;
    }
}

/// Adds the per-channel sums of `x` into `sum` (`c = sum.len()` channels).
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn channel_sum<S: macerator::Simd>(x: &[f32], sum: &mut [f64]) {
    struct Sum<'a>(&'a [f32]);
    impl Terms<1> for Sum<'_> {
        #[inline(always)]
        fn add<const W: usize>(&self, at: usize, _: usize, [a]: &mut [[f32; BLOCK]; 1]) {
            let x = block::<W>(self.0, at);
            for i in 0..W {
                a[i] += x[i];
            }
        }
    }
    let c = sum.len();
    blocked_sums(x.len() / c, c, [sum], &Sum(x));
}

/// Adds the per-channel sums of `(x - mean)^2` into `sq`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn channel_sq_dev<S: macerator::Simd>(x: &[f32], mean: &[f32], sq: &mut [f64]) {
    struct SqDev<'a>(&'a [f32], &'a [f32]);
    impl Terms<1> for SqDev<'_> {
        #[inline(always)]
        fn add<const W: usize>(&self, at: usize, b0: usize, [a]: &mut [[f32; BLOCK]; 1]) {
            let (x, m) = (block::<W>(self.0, at), block::<W>(self.1, b0));
            for i in 0..W {
                let d = x[i] - m[i];
                a[i] += d * d;
            }
        }
    }
    let c = sq.len();
    blocked_sums(x.len() / c, c, [sq], &SqDev(x, mean));
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
    /// `x`, `dy`, the mean and the ReLU's output if any.
    struct Grad<'a>(&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>);
    impl Terms<2> for Grad<'_> {
        #[inline(always)]
        fn add<const W: usize>(&self, at: usize, b0: usize, [ad, adx]: &mut [[f32; BLOCK]; 2]) {
            let (x, dy, m) = (
                block::<W>(self.0, at),
                block::<W>(self.1, at),
                block::<W>(self.2, b0),
            );
            let mut d = *dy;
            if let Some(y) = self.3 {
                let y = block::<W>(y, at);
                for i in 0..W {
                    d[i] = if y[i] <= 0.0 { 0.0 } else { d[i] };
                }
            }
            for i in 0..W {
                ad[i] += d[i];
                adx[i] += d[i] * (x[i] - m[i]);
            }
        }
    }
    let c = sd.len();
    blocked_sums(x.len() / c, c, [sd, sdx], &Grad(x, dy, mean, relu_out));
}

/// `out = a x + b` per channel (`c = a.len()`), or `max(a x + b, 0)` with `relu` (a
/// following ReLU, fused), appended to `out`: blocks of [`BLOCK`] channels computed in
/// registers (a pixel's last channels zero-padded to a block).
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn affine<S: macerator::Simd>(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    relu: bool,
    out: &mut Vec<f32>,
) {
    #[inline(always)]
    fn one(x: &[f32; BLOCK], a: &[f32; BLOCK], b: &[f32; BLOCK], relu: bool) -> [f32; BLOCK] {
        let mut y = [0.0f32; BLOCK];
        for i in 0..BLOCK {
            y[i] = x[i] * a[i] + b[i];
            if relu {
                y[i] = y[i].max(0.0);
            }
        }
        y
    }
    let c = a.len();
    let full = c / BLOCK * BLOCK;
    let (a_rest, b_rest) = (padded(&a[full..]), padded(&b[full..c]));
    out.reserve(x.len());
    for px in x.chunks_exact(c) {
        for ((xb, ab), bb) in px[..full]
            .chunks_exact(BLOCK)
            .zip(a.chunks_exact(BLOCK))
            .zip(b.chunks_exact(BLOCK))
        {
            out.extend_from_slice(&one(
                xb.try_into().expect("a block"),
                ab.try_into().expect("a block"),
                bb.try_into().expect("a block"),
                relu,
            ));
        }
        if full < c {
            let y = one(&padded(&px[full..]), &a_rest, &b_rest, relu);
            out.extend_from_slice(&y[..c - full]);
        }
    }
}

/// Up to [`BLOCK`] values, zero-padded to a block.
#[inline(always)]
fn padded(s: &[f32]) -> [f32; BLOCK] {
    let mut p = [0.0f32; BLOCK];
    p[..s.len()].copy_from_slice(s);
    p
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
