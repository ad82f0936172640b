//! A whole classifier: graph plus what a user needs to feed and read it.

use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, ArtifactKind};
use crate::error::IrError;
use crate::graph::{Graph, Shape};
use crate::limits::MAX_CLASSES;

/// Per-channel input normalization the model was trained with: `(x / 255 - mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Descriptive data carried with a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Architecture label, e.g. `resnet20`.
    pub arch: String,
    /// One name per output class; its length is the number of classes.
    pub class_names: Vec<String>,
    pub input_norm: InputNorm,
    /// Where the weights came from (file path, checkpoint hash, training run).
    pub source: String,
}

/// A classifier in IR form: the unit stage crates exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelIr {
    pub meta: ModelMeta,
    pub graph: Graph,
}

impl ModelIr {
    /// Identity of the model's content: SHA-256 (hex) of its graph, class names and input
    /// normalization, so the same weights give the same hash whatever file or path they came
    /// from (`meta.source` and `meta.arch` are not part of it).
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = bincode::serde::encode_to_vec(
            (&self.graph, &self.meta.class_names, &self.meta.input_norm),
            bincode::config::standard(),
        )
        .expect("in-memory encoding of plain data cannot fail");
        hex::encode(Sha256::digest(bytes))
    }

    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        self.meta.class_names.len()
    }

    /// Validates graph and metadata together; returns every node's output shape.
    pub fn check(&self) -> Result<Vec<Shape>, IrError> {
        if self.num_classes() > MAX_CLASSES {
            return Err(IrError::Invalid(format!(
                "{} classes, over the limit of {MAX_CLASSES} (limits::MAX_CLASSES)",
                self.num_classes()
            )));
        }
        let shapes = self.graph.validate()?;
        let out = &shapes[self.graph.output];
        if out.as_slice() != [self.num_classes()] {
            return Err(IrError::Invalid(format!(
                "output node {} has shape {out:?}, expected [{}] (one logit per class name)",
                self.graph.nodes[self.graph.output].name,
                self.num_classes()
            )));
        }
        let channels = self.graph.input_shape()?[0];
        let norm = &self.meta.input_norm;
        if norm.mean.len() != channels || norm.std.len() != channels {
            return Err(IrError::Invalid(format!(
                "input normalization has {} means and {} stds, the input has {channels} channels",
                norm.mean.len(),
                norm.std.len()
            )));
        }
        if norm.std.iter().any(|&s| !s.is_finite() || s <= 0.0)
            || norm.mean.iter().any(|m| !m.is_finite())
        {
            return Err(IrError::Invalid(format!(
                "input normalization must have finite means and finite positive stds, found mean {:?} std {:?}",
                norm.mean, norm.std
            )));
        }
        Ok(shapes)
    }
}

impl Artifact for ModelIr {
    const KIND: ArtifactKind = ArtifactKind::Model;
    fn validate(&self) -> Result<(), String> {
        self.check().map(|_| ()).map_err(|e| e.to_string())
    }
}
