//! Channel-level concern identification: per class and mask site, per-channel activation
//! statistics of its positives ([`identify_channels`]). Thresholds are applied later (by the
//! tangle stage), so one pass serves every `tau`.

use std::time::Instant;

use decomp_data::Dataset;
use decomp_ir::{
    ChannelConcernSet, ChannelStats, ClassChannels, DecompConfig, MaskSite, ModelIr, NodeId,
};
use decomp_model::{ChannelAccumulator, Executor};

use crate::{ConcernError, ConcernRun, SetOrigin, each_class, positives_pass};

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
    let sites = model.graph.relu_inputs();
    let out = each_class(model, train, classes, |class| {
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
        Ok((class, positives, acc.finish()))
    })?;
    Ok((sites, out))
}

impl ConcernRun<'_> {
    /// Channel-level concern identification ([`identify_channels`]) as the channel
    /// concern-set artifact of the stage (no unconcerned statistics yet: the tangle stage
    /// adds them). Statistics are recorded at ReLU inputs only, so the configuration's mask
    /// site must be [`MaskSite::ReluInput`].
    pub fn channel_concern_set(
        &self,
        origin: SetOrigin<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ChannelConcernSet, ConcernError> {
        if self.cfg.mask_site != MaskSite::ReluInput {
            return Err(ConcernError::ChannelSite);
        }
        let start = Instant::now();
        let (sites, per_class) = identify_channels(
            self.exec,
            self.model,
            self.train,
            self.cfg,
            self.classes,
            self.batch_size,
            progress,
        )?;
        Ok(ChannelConcernSet {
            model_hash: self.model.content_hash(),
            model_path: origin.model_path.to_string(),
            dataset: origin.dataset.to_string(),
            config: self.cfg.clone(),
            sites,
            classes: per_class
                .into_iter()
                .map(|(class, positives, concerned)| ClassChannels {
                    class,
                    positives,
                    concerned,
                    unconcerned: None,
                })
                .collect(),
            seconds: start.elapsed().as_secs_f64(),
            tangle_seconds: 0.0,
        })
    }
}
