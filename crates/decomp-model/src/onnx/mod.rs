//! Import of ONNX models (`.onnx`, from `torch.onnx.export`, `tf2onnx`, ...) into IR.
//!
//! [`import_onnx`] decodes the protobuf (the schema subset in `proto`, prost messages),
//! folds the constant shape arithmetic exporters emit (`fold`), and maps every remaining
//! node onto IR ops (`convert`): `Conv` (any stride and symmetric padding, dilation 1,
//! groups incl. depthwise), `BatchNormalization`, `Relu`, `Clip` (ReLU6), `Add`, `Concat`,
//! `MaxPool`, `AveragePool` (a window over the whole map becomes global pooling),
//! `GlobalAveragePool`, `ReduceMean` over the spatial axes, `Flatten` / `Reshape` /
//! `Squeeze` to a vector, `Gemm` and `MatMul` (+ `Add` of a bias) to `Linear`, `Dropout` and
//! `Identity` (removed), a final `Softmax` (left out: the IR model outputs logits), and the
//! option-A shortcut of CIFAR ResNets (`Slice` every s-th row and column, then `Pad`
//! channels with zeros) to [`decomp_ir::Op::ShortcutA`]. Any other
//! op, or an attribute outside what the IR expresses (dilation, asymmetric padding,
//! `ceil_mode` that changes a size), is refused naming the node and its op type.
//!
//! Parameterized nodes are named after their weight initializer without `.weight`
//! (`layer1.0.conv1`), the PyTorch module path, so a PyTorch export names them as the
//! checkpoint import does; every other node keeps its ONNX node name.
//!
//! Model metadata (`metadata_props`) may carry `class_names` (comma-separated),
//! `input_mean` and `input_std` (normalization of `x / 255`, comma-separated) and `arch`;
//! [`OnnxOptions`] overrides them. A model without normalization is refused: guessing it
//! silently would give wrong accuracies.

mod convert;
mod fold;
mod proto;

use std::path::{Path, PathBuf};

use decomp_ir::{InputNorm, ModelIr};
use prost::Message;

use crate::ModelError;

/// What the ONNX file may not say, or what overrides it.
#[derive(Clone, Debug, Default)]
pub struct OnnxOptions {
    /// Input normalization; else the model's `input_mean` / `input_std` metadata.
    pub input_norm: Option<InputNorm>,
    /// Class names; else the model's `class_names` metadata, else `class_0`, `class_1`, ...
    pub class_names: Option<Vec<String>>,
    /// `[channels, height, width]` for a model whose input has symbolic spatial sizes.
    pub input_shape: Option<[usize; 3]>,
}

/// The largest ONNX file read (protobuf's own limit is 2 GiB).
pub const MAX_ONNX_BYTES: u64 = 2 << 30;

/// Whether `bytes` (the start of a file) look like an ONNX model: a protobuf whose first
/// field is `ir_version` (field 1, varint), as every exporter writes it.
pub fn looks_like_onnx(path: &Path, bytes: &[u8]) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
        || (bytes.first() == Some(&0x08) && bytes.get(1).is_some_and(|&v| (3..=20).contains(&v)))
}

/// Reads an ONNX model file into IR; see the module docs.
pub fn import_onnx(path: &Path, opts: &OnnxOptions) -> Result<ModelIr, ModelError> {
    let err = |msg: String| ModelError::Onnx {
        path: path.to_path_buf(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_ONNX_BYTES {
        return Err(err(format!(
            "{} bytes, over the limit of {MAX_ONNX_BYTES} (the protobuf format's own limit)",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let base = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    import_onnx_bytes(&bytes, path, &base, opts)
}

/// [`import_onnx`] of bytes already read; `origin` names the model in errors and provenance,
/// `base` is the folder external tensor data is read from.
pub fn import_onnx_bytes(
    bytes: &[u8],
    origin: &Path,
    base: &Path,
    opts: &OnnxOptions,
) -> Result<ModelIr, ModelError> {
    let err = |msg: String| ModelError::Onnx {
        path: origin.to_path_buf(),
        msg,
    };
    let model = proto::ModelProto::decode(bytes).map_err(|e| {
        err(format!(
            "not a valid ONNX protobuf ({e}); a truncated or damaged file, or not an ONNX model"
        ))
    })?;
    convert::convert(&model, origin, base, opts).map_err(err)
}

#[cfg(test)]
mod tests;
