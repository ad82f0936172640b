//! Channel-level modules as graph transformations (pure IR -> IR).
//!
//! - [`channel_spaces`] groups the channel axes that must be pruned together: a convolution
//!   starts a channel space, element-wise ops (BatchNorm, ReLU, bias map, pooling) keep
//!   their input's, and a residual `Add` joins both inputs into one space (the residual
//!   stream of a ResNet stage). Option-A shortcuts start a new space with a known channel
//!   map. Each space with mask sites (ReLU inputs) can be pruned.
//! - [`ChannelPlan`]: per prunable space the kept channels, and per site the value a removed
//!   channel is held at after its ReLU (0 = plain removal, > 0 = mean-activation
//!   compensation).
//! - [`extract`] builds the physically smaller graph: sliced convolutions and BatchNorms,
//!   shortcuts turned into [`Op::ChannelGather`], constants of removed channels folded
//!   exactly into [`Op::BiasMap`]s after the next convolution (after its BatchNorm, scaled,
//!   so the two can still be fused), into gather fills, or into the head's bias.
//! - [`reference`] is the semantics the extraction must reproduce: the full graph with the
//!   removed channels zeroed at every site of their space (a node mask), and the constant
//!   added back right after the site, so the ReLU outputs the constant.

use crate::error::IrError;
use crate::graph::{Graph, NodeId, Op, Shape, TensorData};
use crate::mask::{BitSet, NodeMask};
use crate::model::{ModelIr, ModelMeta};
use crate::module::BinaryHead;

/// One channel space: channel axes of several nodes that share indices.
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    pub channels: usize,
    /// Mask sites (ReLU inputs) in this space, in graph order. Empty: not prunable.
    pub sites: Vec<NodeId>,
    /// Every node whose channel axis is this space, in graph order.
    pub nodes: Vec<NodeId>,
}

/// The channel spaces of a graph; see [`channel_spaces`].
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelSpaces {
    /// Space index of each node's channel axis (`None` for the output layer).
    pub of_node: Vec<Option<usize>>,
    pub spaces: Vec<Space>,
}

impl ChannelSpaces {
    /// Indices of the spaces that hold mask sites, in graph order.
    pub fn prunable(&self) -> Vec<usize> {
        (0..self.spaces.len())
            .filter(|&s| !self.spaces[s].sites.is_empty())
            .collect()
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn unsupported(graph: &Graph, id: NodeId, msg: impl Into<String>) -> IrError {
    let n = &graph.nodes[id];
    IrError::BadNode {
        node: id,
        name: n.name.clone(),
        op: n.op.kind(),
        msg: format!("channel extraction: {}", msg.into()),
    }
}

/// Groups channel axes into spaces and checks that removing a channel of a prunable space
/// can only affect the output through the ReLUs of its sites (where [`reference`] holds it
/// at a constant). Supported: ungrouped convolutions, BatchNorm, ReLU, Add, pooling,
/// option-A shortcuts and gathers, global average pooling, and a flatten of `[c, 1, 1]`
/// feeding the output Linear layer (CIFAR ResNets with either shortcut option).
pub fn channel_spaces(graph: &Graph, shapes: &[Shape]) -> Result<ChannelSpaces, IrError> {
    let n = graph.nodes.len();
    let mut parent: Vec<usize> = (0..n).collect();
    for (id, node) in graph.nodes.iter().enumerate() {
        match &node.op {
            Op::Input { .. } | Op::ShortcutA { .. } | Op::ChannelGather { .. } => {}
            Op::Conv2d { groups, .. } => {
                if *groups != 1 {
                    return Err(unsupported(
                        graph,
                        id,
                        "grouped convolutions tie input and output channels",
                    ));
                }
            }
            Op::BatchNorm2d { .. }
            | Op::Relu
            | Op::BiasMap { .. }
            | Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. }
            | Op::GlobalAvgPool => {
                let a = find(&mut parent, node.inputs[0]);
                parent[a] = find(&mut parent, id);
            }
            Op::Add => {
                for &i in &node.inputs {
                    let a = find(&mut parent, i);
                    let b = find(&mut parent, id);
                    parent[a] = b;
                }
            }
            Op::Flatten => {
                let s = &shapes[node.inputs[0]];
                if s.len() != 3 || s[1] * s[2] != 1 {
                    return Err(unsupported(
                        graph,
                        id,
                        format!("flatten of a {s:?} map (only [c, 1, 1] is supported)"),
                    ));
                }
                let a = find(&mut parent, node.inputs[0]);
                parent[a] = find(&mut parent, id);
            }
            Op::Linear { .. } => {
                if id != graph.output {
                    return Err(unsupported(
                        graph,
                        id,
                        "hidden dense layers are not supported",
                    ));
                }
            }
            Op::Clip { .. } => {
                return Err(unsupported(
                    graph,
                    id,
                    "clip (ReLU6) sites are not supported: a removed channel is held at a constant after a ReLU, and the clip's upper bound is not modelled",
                ));
            }
            Op::Concat => {
                return Err(unsupported(
                    graph,
                    id,
                    "a concatenation places several channel spaces side by side, and a channel space here is one index range pruned as a whole",
                ));
            }
        }
    }
    let sites = graph.relu_inputs();
    let mut index = vec![usize::MAX; n];
    let mut spaces: Vec<Space> = Vec::new();
    let mut of_node = vec![None; n];
    for id in 0..n {
        if id == graph.output && matches!(graph.nodes[id].op, Op::Linear { .. }) {
            continue;
        }
        let r = find(&mut parent, id);
        if index[r] == usize::MAX {
            index[r] = spaces.len();
            spaces.push(Space {
                channels: shapes[id][0],
                sites: Vec::new(),
                nodes: Vec::new(),
            });
        }
        let s = index[r];
        of_node[id] = Some(s);
        spaces[s].nodes.push(id);
        if sites.contains(&id) {
            spaces[s].sites.push(id);
        }
    }
    let cs = ChannelSpaces { of_node, spaces };
    check_structure(graph, &cs)?;
    Ok(cs)
}

fn is_site_relu(graph: &Graph, id: NodeId, sites: &[NodeId]) -> bool {
    matches!(graph.nodes[id].op, Op::Relu) && sites.contains(&graph.nodes[id].inputs[0])
}

fn check_structure(graph: &Graph, cs: &ChannelSpaces) -> Result<(), IrError> {
    for s in cs.prunable() {
        let space = &cs.spaces[s];
        for &id in &space.nodes {
            let consumers = graph.consumers(id);
            if space.sites.contains(&id) {
                if let Some(&j) = consumers
                    .iter()
                    .find(|&&j| !matches!(graph.nodes[j].op, Op::Relu))
                {
                    return Err(unsupported(
                        graph,
                        id,
                        format!(
                            "a mask site feeds {} (only ReLUs may read a site)",
                            graph.nodes[j].name
                        ),
                    ));
                }
                continue;
            }
            let relu_out = is_site_relu(graph, id, &space.sites);
            let gap_of_relu = matches!(graph.nodes[id].op, Op::GlobalAvgPool)
                && is_site_relu(graph, graph.nodes[id].inputs[0], &space.sites);
            for j in consumers {
                let op = &graph.nodes[j].op;
                let ok = if relu_out {
                    matches!(
                        op,
                        Op::Conv2d { .. }
                            | Op::ShortcutA { .. }
                            | Op::ChannelGather { .. }
                            | Op::Add
                            | Op::GlobalAvgPool
                    )
                } else if gap_of_relu {
                    matches!(op, Op::Flatten)
                } else if matches!(graph.nodes[id].op, Op::Flatten) {
                    j == graph.output
                } else {
                    cs.of_node[j] == Some(s)
                        && matches!(
                            op,
                            Op::BatchNorm2d { .. }
                                | Op::BiasMap { .. }
                                | Op::Add
                                | Op::Relu
                                | Op::MaxPool2d { .. }
                                | Op::AvgPool2d { .. }
                        )
                };
                if !ok {
                    return Err(unsupported(
                        graph,
                        id,
                        format!(
                            "its channels reach {} ({}) without passing a masked ReLU",
                            graph.nodes[j].name,
                            op.kind()
                        ),
                    ));
                }
            }
            if gap_of_relu && graph.consumers(id).is_empty() {
                return Err(unsupported(graph, id, "pooled features feed nothing"));
            }
        }
    }
    Ok(())
}

/// Kept channels of one prunable space, and the constants removed channels are held at.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelGroup {
    /// The space's mask sites (ReLU inputs), in graph order.
    pub sites: Vec<NodeId>,
    /// Set bits are kept channels.
    pub kept: BitSet,
    /// Per site (order of `sites`), per channel: the value a removed channel takes after the
    /// site's ReLU. All zero without compensation; ignored for kept channels.
    pub fill: Vec<Vec<f32>>,
}

/// A channel module's choice of channels, one group per prunable channel space.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelPlan {
    pub groups: Vec<ChannelGroup>,
}

impl ChannelPlan {
    /// A plan that keeps every channel of `spaces` (extraction then only swaps the head).
    pub fn keep_all(spaces: &ChannelSpaces) -> Self {
        Self {
            groups: spaces
                .prunable()
                .into_iter()
                .map(|s| {
                    let sp = &spaces.spaces[s];
                    ChannelGroup {
                        sites: sp.sites.clone(),
                        kept: BitSet::full(sp.channels),
                        fill: vec![vec![0.0; sp.channels]; sp.sites.len()],
                    }
                })
                .collect(),
        }
    }

    /// Kept and total channels over all groups.
    pub fn kept_channels(&self) -> (usize, usize) {
        self.groups.iter().fold((0, 0), |(k, t), g| {
            (k + g.kept.count_ones(), t + g.kept.len())
        })
    }

    /// Checks the plan against the graph's spaces; returns the kept channel list of every
    /// space (all channels for spaces that cannot be pruned).
    pub fn kept_lists(&self, spaces: &ChannelSpaces) -> Result<Vec<Vec<usize>>, String> {
        let mut lists: Vec<Vec<usize>> = spaces
            .spaces
            .iter()
            .map(|s| (0..s.channels).collect())
            .collect();
        let prunable = spaces.prunable();
        if prunable.len() != self.groups.len() {
            return Err(format!(
                "plan has {} channel groups, the graph {} prunable channel spaces",
                self.groups.len(),
                prunable.len()
            ));
        }
        for (gi, (g, &s)) in self.groups.iter().zip(&prunable).enumerate() {
            let sp = &spaces.spaces[s];
            if g.sites != sp.sites {
                return Err(format!(
                    "group {gi}: sites {:?}, the graph's space has sites {:?}",
                    g.sites, sp.sites
                ));
            }
            g.kept.check().map_err(|e| format!("group {gi}: {e}"))?;
            if g.kept.len() != sp.channels {
                return Err(format!(
                    "group {gi}: {} channel bits, the space has {} channels",
                    g.kept.len(),
                    sp.channels
                ));
            }
            if g.kept.count_ones() == 0 {
                return Err(format!("group {gi}: keeps no channel"));
            }
            if g.fill.len() != g.sites.len() || g.fill.iter().any(|f| f.len() != sp.channels) {
                return Err(format!(
                    "group {gi}: fill must be {} sites x {} channels",
                    g.sites.len(),
                    sp.channels
                ));
            }
            if g.fill.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!(
                    "group {gi}: fill values must be finite and >= 0 (values after a ReLU)"
                ));
            }
            lists[s] = g.kept.ones().collect();
        }
        Ok(lists)
    }
}

/// Per node: the constants its removed channels hold (site ReLU outputs, and global pooling
/// and flatten of them), indexed by channel of the node's space.
fn fills_at<'a>(
    graph: &Graph,
    spaces: &ChannelSpaces,
    plan: &'a ChannelPlan,
) -> Vec<Option<&'a [f32]>> {
    let mut site_fill: Vec<Option<&[f32]>> = vec![None; graph.nodes.len()];
    for g in &plan.groups {
        for (site, f) in g.sites.iter().zip(&g.fill) {
            site_fill[*site] = Some(f.as_slice());
        }
    }
    let mut out: Vec<Option<&[f32]>> = vec![None; graph.nodes.len()];
    for (id, node) in graph.nodes.iter().enumerate() {
        out[id] = match node.op {
            Op::Relu => site_fill[node.inputs[0]],
            Op::GlobalAvgPool | Op::Flatten if spaces.of_node[id].is_some() => out[node.inputs[0]],
            _ => None,
        };
    }
    out
}

fn slice_channels(t: &TensorData, axis0: &[usize]) -> TensorData {
    let per: usize = t.shape[1..].iter().product();
    let mut data = Vec::with_capacity(axis0.len() * per);
    for &c in axis0 {
        data.extend_from_slice(&t.data[c * per..(c + 1) * per]);
    }
    let mut shape = t.shape.clone();
    shape[0] = axis0.len();
    TensorData { shape, data }
}

/// The exact output of a convolution whose input channels `removed` hold the constants
/// `fill` (zero padding), restricted to output channels `outs`: `[outs, oh, ow]`.
#[allow(clippy::too_many_arguments)]
fn constant_channel_map(
    weight: &TensorData,
    outs: &[usize],
    removed: &[(usize, f32)],
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> TensorData {
    let [_, cin, kh, kw] = [
        weight.shape[0],
        weight.shape[1],
        weight.shape[2],
        weight.shape[3],
    ];
    let [h, w] = in_hw;
    let [oh, ow] = out_hw;
    let mut data = vec![0.0f32; outs.len() * oh * ow];
    for (oi, &o) in outs.iter().enumerate() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0f64;
                for &(r, v) in removed {
                    let base = (o * cin + r) * kh * kw;
                    for dy in 0..kh {
                        let iy = (oy * stride[0] + dy) as isize - padding[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for dx in 0..kw {
                            let ix = (ox * stride[1] + dx) as isize - padding[1] as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            acc += f64::from(weight.data[base + dy * kw + dx]) * f64::from(v);
                        }
                    }
                }
                data[(oi * oh + oy) * ow + ox] = acc as f32;
            }
        }
    }
    TensorData {
        shape: vec![outs.len(), oh, ow],
        data,
    }
}

fn head_op(head: &BinaryHead) -> Op {
    Op::Linear {
        weight: head.weight.clone(),
        bias: Some(head.bias.clone()),
    }
}

fn two_way_meta(model: &ModelIr, class: usize, what: &str) -> ModelMeta {
    let name = model
        .meta
        .class_names
        .get(class)
        .cloned()
        .unwrap_or_else(|| format!("class_{class}"));
    ModelMeta {
        arch: format!("{}/{what}", model.meta.arch),
        class_names: vec![name, "other".into()],
        input_norm: model.meta.input_norm.clone(),
        source: model.meta.source.clone(),
    }
}

fn check_head(model: &ModelIr, head: &BinaryHead) -> Result<(), IrError> {
    let g = &model.graph;
    let out = &g.nodes[g.output];
    if !matches!(out.op, Op::Linear { .. }) || out.inputs.first() != Some(&head.input) {
        return Err(IrError::Invalid(format!(
            "the binary head must replace the output Linear layer reading node {}, it reads node {}",
            out.inputs.first().copied().unwrap_or(0),
            head.input
        )));
    }
    Ok(())
}

/// The physically smaller two-output graph `[mine, other]` of a channel module of class
/// `class`: every convolution, BatchNorm and shortcut keeps only the plan's channels, and
/// the constants of removed channels are folded exactly into the next layer. Equals
/// [`reference`] on every input (up to float rounding).
pub fn extract(
    model: &ModelIr,
    head: &BinaryHead,
    class: usize,
    plan: &ChannelPlan,
) -> Result<ModelIr, IrError> {
    let shapes = model.check()?;
    check_head(model, head)?;
    let graph = &model.graph;
    let spaces = channel_spaces(graph, &shapes)?;
    let lists = plan
        .kept_lists(&spaces)
        .map_err(|e| IrError::Invalid(format!("channel plan: {e}")))?;
    let fills = fills_at(graph, &spaces, plan);
    let kept =
        |id: NodeId| -> &[usize] { spaces.of_node[id].map_or(&[][..], |s| lists[s].as_slice()) };
    let mut g = Graph::new(graph.input_shape()?);
    let mut map = vec![0usize; graph.nodes.len()];
    // Bias maps of removed input channels waiting for the BatchNorm after their convolution.
    let mut pending: Vec<Option<TensorData>> = vec![None; graph.nodes.len()];
    for (id, node) in graph.nodes.iter().enumerate().skip(1) {
        let ins: Vec<NodeId> = node.inputs.iter().map(|&i| map[i]).collect();
        let op = match &node.op {
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                groups,
            } => {
                let input = node.inputs[0];
                let (ki, ko) = (kept(input), kept(id));
                let [o, ci, kh, kw] = [
                    weight.shape[0],
                    weight.shape[1],
                    weight.shape[2],
                    weight.shape[3],
                ];
                let mut w = Vec::with_capacity(ko.len() * ki.len() * kh * kw);
                for &oc in ko {
                    for &ic in ki {
                        let base = (oc * ci + ic) * kh * kw;
                        w.extend_from_slice(&weight.data[base..base + kh * kw]);
                    }
                }
                debug_assert!(ko.iter().all(|&c| c < o));
                let conv = g.push(
                    node.name.clone(),
                    Op::Conv2d {
                        weight: TensorData {
                            shape: vec![ko.len(), ki.len(), kh, kw],
                            data: w,
                        },
                        bias: bias.as_ref().map(|b| slice_channels(b, ko)),
                        stride: *stride,
                        padding: *padding,
                        groups: *groups,
                    },
                    ins,
                );
                map[id] = conv;
                let removed: Vec<(usize, f32)> = match fills[input] {
                    Some(f) => (0..ci)
                        .filter(|c| !ki.contains(c) && f[*c] != 0.0)
                        .map(|c| (c, f[c]))
                        .collect(),
                    None => Vec::new(),
                };
                if !removed.is_empty() {
                    let (si, so) = (&shapes[input], &shapes[id]);
                    let bias = constant_channel_map(
                        weight,
                        ko,
                        &removed,
                        [si[1], si[2]],
                        [so[1], so[2]],
                        *stride,
                        *padding,
                    );
                    match graph.consumers(id).as_slice() {
                        // After the BatchNorm instead, scaled by it, so the convolution can
                        // still be folded into the BatchNorm: BN(x + B) = BN(x) + s * B.
                        [bn] if matches!(graph.nodes[*bn].op, Op::BatchNorm2d { .. }) => {
                            pending[*bn] = Some(bias)
                        }
                        _ => {
                            map[id] = g.push(
                                format!("{}.removed_inputs", node.name),
                                Op::BiasMap { bias },
                                vec![conv],
                            )
                        }
                    }
                }
                continue;
            }
            Op::BatchNorm2d {
                gamma,
                beta,
                running_mean,
                running_var,
                eps,
            } => {
                let k = kept(id);
                let bn = g.push(
                    node.name.clone(),
                    Op::BatchNorm2d {
                        gamma: slice_channels(gamma, k),
                        beta: slice_channels(beta, k),
                        running_mean: slice_channels(running_mean, k),
                        running_var: slice_channels(running_var, k),
                        eps: *eps,
                    },
                    ins,
                );
                map[id] = bn;
                if let Some(mut bias) = pending[id].take() {
                    let hw: usize = bias.shape[1..].iter().product();
                    for (i, &c) in k.iter().enumerate() {
                        let scale = f64::from(gamma.data[c])
                            / (f64::from(running_var.data[c]) + eps).sqrt();
                        for v in &mut bias.data[i * hw..(i + 1) * hw] {
                            *v = (f64::from(*v) * scale) as f32;
                        }
                    }
                    map[id] = g.push(
                        format!("{}.removed_inputs", node.name),
                        Op::BiasMap { bias },
                        vec![bn],
                    );
                }
                continue;
            }
            Op::BiasMap { bias } => Op::BiasMap {
                bias: slice_channels(bias, kept(id)),
            },
            Op::ShortcutA {
                stride, pad_before, ..
            } => {
                let c_in = shapes[node.inputs[0]][0];
                let sources: Vec<Option<usize>> = (0..shapes[id][0])
                    .map(|o| o.checked_sub(*pad_before).filter(|&s| s < c_in))
                    .collect();
                gather(
                    *stride,
                    &sources,
                    &vec![0.0; sources.len()],
                    kept(node.inputs[0]),
                    kept(id),
                    fills[node.inputs[0]],
                )
            }
            Op::ChannelGather {
                stride,
                sources,
                fill,
            } => gather(
                *stride,
                sources,
                fill,
                kept(node.inputs[0]),
                kept(id),
                fills[node.inputs[0]],
            ),
            Op::Linear { .. } => {
                // The output layer: the binary head on the kept features, plus the constant
                // features' contribution in its bias.
                let input = node.inputs[0];
                let k = kept(input);
                let f = head.weight.shape[1];
                let mut w = Vec::with_capacity(2 * k.len());
                for row in 0..2 {
                    w.extend(k.iter().map(|&c| head.weight.data[row * f + c]));
                }
                let mut b = head.bias.data.clone();
                if let Some(fv) = fills[input] {
                    for c in (0..f).filter(|c| !k.contains(c)) {
                        for (row, bv) in b.iter_mut().enumerate() {
                            *bv += head.weight.data[row * f + c] * fv[c];
                        }
                    }
                }
                Op::Linear {
                    weight: TensorData {
                        shape: vec![2, k.len()],
                        data: w,
                    },
                    bias: Some(TensorData {
                        shape: vec![2],
                        data: b,
                    }),
                }
            }
            op => op.clone(),
        };
        map[id] = g.push(node.name.clone(), op, ins);
    }
    g.output = map[graph.output];
    let out = ModelIr {
        meta: two_way_meta(model, class, "channel-module"),
        graph: g,
    };
    out.check()?;
    Ok(out)
}

/// A gather from the kept input channels `ki` to the kept output channels `ko`; a source
/// that was removed yields its fill constant (held after its ReLU), padding yields `fill`.
fn gather(
    stride: usize,
    sources: &[Option<usize>],
    fill: &[f32],
    ki: &[usize],
    ko: &[usize],
    in_fill: Option<&[f32]>,
) -> Op {
    let mut s = Vec::with_capacity(ko.len());
    let mut f = Vec::with_capacity(ko.len());
    for &o in ko {
        match sources[o] {
            Some(src) => match ki.iter().position(|&c| c == src) {
                Some(p) => {
                    s.push(Some(p));
                    f.push(0.0);
                }
                None => {
                    s.push(None);
                    f.push(in_fill.map_or(0.0, |v| v[src]));
                }
            },
            None => {
                s.push(None);
                f.push(fill[o]);
            }
        }
    }
    Op::ChannelGather {
        stride,
        sources: s,
        fill: f,
    }
}

/// The masked full model a channel module must equal: the model with its output layer
/// replaced by `head`, plus the node masks to apply. At every site of a group the removed
/// channels are zeroed (mask) and, when their fill is non-zero, a [`Op::BiasMap`] right after
/// the site adds the fill back, so the site's ReLU outputs exactly the fill.
pub fn reference(
    model: &ModelIr,
    head: &BinaryHead,
    class: usize,
    plan: &ChannelPlan,
) -> Result<(ModelIr, Vec<NodeMask>), IrError> {
    let shapes = model.check()?;
    check_head(model, head)?;
    let graph = &model.graph;
    let spaces = channel_spaces(graph, &shapes)?;
    plan.kept_lists(&spaces)
        .map_err(|e| IrError::Invalid(format!("channel plan: {e}")))?;
    let mut g = Graph::new(graph.input_shape()?);
    let mut map = vec![0usize; graph.nodes.len()];
    let mut masks = Vec::new();
    for (id, node) in graph.nodes.iter().enumerate().skip(1) {
        let ins: Vec<NodeId> = node.inputs.iter().map(|&i| map[i]).collect();
        let op = if id == graph.output {
            head_op(head)
        } else {
            node.op.clone()
        };
        map[id] = g.push(node.name.clone(), op, ins);
        let Some((group, si)) = plan
            .groups
            .iter()
            .find_map(|gr| gr.sites.iter().position(|&s| s == id).map(|i| (gr, i)))
        else {
            continue;
        };
        let s = &shapes[id];
        let hw = s[1] * s[2];
        let mut zeroed = BitSet::new(s[0] * hw);
        let mut bias = vec![0.0f32; s[0] * hw];
        for c in (0..s[0]).filter(|&c| !group.kept.get(c)) {
            for p in 0..hw {
                zeroed.set(c * hw + p, true);
                bias[c * hw + p] = group.fill[si][c];
            }
        }
        masks.push(NodeMask {
            node: map[id],
            zeroed,
        });
        if bias.iter().any(|&v| v != 0.0) {
            let b = TensorData {
                shape: s.clone(),
                data: bias,
            };
            map[id] = g.push(
                format!("{}.fill", node.name),
                Op::BiasMap { bias: b },
                vec![map[id]],
            );
        }
    }
    g.output = map[graph.output];
    let out = ModelIr {
        meta: two_way_meta(model, class, "channel-reference"),
        graph: g,
    };
    out.check()?;
    Ok((out, masks))
}
