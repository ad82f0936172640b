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
/// vectorize with the widest instructions the CPU has.
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
    let zero = &zero[..cin];
    let stage = &mut tmp[..16 * cin];
    let row = 4 * cin;
    for (t, vt) in (t0..t1).zip(v.chunks_exact_mut(16 * cin)) {
        let img = t / (th * tw);
        let (ty, tx) = ((t % (th * tw)) / tw, t % tw);
        // Top-left input pixel of the 4x4 patch is (2 ty - 1, 2 tx - 1).
        let interior = ty > 0 && tx > 0 && 2 * ty + 3 <= h && 2 * tx + 3 <= w;
        if interior {
            // The patch's four rows, each 4 pixels x cin contiguous.
            let at = |r: usize| ((img * h + 2 * ty - 1 + r) * w + 2 * tx - 1) * cin;
            // Rows, all four columns at once: stage[a][q] = (B^T d)[a][q].
            butterfly_in(
                &x[at(0)..][..row],
                &x[at(1)..][..row],
                &x[at(2)..][..row],
                &x[at(3)..][..row],
                stage,
            );
        } else {
            // At an edge, pixel by pixel, outside ones read as zeros (no patch copy).
            let px = |k: usize| -> &[f32] {
                let (iy, ix) = (
                    (2 * ty + k / 4).wrapping_sub(1),
                    (2 * tx + k % 4).wrapping_sub(1),
                );
                if iy < h && ix < w {
                    &x[((img * h + iy) * w + ix) * cin..][..cin]
                } else {
                    zero
                }
            };
            for q in 0..4 {
                butterfly_in_column(px(q), px(4 + q), px(8 + q), px(12 + q), stage, q);
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
        let px = |oy: usize, ox: usize| -> &[f32] {
            if oy < h && ox < w {
                &dy[((img * h + oy) * w + ox) * cout..][..cout]
            } else {
                zero
            }
        };
        let (oy, ox) = (2 * ty, 2 * tx);
        // Columns: s[i][b] = (A dy_i)[b] for the tile's two rows i.
        butterfly_grad(px(oy, ox), px(oy, ox + 1), s0, cout);
        butterfly_grad(px(oy + 1, ox), px(oy + 1, ox + 1), s1, cout);
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
    for i in 0..c {
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
    // G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]; rows of G^T are its columns.
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    // r[a][kx] = sum over b of du[a][b] G[b][kx].
    let mut r = [[0.0f32; 3]; 4];
    for (a, ra) in r.iter_mut().enumerate() {
        for (kx, v) in ra.iter_mut().enumerate() {
            *v = (0..4).map(|b| du[a * 4 + b] * G[b][kx]).sum();
        }
    }
    let mut g = [0.0f32; 9];
    for ky in 0..3 {
        for kx in 0..3 {
            g[ky * 3 + kx] = (0..4).map(|a| G[a][ky] * r[a][kx]).sum();
        }
    }
    g
}
