//! ONNX graph -> IR graph, node by node (see the module docs of [`super`]).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use decomp_ir::limits::MAX_PARAMS;
use decomp_ir::{Graph, InputNorm, ModelIr, ModelMeta, NodeId, Op, Shape, TensorData, node_shape};

use super::OnnxOptions;
use super::fold::{BATCH, Const, Data, axis, slice_ranges};
use super::proto::{AttributeProto, ModelProto, NodeProto, TensorProto};

/// The ops [`Builder::node`] maps, for the refusal message.
const SUPPORTED: &str = "Conv, BatchNormalization, Relu, Clip, Add, Concat, MaxPool, \
AveragePool, GlobalAveragePool, ReduceMean (spatial), Flatten, Reshape/Squeeze to a vector, \
Gemm, MatMul (+ Add), Dropout, Identity, a final Softmax (left out), Slice + Pad (option-A shortcut), and constant \
shape arithmetic (Constant, Shape, Gather, Unsqueeze, Squeeze, Concat, Reshape, Slice, \
Transpose, Cast, ConstantOfShape, Add, Sub, Mul, Div)";

/// A value of the ONNX graph during conversion.
#[derive(Clone)]
enum Val {
    /// The output of an IR node.
    Ir(NodeId),
    /// A constant (initializer, `Constant`, or folded shape arithmetic).
    Const(Const),
    /// `x[:, :, ::stride[0], ::stride[1]]` of an IR node: strided `Slice`s come one axis at a
    /// time; they become one option-A shortcut (with the `Pad` that usually follows).
    Strided {
        src: NodeId,
        stride: [usize; 2],
        name: String,
    },
}

struct Builder<'a> {
    graph: Graph,
    shapes: Vec<Shape>,
    names: HashSet<String>,
    values: HashMap<String, Val>,
    inits: HashMap<&'a str, &'a TensorProto>,
    /// Readers of each value name (graph outputs count).
    uses: HashMap<&'a str, usize>,
    opset: i64,
    /// The batch size the graph input declares, when fixed.
    batch: Option<i64>,
    /// Name of the graph output.
    output: String,
    /// A final softmax left out (the model then outputs its logits).
    dropped: Option<String>,
    base: &'a Path,
}

/// `node 'name' (OpType)`, the prefix of every message about a node.
fn who(n: &NodeProto) -> String {
    let name = if n.name.is_empty() {
        n.output.first().map_or("(unnamed)", String::as_str)
    } else {
        &n.name
    };
    format!("node '{name}' ({})", n.op_type)
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// Attribute kinds, as `AttributeProto.type` numbers them (0: unset, old files).
fn check_kind(n: &NodeProto, a: &AttributeProto, want: i32, what: &str) -> Result<(), String> {
    if a.r#type == want || a.r#type == 0 {
        Ok(())
    } else {
        Err(format!(
            "{}: attribute {} has type {}, expected {what}",
            who(n),
            a.name,
            a.r#type
        ))
    }
}

fn int_attr(n: &NodeProto, name: &str, default: i64) -> Result<i64, String> {
    match attr(n, name) {
        Some(a) => check_kind(n, a, 2, "an int").map(|_| a.i),
        None => Ok(default),
    }
}

fn ints_attr(n: &NodeProto, name: &str) -> Result<Option<Vec<i64>>, String> {
    match attr(n, name) {
        Some(a) => check_kind(n, a, 7, "a list of ints").map(|_| Some(a.ints.clone())),
        None => Ok(None),
    }
}

fn float_attr(n: &NodeProto, name: &str) -> Result<Option<f32>, String> {
    match attr(n, name) {
        Some(a) => check_kind(n, a, 1, "a float").map(|_| Some(a.f)),
        None => Ok(None),
    }
}

fn string_attr(n: &NodeProto, name: &str) -> Result<Option<String>, String> {
    match attr(n, name) {
        Some(a) => {
            check_kind(n, a, 3, "a string")?;
            String::from_utf8(a.s.clone())
                .map(Some)
                .map_err(|_| format!("{}: attribute {name} is not UTF-8", who(n)))
        }
        None => Ok(None),
    }
}

/// A usize from a non-negative attribute value.
fn usize_of(n: &NodeProto, what: &str, v: i64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{}: {what} {v} is negative", who(n)))
}

/// The f64 a BatchNorm epsilon stored as f32 stands for: the shortest decimal that rounds to
/// it (`1e-5` for PyTorch's default), so the same model imported from a checkpoint and from
/// ONNX gets the same epsilon.
fn eps_f64(e: f32) -> f64 {
    format!("{e}").parse().unwrap_or(f64::from(e))
}

/// Reads one tensor (initializer or attribute value) as a constant.
fn tensor(t: &TensorProto, base: &Path) -> Result<Const, String> {
    let name = &t.name;
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{name}' has dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n = decomp_ir::checked_product(&shape)
        .filter(|&n| n <= MAX_PARAMS)
        .ok_or_else(|| {
            format!("tensor '{name}' of shape {shape:?} holds more than {MAX_PARAMS} values (limits::MAX_PARAMS)")
        })?;
    let size = match t.data_type {
        1 | 6 => 4,
        7 | 11 => 8,
        10 | 16 => {
            return Err(format!(
                "tensor '{name}' is 16-bit floating point: export the model in float32"
            ));
        }
        d => {
            return Err(format!(
                "tensor '{name}' has ONNX data type {d}, expected float32, float64, int32 or int64"
            ));
        }
    };
    let raw: Vec<u8> = if t.data_location == 1 {
        external(t, base, n * size)?
    } else {
        t.raw_data.clone()
    };
    let from_raw = !raw.is_empty() || t.data_location == 1;
    if from_raw && raw.len() != n * size {
        return Err(format!(
            "tensor '{name}' of shape {shape:?} needs {} bytes, found {}",
            n * size,
            raw.len()
        ));
    }
    let count = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format!(
                "tensor '{name}' of shape {shape:?} needs {n} values, found {len}"
            ))
        }
    };
    let le8 = |c: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        a
    };
    let data = match t.data_type {
        1 if from_raw => Data::F32(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        1 => {
            count(t.float_data.len())?;
            Data::F32(t.float_data.clone())
        }
        11 if from_raw => Data::F32(
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(le8(c)) as f32)
                .collect(),
        ),
        11 => {
            count(t.double_data.len())?;
            Data::F32(t.double_data.iter().map(|&v| v as f32).collect())
        }
        7 if from_raw => Data::I64(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(le8(c)))
                .collect(),
        ),
        7 => {
            count(t.int64_data.len())?;
            Data::I64(t.int64_data.clone())
        }
        _ if from_raw => Data::I64(
            raw.chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        _ => {
            count(t.int32_data.len())?;
            Data::I64(t.int32_data.iter().map(|&v| i64::from(v)).collect())
        }
    };
    Ok(Const { shape, data })
}

/// The bytes of a tensor stored outside the model file (`data_location: EXTERNAL`), from a
/// file beside the model.
fn external(t: &TensorProto, base: &Path, expected: usize) -> Result<Vec<u8>, String> {
    let name = &t.name;
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let location = get("location")
        .ok_or_else(|| format!("tensor '{name}' is stored externally but names no location"))?;
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "tensor '{name}': external data location '{location}' must be a plain relative path beside the model"
        ));
    }
    let path = base.join(rel);
    let num = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    format!("tensor '{name}': external data {k} '{v}' is not a number")
                })
            })
            .transpose()
    };
    let offset = num("offset")?.unwrap_or(0);
    let length = num("length")?.unwrap_or(expected as u64);
    if length != expected as u64 {
        return Err(format!(
            "tensor '{name}': external data length {length}, its shape needs {expected} bytes"
        ));
    }
    let mut f = std::fs::File::open(&path).map_err(|e| {
        format!(
            "tensor '{name}': external data file {} cannot be opened ({e}); it must lie beside the model",
            path.display()
        )
    })?;
    let size = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "tensor '{name}': external data {} holds {size} bytes, the tensor reads {length} at offset {offset}",
            path.display()
        ));
    }
    let mut buf = vec![0u8; expected];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| format!("tensor '{name}': reading {}: {e}", path.display()))?;
    Ok(buf)
}

/// Converts a decoded model; errors are messages naming the node, tensor or field.
pub(super) fn convert(
    model: &ModelProto,
    origin: &Path,
    base: &Path,
    opts: &OnnxOptions,
) -> Result<ModelIr, String> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or("the model imports no opset of the default ONNX domain (opset_import)")?;
    if opset < 7 {
        return Err(format!(
            "opset {opset} is older than 7, the oldest this importer reads"
        ));
    }
    let g = model.graph.as_ref().ok_or("the model has no graph")?;
    if !g.sparse_initializer.is_empty() {
        return Err("sparse initializers are not supported".into());
    }
    let inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !inits.contains_key(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(format!(
            "the graph has {} inputs ({}), expected one image input",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let [output] = g.output.as_slice() else {
        return Err(format!(
            "the graph has {} outputs, expected one (the logits)",
            g.output.len()
        ));
    };
    let tt = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| format!("input '{}' is not a tensor", input.name))?;
    if tt.elem_type != 1 {
        return Err(format!(
            "input '{}' has ONNX data type {}, expected float32 (1)",
            input.name, tt.elem_type
        ));
    }
    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    if dims.len() != 4 {
        return Err(format!(
            "input '{}' has rank {}, expected [batch, channels, height, width]",
            input.name,
            dims.len()
        ));
    }
    let batch = dims[0].dim_value.filter(|&v| v > 0);
    let input_shape = match opts.input_shape {
        Some(s) => s,
        None => {
            let mut s = [0usize; 3];
            for (k, d) in dims[1..].iter().enumerate() {
                s[k] = match (d.dim_value, &d.dim_param) {
                    (Some(v), _) if v > 0 => v as usize,
                    (_, Some(p)) => {
                        return Err(format!(
                            "input '{}' has a dynamic size '{p}' at axis {}: decomp needs a fixed [channels, height, width] (export with a fixed input size, or give the input shape)",
                            input.name,
                            k + 1
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "input '{}' has no fixed size at axis {}: decomp needs a fixed [channels, height, width] (export with a fixed input size, or give the input shape)",
                            input.name,
                            k + 1
                        ));
                    }
                };
            }
            s
        }
    };
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    *uses.entry(output.name.as_str()).or_default() += 1;
    let mut b = Builder {
        graph: Graph::new(input_shape),
        shapes: vec![input_shape.to_vec()],
        names: HashSet::from(["input".to_string()]),
        values: HashMap::from([(input.name.clone(), Val::Ir(0))]),
        inits,
        uses,
        opset,
        batch,
        output: output.name.clone(),
        dropped: None,
        base,
    };
    node_shape(&Op::Input { shape: input_shape }, &[])
        .map_err(|e| format!("input '{}': {e}", input.name))?;
    for n in &g.node {
        let outs = b.node(n)?;
        for (name, v) in n.output.iter().zip(outs) {
            if !name.is_empty() {
                b.values.insert(name.clone(), v);
            }
        }
        // Every mapped op has one modelled output (Dropout's mask, MaxPool's indices and
        // BatchNorm's training statistics are not): the others must be unread.
        for name in n.output.iter().skip(1) {
            if b.uses.get(name.as_str()).copied().unwrap_or(0) > 0 {
                return Err(format!(
                    "{}: its output '{name}' is read, and decomp only models the first output",
                    who(n)
                ));
            }
        }
    }
    let out = b.read_ir(&output.name, "the graph output")?;
    let dropped = b.dropped.take();
    b.graph.output = out;
    let logits = b.shapes[out].clone();
    let &[k] = logits.as_slice() else {
        return Err(format!(
            "the graph output '{}' has shape [batch, {}], expected [batch, classes] logits",
            output.name,
            logits
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let meta: HashMap<&str, &str> = model
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    let class_names = match (&opts.class_names, meta.get("class_names")) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => s.split(',').map(|c| c.trim().to_string()).collect(),
        (None, None) => (0..k).map(|i| format!("class_{i}")).collect(),
    };
    if class_names.len() != k {
        return Err(format!(
            "{} class names for a model with {k} logits",
            class_names.len()
        ));
    }
    let floats = |key: &str, s: &str| -> Result<Vec<f32>, String> {
        s.split(',')
            .map(|v| {
                v.trim()
                    .parse::<f32>()
                    .map_err(|_| format!("metadata {key}: '{v}' is not a number"))
            })
            .collect()
    };
    let input_norm = match (
        &opts.input_norm,
        meta.get("input_mean"),
        meta.get("input_std"),
    ) {
        (Some(n), _, _) => n.clone(),
        (None, Some(m), Some(s)) => InputNorm {
            mean: floats("input_mean", m)?,
            std: floats("input_std", s)?,
        },
        _ => {
            return Err(
                "the model does not say how its input is normalized: give the per-channel mean and std of x / 255 (flags --input-mean/--input-std, or metadata_props input_mean/input_std)".into(),
            );
        }
    };
    let arch = meta.get("arch").map_or_else(
        || {
            origin
                .file_stem()
                .map_or("onnx".into(), |s| s.to_string_lossy().into_owned())
        },
        |a| a.to_string(),
    );
    let model_ir = ModelIr {
        meta: ModelMeta {
            arch,
            class_names,
            input_norm,
            source: format!(
                "onnx {} ({} {}, opset {opset}){}",
                origin.display(),
                model.producer_name,
                model.producer_version,
                dropped.map_or_else(String::new, |op| format!(
                    "; its final {op} left out: outputs logits"
                ))
            ),
        },
        graph: b.graph,
    };
    model_ir.check().map_err(|e| e.to_string())?;
    Ok(model_ir)
}

impl<'a> Builder<'a> {
    /// A unique IR node name from `base`.
    fn unique(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Appends an IR node (named uniquely after `name`); `what` names its origin in errors.
    fn add_node(
        &mut self,
        what: &str,
        name: &str,
        op: Op,
        inputs: Vec<NodeId>,
    ) -> Result<NodeId, String> {
        let shape = {
            let ins: Vec<&Shape> = inputs.iter().map(|&i| &self.shapes[i]).collect();
            node_shape(&op, &ins).map_err(|e| format!("{what}: {e}"))?
        };
        let name = self.unique(name);
        self.graph.push(name, op, inputs);
        self.shapes.push(shape);
        Ok(self.graph.nodes.len() - 1)
    }

    /// [`Self::add_node`] for ONNX node `n`.
    fn push(
        &mut self,
        n: &NodeProto,
        name: &str,
        op: Op,
        inputs: Vec<NodeId>,
    ) -> Result<Val, String> {
        self.add_node(&who(n), name, op, inputs).map(Val::Ir)
    }

    /// Name of an IR node made from `n`: its weight initializer without `.weight` (the
    /// PyTorch module path), else the ONNX node name.
    fn param_name(&self, n: &NodeProto, weight: usize) -> String {
        if let Some(w) = n.input.get(weight)
            && self.inits.contains_key(w.as_str())
            && let Some(stem) = w.strip_suffix(".weight")
            && !stem.is_empty()
        {
            return stem.to_string();
        }
        self.node_name(n)
    }

    fn node_name(&self, n: &NodeProto) -> String {
        if n.name.is_empty() {
            format!(
                "{}:{}",
                n.op_type,
                n.output.first().map_or("", String::as_str)
            )
        } else {
            n.name.clone()
        }
    }

    /// Input `k` of `n`; `None` when it is absent or the empty name (an omitted optional input).
    fn input(&mut self, n: &NodeProto, k: usize) -> Result<Option<Val>, String> {
        let Some(name) = n.input.get(k).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if let Some(v) = self.values.get(name) {
            return Ok(Some(v.clone()));
        }
        if let Some(t) = self.inits.get(name.as_str()) {
            let c = tensor(t, self.base).map_err(|e| format!("{}: {e}", who(n)))?;
            self.values.insert(name.clone(), Val::Const(c.clone()));
            return Ok(Some(Val::Const(c)));
        }
        Err(format!(
            "{}: reads '{name}', which no earlier node produces (nodes must be in topological order)",
            who(n)
        ))
    }

    fn need(&mut self, n: &NodeProto, k: usize) -> Result<Val, String> {
        self.input(n, k)?
            .ok_or_else(|| format!("{}: input {k} is missing", who(n)))
    }

    fn constant(&mut self, n: &NodeProto, k: usize, what: &str) -> Result<Const, String> {
        match self.need(n, k)? {
            Val::Const(c) => Ok(c),
            _ => Err(format!(
                "{}: its {what} (input {k}) is computed by the network, decomp needs a constant",
                who(n)
            )),
        }
    }

    fn opt_constant(
        &mut self,
        n: &NodeProto,
        k: usize,
        what: &str,
    ) -> Result<Option<Const>, String> {
        match self.input(n, k)? {
            None => Ok(None),
            Some(_) => self.constant(n, k, what).map(Some),
        }
    }

    /// A float parameter tensor (weights, biases, statistics), finite.
    fn weight(&mut self, n: &NodeProto, k: usize, what: &str) -> Result<TensorData, String> {
        let c = self.constant(n, k, what)?;
        let Data::F32(data) = c.data else {
            return Err(format!("{}: its {what} is an integer tensor", who(n)));
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{}: its {what} '{}' has value {} at {i}, expected a finite number",
                who(n),
                n.input[k],
                data[i]
            ));
        }
        Ok(TensorData {
            shape: c.shape,
            data,
        })
    }

    /// Turns a pending strided slice into an option-A shortcut node.
    fn materialize(&mut self, n: &NodeProto, v: Val) -> Result<NodeId, String> {
        match v {
            Val::Ir(id) => Ok(id),
            Val::Strided { src, stride, name } => {
                if stride[0] != stride[1] {
                    return Err(format!(
                        "{}: reads a map subsampled by {stride:?}; only equal row and column strides are supported",
                        who(n)
                    ));
                }
                let op = Op::ShortcutA {
                    stride: stride[0],
                    pad_before: 0,
                    pad_after: 0,
                };
                self.add_node(&who(n), &name, op, vec![src])
            }
            Val::Const(_) => Err(format!(
                "{}: applies a network op to a constant; constant subgraphs are folded only for shape arithmetic",
                who(n)
            )),
        }
    }

    /// The IR node of input `k` (a pending slice is materialized and remembered).
    fn ir(&mut self, n: &NodeProto, k: usize) -> Result<NodeId, String> {
        let v = self.need(n, k)?;
        let id = self.materialize(n, v)?;
        self.values.insert(n.input[k].clone(), Val::Ir(id));
        Ok(id)
    }

    fn read_ir(&mut self, name: &str, what: &str) -> Result<NodeId, String> {
        match self.values.get(name).cloned() {
            Some(Val::Ir(id)) => Ok(id),
            Some(v @ Val::Strided { .. }) => {
                let probe = NodeProto {
                    name: what.into(),
                    op_type: "output".into(),
                    ..Default::default()
                };
                self.materialize(&probe, v)
            }
            Some(Val::Const(_)) => Err(format!("{what} '{name}' is a constant")),
            None => Err(format!("{what} '{name}' is produced by no node")),
        }
    }

    /// ONNX shape (batch axis first) of a value, for `Shape`.
    fn onnx_shape(&self, v: &Val) -> Vec<i64> {
        match v {
            Val::Const(c) => c.shape.iter().map(|&d| d as i64).collect(),
            Val::Ir(id) => std::iter::once(BATCH)
                .chain(self.shapes[*id].iter().map(|&d| d as i64))
                .collect(),
            Val::Strided { src, stride, .. } => {
                let s = &self.shapes[*src];
                vec![
                    BATCH,
                    s[0] as i64,
                    s[1].div_ceil(stride[0]) as i64,
                    s[2].div_ceil(stride[1]) as i64,
                ]
            }
        }
    }

    /// Whether every present input of `n` is a constant.
    fn all_const(&mut self, n: &NodeProto) -> Result<bool, String> {
        for k in 0..n.input.len() {
            if let Some(v) = self.input(n, k)?
                && !matches!(v, Val::Const(_))
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Axes given as an attribute (older opsets) or as input `k`.
    fn axes(&mut self, n: &NodeProto, k: usize) -> Result<Option<Vec<i64>>, String> {
        if let Some(a) = ints_attr(n, "axes")? {
            return Ok(Some(a));
        }
        match self.opt_constant(n, k, "axes")? {
            Some(c) => Ok(Some(
                c.ints()
                    .map_err(|e| format!("{}: axes: {e}", who(n)))?
                    .to_vec(),
            )),
            None => Ok(None),
        }
    }

    fn node(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(format!(
                "{}: operator of domain '{}' is not supported (decomp reads the default ONNX domain: {SUPPORTED})",
                who(n),
                n.domain
            ));
        }
        let e = |msg: String| format!("{}: {msg}", who(n));
        let one = |v: Val| Ok(vec![v]);
        match n.op_type.as_str() {
            "Identity" => one(self.need(n, 0)?),
            "Dropout" => {
                if let Some(t) = self.opt_constant(n, 2, "training_mode")?
                    && t.floats().iter().any(|&v| v != 0.0)
                {
                    return Err(e("runs in training mode".into()));
                }
                one(self.need(n, 0)?)
            }
            "Constant" => {
                let c = if let Some(a) = attr(n, "value") {
                    let t =
                        a.t.as_ref()
                            .ok_or_else(|| e("value is not a tensor".into()))?;
                    tensor(t, self.base).map_err(e)?
                } else if let Some(v) = float_attr(n, "value_float")? {
                    Const::f32(vec![], vec![v])
                } else if let Some(a) = attr(n, "value_floats") {
                    Const::f32(vec![a.floats.len()], a.floats.clone())
                } else if let Some(a) = attr(n, "value_int") {
                    Const::i64(vec![], vec![a.i])
                } else if let Some(a) = attr(n, "value_ints") {
                    Const::i64(vec![a.ints.len()], a.ints.clone())
                } else {
                    return Err(e(
                        "holds no value this importer reads (value, value_float(s), value_int(s))"
                            .into(),
                    ));
                };
                one(Val::Const(c))
            }
            "Shape" => {
                let v = self.need(n, 0)?;
                let full = self.onnx_shape(&v);
                let r = full.len() as i64;
                let clampi = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
                let start = clampi(int_attr(n, "start", 0)?);
                let end = clampi(int_attr(n, "end", r)?);
                let dims = full[start..end.max(start)].to_vec();
                one(Val::Const(Const::i64(vec![dims.len()], dims)))
            }
            "Gather" => {
                let data = self.constant(n, 0, "data")?;
                let idx = self.constant(n, 1, "indices")?;
                let ax = int_attr(n, "axis", 0)?;
                one(Val::Const(data.gather(&idx, ax).map_err(e)?))
            }
            "Unsqueeze" => {
                let data = self.constant(n, 0, "data")?;
                let axes = self.axes(n, 1)?.ok_or_else(|| e("no axes".into()))?;
                one(Val::Const(data.unsqueeze(&axes).map_err(e)?))
            }
            "Squeeze" => {
                let axes = self.axes(n, 1)?.unwrap_or_default();
                match self.need(n, 0)? {
                    Val::Const(c) => one(Val::Const(c.squeeze(&axes).map_err(e)?)),
                    _ => {
                        let id = self.ir(n, 0)?;
                        let s = self.shapes[id].clone();
                        let spatial: Vec<usize> = axes
                            .iter()
                            .map(|&a| axis(a, s.len() + 1))
                            .collect::<Result<_, _>>()
                            .map_err(e)?;
                        let ok = s.len() == 3
                            && s[1] == 1
                            && s[2] == 1
                            && (spatial.is_empty() || {
                                let mut sp = spatial.clone();
                                sp.sort_unstable();
                                sp == [2, 3]
                            });
                        if !ok {
                            return Err(e(format!(
                                "squeezes axes {axes:?} of a [batch, {s:?}] value; only [c, 1, 1] maps to vectors are supported"
                            )));
                        }
                        let name = self.node_name(n);
                        one(self.push(n, &name, Op::Flatten, vec![id])?)
                    }
                }
            }
            "Transpose" => {
                let data = self.constant(n, 0, "data")?;
                let perm = ints_attr(n, "perm")?.unwrap_or_default();
                one(Val::Const(data.transpose(&perm).map_err(e)?))
            }
            "Cast" => {
                let to = int_attr(n, "to", 1)?;
                match self.need(n, 0)? {
                    Val::Const(c) => one(Val::Const(c.cast(to).map_err(e)?)),
                    v if to == 1 => one(v),
                    _ => Err(e(format!("casts network values to data type {to}"))),
                }
            }
            "ConstantOfShape" => {
                let shape = self.constant(n, 0, "shape")?;
                let dims: Vec<usize> = shape
                    .ints()
                    .map_err(e)?
                    .iter()
                    .map(|&d| usize::try_from(d).map_err(|_| e(format!("dimension {d}"))))
                    .collect::<Result<_, _>>()?;
                let count = decomp_ir::checked_product(&dims)
                    .filter(|&c| c <= MAX_PARAMS)
                    .ok_or_else(|| e(format!("shape {dims:?} is too large")))?;
                let value = match attr(n, "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => tensor(t, self.base).map_err(e)?,
                    None => Const::f32(vec![1], vec![0.0]),
                };
                let c = match value.data {
                    Data::F32(v) => {
                        Const::f32(dims, vec![v.first().copied().unwrap_or(0.0); count])
                    }
                    Data::I64(v) => Const::i64(dims, vec![v.first().copied().unwrap_or(0); count]),
                };
                one(Val::Const(c))
            }
            "Sub" | "Mul" | "Div" => {
                if !self.all_const(n)? {
                    return Err(e(format!(
                        "{} on network values is not supported ({SUPPORTED})",
                        n.op_type
                    )));
                }
                let (a, b) = (self.constant(n, 0, "A")?, self.constant(n, 1, "B")?);
                one(Val::Const(a.arith(&b, &n.op_type).map_err(e)?))
            }
            "Add" => self.add(n),
            "Concat" => self.concat(n),
            "Reshape" => self.reshape(n),
            "Flatten" => {
                let ax = int_attr(n, "axis", 1)?;
                match self.need(n, 0)? {
                    Val::Const(c) => {
                        let a = axis(ax, c.shape.len() + 1).map_err(e)?;
                        let outer: usize = c.shape[..a].iter().product();
                        one(Val::Const(
                            c.reshape(&[outer as i64, -1], false).map_err(e)?,
                        ))
                    }
                    _ => {
                        let id = self.ir(n, 0)?;
                        let rank = self.shapes[id].len() + 1;
                        if axis(ax, rank).map_err(e)? != 1 {
                            return Err(e(format!(
                                "flattens from axis {ax}; only axis 1 (each image to a vector) is supported"
                            )));
                        }
                        if self.shapes[id].len() == 1 {
                            return one(Val::Ir(id));
                        }
                        let name = self.node_name(n);
                        one(self.push(n, &name, Op::Flatten, vec![id])?)
                    }
                }
            }
            "Slice" => self.slice(n),
            "Pad" => self.pad(n),
            "Relu" => {
                let x = self.ir(n, 0)?;
                let name = self.node_name(n);
                one(self.push(n, &name, Op::Relu, vec![x])?)
            }
            "Clip" => self.clip(n),
            "Conv" => self.conv(n),
            "BatchNormalization" => self.batch_norm(n),
            "MaxPool" | "AveragePool" => self.pool(n),
            "GlobalAveragePool" => {
                let x = self.ir(n, 0)?;
                let name = self.node_name(n);
                one(self.push(n, &name, Op::GlobalAvgPool, vec![x])?)
            }
            "ReduceMean" => {
                let keep = int_attr(n, "keepdims", 1)?;
                let axes = self.axes(n, 1)?.unwrap_or_default();
                let x = self.ir(n, 0)?;
                let rank = self.shapes[x].len() + 1;
                let mut ax: Vec<usize> = axes
                    .iter()
                    .map(|&a| axis(a, rank))
                    .collect::<Result<_, _>>()
                    .map_err(e)?;
                ax.sort_unstable();
                if rank != 4 || ax != [2, 3] {
                    return Err(e(format!(
                        "reduces axes {axes:?}; only the mean over the spatial axes (global average pooling) is supported"
                    )));
                }
                let name = self.node_name(n);
                let p = self.add_node(&who(n), &name, Op::GlobalAvgPool, vec![x])?;
                if keep == 0 {
                    one(self.push(n, &format!("{name}.flatten"), Op::Flatten, vec![p])?)
                } else {
                    one(Val::Ir(p))
                }
            }
            "Softmax" | "LogSoftmax" => {
                // Only as the graph's last op: decomposition compares logits (margins), and
                // a softmax over the class axis keeps their order.
                let x = self.vector(n, 0)?;
                let last = n.output.first().is_some_and(|o| self.output == *o);
                let ax = int_attr(n, "axis", if self.opset < 13 { 1 } else { -1 })?;
                if !last || axis(ax, 2).map_err(e)? != 1 {
                    return Err(e(format!(
                        "{} inside the network (or not over the classes) is not supported; as the last op it is dropped",
                        n.op_type
                    )));
                }
                self.dropped = Some(n.op_type.clone());
                one(Val::Ir(x))
            }
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n),
            other => Err(e(format!(
                "operator {other} is not supported by decomp's ONNX import (supported: {SUPPORTED})"
            ))),
        }
    }

    fn add(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let (a, b) = (self.need(n, 0)?, self.need(n, 1)?);
        match (a, b) {
            (Val::Const(x), Val::Const(y)) => Ok(vec![Val::Const(x.arith(&y, "Add").map_err(e)?)]),
            (Val::Const(c), _) => self.add_const(n, 1, c),
            (_, Val::Const(c)) => self.add_const(n, 0, c),
            _ => {
                let (x, y) = (self.ir(n, 0)?, self.ir(n, 1)?);
                let name = self.node_name(n);
                Ok(vec![self.push(n, &name, Op::Add, vec![x, y])?])
            }
        }
    }

    /// Network value (input `k`) plus a constant: the bias of a preceding `MatMul`, else a
    /// [`Op::BiasMap`] when the constant broadcasts over a feature map.
    fn add_const(&mut self, n: &NodeProto, k: usize, c: Const) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let x = self.ir(n, k)?;
        let values = c.floats();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(e(format!(
                "constant value {} at {i} is not finite",
                values[i]
            )));
        }
        let shape = self.shapes[x].clone();
        let sole_reader = self.uses.get(n.input[k].as_str()) == Some(&1);
        if let Op::Linear {
            bias: bias @ None,
            weight,
        } = &mut self.graph.nodes[x].op
            && sole_reader
        {
            let out = weight.shape[0];
            if values.len() == out || values.len() == 1 {
                *bias = Some(TensorData {
                    shape: vec![out],
                    data: if values.len() == 1 {
                        vec![values[0]; out]
                    } else {
                        values
                    },
                });
                return Ok(vec![Val::Ir(x)]);
            }
        }
        let &[ch, h, w] = shape.as_slice() else {
            return Err(e(format!(
                "adds a constant of shape {:?} to a [batch, {shape:?}] value; only the bias of a MatMul or a constant over feature maps is supported",
                c.shape
            )));
        };
        // Drop a leading batch axis of 1, then broadcast [c|1, h|1, w|1] over [ch, h, w].
        let mut cs: Vec<usize> = c.shape.clone();
        if cs.len() == 4 && cs[0] == 1 {
            cs.remove(0);
        }
        while cs.len() < 3 {
            cs.insert(0, 1);
        }
        let fits = cs.len() == 3 && cs.iter().zip([ch, h, w]).all(|(&a, b)| a == 1 || a == b);
        if !fits {
            return Err(e(format!(
                "constant of shape {:?} does not broadcast over a [batch, {ch}, {h}, {w}] map",
                c.shape
            )));
        }
        let mut map = Vec::with_capacity(ch * h * w);
        for ci in 0..ch {
            for y in 0..h {
                for xi in 0..w {
                    let (a, b, d) = (
                        if cs[0] == 1 { 0 } else { ci },
                        if cs[1] == 1 { 0 } else { y },
                        if cs[2] == 1 { 0 } else { xi },
                    );
                    map.push(values[(a * cs[1] + b) * cs[2] + d]);
                }
            }
        }
        let name = self.node_name(n);
        let bias = TensorData {
            shape: vec![ch, h, w],
            data: map,
        };
        Ok(vec![self.push(n, &name, Op::BiasMap { bias }, vec![x])?])
    }

    fn concat(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let ax = int_attr(n, "axis", 1)?;
        if self.all_const(n)? {
            let parts: Vec<Const> = (0..n.input.len())
                .map(|k| self.constant(n, k, "input"))
                .collect::<Result<_, _>>()?;
            let refs: Vec<&Const> = parts.iter().collect();
            return Ok(vec![Val::Const(Const::concat(&refs, ax).map_err(e)?)]);
        }
        let ids: Vec<NodeId> = (0..n.input.len())
            .map(|k| self.ir(n, k))
            .collect::<Result<_, _>>()?;
        let rank = self.shapes[ids[0]].len() + 1;
        if axis(ax, rank).map_err(e)? != 1 {
            return Err(e(format!(
                "concatenates along axis {ax}; only the channel axis (1) is supported"
            )));
        }
        if let [one] = ids.as_slice() {
            return Ok(vec![Val::Ir(*one)]);
        }
        let name = self.node_name(n);
        Ok(vec![self.push(n, &name, Op::Concat, ids)?])
    }

    fn reshape(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let allowzero = int_attr(n, "allowzero", 0)? != 0;
        let target: Vec<i64> = match ints_attr(n, "shape")? {
            Some(s) if self.opset < 5 => s,
            _ => self.constant(n, 1, "shape")?.ints().map_err(e)?.to_vec(),
        };
        if let Val::Const(c) = self.need(n, 0)? {
            return Ok(vec![Val::Const(c.reshape(&target, allowzero).map_err(e)?)]);
        }
        let id = self.ir(n, 0)?;
        let s = self.shapes[id].clone();
        let per: usize = s.iter().product();
        // The batch axis stays first: the shape of a `Shape`, 0 (copy), -1 next to a fixed
        // per-image size, or the declared fixed batch size.
        let is_batch = |v: i64| v == BATCH || (v == 0 && !allowzero) || Some(v) == self.batch;
        let ok2 = target.len() == 2
            && ((is_batch(target[0]) && (target[1] == -1 || target[1] == per as i64))
                || (target[0] == -1 && target[1] == per as i64));
        if ok2 {
            if s.len() == 1 {
                return Ok(vec![Val::Ir(id)]);
            }
            let name = self.node_name(n);
            return Ok(vec![self.push(n, &name, Op::Flatten, vec![id])?]);
        }
        let same = target.len() == s.len() + 1
            && is_batch(target[0])
            && target[1..]
                .iter()
                .zip(&s)
                .all(|(&t, &d)| t == d as i64 || (t == 0 && !allowzero));
        if same {
            return Ok(vec![Val::Ir(id)]);
        }
        Err(e(format!(
            "reshapes a [batch, {}] value to {:?}; only flattening each image to a vector is supported",
            s.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            target
                .iter()
                .map(|&t| if t == BATCH {
                    "batch".into()
                } else {
                    t.to_string()
                })
                .collect::<Vec<_>>()
        )))
    }

    fn slice(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let (starts, ends, axes, steps) = if self.opset < 10 {
            (
                ints_attr(n, "starts")?.ok_or_else(|| e("no starts".into()))?,
                ints_attr(n, "ends")?.ok_or_else(|| e("no ends".into()))?,
                ints_attr(n, "axes")?,
                None,
            )
        } else {
            let ints = |c: Const| c.ints().map(<[i64]>::to_vec).map_err(e);
            (
                ints(self.constant(n, 1, "starts")?)?,
                ints(self.constant(n, 2, "ends")?)?,
                self.opt_constant(n, 3, "axes")?.map(ints).transpose()?,
                self.opt_constant(n, 4, "steps")?.map(ints).transpose()?,
            )
        };
        let v = self.need(n, 0)?;
        if let Val::Const(c) = &v {
            let out = c
                .slice(&starts, &ends, axes.as_deref(), steps.as_deref())
                .map_err(e)?;
            return Ok(vec![Val::Const(out)]);
        }
        // A network value: only `x[:, :, ::s, ::t]` (subsampling from the first pixel).
        let (src, mut stride, name) = match v {
            Val::Strided { src, stride, name } => (src, stride, name),
            _ => {
                let id = self.ir(n, 0)?;
                (id, [1, 1], self.node_name(n))
            }
        };
        let shape = self.onnx_shape(&Val::Strided {
            src,
            stride,
            name: String::new(),
        });
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| if d == BATCH { 1 } else { d as usize })
            .collect();
        let ranges =
            slice_ranges(&dims, &starts, &ends, axes.as_deref(), steps.as_deref()).map_err(e)?;
        let default_axes: Vec<i64> = (0..starts.len() as i64).collect();
        for (k, &a) in axes.as_deref().unwrap_or(&default_axes).iter().enumerate() {
            let ax = axis(a, 4).map_err(e)?;
            let step = steps.as_ref().map_or(1, |s| s[k]);
            let full = ranges[ax].len() == dims[ax].div_ceil(step.max(1) as usize)
                && ranges[ax].first() == Some(&0)
                && step >= 1;
            if !full || (ax < 2 && step != 1) {
                return Err(e(format!(
                    "slices axis {ax} (start {}, end {}, step {step}); on network values only subsampling rows and columns from the first pixel (x[:, :, ::s, ::s]) is supported",
                    starts[k], ends[k]
                )));
            }
            if ax >= 2 {
                stride[ax - 2] *= step as usize;
            }
        }
        if stride == [1, 1] {
            return Ok(vec![Val::Ir(src)]);
        }
        Ok(vec![Val::Strided { src, stride, name }])
    }

    fn pad(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let mode = string_attr(n, "mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(e(format!(
                "pads in mode '{mode}'; only constant zero padding is supported"
            )));
        }
        let (pads, value) = if self.opset < 11 {
            (
                ints_attr(n, "pads")?.ok_or_else(|| e("no pads".into()))?,
                float_attr(n, "value")?.unwrap_or(0.0),
            )
        } else {
            if self.input(n, 3)?.is_some() {
                return Err(e(
                    "pads selected axes (input 'axes'); give pads for every axis".into(),
                ));
            }
            let p = self.constant(n, 1, "pads")?.ints().map_err(e)?.to_vec();
            let v = match self.opt_constant(n, 2, "constant_value")? {
                Some(c) => c.scalar_f32().map_err(e)?,
                None => 0.0,
            };
            (p, v)
        };
        if value != 0.0 {
            return Err(e(format!(
                "pads with {value}; only zero padding is supported"
            )));
        }
        let v = self.need(n, 0)?;
        if matches!(v, Val::Const(_)) {
            return Err(e("pads a constant".into()));
        }
        let only_channels = pads.len() == 8
            && pads
                .iter()
                .enumerate()
                .all(|(i, &p)| p == 0 || i == 1 || i == 5)
            && pads[1] >= 0
            && pads[5] >= 0;
        if !only_channels {
            return Err(e(format!(
                "pads {pads:?}; on network values only zero channels around a map (an option-A shortcut) are supported"
            )));
        }
        let (src, stride, name) = match v {
            Val::Strided { src, stride, name } => (src, stride, name),
            _ => (self.ir(n, 0)?, [1, 1], self.node_name(n)),
        };
        if stride[0] != stride[1] {
            return Err(e(format!(
                "pads a map subsampled by {stride:?}; only equal strides are supported"
            )));
        }
        let op = Op::ShortcutA {
            stride: stride[0],
            pad_before: pads[1] as usize,
            pad_after: pads[5] as usize,
        };
        Ok(vec![self.push(n, &name, op, vec![src])?])
    }

    fn clip(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let (min, max) = if self.opset < 11 {
            (float_attr(n, "min")?, float_attr(n, "max")?)
        } else {
            let b = |c: Option<Const>| c.map(|c| c.scalar_f32().map_err(e)).transpose();
            let min = self.opt_constant(n, 1, "min")?;
            let max = self.opt_constant(n, 2, "max")?;
            (b(min)?, b(max)?)
        };
        let x = self.ir(n, 0)?;
        let name = self.node_name(n);
        let finite = |v: Option<f32>| v.filter(|v| v.is_finite());
        let op = match (finite(min), finite(max)) {
            (None, None) => return Ok(vec![Val::Ir(x)]),
            (Some(0.0), None) => Op::Relu,
            (lo, hi) => Op::Clip {
                min: lo.unwrap_or(f32::MIN),
                max: hi.unwrap_or(f32::MAX),
            },
        };
        Ok(vec![self.push(n, &name, op, vec![x])?])
    }

    /// Symmetric `[top, left]` padding from `pads` / `auto_pad` for a window.
    fn window_pads(
        &self,
        n: &NodeProto,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
    ) -> Result<[usize; 2], String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let auto = string_attr(n, "auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "NOTSET" | "" => {
                let pads = ints_attr(n, "pads")?.unwrap_or_else(|| vec![0; 4]);
                let &[t, l, b, r] = pads.as_slice() else {
                    return Err(e(format!(
                        "pads {pads:?}: expected 4 values for a 2-D window"
                    )));
                };
                if t != b || l != r {
                    return Err(e(format!(
                        "asymmetric padding {pads:?} (top, left, bottom, right) is not supported"
                    )));
                }
                Ok([usize_of(n, "padding", t)?, usize_of(n, "padding", l)?])
            }
            "VALID" => Ok([0, 0]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = [0usize; 2];
                for a in 0..2 {
                    let out = input[a].div_ceil(stride[a]);
                    let total = ((out - 1) * stride[a] + kernel[a]).saturating_sub(input[a]);
                    if total % 2 == 1 {
                        return Err(e(format!(
                            "auto_pad {auto} pads axis {} asymmetrically ({total} in total)",
                            a + 2
                        )));
                    }
                    p[a] = total / 2;
                }
                Ok(p)
            }
            other => Err(e(format!("unknown auto_pad '{other}'"))),
        }
    }

    fn pair(&self, n: &NodeProto, name: &str, default: usize) -> Result<[usize; 2], String> {
        match ints_attr(n, name)? {
            None => Ok([default, default]),
            Some(v) => match v.as_slice() {
                &[a, b] => Ok([usize_of(n, name, a)?, usize_of(n, name, b)?]),
                _ => Err(format!(
                    "{}: {name} {v:?}: expected 2 values for a 2-D window",
                    who(n)
                )),
            },
        }
    }

    fn conv(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let x = self.ir(n, 0)?;
        let weight = self.weight(n, 1, "weight")?;
        let bias = match self.input(n, 2)? {
            Some(_) => Some(self.weight(n, 2, "bias")?),
            None => None,
        };
        let &[o, _, kh, kw] = weight.shape.as_slice() else {
            return Err(e(format!(
                "weight of shape {:?}: only 2-D convolutions are supported",
                weight.shape
            )));
        };
        if let Some(k) = ints_attr(n, "kernel_shape")?
            && k != [kh as i64, kw as i64]
        {
            return Err(e(format!(
                "kernel_shape {k:?} differs from the weight's [{kh}, {kw}]"
            )));
        }
        let dil = self.pair(n, "dilations", 1)?;
        if dil != [1, 1] {
            return Err(e(format!(
                "dilations {dil:?}: only dilation 1 is supported"
            )));
        }
        let stride = self.pair(n, "strides", 1)?;
        let groups = usize_of(n, "group", int_attr(n, "group", 1)?)?;
        let s = &self.shapes[x];
        if s.len() != 3 {
            return Err(e(format!(
                "convolves a [batch, {s:?}] value, expected a feature map"
            )));
        }
        let padding = self.window_pads(n, [s[1], s[2]], [kh, kw], stride)?;
        if let Some(b) = &bias
            && b.shape != [o]
        {
            return Err(e(format!("bias of shape {:?}, expected [{o}]", b.shape)));
        }
        let name = self.param_name(n, 1);
        let op = Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
        };
        Ok(vec![self.push(n, &name, op, vec![x])?])
    }

    fn batch_norm(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        if int_attr(n, "training_mode", 0)? != 0 {
            return Err(e("runs in training mode (training_mode = 1)".into()));
        }
        if self.opset < 9 && int_attr(n, "spatial", 1)? == 0 {
            return Err(e(
                "normalizes per position (spatial = 0); only per-channel BatchNorm is supported"
                    .into(),
            ));
        }
        let x = self.ir(n, 0)?;
        let gamma = self.weight(n, 1, "scale")?;
        let beta = self.weight(n, 2, "bias")?;
        let running_mean = self.weight(n, 3, "mean")?;
        let running_var = self.weight(n, 4, "var")?;
        let eps = eps_f64(float_attr(n, "epsilon")?.unwrap_or(1e-5));
        let name = self.param_name(n, 1);
        let op = Op::BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
        };
        Ok(vec![self.push(n, &name, op, vec![x])?])
    }

    fn pool(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        let max = n.op_type == "MaxPool";
        let x = self.ir(n, 0)?;
        let s = self.shapes[x].clone();
        let &[_, h, w] = s.as_slice() else {
            return Err(e(format!(
                "pools a [batch, {s:?}] value, expected a feature map"
            )));
        };
        let kernel = match ints_attr(n, "kernel_shape")?.as_deref() {
            Some(&[a, b]) => [usize_of(n, "kernel", a)?, usize_of(n, "kernel", b)?],
            k => return Err(e(format!("kernel_shape {k:?}: expected 2 values"))),
        };
        let stride = self.pair(n, "strides", 1)?;
        let dil = self.pair(n, "dilations", 1)?;
        if dil != [1, 1] {
            return Err(e(format!(
                "dilations {dil:?}: only dilation 1 is supported"
            )));
        }
        let padding = self.window_pads(n, [h, w], kernel, stride)?;
        if int_attr(n, "ceil_mode", 0)? != 0 {
            for a in 0..2 {
                let len = [h, w][a] + 2 * padding[a];
                let floor = len.saturating_sub(kernel[a]) / stride[a];
                let ceil = len.saturating_sub(kernel[a]).div_ceil(stride[a]);
                if floor != ceil {
                    return Err(e("ceil_mode = 1 changes the output size here; only floor rounding is supported".into()));
                }
            }
        }
        let name = self.node_name(n);
        if max {
            let op = Op::MaxPool2d {
                kernel,
                stride,
                padding,
            };
            return Ok(vec![self.push(n, &name, op, vec![x])?]);
        }
        if padding != [0, 0] && int_attr(n, "count_include_pad", 0)? == 0 {
            return Err(e(
                "averages without counting the padding (count_include_pad = 0); decomp's average pooling counts padded positions (PyTorch's default)".into(),
            ));
        }
        // A window over the whole map is global average pooling (the same mean).
        let op = if kernel == [h, w] && padding == [0, 0] {
            Op::GlobalAvgPool
        } else {
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
            }
        };
        Ok(vec![self.push(n, &name, op, vec![x])?])
    }

    /// A network vector for a dense layer: IR input `k` of `n`, which must be a vector.
    fn vector(&mut self, n: &NodeProto, k: usize) -> Result<NodeId, String> {
        let x = self.ir(n, k)?;
        if self.shapes[x].len() != 1 {
            return Err(format!(
                "{}: multiplies a [batch, {:?}] value; a dense layer needs a vector per image (flatten first)",
                who(n),
                self.shapes[x]
            ));
        }
        Ok(x)
    }

    fn gemm(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let e = |msg: String| format!("{}: {msg}", who(n));
        if int_attr(n, "transA", 0)? != 0 {
            return Err(e("transposes its input (transA = 1)".into()));
        }
        let x = self.vector(n, 0)?;
        let b = self.weight(n, 1, "weight")?;
        let &[r, c] = b.shape.as_slice() else {
            return Err(e(format!("weight of shape {:?}, expected 2-D", b.shape)));
        };
        let alpha = float_attr(n, "alpha")?.unwrap_or(1.0);
        let beta = float_attr(n, "beta")?.unwrap_or(1.0);
        let mut weight = if int_attr(n, "transB", 0)? != 0 {
            b
        } else {
            transpose(&b.data, r, c)
        };
        if alpha != 1.0 {
            weight.data.iter_mut().for_each(|v| *v *= alpha);
        }
        let out = weight.shape[0];
        let bias = match self.input(n, 2)? {
            None => None,
            Some(_) => {
                let c = self.weight(n, 2, "bias")?;
                let v: Vec<f32> = match c.data.len() {
                    1 => vec![c.data[0] * beta; out],
                    len if len == out => c.data.iter().map(|v| v * beta).collect(),
                    _ => return Err(e(format!("bias of shape {:?} for {out} outputs", c.shape))),
                };
                Some(TensorData {
                    shape: vec![out],
                    data: v,
                })
            }
        };
        let name = self.param_name(n, 1);
        Ok(vec![self.push(
            n,
            &name,
            Op::Linear { weight, bias },
            vec![x],
        )?])
    }

    fn matmul(&mut self, n: &NodeProto) -> Result<Vec<Val>, String> {
        let x = self.vector(n, 0)?;
        let b = self.weight(n, 1, "weight")?;
        let &[r, c] = b.shape.as_slice() else {
            return Err(format!(
                "{}: weight of shape {:?}, expected 2-D",
                who(n),
                b.shape
            ));
        };
        let weight = transpose(&b.data, r, c);
        let name = self.param_name(n, 1);
        Ok(vec![self.push(
            n,
            &name,
            Op::Linear { weight, bias: None },
            vec![x],
        )?])
    }
}

/// `[r, c]` row-major values as the `[c, r]` transpose.
fn transpose(v: &[f32], r: usize, c: usize) -> TensorData {
    let mut out = vec![0.0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    TensorData {
        shape: vec![c, r],
        data: out,
    }
}
