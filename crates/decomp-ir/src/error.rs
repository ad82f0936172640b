use std::path::PathBuf;

use crate::kind::ArtifactKind;

/// Everything that can go wrong building, validating, writing or reading IR values.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    #[error("invalid graph: {0}")]
    Invalid(String),
    #[error("node {node} ({name}, {op}): {msg}")]
    BadNode {
        node: usize,
        name: String,
        op: &'static str,
        msg: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a decomp artifact (expected magic {expected:?} at offset 0)")]
    BadMagic {
        path: PathBuf,
        expected: &'static str,
    },
    #[error(
        "{path}: artifact format version {found}, this build reads versions {min}..={max} of this kind (rebuild the file with this build)"
    )]
    Version {
        path: PathBuf,
        found: u16,
        min: u16,
        max: u16,
    },
    #[error("{path}: artifact kind is {found}, expected {expected}")]
    WrongKind {
        path: PathBuf,
        found: String,
        expected: ArtifactKind,
    },
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// An output path the output policy refuses (`crate::output`).
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("{path}: encoding failed: {msg}")]
    Encode { path: PathBuf, msg: String },
}
