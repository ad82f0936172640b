//! Positions and images between the IR's channel-first order and the plan's channels-last
//! storage order.

use decomp_ir::Shape;

/// `[c, h, w]` of a feature map, `[n, 1, 1]` of a vector: in both, storage position
/// `p * c + ch` is IR position `ch * h * w + p`.
pub(super) fn chw(shape: &Shape) -> [usize; 3] {
    match shape.as_slice() {
        &[c, h, w] => [c, h, w],
        s => [s.iter().product(), 1, 1],
    }
}

/// IR (channel-first) position of storage position `s`.
pub(super) fn ir_index(shape: &Shape, s: usize) -> usize {
    let [c, h, w] = chw(shape);
    (s % c) * h * w + s / c
}

/// Storage position of IR position `i`.
pub(super) fn storage_index(shape: &Shape, i: usize) -> usize {
    let [c, h, w] = chw(shape);
    let hw = h * w;
    (i % hw) * c + i / hw
}

/// One image from channel-first to storage order.
pub(super) fn to_storage(shape: &Shape, src: &[f32], dst: &mut [f32]) {
    let [c, h, w] = chw(shape);
    let hw = h * w;
    if hw == 1 || c == 1 {
        dst.copy_from_slice(src);
        return;
    }
    for (ch, plane) in src.chunks_exact(hw).enumerate() {
        for (p, &v) in plane.iter().enumerate() {
            dst[p * c + ch] = v;
        }
    }
}

/// One image from storage to channel-first order.
pub(super) fn to_ir(shape: &Shape, src: &[f32], dst: &mut [f32]) {
    let [c, h, w] = chw(shape);
    let hw = h * w;
    if hw == 1 || c == 1 {
        dst.copy_from_slice(src);
        return;
    }
    for (p, px) in src.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            dst[ch * hw + p] = v;
        }
    }
}

/// `rows` copies of `row`, back to back.
pub(super) fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    if row.is_empty() {
        return Vec::new();
    }
    // Every value is written below.
    let mut v = super::pool::take(rows * row.len());
    for r in v.chunks_exact_mut(row.len()) {
        r.copy_from_slice(row);
    }
    v
}

pub(super) fn numel(shape: &Shape) -> usize {
    shape.iter().product()
}
