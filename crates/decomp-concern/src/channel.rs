//! Channel-level concern identification: per class and mask site, per-channel activation
//! statistics of its positives ([`identify_channels`]). Thresholds are applied later (by the
//! tangle stage), so one pass serves every `tau`.

use decomp_data::Dataset;
use decomp_ir::{ChannelStats, DecompConfig, ModelIr, NodeId};
use decomp_model::{ChannelAccumulator, Executor};

use crate::{ConcernError, positives_pass};

/// Per class: the class, the dataset indices of its positives, and their statistics.
pub type ClassStats = (usize, Vec<usize>, ChannelStats);

/// Channel statistics of the positives of each of `classes`, at every ReLU input (the
/// positives are the ones element-level [`crate::identify`] picks with the same config).
/// Returns the sites and, per class, its positives and their statistics.
pub fn identify_channels(
    exec: &Executor,
    model: &ModelIr,
    train: &Dataset,
    cfg: &DecompConfig,
    classes: &[usize],
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<NodeId>, Vec<ClassStats>), ConcernError> {
    let k = model.num_classes();
    if train.num_classes() != k {
        return Err(ConcernError::Classes {
            dataset: train.num_classes(),
            model: k,
        });
    }
    let sites = model.graph.relu_inputs();
    let mut out = Vec::with_capacity(classes.len());
    for &class in classes {
        if class >= k {
            return Err(ConcernError::Class { class, classes: k });
        }
        let span = tracing::info_span!("channel_concern", class);
        let _enter = span.enter();
        let mut acc = ChannelAccumulator::new(&sites, exec.shapes());
        let positives = positives_pass(
            exec,
            train,
            cfg,
            class,
            &sites,
            batch_size,
            progress,
            &mut |captured, rows| acc.add(captured, Some(rows)),
        )?;
        out.push((class, positives, acc.finish()));
    }
    Ok((sites, out))
}
