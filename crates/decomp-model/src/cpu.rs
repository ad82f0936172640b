//! The CPU inference plan behind [`Executor`](crate::Executor) on the `flex` device.
//!
//! Compiled once from a [`ModelIr`]: every BatchNorm that is the only consumer of a
//! convolution is folded into the convolution's weights and bias (the convolution's own output
//! is then never materialized, and the fused node produces exactly the BatchNorm's output, so
//! masks and captures at BatchNorm outputs keep their meaning); feature maps are kept
//! channels-last (`[image][y][x][channel]`, "storage order"); convolutions run as im2col over
//! a cache-sized block of output pixels followed by one product with the `gemm` crate (through
//! [`decomp_gemm::sgemm`]), the bias preloaded into the destination; batches are split into
//! tiles of a few images that rayon runs in parallel.
//!
//! Everything the stages see keeps the IR's channel-first meaning: masks and captured
//! positions are indexed `c * h * w + y * w + x` and converted at the boundary.

use std::collections::HashMap;

use decomp_gemm::{Gemm, sgemm};
use decomp_ir::{BitSet, ModelIr, NodeId, NodeMask, Op, Shape};
use rayon::prelude::*;

/// Tuning knobs of the CPU plan. Defaults are the fastest measured settings for
/// ResNet-20 at batch 128 on a 2-core AVX2/AVX-512 machine (`benches/executor.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTuning {
    /// Images per parallel task.
    pub tile: usize,
    /// Elements of the im2col block (output pixels x kernel size) per matrix product.
    pub block: usize,
    /// 3x3 stride-1 convolutions with padding 1 as Winograd F(2x2, 3x3): 2.25x fewer
    /// multiplications, within float rounding of the direct product.
    pub winograd: bool,
    /// Register-blocked product kernels compiled per SIMD level (any output width up to 64,
    /// weights padded to a multiple of 8 columns; CPUs with FMA) instead of the `gemm`
    /// crate, for the Winograd products and the im2col / 1x1 convolutions.
    pub small_kernels: bool,
}

impl Default for CpuTuning {
    fn default() -> Self {
        Self {
            tile: 4,
            block: 1 << 16,
            winograd: true,
            small_kernels: true,
        }
    }
}

impl CpuTuning {
    /// Defaults, overridden by `DECOMP_CPU_TILE` / `DECOMP_CPU_BLOCK` when set to a positive
    /// number (for tuning experiments).
    pub fn from_env() -> Self {
        let get = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
        };
        let d = Self::default();
        Self {
            tile: get("DECOMP_CPU_TILE", d.tile),
            block: get("DECOMP_CPU_BLOCK", d.block),
            winograd: std::env::var("DECOMP_CPU_WINOGRAD").map_or(d.winograd, |v| v != "0"),
            small_kernels: std::env::var("DECOMP_CPU_SMALL_KERNELS")
                .map_or(d.small_kernels, |v| v != "0"),
        }
    }
}

struct Conv {
    /// `[kh * kw * cin, cp]`, row `(ky * kw + kx) * cin + ci`, BatchNorm scale folded in,
    /// columns from `cout` on zero.
    w: Vec<f32>,
    /// Winograd-domain weights `G g G^T` as `[16][cin][cp]`, for 3x3 stride-1 padding-1
    /// convolutions.
    wino: Option<Vec<f32>>,
    /// `[cout]`, BatchNorm shift folded in.
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    /// Columns of the weights and of the Winograd products: `cout` rounded up to a multiple
    /// of 8 (zero columns), so that the register-blocked kernels cover every width up to 64,
    /// as channel modules have (their outputs beyond `cout` are computed and dropped).
    cp: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    in_hw: [usize; 2],
    out_hw: [usize; 2],
}

enum POp {
    Input,
    /// A convolution folded into its BatchNorm: never computed.
    Folded,
    Conv(Conv),
    /// A BatchNorm that could not be folded: `x * scale[c] + shift[c]`.
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    Relu,
    Add,
    Pool {
        max: bool,
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
    },
    GlobalAvgPool,
    Flatten,
    /// `w` is `[in, out]`.
    Linear {
        w: Vec<f32>,
        bias: Vec<f32>,
        out: usize,
    },
    ShortcutA {
        stride: usize,
        pad_before: usize,
    },
    /// A fixed map added to every image, channels-last `[h, w, c]`.
    BiasMap {
        map: Vec<f32>,
    },
    /// Subsample by `stride`, then output channel `o` is input channel `sources[o]` or the
    /// constant `fill[o]`.
    Gather {
        stride: usize,
        sources: Vec<Option<usize>>,
        fill: Vec<f32>,
    },
}

struct PNode {
    op: POp,
    inputs: Vec<NodeId>,
}

/// A model compiled for the CPU; see the module docs.
pub(crate) struct CpuPlan {
    nodes: Vec<PNode>,
    shapes: Vec<Shape>,
    output: NodeId,
    last_use: Vec<usize>,
    tuning: CpuTuning,
}

/// Masks of one probe in storage order: per node, a multiplier per position (1 keep, 0 zero).
pub(crate) struct HostMasks {
    keep: HashMap<NodeId, Vec<f32>>,
}

/// Module masks in storage order: per node, its distinct masks as (modules using it, zeroed
/// storage positions).
pub(crate) struct HostModuleMasks {
    by_node: HashMap<NodeId, Vec<(u64, Vec<u32>)>>,
    relu_fed: Vec<bool>,
    all: u64,
}

/// A node value handed to an op: moved when this op is its last reader.
enum Arg<'a> {
    Owned(Vec<f32>),
    Borrowed(&'a [f32]),
}

impl Arg<'_> {
    fn as_slice(&self) -> &[f32] {
        match self {
            Arg::Owned(v) => v,
            Arg::Borrowed(s) => s,
        }
    }

    fn into_owned(self) -> Vec<f32> {
        match self {
            Arg::Owned(v) => v,
            Arg::Borrowed(s) => s.to_vec(),
        }
    }
}

/// `[c, h, w]` of a feature map, `[n, 1, 1]` of a vector: in both, storage position
/// `p * c + ch` is IR position `ch * h * w + p`.
fn chw(shape: &Shape) -> [usize; 3] {
    match shape.as_slice() {
        &[c, h, w] => [c, h, w],
        s => [s.iter().product(), 1, 1],
    }
}

/// IR (channel-first) position of storage position `s`.
fn ir_index(shape: &Shape, s: usize) -> usize {
    let [c, h, w] = chw(shape);
    (s % c) * h * w + s / c
}

/// Storage position of IR position `i`.
fn storage_index(shape: &Shape, i: usize) -> usize {
    let [c, h, w] = chw(shape);
    let hw = h * w;
    (i % hw) * c + i / hw
}

/// One image from channel-first to storage order.
fn to_storage(shape: &Shape, src: &[f32], dst: &mut [f32]) {
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
fn to_ir(shape: &Shape, src: &[f32], dst: &mut [f32]) {
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
fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; rows * row.len()];
    if !row.is_empty() {
        for r in v.chunks_exact_mut(row.len()) {
            r.copy_from_slice(row);
        }
    }
    v
}

fn numel(shape: &Shape) -> usize {
    shape.iter().product()
}

impl CpuPlan {
    /// Compiles `model` (already validated, with node output shapes `shapes`); `None` when it
    /// uses something this plan does not run (grouped convolutions, ops added later).
    pub(crate) fn new(model: &ModelIr, shapes: &[Shape], tuning: CpuTuning) -> Option<Self> {
        let g = &model.graph;
        let consumers: Vec<Vec<NodeId>> = (0..g.nodes.len()).map(|id| g.consumers(id)).collect();
        // conv id -> BatchNorm id that absorbs it.
        let mut fold_into: HashMap<NodeId, NodeId> = HashMap::new();
        for (id, node) in g.nodes.iter().enumerate() {
            if let Op::Conv2d { groups: 1, .. } = node.op
                && let [bn] = consumers[id].as_slice()
                && matches!(g.nodes[*bn].op, Op::BatchNorm2d { .. })
                && id != g.output
            {
                fold_into.insert(id, *bn);
            }
        }
        let folded_conv: HashMap<NodeId, NodeId> =
            fold_into.iter().map(|(&c, &b)| (b, c)).collect();
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for (id, node) in g.nodes.iter().enumerate() {
            let inputs = node.inputs.clone();
            let pnode = match &node.op {
                Op::Input { .. } => PNode {
                    op: POp::Input,
                    inputs,
                },
                Op::Conv2d { .. } if fold_into.contains_key(&id) => PNode {
                    op: POp::Folded,
                    inputs,
                },
                Op::Conv2d { .. } => PNode {
                    op: POp::Conv(conv(&node.op, &shapes[inputs[0]], &shapes[id], None)?),
                    inputs,
                },
                Op::BatchNorm2d {
                    gamma,
                    beta,
                    running_mean,
                    running_var,
                    eps,
                } => {
                    let scale: Vec<f32> = gamma
                        .data
                        .iter()
                        .zip(&running_var.data)
                        .map(|(&g, &v)| (g as f64 / (v as f64 + eps).sqrt()) as f32)
                        .collect();
                    let shift: Vec<f32> = beta
                        .data
                        .iter()
                        .zip(&running_mean.data)
                        .zip(&scale)
                        .map(|((&b, &m), &s)| (b as f64 - m as f64 * s as f64) as f32)
                        .collect();
                    match folded_conv.get(&id) {
                        Some(&c) => {
                            let cnode = &g.nodes[c];
                            PNode {
                                op: POp::Conv(conv(
                                    &cnode.op,
                                    &shapes[cnode.inputs[0]],
                                    &shapes[c],
                                    Some((&scale, &shift)),
                                )?),
                                inputs: cnode.inputs.clone(),
                            }
                        }
                        None => PNode {
                            op: POp::Affine { scale, shift },
                            inputs,
                        },
                    }
                }
                Op::Relu => PNode {
                    op: POp::Relu,
                    inputs,
                },
                Op::Add => PNode {
                    op: POp::Add,
                    inputs,
                },
                Op::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                }
                | Op::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                } => PNode {
                    op: POp::Pool {
                        max: matches!(node.op, Op::MaxPool2d { .. }),
                        kernel: *kernel,
                        stride: *stride,
                        pad: *padding,
                    },
                    inputs,
                },
                Op::GlobalAvgPool => PNode {
                    op: POp::GlobalAvgPool,
                    inputs,
                },
                Op::Flatten => PNode {
                    op: POp::Flatten,
                    inputs,
                },
                Op::Linear { weight, bias } => {
                    let (out, inp) = (weight.shape[0], weight.shape[1]);
                    let mut w = vec![0.0f32; inp * out];
                    for o in 0..out {
                        for i in 0..inp {
                            w[i * out + o] = weight.data[o * inp + i];
                        }
                    }
                    PNode {
                        op: POp::Linear {
                            w,
                            bias: bias
                                .as_ref()
                                .map_or_else(|| vec![0.0; out], |b| b.data.clone()),
                            out,
                        },
                        inputs,
                    }
                }
                Op::ShortcutA {
                    stride, pad_before, ..
                } => PNode {
                    op: POp::ShortcutA {
                        stride: *stride,
                        pad_before: *pad_before,
                    },
                    inputs,
                },
                Op::BiasMap { bias } => {
                    let [c, h, w] = chw(&shapes[id]);
                    let mut map = vec![0.0f32; c * h * w];
                    for ch in 0..c {
                        for p in 0..h * w {
                            map[p * c + ch] = bias.data[ch * h * w + p];
                        }
                    }
                    PNode {
                        op: POp::BiasMap { map },
                        inputs,
                    }
                }
                Op::ChannelGather {
                    stride,
                    sources,
                    fill,
                } => PNode {
                    op: POp::Gather {
                        stride: *stride,
                        sources: sources.clone(),
                        fill: fill.clone(),
                    },
                    inputs,
                },
                // Ops this plan does not know run on the reference path.
                #[allow(unreachable_patterns)]
                _ => return None,
            };
            nodes.push(pnode);
        }
        let mut last_use: Vec<usize> = (0..nodes.len()).collect();
        for (id, n) in nodes.iter().enumerate() {
            for &i in &n.inputs {
                last_use[i] = last_use[i].max(id);
            }
        }
        last_use[g.output] = usize::MAX;
        Some(Self {
            nodes,
            shapes: shapes.to_vec(),
            output: g.output,
            last_use,
            tuning,
        })
    }

    pub(crate) fn tuning(&self) -> CpuTuning {
        self.tuning
    }

    pub(crate) fn set_tuning(&mut self, tuning: CpuTuning) {
        self.tuning = CpuTuning {
            tile: tuning.tile.max(1),
            block: tuning.block.max(1),
            winograd: tuning.winograd,
            small_kernels: tuning.small_kernels,
        };
    }

    /// Whether node `id`'s output exists in this plan (a folded convolution's does not).
    pub(crate) fn materialized(&self, id: NodeId) -> bool {
        !matches!(self.nodes[id].op, POp::Folded)
    }

    /// Probe masks in storage order, or `None` when one sits on a node this plan does not
    /// materialize.
    pub(crate) fn host_masks(&self, masks: &[NodeMask]) -> Option<HostMasks> {
        let mut keep = HashMap::new();
        for m in masks {
            if !self.materialized(m.node) {
                return None;
            }
            let shape = &self.shapes[m.node];
            let mut k = vec![1.0f32; numel(shape)];
            for i in 0..m.zeroed.len() {
                if m.zeroed.get(i) {
                    k[storage_index(shape, i)] = 0.0;
                }
            }
            // Several masks on one node all apply.
            keep.entry(m.node)
                .and_modify(|e: &mut Vec<f32>| e.iter_mut().zip(&k).for_each(|(a, b)| *a *= b))
                .or_insert(k);
        }
        Some(HostMasks { keep })
    }

    /// Distinct module masks in storage order (see `ModuleMasks`), or `None` as for
    /// [`Self::host_masks`].
    pub(crate) fn host_module_masks(
        &self,
        modules: usize,
        by_node: &HashMap<NodeId, Vec<(u64, BitSet)>>,
        relu_fed: Vec<bool>,
    ) -> Option<HostModuleMasks> {
        let mut out = HashMap::new();
        for (&node, distinct) in by_node {
            if !self.materialized(node) {
                return None;
            }
            let shape = &self.shapes[node];
            let list = distinct
                .iter()
                .map(|(set, b)| {
                    let mut idx: Vec<u32> = (0..b.len())
                        .filter(|&i| b.get(i))
                        .map(|i| storage_index(shape, i) as u32)
                        .collect();
                    idx.sort_unstable();
                    (*set, idx)
                })
                .collect();
            out.insert(node, list);
        }
        Some(HostModuleMasks {
            by_node: out,
            relu_fed,
            all: if modules == 64 {
                u64::MAX
            } else {
                (1u64 << modules) - 1
            },
        })
    }

    /// Image batch (`[batch, c, h, w]` channel-first) split into tiles.
    fn tiles<'a>(&self, x: &'a [f32], batch: usize) -> Vec<(usize, &'a [f32])> {
        let per = numel(&self.shapes[0]);
        let tile = self.tuning.tile.max(1);
        (0..batch)
            .step_by(tile)
            .map(|start| {
                let n = tile.min(batch - start);
                (n, &x[start * per..(start + n) * per])
            })
            .collect()
    }

    /// Logits `[batch * classes]` and captured node outputs `[batch * positions]`, both
    /// channel-first.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        batch: usize,
        capture: &[NodeId],
        masks: Option<&HostMasks>,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let parts: Vec<(Vec<f32>, Vec<Vec<f32>>)> = self
            .tiles(x, batch)
            .into_par_iter()
            .map(|(n, xs)| {
                let mut caps: Vec<Vec<f32>> = capture
                    .iter()
                    .map(|&c| vec![0.0; n * numel(&self.shapes[c])])
                    .collect();
                let logits = self.run_tile(xs, n, self.output, masks, &mut |id, v| {
                    for (slot, _) in caps.iter_mut().zip(capture).filter(|(_, c)| **c == id) {
                        let shape = &self.shapes[id];
                        let per = numel(shape);
                        for (src, dst) in v.chunks_exact(per).zip(slot.chunks_exact_mut(per)) {
                            to_ir(shape, src, dst);
                        }
                    }
                });
                (self.out_to_ir(logits), caps)
            })
            .collect();
        let mut logits = Vec::new();
        let mut caps: Vec<Vec<f32>> = vec![Vec::new(); capture.len()];
        for (l, c) in parts {
            logits.extend(l);
            for (all, part) in caps.iter_mut().zip(c) {
                all.extend(part);
            }
        }
        (logits, caps)
    }

    fn out_to_ir(&self, v: Vec<f32>) -> Vec<f32> {
        let shape = &self.shapes[self.output];
        let per = numel(shape);
        let mut out = vec![0.0; v.len()];
        for (src, dst) in v.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            to_ir(shape, src, dst);
        }
        out
    }

    /// Logits (channel-first, `[batch * classes]`) and, per site, one bit per image and
    /// position (`> 0`), in storage order: `[batch * words]` with `words = positions / 64`
    /// rounded up.
    pub(crate) fn forward_active(
        &self,
        x: &[f32],
        batch: usize,
        sites: &[NodeId],
    ) -> (Vec<f32>, Vec<Vec<u64>>) {
        let words: Vec<usize> = sites
            .iter()
            .map(|&s| numel(&self.shapes[s]).div_ceil(64))
            .collect();
        let parts: Vec<(Vec<f32>, Vec<Vec<u64>>)> = self
            .tiles(x, batch)
            .into_par_iter()
            .map(|(n, xs)| {
                let mut bits: Vec<Vec<u64>> = words.iter().map(|&w| vec![0u64; n * w]).collect();
                let logits = self.run_tile(xs, n, self.output, None, &mut |id, v| {
                    for ((slot, _), &w) in bits
                        .iter_mut()
                        .zip(sites)
                        .zip(&words)
                        .filter(|((_, s), _)| **s == id)
                    {
                        let per = numel(&self.shapes[id]);
                        for (img, dst) in v.chunks_exact(per).zip(slot.chunks_exact_mut(w)) {
                            for (word, chunk) in dst.iter_mut().zip(img.chunks(64)) {
                                let mut acc = 0u64;
                                for (b, &x) in chunk.iter().enumerate() {
                                    acc |= u64::from(x > 0.0) << b;
                                }
                                *word = acc;
                            }
                        }
                    }
                });
                (self.out_to_ir(logits), bits)
            })
            .collect();
        let mut logits = Vec::new();
        let mut bits: Vec<Vec<u64>> = vec![Vec::new(); sites.len()];
        for (l, b) in parts {
            logits.extend(l);
            for (all, part) in bits.iter_mut().zip(b) {
                all.extend(part);
            }
        }
        (logits, bits)
    }

    /// ORs the storage-order bits of the chosen rows (`None`: all) into channel-first `active`.
    pub(crate) fn accumulate_bits(
        &self,
        sites: &[NodeId],
        bits: &[Vec<u64>],
        batch: usize,
        rows: Option<&[usize]>,
        active: &mut [BitSet],
    ) {
        for ((&site, b), acc) in sites.iter().zip(bits).zip(active.iter_mut()) {
            let shape = &self.shapes[site];
            let w = numel(shape).div_ceil(64);
            let mut any = vec![0u64; w];
            let mut or_row = |r: usize| {
                for (a, x) in any.iter_mut().zip(&b[r * w..(r + 1) * w]) {
                    *a |= x;
                }
            };
            match rows {
                Some(rs) => rs
                    .iter()
                    .copied()
                    .filter(|&r| r < batch)
                    .for_each(&mut or_row),
                None => (0..batch).for_each(&mut or_row),
            }
            for (wi, &word) in any.iter().enumerate() {
                let mut word = word;
                while word != 0 {
                    let bit = word.trailing_zeros() as usize;
                    word &= word - 1;
                    acc.set(ir_index(shape, wi * 64 + bit), true);
                }
            }
        }
    }

    /// Output of `node` for every module (channel-first `[batch * positions]` each), one
    /// branching pass per image (see `Executor::forward_modules`).
    pub(crate) fn forward_modules(
        &self,
        x: &[f32],
        batch: usize,
        masks: &HostModuleMasks,
        node: NodeId,
        modules: usize,
    ) -> Vec<Vec<f32>> {
        let per_in = numel(&self.shapes[0]);
        let branches: Vec<Vec<(u64, Vec<f32>)>> = (0..batch)
            .into_par_iter()
            .map(|i| self.run_branches(&x[i * per_in..(i + 1) * per_in], masks, node))
            .collect();
        let shape = &self.shapes[node];
        let per = numel(shape);
        let mut result = vec![vec![0.0f32; batch * per]; modules];
        let mut ir = vec![0.0f32; per];
        for (img, bs) in branches.iter().enumerate() {
            for (set, v) in bs {
                to_ir(shape, v, &mut ir);
                for (m, out) in result.iter_mut().enumerate() {
                    if set >> m & 1 == 1 {
                        out[img * per..(img + 1) * per].copy_from_slice(&ir);
                    }
                }
            }
        }
        result
    }

    /// Runs nodes `0..=stop` on one tile of `n` images; returns `stop`'s value. `on_value` sees
    /// every materialized node's value (after its mask).
    fn run_tile(
        &self,
        x: &[f32],
        n: usize,
        stop: NodeId,
        masks: Option<&HostMasks>,
        on_value: &mut dyn FnMut(NodeId, &[f32]),
    ) -> Vec<f32> {
        let mut values: Vec<Option<Vec<f32>>> = vec![None; self.nodes.len()];
        let mut scratch = Vec::new();
        for id in 0..=stop {
            let node = &self.nodes[id];
            let mut v = match node.op {
                POp::Folded => continue,
                POp::Input => {
                    let shape = &self.shapes[0];
                    let per = numel(shape);
                    let mut v = vec![0.0; n * per];
                    for (src, dst) in x.chunks_exact(per).zip(v.chunks_exact_mut(per)) {
                        to_storage(shape, src, dst);
                    }
                    v
                }
                _ => {
                    let ins = &node.inputs;
                    let mut owned: Vec<Option<Vec<f32>>> = ins
                        .iter()
                        .enumerate()
                        .map(|(k, &i)| {
                            if self.last_use[i] == id
                                && !ins[..k].contains(&i)
                                && !ins[k + 1..].contains(&i)
                            {
                                values[i].take()
                            } else {
                                None
                            }
                        })
                        .collect();
                    let args: Vec<Arg<'_>> = ins
                        .iter()
                        .zip(owned.iter_mut())
                        .map(|(&i, o)| match o.take() {
                            Some(v) => Arg::Owned(v),
                            None => Arg::Borrowed(
                                values[i]
                                    .as_deref()
                                    .expect("validated graph: inputs computed before use"),
                            ),
                        })
                        .collect();
                    self.apply(id, args, n, &mut scratch)
                }
            };
            if let Some(k) = masks.and_then(|m| m.keep.get(&id)) {
                for img in v.chunks_exact_mut(k.len()) {
                    for (a, b) in img.iter_mut().zip(k) {
                        *a *= b;
                    }
                }
            }
            on_value(id, &v);
            for &i in &node.inputs {
                if self.last_use[i] == id {
                    values[i] = None;
                }
            }
            values[id] = Some(v);
        }
        values[stop].take().expect("stop node computed")
    }

    /// Runs nodes `0..=stop` on one image for all modules at once; returns `stop`'s value per
    /// set of modules sharing it.
    fn run_branches(
        &self,
        x: &[f32],
        masks: &HostModuleMasks,
        stop: NodeId,
    ) -> Vec<(u64, Vec<f32>)> {
        type Branches = Vec<(u64, Vec<f32>)>;
        let mut values: Vec<Option<Branches>> = vec![None; self.nodes.len()];
        let mut scratch = Vec::new();
        for id in 0..=stop {
            let node = &self.nodes[id];
            let mut branches: Branches = match node.op {
                POp::Folded => continue,
                POp::Input => {
                    let mut v = vec![0.0; x.len()];
                    to_storage(&self.shapes[0], x, &mut v);
                    vec![(masks.all, v)]
                }
                _ => match node.inputs.as_slice() {
                    &[i] => {
                        if self.last_use[i] == id {
                            values[i]
                                .take()
                                .expect("inputs computed before use")
                                .into_iter()
                                .map(|(set, v)| {
                                    (set, self.apply(id, vec![Arg::Owned(v)], 1, &mut scratch))
                                })
                                .collect()
                        } else {
                            values[i]
                                .as_ref()
                                .expect("inputs computed before use")
                                .iter()
                                .map(|(set, v)| {
                                    (
                                        *set,
                                        self.apply(id, vec![Arg::Borrowed(v)], 1, &mut scratch),
                                    )
                                })
                                .collect()
                        }
                    }
                    ins => {
                        // Two-input op: one output per pair of input branches sharing a module.
                        let a = values[ins[0]].as_ref().expect("inputs computed before use");
                        let b = values[ins[1]].as_ref().expect("inputs computed before use");
                        let mut out = Vec::new();
                        for (sa, va) in a {
                            for (sb, vb) in b {
                                let set = sa & sb;
                                if set != 0 {
                                    out.push((
                                        set,
                                        self.apply(
                                            id,
                                            vec![Arg::Borrowed(va), Arg::Borrowed(vb)],
                                            1,
                                            &mut scratch,
                                        ),
                                    ));
                                }
                            }
                        }
                        out
                    }
                },
            };
            if let Some(distinct) = masks.by_node.get(&id) {
                let mut out = Vec::with_capacity(branches.len());
                for (mut members, v) in branches {
                    for (set, zeroed) in distinct {
                        if members & set == 0 {
                            continue;
                        }
                        let changes =
                            !masks.relu_fed[id] || zeroed.iter().any(|&s| v[s as usize] > 0.0);
                        if !changes {
                            continue;
                        }
                        let mut masked = v.clone();
                        for &s in zeroed {
                            masked[s as usize] = 0.0;
                        }
                        out.push((members & set, masked));
                        members &= !set;
                    }
                    if members != 0 {
                        out.push((members, v));
                    }
                }
                branches = out;
            }
            for &i in &node.inputs {
                if self.last_use[i] == id {
                    values[i] = None;
                }
            }
            values[id] = Some(branches);
        }
        values[stop].take().expect("stop node computed")
    }

    /// Applies node `id`'s op to `n` images of argument values in storage order.
    fn apply(&self, id: NodeId, args: Vec<Arg<'_>>, n: usize, scratch: &mut Vec<f32>) -> Vec<f32> {
        let mut args = args.into_iter();
        let mut arg = || args.next().expect("arity checked by validation");
        let in_shape = |k: usize| &self.shapes[self.nodes[id].inputs[k]];
        match &self.nodes[id].op {
            POp::Input | POp::Folded => unreachable!("input and folded nodes are not applied"),
            POp::Conv(c) => match &c.wino {
                Some(u) if self.tuning.winograd => {
                    self.winograd(c, u, arg().as_slice(), n, scratch)
                }
                _ => self.conv(c, arg().as_slice(), n, scratch),
            },
            POp::Affine { scale, shift } => {
                let mut v = arg().into_owned();
                let c = scale.len();
                for px in v.chunks_exact_mut(c) {
                    for ((x, s), b) in px.iter_mut().zip(scale).zip(shift) {
                        *x = *x * s + b;
                    }
                }
                v
            }
            POp::Relu => {
                let mut v = arg().into_owned();
                for x in &mut v {
                    *x = x.max(0.0);
                }
                v
            }
            POp::Add => {
                let (a, b) = (arg(), arg());
                let (mut acc, other) = match (a, b) {
                    (Arg::Owned(a), b) => (a, b),
                    (a, Arg::Owned(b)) => (b, a),
                    (a, b) => (a.into_owned(), b),
                };
                for (x, y) in acc.iter_mut().zip(other.as_slice()) {
                    *x += y;
                }
                acc
            }
            POp::Pool {
                max,
                kernel,
                stride,
                pad,
            } => {
                let [c, h, w] = chw(in_shape(0));
                let [_, ho, wo] = chw(&self.shapes[id]);
                let x = arg();
                let x = x.as_slice();
                let mut out = vec![0.0f32; n * ho * wo * c];
                let mut acc = vec![0.0f32; c];
                for img in 0..n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            acc.fill(if *max { f32::NEG_INFINITY } else { 0.0 });
                            for ky in 0..kernel[0] {
                                let Some(iy) =
                                    (oy * stride[0] + ky).checked_sub(pad[0]).filter(|&y| y < h)
                                else {
                                    continue;
                                };
                                for kx in 0..kernel[1] {
                                    let Some(ix) = (ox * stride[1] + kx)
                                        .checked_sub(pad[1])
                                        .filter(|&x| x < w)
                                    else {
                                        continue;
                                    };
                                    let px = &x[((img * h + iy) * w + ix) * c..][..c];
                                    for (a, &v) in acc.iter_mut().zip(px) {
                                        *a = if *max { a.max(v) } else { *a + v };
                                    }
                                }
                            }
                            let dst = &mut out[((img * ho + oy) * wo + ox) * c..][..c];
                            if *max {
                                dst.copy_from_slice(&acc);
                            } else {
                                // Padding counts (burn's `count_include_pad` default).
                                let area = (kernel[0] * kernel[1]) as f32;
                                for (d, a) in dst.iter_mut().zip(&acc) {
                                    *d = a / area;
                                }
                            }
                        }
                    }
                }
                out
            }
            POp::GlobalAvgPool => {
                let [c, h, w] = chw(in_shape(0));
                let x = arg();
                let mut out = vec![0.0f32; n * c];
                for (img, dst) in x
                    .as_slice()
                    .chunks_exact(h * w * c)
                    .zip(out.chunks_exact_mut(c))
                {
                    for px in img.chunks_exact(c) {
                        for (d, v) in dst.iter_mut().zip(px) {
                            *d += v;
                        }
                    }
                    for d in dst.iter_mut() {
                        *d /= (h * w) as f32;
                    }
                }
                out
            }
            POp::Flatten => {
                let shape = in_shape(0);
                let x = arg();
                let [_, h, w] = chw(shape);
                if h * w == 1 {
                    return x.into_owned();
                }
                let per = numel(shape);
                let mut out = vec![0.0f32; n * per];
                for (src, dst) in x
                    .as_slice()
                    .chunks_exact(per)
                    .zip(out.chunks_exact_mut(per))
                {
                    to_ir(shape, src, dst);
                }
                out
            }
            POp::Linear { w, bias, out } => {
                let x = arg();
                let inp = w.len() / out;
                let mut y = repeat_rows(bias, n);
                let g = Gemm {
                    m: n,
                    n: *out,
                    k: inp,
                    lhs_rs: inp,
                    rhs_rs: *out,
                    dst_rs: *out,
                };
                sgemm(g, &mut y, x.as_slice(), w, true)
                    .expect("linear shapes checked by validation");
                y
            }
            POp::ShortcutA { stride, pad_before } => {
                let [c, h, w] = chw(in_shape(0));
                let [co, ho, wo] = chw(&self.shapes[id]);
                let x = arg();
                let x = x.as_slice();
                let mut out = vec![0.0f32; n * ho * wo * co];
                for img in 0..n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let src = &x[((img * h + oy * stride) * w + ox * stride) * c..][..c];
                            out[((img * ho + oy) * wo + ox) * co + pad_before..][..c]
                                .copy_from_slice(src);
                        }
                    }
                }
                out
            }
            POp::BiasMap { map } => {
                let mut v = arg().into_owned();
                for img in v.chunks_exact_mut(map.len()) {
                    for (x, b) in img.iter_mut().zip(map) {
                        *x += b;
                    }
                }
                v
            }
            POp::Gather {
                stride,
                sources,
                fill,
            } => {
                let [c, h, w] = chw(in_shape(0));
                let [co, ho, wo] = chw(&self.shapes[id]);
                let x = arg();
                let x = x.as_slice();
                let mut out = vec![0.0f32; n * ho * wo * co];
                for img in 0..n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let src = &x[((img * h + oy * stride) * w + ox * stride) * c..][..c];
                            let dst = &mut out[((img * ho + oy) * wo + ox) * co..][..co];
                            for ((d, s), f) in dst.iter_mut().zip(sources).zip(fill) {
                                *d = s.map_or(*f, |s| src[s]);
                            }
                        }
                    }
                }
                out
            }
        }
    }

    /// 3x3 stride-1 padding-1 convolution of `n` channels-last images as Winograd
    /// F(2x2, 3x3): per block of 2x2 output tiles, the input transform `B^T d B` (adds over
    /// channel vectors), 16 products `[tiles, cin] x [cin, cout]`, and the output transform
    /// `A^T m A` plus bias.
    #[inline(never)]
    fn winograd(
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
        let mut y = vec![0.0f32; n * h * w * cout];
        let tb = (self.tuning.block / (16 * cin.max(cp))).clamp(1, tiles);
        scratch.resize(tb * 16 * (cin + cp), 0.0);
        let (v, m) = scratch.split_at_mut(tb * 16 * cin);
        let zero = vec![0.0f32; cin];
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
    fn conv(&self, c: &Conv, x: &[f32], n: usize, scratch: &mut Vec<f32>) -> Vec<f32> {
        let [h, w] = c.in_hw;
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
        scratch.resize(block * k, 0.0);
        let mut padded = Vec::new();
        let row_len = c.kernel[1] * c.cin;
        for r0 in (0..rows).step_by(block) {
            let r1 = (r0 + block).min(rows);
            for (r, patch) in (r0..r1).zip(scratch.chunks_exact_mut(k)) {
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
            let (dst, lhs) = (&mut y[r0 * c.cout..r1 * c.cout], &scratch[..(r1 - r0) * k]);
            self.conv_product(c, lhs, r1 - r0, k, dst, &mut padded);
        }
        y
    }

    /// `dst += lhs x w` for `rows` rows of `k` (`dst` `[rows][cout]`, bias preloaded): the
    /// register-blocked kernel for `cp` columns, straight into `dst` when `cout == cp`, else
    /// into `padded` (`[rows][cp]`) and added to `dst` in one pass; the `gemm` crate without
    /// the kernels.
    fn conv_product(
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

/// Geometry of one Winograd convolution: input `h x w`, `th x tw` tiles of 2x2 outputs.
#[derive(Clone, Copy)]
struct Wino {
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    /// Row length of the products (see `Conv::cp`).
    cp: usize,
    th: usize,
    tw: usize,
}

/// Input transform of tiles `t0..t1`: `v[t - t0][a * 4 + b][ci] = (B^T d B)[a][b]` over
/// channel vectors, with `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
/// Compiled per SIMD level and dispatched at run time (macerator), so the channel loops
/// vectorize with the widest instructions the CPU has.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn wino_input<S: macerator::Simd>(
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
    let _ = zero;
    let (stage, patch) = tmp.split_at_mut(16 * cin);
    let patch = &mut patch[..16 * cin];
    let row = 4 * cin;
    for (t, vt) in (t0..t1).zip(v.chunks_exact_mut(16 * cin)) {
        let img = t / (th * tw);
        let (ty, tx) = ((t % (th * tw)) / tw, t % tw);
        // Top-left input pixel of the 4x4 patch is (2 ty - 1, 2 tx - 1).
        let interior = ty > 0 && tx > 0 && 2 * ty + 3 <= h && 2 * tx + 3 <= w;
        // The patch's four rows, each 4 pixels x cin contiguous.
        let rows: [&[f32]; 4] = if interior {
            let at = |r: usize| ((img * h + 2 * ty - 1 + r) * w + 2 * tx - 1) * cin;
            [
                &x[at(0)..][..row],
                &x[at(1)..][..row],
                &x[at(2)..][..row],
                &x[at(3)..][..row],
            ]
        } else {
            for (k, dst) in patch.chunks_exact_mut(cin).enumerate() {
                let (iy, ix) = (
                    (2 * ty + k / 4).wrapping_sub(1),
                    (2 * tx + k % 4).wrapping_sub(1),
                );
                if iy < h && ix < w {
                    dst.copy_from_slice(&x[((img * h + iy) * w + ix) * cin..][..cin]);
                } else {
                    dst.fill(0.0);
                }
            }
            let (p0, rest) = patch.split_at(row);
            let (p1, rest) = rest.split_at(row);
            let (p2, p3) = rest.split_at(row);
            [p0, p1, p2, p3]
        };
        // Rows, all four columns at once: stage[a][q] = (B^T d)[a][q].
        butterfly_in(rows[0], rows[1], rows[2], rows[3], stage);
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
fn wino_output<S: macerator::Simd>(
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

/// The 16 Winograd products of one block of `rows` tiles, `m[t][xi][co] = sum over ci of
/// v[t][xi][ci] * u[xi][ci][co]`, with [`wino_gemm_simd`]; `false` (nothing done) when the
/// channel count has no kernel or the CPU has no FMA (there `mul_add` would be a libm call).
fn wino_gemm(geo: Wino, rows: usize, v: &[f32], u: &[f32], m: &mut [f32]) -> bool {
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

fn fma_available() -> bool {
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
fn wino_gemm_simd<const C: usize>(cin: usize, rows: usize, v: &[f32], u: &[f32], m: &mut [f32]) {
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
struct Small {
    rows: usize,
    k: usize,
    lhs_rs: usize,
    dst_rs: usize,
    accumulate: bool,
}

/// `dst[r][..C] (+)= lhs[r][..k] x rhs[k][C]`, four rows at a time with register-resident
/// accumulators (see [`wino_gemm_simd`]). Callers check [`fma_available`].
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn small_gemm<S: macerator::Simd, const C: usize>(
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
fn small_product(g: Small, n: usize, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) -> bool {
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

/// One Winograd input butterfly over channel vectors: `out` holds four vectors
/// `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
#[inline(always)]
fn butterfly_in(d0: &[f32], d1: &[f32], d2: &[f32], d3: &[f32], out: &mut [f32]) {
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

/// One Winograd output butterfly over channel vectors: `o0 = m0 + m1 + m2`,
/// `o1 = m1 - m2 - m3`, plus `bias` when given.
#[inline(always)]
fn butterfly_out(
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

/// A convolution in plan form, with an optional BatchNorm `(scale, shift)` folded in.
fn conv(
    op: &Op,
    in_shape: &Shape,
    out_shape: &Shape,
    bn: Option<(&[f32], &[f32])>,
) -> Option<Conv> {
    let Op::Conv2d {
        weight,
        bias,
        stride,
        padding,
        groups: 1,
    } = op
    else {
        return None;
    };
    let &[cout, cin, kh, kw] = weight.shape.as_slice() else {
        return None;
    };
    let [_, h, w] = chw(in_shape);
    let [_, ho, wo] = chw(out_shape);
    let cp = cout.div_ceil(8) * 8;
    let mut wm = vec![0.0f32; kh * kw * cin * cp];
    let mut b = vec![0.0f32; cout];
    for co in 0..cout {
        let (s, t) = bn.map_or((1.0, 0.0), |(s, t)| (s[co], t[co]));
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    let v = weight.data[((co * cin + ci) * kh + ky) * kw + kx];
                    wm[((ky * kw + kx) * cin + ci) * cp + co] = v * s;
                }
            }
        }
        b[co] = bias.as_ref().map_or(0.0, |b| b.data[co]) * s + t;
    }
    let wino = (kh == 3 && kw == 3 && *stride == [1, 1] && *padding == [1, 1]).then(|| {
        // U = G g G^T per (ci, co), G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]].
        let g = [
            [1.0f64, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0.0f32; 16 * cin * cp];
        for ci in 0..cin {
            for co in 0..cout {
                let s = bn.map_or(1.0, |(s, _)| s[co]) as f64;
                let k =
                    |y: usize, x: usize| weight.data[((co * cin + ci) * 3 + y) * 3 + x] as f64 * s;
                for a in 0..4 {
                    for b in 0..4 {
                        let mut v = 0.0;
                        for y in 0..3 {
                            for x in 0..3 {
                                v += g[a][y] * k(y, x) * g[b][x];
                            }
                        }
                        u[((a * 4 + b) * cin + ci) * cp + co] = v as f32;
                    }
                }
            }
        }
        u
    });
    Some(Conv {
        wino,
        w: wm,
        bias: b,
        cin,
        cout,
        cp,
        kernel: [kh, kw],
        stride: *stride,
        pad: *padding,
        in_hw: [h, w],
        out_hw: [ho, wo],
    })
}
