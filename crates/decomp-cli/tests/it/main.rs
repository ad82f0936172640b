//! Pipeline tests: decomposition stages on a tiny synthetic model, and the CLI contract.

mod channel;
mod cli;
mod hardening;
mod numerics;
mod pipeline;
mod reuse;
mod support;
mod train;
