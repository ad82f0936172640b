//! The kinds of artifact a header can name (`crate::artifact`); its own file so that errors
//! can name kinds without depending on the envelope code.

use std::fmt;

/// What an artifact holds; stored in the header so a stage never misreads another's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    Model = 1,
    Module = 2,
    ConcernSet = 3,
    Report = 4,
    /// A training run's resumable state (model, optimizer, epoch, history).
    TrainCheckpoint = 5,
    /// Per-channel activation statistics of every class (channel-level concern
    /// identification).
    ChannelConcernSet = 6,
    /// A physically small module: its own graph with the kept channels only.
    ChannelModule = 7,
}

impl ArtifactKind {
    pub(crate) fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Model,
            2 => Self::Module,
            3 => Self::ConcernSet,
            4 => Self::Report,
            5 => Self::TrainCheckpoint,
            6 => Self::ChannelConcernSet,
            7 => Self::ChannelModule,
            _ => return None,
        })
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Model => "model",
            Self::Module => "module",
            Self::ConcernSet => "concern-set",
            Self::Report => "report",
            Self::TrainCheckpoint => "train-checkpoint",
            Self::ChannelConcernSet => "channel-concern-set",
            Self::ChannelModule => "channel-module",
        })
    }
}
