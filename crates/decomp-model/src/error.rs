use std::path::PathBuf;

/// Errors of model building, import and execution.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Ir(#[from] decomp_ir::IrError),
    #[error("{path}: cannot read PyTorch checkpoint: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{path}: checkpoint does not match {arch}:\n{details}")]
    Mismatch {
        path: PathBuf,
        arch: String,
        details: String,
    },
    #[error("input batch has shape {found:?}, the model expects [batch, {expected:?}]")]
    InputShape {
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("mask for node {node} ({name}) has {found} bits, the node has {expected} outputs")]
    MaskShape {
        node: usize,
        name: String,
        found: usize,
        expected: usize,
    },
    #[error("node {0} does not exist")]
    NoSuchNode(usize),
    #[error("device {0:?} is not available: {1}")]
    Device(String, String),
    #[error(transparent)]
    Data(#[from] decomp_data::DataError),
    #[error("image {image}: {what} of node {node} is {value}, expected a finite number")]
    NonFinite {
        /// Position of the image in the images the caller ran, in order.
        image: usize,
        /// The node that produced the value (for logits: the output node).
        node: String,
        /// Which value, e.g. `logit 3`.
        what: String,
        value: f32,
    },
    #[error("training: {0}")]
    Train(String),
    #[error("{path}: ONNX import: {msg}")]
    Onnx { path: PathBuf, msg: String },
    #[error("{path}: cannot export: {msg}")]
    Export { path: PathBuf, msg: String },
}
