//! Graph analyses that need no tensor library: which positions can no longer influence the
//! output (used by MC-BLN / MC-BI backtracking), and module size over layer positions.

use crate::graph::{Graph, NodeId, Op, Shape};
use crate::mask::{BitSet, NodeMask};

fn numel(s: &Shape) -> usize {
    s.iter().product()
}

/// Output positions that are dead for every consumer of each node, given dead positions
/// (`seeds`) at some nodes. A position is dead when zeroing it cannot change the graph's
/// output through any path: through ReLU, clip, BatchNorm and Flatten one-to-one, through
/// global average pooling from its channel, through an Add to both inputs, through a Concat
/// to the input that holds the channel, through pooling
/// windows when every window containing it is dead, and, with `through_conv`, through a
/// convolution when every output position whose receptive field contains it is dead. A
/// node is only marked where all of its consumers agree.
pub fn propagate_dead(
    graph: &Graph,
    shapes: &[Shape],
    seeds: &[NodeMask],
    through_conv: bool,
) -> Vec<BitSet> {
    let n = graph.nodes.len();
    let mut dead: Vec<BitSet> = shapes.iter().map(|s| BitSet::new(numel(s))).collect();
    for s in seeds {
        if s.node < n && s.zeroed.len() == dead[s.node].len() {
            dead[s.node].union_with(&s.zeroed);
        }
    }
    let consumers: Vec<Vec<NodeId>> = (0..n).map(|i| graph.consumers(i)).collect();
    for id in (0..n).rev() {
        if id == graph.output || consumers[id].is_empty() {
            continue;
        }
        let mut agreed: Option<BitSet> = None;
        for &j in &consumers[id] {
            let c = contribution(graph, shapes, &dead[j], j, id, through_conv);
            let Some(c) = c else {
                agreed = Some(BitSet::new(dead[id].len()));
                break;
            };
            match &mut agreed {
                None => agreed = Some(c),
                Some(a) => a.intersect_with(&c),
            }
        }
        if let Some(a) = agreed {
            dead[id].union_with(&a);
        }
    }
    dead
}

/// Positions of `input`'s output that are dead as seen by consumer `j`, or `None` when the
/// op gives no information.
fn contribution(
    graph: &Graph,
    shapes: &[Shape],
    dead_j: &BitSet,
    j: NodeId,
    input: NodeId,
    through_conv: bool,
) -> Option<BitSet> {
    let in_shape = &shapes[input];
    let out_shape = &shapes[j];
    match &graph.nodes[j].op {
        Op::Relu | Op::Clip { .. } | Op::BatchNorm2d { .. } | Op::Flatten | Op::Add => {
            Some(dead_j.clone())
        }
        Op::Concat => {
            // Input `input` is one channel range of the output (or several, if it is
            // concatenated more than once: dead only where every copy is dead).
            let len = numel(in_shape);
            let mut agreed: Option<BitSet> = None;
            let mut offset = 0usize;
            for &k in &graph.nodes[j].inputs {
                let n = numel(&shapes[k]);
                if k == input {
                    let mut b = BitSet::new(len);
                    for p in 0..len {
                        if dead_j.get(offset + p) {
                            b.set(p, true);
                        }
                    }
                    match &mut agreed {
                        None => agreed = Some(b),
                        Some(a) => a.intersect_with(&b),
                    }
                }
                offset += n;
            }
            agreed
        }
        Op::GlobalAvgPool => {
            let hw = in_shape[1] * in_shape[2];
            let mut b = BitSet::new(numel(in_shape));
            for c in dead_j.ones() {
                for p in 0..hw {
                    b.set(c * hw + p, true);
                }
            }
            Some(b)
        }
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
        }
        | Op::AvgPool2d {
            kernel,
            stride,
            padding,
        } => Some(window_dead(
            in_shape,
            out_shape,
            dead_j,
            *kernel,
            *stride,
            *padding,
            |c_in| vec![c_in],
        )),
        Op::Conv2d {
            weight,
            stride,
            padding,
            groups,
            ..
        } if through_conv => {
            let (kh, kw) = (weight.shape[2], weight.shape[3]);
            let (cin_g, cout_g) = (in_shape[0] / groups, out_shape[0] / groups);
            Some(window_dead(
                in_shape,
                out_shape,
                dead_j,
                [kh, kw],
                *stride,
                *padding,
                |c_in| {
                    let g = c_in / cin_g;
                    (g * cout_g..(g + 1) * cout_g).collect()
                },
            ))
        }
        Op::ShortcutA {
            stride, pad_before, ..
        } => {
            let [c, h, w] = [in_shape[0], in_shape[1], in_shape[2]];
            let [_, oh, ow] = [out_shape[0], out_shape[1], out_shape[2]];
            let mut b = BitSet::new(numel(in_shape));
            for ci in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let i = (ci * h + y) * w + x;
                        let d = y % stride != 0
                            || x % stride != 0
                            || dead_j.get(((ci + pad_before) * oh + y / stride) * ow + x / stride);
                        if d {
                            b.set(i, true);
                        }
                    }
                }
            }
            Some(b)
        }
        _ => None,
    }
}

/// Input positions all of whose covering output positions (in the channels `out_channels`
/// maps them to) are dead; positions no window covers are dead too.
fn window_dead(
    in_shape: &Shape,
    out_shape: &Shape,
    dead_out: &BitSet,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out_channels: impl Fn(usize) -> Vec<usize>,
) -> BitSet {
    let [c, h, w] = [in_shape[0], in_shape[1], in_shape[2]];
    let [_, oh, ow] = [out_shape[0], out_shape[1], out_shape[2]];
    // Output rows covering input row y: oy with oy*s - p <= y <= oy*s - p + k - 1.
    let cover = |y: usize, k: usize, s: usize, p: usize, o: usize| -> Vec<usize> {
        (0..o)
            .filter(|&oy| {
                let start = (oy * s) as isize - p as isize;
                let y = y as isize;
                start <= y && y < start + k as isize
            })
            .collect()
    };
    let rows: Vec<Vec<usize>> = (0..h)
        .map(|y| cover(y, kernel[0], stride[0], padding[0], oh))
        .collect();
    let cols: Vec<Vec<usize>> = (0..w)
        .map(|x| cover(x, kernel[1], stride[1], padding[1], ow))
        .collect();
    let mut b = BitSet::new(numel(in_shape));
    for ci in 0..c {
        let outs = out_channels(ci);
        for (y, row_cover) in rows.iter().enumerate() {
            for (x, col_cover) in cols.iter().enumerate() {
                let all_dead = outs.iter().all(|&co| {
                    row_cover.iter().all(|&oy| {
                        col_cover
                            .iter()
                            .all(|&ox| dead_out.get((co * oh + oy) * ow + ox))
                    })
                });
                if all_dead {
                    b.set((ci * h + y) * w + x, true);
                }
            }
        }
    }
    b
}

/// The layer outputs a module's size is measured over: every convolution (read at its
/// BatchNorm when a BatchNorm is its only consumer, the value the next op sees), every
/// residual Add, and every hidden dense layer (the output layer is replaced by the head).
pub fn layer_nodes(graph: &Graph) -> Vec<NodeId> {
    let mut out = Vec::new();
    for (id, node) in graph.nodes.iter().enumerate() {
        match node.op {
            Op::Conv2d { .. } | Op::Add => out.push(id),
            Op::Linear { .. } if id != graph.output => out.push(id),
            _ => {}
        }
    }
    out
}

/// Active (not zeroed) positions per layer node of a module with masks `masks`. A conv
/// position counts as zeroed when the mask of the conv or of its sole-consumer BatchNorm
/// zeroes it.
pub fn active_sets(graph: &Graph, shapes: &[Shape], masks: &[NodeMask]) -> Vec<(NodeId, BitSet)> {
    let zeroed_at = |node: NodeId| -> BitSet {
        let len = numel(&shapes[node]);
        let mut b = BitSet::new(len);
        for m in masks
            .iter()
            .filter(|m| m.node == node && m.zeroed.len() == len)
        {
            b.union_with(&m.zeroed);
        }
        b
    };
    layer_nodes(graph)
        .into_iter()
        .map(|id| {
            let mut z = zeroed_at(id);
            let cons = graph.consumers(id);
            if let [only] = cons.as_slice()
                && matches!(graph.nodes[*only].op, Op::BatchNorm2d { .. })
            {
                z.union_with(&zeroed_at(*only));
            }
            (id, z.complement())
        })
        .collect()
}

/// Fraction of layer positions a module keeps (1.0 = as large as the model).
pub fn module_size(graph: &Graph, shapes: &[Shape], masks: &[NodeMask]) -> f64 {
    let sets = active_sets(graph, shapes, masks);
    let total: usize = sets.iter().map(|(_, b)| b.len()).sum();
    let active: usize = sets.iter().map(|(_, b)| b.count_ones()).sum();
    if total == 0 {
        1.0
    } else {
        active as f64 / total as f64
    }
}

/// Jaccard index of two modules' active layer positions (modules of the same graph).
pub fn overlap(a: &[(NodeId, BitSet)], b: &[(NodeId, BitSet)]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for ((_, x), (_, y)) in a.iter().zip(b) {
        let mut i = x.clone();
        i.intersect_with(y);
        let mut u = x.clone();
        u.union_with(y);
        inter += i.count_ones();
        union += u.count_ones();
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Size and compute of a graph, per image (batch of one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    /// Learned parameters: conv/linear weights and biases, BatchNorm scale and shift
    /// ([`Op::num_params`]).
    pub params: u64,
    /// Other stored values inference needs: BatchNorm running statistics, bias maps, gather
    /// fills.
    pub constants: u64,
    /// Multiply-accumulates of convolutions and linear layers.
    pub macs: u64,
    /// Floating-point operations: 2 per multiply-accumulate, plus 1 per output element of
    /// each element-wise op (conv/linear bias, ReLU, clip, Add, bias map, shortcut/gather/concat copy), 2 for
    /// BatchNorm (scale and shift), and one per window element of pooling.
    pub flops: u64,
}

/// [`Cost`] of a graph whose node output shapes are `shapes` (from [`Graph::validate`]).
pub fn cost(graph: &Graph, shapes: &[Shape]) -> Cost {
    let mut c = Cost::default();
    for (id, node) in graph.nodes.iter().enumerate() {
        let out = numel(&shapes[id]) as u64;
        let input = node.inputs.first().map_or(0, |&i| numel(&shapes[i]) as u64);
        c.params += node.op.num_params() as u64;
        match &node.op {
            Op::Conv2d { weight, bias, .. } => {
                let per_out: u64 = weight.shape[1..].iter().product::<usize>() as u64;
                c.macs += out * per_out;
                c.flops += 2 * out * per_out + if bias.is_some() { out } else { 0 };
            }
            Op::Linear { weight, bias } => {
                let m = weight.numel() as u64;
                c.macs += m;
                c.flops += 2 * m + if bias.is_some() { out } else { 0 };
            }
            Op::BatchNorm2d {
                running_mean,
                running_var,
                ..
            } => {
                c.constants += (running_mean.numel() + running_var.numel()) as u64;
                c.flops += 2 * out;
            }
            Op::Relu
            | Op::Clip { .. }
            | Op::Add
            | Op::Concat
            | Op::ShortcutA { .. }
            | Op::ChannelGather { .. } => c.flops += out,
            Op::BiasMap { bias } => {
                c.constants += bias.numel() as u64;
                c.flops += out;
            }
            Op::MaxPool2d { kernel, .. } | Op::AvgPool2d { kernel, .. } => {
                c.flops += out * (kernel[0] * kernel[1]) as u64;
            }
            Op::GlobalAvgPool => c.flops += input,
            Op::Input { .. } | Op::Flatten => {}
        }
        if let Op::ChannelGather { fill, .. } = &node.op {
            c.constants += fill.len() as u64;
        }
    }
    c
}
