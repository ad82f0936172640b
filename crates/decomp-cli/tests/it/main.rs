//! Pipeline tests: decomposition stages on a tiny synthetic model, and the CLI contract.

mod channel;
mod cli;
mod hardening;
mod numerics;
mod onnx;
mod pipeline;
mod reuse;
mod support;
mod train;
mod zoo;
