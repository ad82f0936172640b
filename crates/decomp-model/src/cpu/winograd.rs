//! Winograd F(2x2, 3x3): tile geometry and the input and output transforms over channel
//! vectors.

/// Geometry of one Winograd convolution: input `h x w`, `th x tw` tiles of 2x2 outputs.
#[derive(Clone, Copy)]
pub(super) struct Wino {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cin: usize,
    pub(super) cout: usize,
    /// Row length of the products (see `Conv::cp`).
    pub(super) cp: usize,
    pub(super) th: usize,
    pub(super) tw: usize,
}

/// Input transform of tiles `t0..t1`: `v[t - t0][a * 4 + b][ci] = (B^T d B)[a][b]` over
/// channel vectors, with `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
/// Compiled per SIMD level and dispatched at run time (macerator), so the channel loops
/// vectorize with the widest instructions the CPU has. `zero` holds at least `4 * cin`
/// zeros.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn wino_input<S: macerator::Simd>(
    geo: Wino,
    x: &[f32],
    t0: usize,
    t1: usize,
    v: &mut [f32],
    tmp: &mut [f32],
    zero: &[f32],
) {
    let Wino {
        h, w, cin, th, tw, ..
    } = geo;
    let stage = &mut tmp[..16 * cin];
    let row = 4 * cin;
    let zero = &zero[..row];
    for (t, vt) in (t0..t1).zip(v.chunks_exact_mut(16 * cin)) {
        let img = t / (th * tw);
        let (ty, tx) = ((t % (th * tw)) / tw, t % tw);
        // Top-left input pixel of the 4x4 patch is (2 ty - 1, 2 tx - 1); a patch row outside
        // the image reads as zeros.
        let iy = |r: usize| (2 * ty + r).wrapping_sub(1);
        if tx > 0 && 2 * tx + 3 <= w {
            // The patch's four rows, each 4 pixels x cin contiguous: all four columns at
            // once, stage[a][q] = (B^T d)[a][q].
            let line = |r: usize| -> &[f32] {
                if iy(r) < h {
                    &x[((img * h + iy(r)) * w + 2 * tx - 1) * cin..][..row]
                } else {
                    zero
                }
            };
            butterfly_in(line(0), line(1), line(2), line(3), stage);
        } else {
            // At the left or right edge, pixel by pixel (no patch copy).
            for q in 0..4 {
                let ix = (2 * tx + q).wrapping_sub(1);
                let px = |r: usize| -> &[f32] {
                    if iy(r) < h && ix < w {
                        &x[((img * h + iy(r)) * w + ix) * cin..][..cin]
                    } else {
                        &zero[..cin]
                    }
                };
                butterfly_in_column(px(0), px(1), px(2), px(3), stage, q);
            }
        }
        // Columns: v[a * 4 + b] = (B^T d B)[a][b].
        for (sa, out) in stage.chunks_exact(row).zip(vt.chunks_exact_mut(row)) {
            butterfly_in(
                &sa[..cin],
                &sa[cin..2 * cin],
                &sa[2 * cin..3 * cin],
                &sa[3 * cin..],
                out,
            );
        }
    }
}

/// Output transform of tiles `t0..t1` into channels-last `y`: `A^T m A + bias`, with
/// `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`; outputs beyond an odd edge are dropped.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn wino_output<S: macerator::Simd>(
    geo: Wino,
    m: &[f32],
    t0: usize,
    t1: usize,
    y: &mut [f32],
    tmp: &mut [f32],
    bias: &[f32],
) {
    let Wino {
        h,
        w,
        cout,
        cp,
        th,
        tw,
        ..
    } = geo;
    for (t, mt) in (t0..t1).zip(m.chunks_exact(16 * cp)) {
        let img = t / (th * tw);
        let (ty, tx) = ((t % (th * tw)) / tw, t % tw);
        // Rows, all four columns at once: tmp[dy * 4 + b] = (A^T m)[dy][b].
        let e = |a: usize| &mt[a * 4 * cp..(a + 1) * 4 * cp];
        let (r0, r1) = tmp[..8 * cp].split_at_mut(4 * cp);
        butterfly_out(e(0), e(1), e(2), e(3), r0, r1, None);
        for dy in 0..2 {
            let oy = 2 * ty + dy;
            if oy >= h {
                continue;
            }
            let r = |b: usize| &tmp[(dy * 4 + b) * cp..][..cout];
            let ox = 2 * tx;
            let row = &mut y[((img * h + oy) * w + ox) * cout..];
            if ox + 1 < w {
                let (y0, y1) = row[..2 * cout].split_at_mut(cout);
                butterfly_out(r(0), r(1), r(2), r(3), y0, y1, Some(bias));
            } else {
                let mut spill = vec![0.0f32; cout];
                butterfly_out(
                    r(0),
                    r(1),
                    r(2),
                    r(3),
                    &mut row[..cout],
                    &mut spill,
                    Some(bias),
                );
            }
        }
    }
}

/// One Winograd input butterfly over channel vectors: `out` holds four vectors
/// `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[inline(always)]
pub(super) fn butterfly_in(d0: &[f32], d1: &[f32], d2: &[f32], d3: &[f32], out: &mut [f32]) {
    let c = d0.len();
    let (d1, d2, d3) = (&d1[..c], &d2[..c], &d3[..c]);
    let (o0, rest) = out[..4 * c].split_at_mut(c);
    let (o1, rest) = rest.split_at_mut(c);
    let (o2, o3) = rest.split_at_mut(c);
    for i in 0..c {
        let (a, b, cc, d) = (d0[i], d1[i], d2[i], d3[i]);
        o0[i] = a - cc;
        o1[i] = b + cc;
        o2[i] = cc - b;
        o3[i] = b - d;
    }
}

/// [`butterfly_in`] for one column `q` of a patch given pixel by pixel: `stage[a][q] = (B^T
/// d)[a][q]` for the column's four pixels `d0..d3` (`stage` is `[4][4][c]`).
#[inline(always)]
fn butterfly_in_column(
    d0: &[f32],
    d1: &[f32],
    d2: &[f32],
    d3: &[f32],
    stage: &mut [f32],
    q: usize,
) {
    let c = d0.len();
    let (d1, d2, d3) = (&d1[..c], &d2[..c], &d3[..c]);
    let (o0, rest) = stage[q * c..].split_at_mut(4 * c);
    let (o1, rest) = rest.split_at_mut(4 * c);
    let (o2, o3) = rest.split_at_mut(4 * c);
    let (o0, o1, o2, o3) = (&mut o0[..c], &mut o1[..c], &mut o2[..c], &mut o3[..c]);
    for i in 0..c {
        let (a, b, cc, d) = (d0[i], d1[i], d2[i], d3[i]);
        o0[i] = a - cc;
        o1[i] = b + cc;
        o2[i] = cc - b;
        o3[i] = b - d;
    }
}

/// One Winograd output butterfly over channel vectors: `o0 = m0 + m1 + m2`,
/// `o1 = m1 - m2 - m3`, plus `bias` when given.
#[inline(always)]
pub(super) fn butterfly_out(
    m0: &[f32],
    m1: &[f32],
    m2: &[f32],
    m3: &[f32],
    o0: &mut [f32],
    o1: &mut [f32],
    bias: Option<&[f32]>,
) {
    let c = m0.len();
    let (m1, m2, m3, o0, o1) = (&m1[..c], &m2[..c], &m3[..c], &mut o0[..c], &mut o1[..c]);
    match bias {
        Some(b) => {
            let b = &b[..c];
            for i in 0..c {
                o0[i] = m0[i] + m1[i] + m2[i] + b[i];
                o1[i] = m1[i] - m2[i] - m3[i] + b[i];
            }
        }
        None => {
            for i in 0..c {
                o0[i] = m0[i] + m1[i] + m2[i];
                o1[i] = m1[i] - m2[i] - m3[i];
            }
        }
    }
}

/// Output-gradient transform for the weight gradient of tiles `t0..t1`, position-major:
/// `m[a * 4 + b][t - t0][co] = (A dy A^T)[a][b]` over channel vectors (so that each
/// position's product streams contiguous rows), the adjoint of [`wino_output`]'s `A^T m
/// A` (rows of `A`: `[1, 0], [1, 1], [1, -1], [0, -1]`). `dy` is the channels-last output
/// gradient (`h x w`, `cout` channels, the same size as the input); outputs beyond an odd
/// edge count as zero. `tmp` holds at least `10 * cout` values.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn wino_grad_output<S: macerator::Simd>(
    geo: Wino,
    dy: &[f32],
    t0: usize,
    t1: usize,
    m: &mut [f32],
    tmp: &mut [f32],
) {
    let Wino {
        h, w, cout, th, tw, ..
    } = geo;
    let (zero, rest) = tmp[..10 * cout].split_at_mut(cout);
    zero.fill(0.0);
    let zero = &*zero;
    // stage[i][b]: row i of the tile (2 rows) after the column butterfly (4 vectors).
    let (s0, s1) = rest.split_at_mut(4 * cout);
    let xs = (t1 - t0) * cout;
    for t in t0..t1 {
        let at = (t - t0) * cout;
        let img = t / (th * tw);
        let (ty, tx) = ((t % (th * tw)) / tw, t % tw);
        let (oy, ox) = (2 * ty, 2 * tx);
        // The tile's two output pixels in row `oy` (zeros beyond the edge).
        let pair = |oy: usize| -> (&[f32], &[f32]) {
            if oy >= h {
                return (zero, zero);
            }
            let at = ((img * h + oy) * w + ox) * cout;
            if ox + 1 < w {
                dy[at..][..2 * cout].split_at(cout)
            } else {
                (&dy[at..][..cout], zero)
            }
        };
        // Columns: s[i][b] = (A dy_i)[b] for the tile's two rows i.
        let (p, q) = pair(oy);
        butterfly_grad(p, q, s0, cout);
        let (p, q) = pair(oy + 1);
        butterfly_grad(p, q, s1, cout);
        // Rows: m[a][b] = (A s[.][b])[a], position a * 4 + b at stride `xs`.
        for b in 0..4 {
            let (y0, y1) = (&s0[b * cout..][..cout], &s1[b * cout..][..cout]);
            butterfly_grad(y0, y1, &mut m[b * xs + at..], 4 * xs);
        }
    }
}

/// One output-gradient butterfly over channel vectors: `out` holds four vectors
/// `[y0, y0 + y1, y0 - y1, -y1]` (`A` times the pair), `stride` values apart.
#[inline(always)]
fn butterfly_grad(y0: &[f32], y1: &[f32], out: &mut [f32], stride: usize) {
    let c = y0.len();
    let y1 = &y1[..c];
    let (o0, rest) = out.split_at_mut(stride);
    let (o1, rest) = rest.split_at_mut(stride);
    let (o2, o3) = rest.split_at_mut(stride);
    let (o0, o1, o2, o3) = (&mut o0[..c], &mut o1[..c], &mut o2[..c], &mut o3[..c]);
    // Blocks of 16 channels as arrays: a loop over a run-time count of 16 channels ran in its
    // scalar and 4-wide remainder loops.
    let full = c / 16 * 16;
    for b in (0..full).step_by(16) {
        let p: [f32; 16] = y0[b..b + 16].try_into().expect("16 channels");
        let q: [f32; 16] = y1[b..b + 16].try_into().expect("16 channels");
        let (mut s, mut d, mut n) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
        for i in 0..16 {
            s[i] = p[i] + q[i];
            d[i] = p[i] - q[i];
            n[i] = -q[i];
        }
        o0[b..b + 16].copy_from_slice(&p);
        o1[b..b + 16].copy_from_slice(&s);
        o2[b..b + 16].copy_from_slice(&d);
        o3[b..b + 16].copy_from_slice(&n);
    }
    for i in full..c {
        let (p, q) = (y0[i], y1[i]);
        o0[i] = p;
        o1[i] = p + q;
        o2[i] = p - q;
        o3[i] = -q;
    }
}

/// The weight gradient `G^T du G` of one `(co, ci)` pair from its 16 Winograd-domain sums
/// `du[a * 4 + b]` (the adjoint of the forward's `U = G g G^T`), as `[ky * 3 + kx]`.
pub(super) fn wino_weight_grad(du: &[f32; 16]) -> [f32; 9] {
    // G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]: G^T v for a column v of four,
    // written out (the general sum multiplied by every zero of G, at every step).
    #[inline(always)]
    fn gt(v: [f32; 4]) -> [f32; 3] {
        let (p, m) = (0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]));
        [v[0] + p, m, p + v[3]]
    }
    // r[a][kx] = (du[a][.] G)[kx], then g[.][kx] = G^T r[.][kx].
    let r: [[f32; 3]; 4] =
        std::array::from_fn(|a| gt([du[a * 4], du[a * 4 + 1], du[a * 4 + 2], du[a * 4 + 3]]));
    let mut g = [0.0f32; 9];
    for kx in 0..3 {
        let col = gt([r[0][kx], r[1][kx], r[2][kx], r[3][kx]]);
        for (ky, v) in col.into_iter().enumerate() {
            g[ky * 3 + kx] = v;
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible value in [-1, 1).
    fn val(i: usize) -> f32 {
        ((i.wrapping_mul(2_654_435_761) % 1000) as f32) / 500.0 - 1.0
    }

    /// Sizes with interior tiles, edge tiles on every side and odd edges.
    const SIZES: [(usize, usize); 7] = [(1, 1), (2, 3), (3, 3), (4, 4), (5, 7), (8, 8), (9, 6)];

    fn geo(h: usize, w: usize, cin: usize, cout: usize) -> Wino {
        Wino {
            h,
            w,
            cin,
            cout,
            cp: cout,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
        }
    }

    /// The input transform, per-position products with `G g G^T` and the output transform
    /// equal the direct 3x3 stride-1 padding-1 convolution (channels-last, two images).
    #[test]
    fn transforms_equal_direct_convolution() {
        let (n, cin, cout) = (2, 5, 3);
        for (h, w) in SIZES {
            let g = geo(h, w, cin, cout);
            let tiles = n * g.th * g.tw;
            let x: Vec<f32> = (0..n * h * w * cin).map(val).collect();
            let k: Vec<f32> = (0..cout * cin * 9).map(|i| val(i + 7919)).collect();
            let mut v = vec![0.0f32; tiles * 16 * cin];
            let mut tmp = vec![0.0f32; 32 * cin.max(cout)];
            wino_input(g, &x, 0, tiles, &mut v, &mut tmp, &vec![0.0; 4 * cin]);
            // U = G g G^T per (co, ci), G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]].
            let gm = [
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ];
            let u = |co: usize, ci: usize, a: usize, b: usize| -> f32 {
                let kk = &k[(co * cin + ci) * 9..];
                (0..3)
                    .flat_map(|ky| (0..3).map(move |kx| (ky, kx)))
                    .map(|(ky, kx)| gm[a][ky] * kk[ky * 3 + kx] * gm[b][kx])
                    .sum()
            };
            let mut m = vec![0.0f32; tiles * 16 * cout];
            for t in 0..tiles {
                for xi in 0..16 {
                    for co in 0..cout {
                        m[(t * 16 + xi) * cout + co] = (0..cin)
                            .map(|ci| v[(t * 16 + xi) * cin + ci] * u(co, ci, xi / 4, xi % 4))
                            .sum();
                    }
                }
            }
            let mut y = vec![0.0f32; n * h * w * cout];
            wino_output(g, &m, 0, tiles, &mut y, &mut tmp, &vec![0.0; cout]);
            for img in 0..n {
                for oy in 0..h {
                    for ox in 0..w {
                        for co in 0..cout {
                            let mut want = 0.0f64;
                            for (ky, kx, ci) in
                                (0..9).flat_map(|p| (0..cin).map(move |c| (p / 3, p % 3, c)))
                            {
                                let (iy, ix) =
                                    ((oy + ky).wrapping_sub(1), (ox + kx).wrapping_sub(1));
                                if iy < h && ix < w {
                                    want += f64::from(x[((img * h + iy) * w + ix) * cin + ci])
                                        * f64::from(k[((co * cin + ci) * 3 + ky) * 3 + kx]);
                                }
                            }
                            let got = y[((img * h + oy) * w + ox) * cout + co];
                            assert!(
                                (f64::from(got) - want).abs() < 1e-5,
                                "{h}x{w} image {img} ({oy}, {ox}) channel {co}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The output-gradient transform is the adjoint of the output transform: `<A^T m A, dy>
    /// = <m, A dy A^T>` (its position-major layout), at every size.
    #[test]
    fn grad_output_is_the_output_transforms_adjoint() {
        let (n, cout) = (2, 3);
        for (h, w) in SIZES {
            let g = geo(h, w, 1, cout);
            let tiles = n * g.th * g.tw;
            let m: Vec<f32> = (0..tiles * 16 * cout).map(val).collect();
            let dy: Vec<f32> = (0..n * h * w * cout).map(|i| val(i + 104_729)).collect();
            let mut tmp = vec![0.0f32; 32 * cout];
            let mut y = vec![0.0f32; n * h * w * cout];
            wino_output(g, &m, 0, tiles, &mut y, &mut tmp, &vec![0.0; cout]);
            let mut a = vec![0.0f32; 16 * tiles * cout];
            wino_grad_output(g, &dy, 0, tiles, &mut a, &mut tmp);
            let lhs: f64 = y
                .iter()
                .zip(&dy)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum();
            let mut rhs = 0.0f64;
            for t in 0..tiles {
                for xi in 0..16 {
                    for co in 0..cout {
                        rhs += f64::from(m[(t * 16 + xi) * cout + co])
                            * f64::from(a[(xi * tiles + t) * cout + co]);
                    }
                }
            }
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{h}x{w}: {lhs} vs {rhs}"
            );
        }
    }
}
