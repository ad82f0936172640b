//! The model graph: typed ops over named nodes, in topological order.

use serde::{Deserialize, Serialize};

use crate::error::IrError;
use crate::limits::{MAX_GRAPH_VALUES, MAX_NODE_VALUES, MAX_PARAMS, MAX_SPATIAL};

/// Index of a node in [`Graph::nodes`]. Node 0 is always the [`Op::Input`].
pub type NodeId = usize;

/// A dense `f32` tensor stored row-major, with its shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TensorData {
    /// A tensor from a shape and row-major values; the lengths must agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, IrError> {
        let t = Self { shape, data };
        t.check("tensor")?;
        Ok(t)
    }

    /// A tensor filled with zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Number of elements the shape describes (saturating: an overflowing shape can never
    /// match its data).
    pub fn numel(&self) -> usize {
        checked_product(&self.shape).unwrap_or(usize::MAX)
    }

    fn check(&self, what: &str) -> Result<(), IrError> {
        if self.numel() != self.data.len() {
            return Err(IrError::Invalid(format!(
                "{what}: shape {:?} needs {} values, found {}",
                self.shape,
                self.numel(),
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// One operation. Shapes in comments exclude the batch axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// The graph input, `[channels, height, width]`.
    Input {
        shape: [usize; 3],
    },
    /// 2-D convolution; `weight` is `[out, in / groups, kh, kw]` (PyTorch layout).
    Conv2d {
        weight: TensorData,
        bias: Option<TensorData>,
        stride: [usize; 2],
        padding: [usize; 2],
        groups: usize,
    },
    /// Inference-mode batch normalization over channels.
    BatchNorm2d {
        gamma: TensorData,
        beta: TensorData,
        running_mean: TensorData,
        running_var: TensorData,
        eps: f64,
    },
    Relu,
    /// Element-wise sum of two inputs of equal shape.
    Add,
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// Average pooling; padded positions count in the denominator (PyTorch default).
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// Mean over the spatial axes: `[c, h, w] -> [c, 1, 1]`.
    GlobalAvgPool,
    /// `[c, h, w] -> [c * h * w]`.
    Flatten,
    /// Fully connected layer; `weight` is `[out, in]` (PyTorch layout).
    Linear {
        weight: TensorData,
        bias: Option<TensorData>,
    },
    /// Option-A ResNet shortcut: keep every `stride`-th row and column (`x[:, :, ::s, ::s]`),
    /// then add `pad_before` zero channels in front and `pad_after` behind.
    ShortcutA {
        stride: usize,
        pad_before: usize,
        pad_after: usize,
    },
    /// Adds a fixed `[c, h, w]` map to its input. Channel extraction uses it to fold the
    /// exact contribution of removed input channels held at a constant into the next layer
    /// (through a zero-padded convolution a constant channel gives a position-dependent map).
    BiasMap {
        bias: TensorData,
    },
    /// Channel gather of a channel-pruned option-A shortcut: keep every `stride`-th row and
    /// column, then output channel `o` is input channel `sources[o]`, or the constant
    /// `fill[o]` where `sources[o]` is `None`. [`Op::ShortcutA`] is the special case of
    /// sources `[None; pad_before] ++ [0..c] ++ [None; pad_after]` and zero fill.
    ChannelGather {
        stride: usize,
        sources: Vec<Option<usize>>,
        fill: Vec<f32>,
    },
    /// Element-wise `min(max(x, min), max)`; `Clip { min: 0, max: 6 }` is ReLU6 (MobileNet).
    /// A clip with `min == 0` is a rectifier: its input is a mask site like a ReLU's
    /// ([`Op::is_rectifier`]).
    Clip {
        min: f32,
        max: f32,
    },
    /// Concatenation of two or more inputs along the channel axis: `[c_i, h, w]` maps of one
    /// spatial size, or vectors `[n_i]`, in input order.
    Concat,
}

impl Op {
    /// Short lowercase name used in messages and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm2d { .. } => "batchnorm2d",
            Op::Relu => "relu",
            Op::Add => "add",
            Op::MaxPool2d { .. } => "maxpool2d",
            Op::AvgPool2d { .. } => "avgpool2d",
            Op::GlobalAvgPool => "globalavgpool",
            Op::Flatten => "flatten",
            Op::Linear { .. } => "linear",
            Op::ShortcutA { .. } => "shortcut_a",
            Op::BiasMap { .. } => "bias_map",
            Op::ChannelGather { .. } => "channel_gather",
            Op::Clip { .. } => "clip",
            Op::Concat => "concat",
        }
    }

    /// Whether `n` inputs suit the op.
    fn arity_ok(&self, n: usize) -> bool {
        match self {
            Op::Input { .. } => n == 0,
            Op::Add => n == 2,
            Op::Concat => n >= 2,
            _ => n == 1,
        }
    }

    fn arity(&self) -> &'static str {
        match self {
            Op::Input { .. } => "0",
            Op::Add => "2",
            Op::Concat => "2 or more",
            _ => "1",
        }
    }

    /// A ReLU, or a clip whose lower bound is 0 (ReLU6): it outputs 0 exactly where its
    /// input is `<= 0`, so zeroing an input position that is `<= 0` changes nothing, which is
    /// what makes the rectifier's input a mask site (METHOD.md 2.1).
    pub fn is_rectifier(&self) -> bool {
        match self {
            Op::Relu => true,
            Op::Clip { min, max } => *min == 0.0 && *max > 0.0,
            _ => false,
        }
    }

    /// Number of values the op stores: weights, biases, BatchNorm statistics, constants
    /// (what [`crate::limits::MAX_PARAMS`] bounds).
    pub fn stored_values(&self) -> usize {
        let t = |t: &TensorData| t.data.len();
        let o = |b: &Option<TensorData>| b.as_ref().map_or(0, t);
        match self {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => t(weight) + o(bias),
            Op::BatchNorm2d {
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => t(gamma) + t(beta) + t(running_mean) + t(running_var),
            Op::BiasMap { bias } => t(bias),
            Op::ChannelGather { fill, .. } => fill.len(),
            _ => 0,
        }
    }

    /// Number of learned parameters (running statistics of BatchNorm excluded).
    pub fn num_params(&self) -> usize {
        match self {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                weight.numel() + bias.as_ref().map_or(0, TensorData::numel)
            }
            Op::BatchNorm2d { gamma, beta, .. } => gamma.numel() + beta.numel(),
            _ => 0,
        }
    }
}

/// A named node: an op applied to the outputs of earlier nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
}

/// A feed-forward network as a list of nodes in topological order.
///
/// Invariants checked by [`Graph::validate`]: node 0 is the only input, every node reads
/// only earlier nodes, names are unique, tensor sizes match their shapes, every stored
/// value is finite, shapes propagate without conflict up to `output`, and sizes stay within
/// [`crate::limits`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub output: NodeId,
}

/// Product of dimensions, `None` on overflow.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A shape without the batch axis: `[c, h, w]` for feature maps, `[n]` for vectors.
pub type Shape = Vec<usize>;

impl Graph {
    /// An empty graph with its input node.
    pub fn new(input_shape: [usize; 3]) -> Self {
        Self {
            nodes: vec![Node {
                name: "input".into(),
                op: Op::Input { shape: input_shape },
                inputs: vec![],
            }],
            output: 0,
        }
    }

    /// Appends a node and makes it the output; returns its id.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: Vec<NodeId>) -> NodeId {
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs,
        });
        self.output = self.nodes.len() - 1;
        self.output
    }

    /// The input shape `[c, h, w]`.
    pub fn input_shape(&self) -> Result<[usize; 3], IrError> {
        match self.nodes.first().map(|n| &n.op) {
            Some(Op::Input { shape }) => Ok(*shape),
            _ => Err(IrError::Invalid("node 0 must be the input".into())),
        }
    }

    /// Id of the node called `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Ids of the nodes that read `id`.
    pub fn consumers(&self, id: NodeId) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&j| self.nodes[j].inputs.contains(&id))
            .collect()
    }

    /// Ids of the nodes whose output enters a rectifier (a ReLU, or a ReLU6 clip:
    /// [`Op::is_rectifier`]): the sites of concern identification.
    pub fn relu_inputs(&self) -> Vec<NodeId> {
        let mut sites: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.op.is_rectifier())
            .filter_map(|n| n.inputs.first().copied())
            .collect();
        sites.sort_unstable();
        sites.dedup();
        sites
    }

    /// Learned parameters of the whole graph.
    pub fn num_params(&self) -> usize {
        self.nodes.iter().map(|n| n.op.num_params()).sum()
    }

    /// Checks every invariant and returns the output shape of every node. Sizes are
    /// checked against [`crate::limits`] from the declared shapes alone, so a graph too large
    /// to run is refused before anything is allocated for it.
    pub fn validate(&self) -> Result<Vec<Shape>, IrError> {
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.nodes.len());
        let mut names = std::collections::HashSet::new();
        let (mut values, mut stored) = (0usize, 0usize);
        for (id, node) in self.nodes.iter().enumerate() {
            let bad = |msg: String| IrError::BadNode {
                node: id,
                name: node.name.clone(),
                op: node.op.kind(),
                msg,
            };
            if !names.insert(node.name.as_str()) {
                return Err(bad("duplicate node name".into()));
            }
            if matches!(node.op, Op::Input { .. }) != (id == 0) {
                return Err(bad("the input must be node 0 and only node 0".into()));
            }
            if !node.op.arity_ok(node.inputs.len()) {
                return Err(bad(format!(
                    "expects {} inputs, found {}",
                    node.op.arity(),
                    node.inputs.len()
                )));
            }
            if let Some(&i) = node.inputs.iter().find(|&&i| i >= id) {
                return Err(bad(format!(
                    "reads node {i}, which does not come before it"
                )));
            }
            let ins: Vec<&Shape> = node.inputs.iter().map(|&i| &shapes[i]).collect();
            let shape = infer(&node.op, &ins).map_err(bad)?;
            let n = within_limits(&shape).map_err(bad)?;
            values = values.saturating_add(n);
            if values > MAX_GRAPH_VALUES {
                return Err(bad(format!(
                    "the nodes up to this one hold {values} values per image, over the limit of {MAX_GRAPH_VALUES} (limits::MAX_GRAPH_VALUES)"
                )));
            }
            stored = stored.saturating_add(node.op.stored_values());
            if stored > MAX_PARAMS {
                return Err(bad(format!(
                    "the nodes up to this one store {stored} values, over the limit of {MAX_PARAMS} (limits::MAX_PARAMS)"
                )));
            }
            shapes.push(shape);
        }
        if self.output >= self.nodes.len() {
            return Err(IrError::Invalid(format!(
                "output node {} does not exist ({} nodes)",
                self.output,
                self.nodes.len()
            )));
        }
        Ok(shapes)
    }
}

/// Output shape of `op` applied to inputs of shapes `ins`, checked as [`Graph::validate`]
/// checks a node (arity, tensor shapes and values, sizes within [`crate::limits`]); for
/// builders that need each node's shape while they build.
pub fn node_shape(op: &Op, ins: &[&Shape]) -> Result<Shape, String> {
    if !op.arity_ok(ins.len()) {
        return Err(format!(
            "expects {} inputs, found {}",
            op.arity(),
            ins.len()
        ));
    }
    let shape = infer(op, ins)?;
    within_limits(&shape)?;
    Ok(shape)
}

/// Values a node's output holds per image, checked against [`MAX_NODE_VALUES`] and (for
/// feature maps) [`MAX_SPATIAL`].
fn within_limits(shape: &Shape) -> Result<usize, String> {
    let n = checked_product(shape).filter(|&n| n <= MAX_NODE_VALUES).ok_or_else(|| {
        format!(
            "output shape {shape:?} holds more than {MAX_NODE_VALUES} values per image (limits::MAX_NODE_VALUES)"
        )
    })?;
    if let &[_, h, w] = shape.as_slice()
        && h.max(w) > MAX_SPATIAL
    {
        return Err(format!(
            "output shape {shape:?} is larger than {MAX_SPATIAL} pixels on a side (limits::MAX_SPATIAL)"
        ));
    }
    Ok(n)
}

fn feature_map(s: &Shape) -> Result<[usize; 3], String> {
    match s.as_slice() {
        &[c, h, w] => Ok([c, h, w]),
        _ => Err(format!("expects a [c, h, w] feature map, found {s:?}")),
    }
}

fn check_tensor(t: &TensorData, what: &str, expected: &[usize]) -> Result<(), String> {
    if t.data.len() != t.numel() {
        return Err(format!(
            "{what}: shape {:?} needs {} values, found {}",
            t.shape,
            t.numel(),
            t.data.len()
        ));
    }
    if t.shape != expected {
        return Err(format!(
            "{what}: expected shape {expected:?}, found {:?}",
            t.shape
        ));
    }
    finite(&t.data, what)
}

/// Refuses NaN and infinite values, naming the first one.
pub(crate) fn finite(values: &[f32], what: &str) -> Result<(), String> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!(
            "{what}: value {i} is {}, expected a finite number",
            values[i]
        )),
        None => Ok(()),
    }
}

/// Output sizes `[h, w]` of a convolution or pooling window over a `[c, h, w]` input, with
/// kernel, stride and padding within [`MAX_SPATIAL`] and the zero-padded input within
/// [`MAX_NODE_VALUES`].
fn windowed(
    [c, h, w]: [usize; 3],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<[usize; 2], String> {
    for (what, v) in [("kernel", kernel), ("stride", stride), ("padding", padding)] {
        if v[0].max(v[1]) > MAX_SPATIAL {
            return Err(format!(
                "{what} {v:?} is larger than {MAX_SPATIAL} (limits::MAX_SPATIAL)"
            ));
        }
    }
    let padded = [h + 2 * padding[0], w + 2 * padding[1]];
    if checked_product(&[c, padded[0], padded[1]]).is_none_or(|n| n > MAX_NODE_VALUES) {
        return Err(format!(
            "the zero-padded input [{c}, {}, {}] holds more than {MAX_NODE_VALUES} values per image (limits::MAX_NODE_VALUES)",
            padded[0], padded[1]
        ));
    }
    Ok([
        pooled(h, kernel[0], stride[0], padding[0])?,
        pooled(w, kernel[1], stride[1], padding[1])?,
    ])
}

fn pooled(len: usize, k: usize, s: usize, p: usize) -> Result<usize, String> {
    if k == 0 || s == 0 {
        return Err("kernel and stride must be non-zero".into());
    }
    let padded = p
        .checked_mul(2)
        .and_then(|p2| len.checked_add(p2))
        .ok_or_else(|| format!("padding {p} overflows"))?;
    if padded < k {
        return Err(format!("window {k} larger than padded input {padded}"));
    }
    Ok((padded - k) / s + 1)
}

fn infer(op: &Op, ins: &[&Shape]) -> Result<Shape, String> {
    Ok(match op {
        Op::Input { shape } => {
            if shape.contains(&0) || checked_product(shape).is_none() {
                return Err(format!(
                    "input shape {shape:?} has a zero or overflowing dimension"
                ));
            }
            shape.to_vec()
        }
        Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
        } => {
            let [c, h, w] = feature_map(ins[0])?;
            let &[o, ci, kh, kw] = weight.shape.as_slice() else {
                return Err(format!("weight must be 4-D, found {:?}", weight.shape));
            };
            if *groups == 0 || c % groups != 0 || o % groups != 0 {
                return Err(format!(
                    "groups {groups} must divide in {c} and out {o} channels"
                ));
            }
            check_tensor(weight, "weight", &[o, c / groups, kh, kw])?;
            debug_assert_eq!(ci, c / groups);
            if let Some(b) = bias {
                check_tensor(b, "bias", &[o])?;
            }
            let [oh, ow] = windowed([c, h, w], [kh, kw], *stride, *padding)?;
            vec![o, oh, ow]
        }
        Op::BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
        } => {
            let [c, _, _] = feature_map(ins[0])?;
            for (t, what) in [
                (gamma, "gamma"),
                (beta, "beta"),
                (running_mean, "running_mean"),
                (running_var, "running_var"),
            ] {
                check_tensor(t, what, &[c])?;
            }
            if let Some(i) = running_var.data.iter().position(|&v| v < 0.0) {
                return Err(format!(
                    "running_var: value {i} is {}, expected a variance (>= 0)",
                    running_var.data[i]
                ));
            }
            if !eps.is_finite() || *eps <= 0.0 {
                return Err(format!("eps is {eps}, expected a finite positive number"));
            }
            ins[0].clone()
        }
        Op::Relu => ins[0].clone(),
        Op::Clip { min, max } => {
            if !min.is_finite() || !max.is_finite() || min >= max {
                return Err(format!(
                    "bounds [{min}, {max}]: expected finite numbers with min < max"
                ));
            }
            ins[0].clone()
        }
        Op::Concat => {
            let first = ins[0];
            let mut channels = 0usize;
            for s in ins {
                if !matches!(s.len(), 1 | 3) || s.len() != first.len() || s[1..] != first[1..] {
                    return Err(format!(
                        "inputs must be [c, h, w] maps of one spatial size or vectors, found {:?}",
                        ins
                    ));
                }
                channels = channels
                    .checked_add(s[0])
                    .ok_or("channel count overflows")?;
            }
            let mut out = first.clone();
            out[0] = channels;
            out
        }
        Op::Add => {
            if ins[0] != ins[1] {
                return Err(format!("input shapes differ: {:?} vs {:?}", ins[0], ins[1]));
            }
            ins[0].clone()
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
        } => {
            let [c, h, w] = feature_map(ins[0])?;
            if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
                return Err("padding must be at most half the kernel".into());
            }
            let [oh, ow] = windowed([c, h, w], *kernel, *stride, *padding)?;
            vec![c, oh, ow]
        }
        Op::GlobalAvgPool => {
            let [c, _, _] = feature_map(ins[0])?;
            vec![c, 1, 1]
        }
        Op::Flatten => vec![checked_product(ins[0]).ok_or("shape overflows")?],
        Op::Linear { weight, bias } => {
            let &[n] = ins[0].as_slice() else {
                return Err(format!("expects a vector, found {:?}", ins[0]));
            };
            let &[o, _] = weight.shape.as_slice() else {
                return Err(format!("weight must be 2-D, found {:?}", weight.shape));
            };
            check_tensor(weight, "weight", &[o, n])?;
            if let Some(b) = bias {
                check_tensor(b, "bias", &[o])?;
            }
            vec![o]
        }
        Op::ShortcutA {
            stride,
            pad_before,
            pad_after,
        } => {
            let [c, h, w] = feature_map(ins[0])?;
            if *stride == 0 {
                return Err("stride must be non-zero".into());
            }
            let c = c
                .checked_add(*pad_before)
                .and_then(|c| c.checked_add(*pad_after))
                .ok_or("channel padding overflows")?;
            vec![c, h.div_ceil(*stride), w.div_ceil(*stride)]
        }
        Op::BiasMap { bias } => {
            feature_map(ins[0])?;
            check_tensor(bias, "bias", ins[0])?;
            ins[0].clone()
        }
        Op::ChannelGather {
            stride,
            sources,
            fill,
        } => {
            let [c, h, w] = feature_map(ins[0])?;
            if *stride == 0 {
                return Err("stride must be non-zero".into());
            }
            if sources.is_empty() || fill.len() != sources.len() {
                return Err(format!(
                    "{} sources and {} fill values: expected the same non-zero count",
                    sources.len(),
                    fill.len()
                ));
            }
            if let Some((o, s)) = sources
                .iter()
                .enumerate()
                .find_map(|(o, s)| s.filter(|&s| s >= c).map(|s| (o, s)))
            {
                return Err(format!("output channel {o} reads input channel {s} of {c}"));
            }
            finite(fill, "fill")?;
            vec![sources.len(), h.div_ceil(*stride), w.div_ceil(*stride)]
        }
    })
}
