//! Executor, builders and import, checked against an independent implementation.

mod cpu;
mod executor;
mod grad;
mod onnx;
mod real;
mod torch_zip;
mod train;
mod zip_checkpoint;

use std::path::PathBuf;

/// `../shared` beside the workspace (or `$DECOMP_SHARED_DIR`), if present.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DECOMP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    if dir.join("models/cifar10").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} has no models/cifar10 (set DECOMP_SHARED_DIR to the shared data folder)",
            dir.display()
        );
        None
    }
}
