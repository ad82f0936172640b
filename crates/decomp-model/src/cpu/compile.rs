//! Building a [`CpuPlan`] from the IR: ops, folded BatchNorms, weights in plan layout, masks
//! in storage order.

use super::*;

impl CpuPlan {
    /// Compiles `model` (already validated, with node output shapes `shapes`); `None` when it
    /// uses something this plan does not run (ops added later).
    pub(crate) fn new(model: &ModelIr, shapes: &[Shape], tuning: CpuTuning) -> Option<Self> {
        Self::compile(model, shapes, tuning, true)
    }

    /// As [`Self::new`], but every BatchNorm stays its own node (`POp::Affine` with the
    /// running statistics): the training engine normalizes with batch statistics instead and
    /// needs every convolution's own output.
    pub(super) fn unfolded(model: &ModelIr, shapes: &[Shape], tuning: CpuTuning) -> Option<Self> {
        Self::compile(model, shapes, tuning, false)
    }

    fn compile(model: &ModelIr, shapes: &[Shape], tuning: CpuTuning, fold: bool) -> Option<Self> {
        let g = &model.graph;
        let consumers: Vec<Vec<NodeId>> = (0..g.nodes.len()).map(|id| g.consumers(id)).collect();
        // conv id -> BatchNorm id that absorbs it.
        let mut fold_into: HashMap<NodeId, NodeId> = HashMap::new();
        for (id, node) in g.nodes.iter().enumerate() {
            if fold
                && let Op::Conv2d { groups: 1, .. } = node.op
                && let [bn] = consumers[id].as_slice()
                && matches!(g.nodes[*bn].op, Op::BatchNorm2d { .. })
                && id != g.output
            {
                fold_into.insert(id, *bn);
            }
        }
        let folded_conv: HashMap<NodeId, NodeId> =
            fold_into.iter().map(|(&c, &b)| (b, c)).collect();
        // The training engine's plans (compiled every step, never retuned) run every
        // Winograd-shaped convolution as Winograd: they skip its im2col weights.
        let im2col_weights = fold || !tuning.winograd;
        // Nodes compile independently (the training engine compiles every step): in parallel.
        let compile_node = |id: NodeId| -> Option<PNode> {
            let node = &g.nodes[id];
            let inputs = node.inputs.clone();
            Some(match &node.op {
                Op::Input { .. } => PNode {
                    op: POp::Input,
                    inputs,
                },
                Op::Conv2d { groups, .. } if *groups > 1 => PNode {
                    op: POp::Grouped(grouped::Grouped::new(
                        &node.op,
                        &shapes[inputs[0]],
                        &shapes[id],
                    )?),
                    inputs,
                },
                Op::Conv2d { .. } if fold_into.contains_key(&id) => PNode {
                    op: POp::Folded,
                    inputs,
                },
                Op::Conv2d { .. } => PNode {
                    op: POp::Conv(conv(
                        &node.op,
                        &shapes[inputs[0]],
                        &shapes[id],
                        None,
                        im2col_weights,
                    )?),
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
                                    im2col_weights,
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
                Op::Clip { min, max } => PNode {
                    op: POp::Clip {
                        min: *min,
                        max: *max,
                    },
                    inputs,
                },
                Op::Concat => PNode {
                    op: POp::Concat,
                    inputs,
                },
                // Ops this plan does not know run on the reference path.
                #[allow(unreachable_patterns)]
                _ => return None,
            })
        };
        let nodes: Vec<PNode> = (0..g.nodes.len())
            .into_par_iter()
            .map(compile_node)
            .collect::<Option<_>>()?;
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
            recycle: !fold,
        })
    }

    pub(crate) fn tuning(&self) -> CpuTuning {
        self.tuning
    }

    /// Retunes an inference plan ([`Self::new`]); a training plan ([`Self::unfolded`]) keeps
    /// the Winograd setting it was compiled with (it has no im2col weights for Winograd-shaped
    /// convolutions when that was on).
    pub(crate) fn set_tuning(&mut self, tuning: CpuTuning) {
        assert!(
            !self.recycle || tuning.winograd == self.tuning.winograd,
            "a training plan keeps its Winograd setting"
        );
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
}

/// A convolution in plan form, with an optional BatchNorm `(scale, shift)` folded in. Without
/// `im2col_weights`, a Winograd-shaped convolution (3x3, stride 1, padding 1) gets only its
/// Winograd weights (`w` stays empty): for plans that always run those as Winograd.
pub(super) fn conv(
    op: &Op,
    in_shape: &Shape,
    out_shape: &Shape,
    bn: Option<(&[f32], &[f32])>,
    im2col_weights: bool,
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
    let winograd_shaped = kh == 3 && kw == 3 && *stride == [1, 1] && *padding == [1, 1];
    let mut wm = Vec::new();
    if im2col_weights || !winograd_shaped {
        wm = vec![0.0f32; kh * kw * cin * cp];
        for co in 0..cout {
            let s = bn.map_or(1.0, |(s, _)| s[co]);
            for ci in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let v = weight.data[((co * cin + ci) * kh + ky) * kw + kx];
                        wm[((ky * kw + kx) * cin + ci) * cp + co] = v * s;
                    }
                }
            }
        }
    }
    let b: Vec<f32> = (0..cout)
        .map(|co| {
            let (s, t) = bn.map_or((1.0, 0.0), |(s, t)| (s[co], t[co]));
            bias.as_ref().map_or(0.0, |b| b.data[co]) * s + t
        })
        .collect();
    let wino = winograd_shaped.then(|| {
        // U = G g G^T per (ci, co), G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
        // in f64 (the halves are exact, so this equals the sum of G's products).
        let g_rows = |k: [f64; 3]| -> [f64; 4] {
            [
                k[0],
                0.5 * (k[0] + k[1] + k[2]),
                0.5 * (k[0] - k[1] + k[2]),
                k[2],
            ]
        };
        let mut u = vec![0.0f32; 16 * cin * cp];
        // One input channel at a time: its 16 values per output channel first, then written
        // position by position as contiguous runs of `cout` (writing each value where it goes
        // scattered every store 16 runs apart: 4% of a no-BatchNorm batch-32 training step,
        // which compiles every convolution twice).
        let mut per_co = vec![[0.0f32; 16]; cout];
        for ci in 0..cin {
            for (co, out) in per_co.iter_mut().enumerate() {
                let s = bn.map_or(1.0, |(s, _)| s[co]) as f64;
                let k = &weight.data[(co * cin + ci) * 9..][..9];
                // Columns of `G g` (4x3), then each row of it times `G^T`.
                let cols: [[f64; 4]; 3] =
                    std::array::from_fn(|x| g_rows([0, 1, 2].map(|y| k[y * 3 + x] as f64)));
                for a in 0..4 {
                    let row = g_rows([cols[0][a], cols[1][a], cols[2][a]]);
                    for (b, v) in row.iter().enumerate() {
                        out[a * 4 + b] = (v * s) as f32;
                    }
                }
            }
            for pos in 0..16 {
                let run = &mut u[(pos * cin + ci) * cp..][..cout];
                for (d, v) in run.iter_mut().zip(&per_co) {
                    *d = v[pos];
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
