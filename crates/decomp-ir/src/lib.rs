//! The serialized intermediate representation every decomp stage reads and writes.
//!
//! - [`Graph`] / [`Node`] / [`Op`]: a feed-forward CNN as typed ops over named nodes, with
//!   shape inference and validation ([`Graph::validate`]).
//! - [`ModelIr`]: a graph plus class names, input normalization and provenance.
//! - [`BitSet`] / [`NodeMask`]: compact masks over node outputs, used by modules.
//! - [`DecompConfig`], [`ConcernSet`], [`ModuleIr`]: decomposition artifacts; every
//!   open choice of the method is a named field of [`DecompConfig`].
//! - [`channel`]: channel spaces, channel plans, physical extraction of channel modules;
//!   [`ChannelConcernSet`] / [`ChannelModule`] are their artifacts.
//! - [`artifact`]: the file envelope (magic, format version, kind, length, SHA-256) and
//!   atomic writes; [`read_artifact`] validates what it decodes.
//! - [`output`]: the output policy of every write (regular files only, symlinks followed,
//!   umask honoured, stale temporary files removed) and file identities ([`output::FileId`])
//!   for refusing an output that is an input.
//! - [`limits`]: the size limits ([`limits::MAX_NODE_VALUES`], [`limits::MAX_PARAMS`],
//!   ...) graphs and models are checked against before anything is allocated for them.
//!
//! This crate depends on serde and bincode only: no tensor library enters the boundary.

pub mod analysis;
pub mod artifact;
pub mod channel;
mod channel_module;
mod error;
mod graph;
mod kind;
pub mod limits;
mod mask;
mod model;
mod module;
pub mod output;

pub use artifact::{
    Artifact, ArtifactKind, FORMAT_VERSION, decode_artifact, decoding_version, encode_artifact,
    hex_hash, read_artifact, read_artifact_limited, write_artifact, write_atomic,
};
pub use channel_module::{
    ActivationRate, ChannelConcernSet, ChannelConfig, ChannelModule, ChannelStats, ClassChannels,
    Compensation, ModuleCheck, ModuleTrainConfig, ModuleTraining, ModuleValidation,
    SiteChannelStats, UnconcernedStats,
};
pub use error::IrError;
pub use graph::{Graph, Node, NodeId, Op, Shape, TensorData, checked_product, node_shape};
pub use mask::{ActivityCounts, BitSet, NodeMask};
pub use model::{InputNorm, ModelIr, ModelMeta};
pub use module::{
    BinaryHead, BlnRule, ClassConcern, ConcernSet, DecompConfig, MaskSite, ModuleIr,
    PositiveFilter, SampleCounts, SiteMasks, Top5Ranking, Variant,
};
