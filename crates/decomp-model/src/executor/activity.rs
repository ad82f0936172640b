//! Activity: which positions of the mask sites are active (`> 0`) per image, the
//! quantity concern and tangling identification reduce.

use burn::tensor::{Tensor, TensorData as BurnData};
use decomp_ir::{ActivityCounts, NodeId};

use super::{Executor, Probe, to_vec};
use crate::ModelError;

/// Adds to `counts` (one row per captured site) the chosen rows (all when `None`) on which
/// each position is `> 0`. The reduction runs on the device; one row per site comes back.
fn count_captured(captured: &[Tensor<2>], rows: Option<&[usize]>, counts: &mut ActivityCounts) {
    let mut images = None;
    for (t, acc) in captured.iter().zip(counts.counts.iter_mut()) {
        let t = match rows {
            Some(r) => {
                let idx: Vec<i64> = r.iter().map(|&i| i as i64).collect();
                let idx = Tensor::<1, burn::tensor::Int>::from_data(
                    BurnData::new(idx, [r.len()]),
                    &t.device(),
                );
                t.clone().select(0, idx)
            }
            None => t.clone(),
        };
        images = Some(t.dims()[0]);
        let n = to_vec(t.greater_elem(0.0).float().sum_dim(0));
        for (a, v) in acc.iter_mut().zip(n) {
            *a += v as u32;
        }
    }
    counts.images += images.unwrap_or(0);
}

/// Which positions of some nodes are active (`> 0`) on each image of one batch, from
/// [`Executor::forward_active`]: what concern and tangling identification reduce.
pub struct ActiveBatch {
    /// `[batch * classes]` row-major, on the host.
    pub logits: Vec<f32>,
    batch: usize,
    sites: Vec<NodeId>,
    inner: ActiveInner,
}

enum ActiveInner {
    /// CPU plan: one bit per image and position, storage order, per site.
    Bits(Vec<Vec<u64>>),
    /// Burn engine: the captured outputs, reduced on the device.
    Captured(Vec<Tensor<2>>),
}

impl Executor {
    /// Logits of `x` and, for every node of `sites`, which positions are `> 0` on each image,
    /// for [`ActiveBatch::accumulate`]. On the CPU engine the site outputs are reduced to one
    /// bit per position while each image tile is computed, never stored as values.
    pub fn forward_active(
        &self,
        x: Tensor<4>,
        sites: &[NodeId],
    ) -> Result<ActiveBatch, ModelError> {
        let dims = x.dims();
        if dims[1..] != self.shapes[0][..] {
            return Err(ModelError::InputShape {
                found: dims.to_vec(),
                expected: self.shapes[0].clone(),
            });
        }
        if let Some(&bad) = sites.iter().find(|&&c| c >= self.ops.len()) {
            return Err(ModelError::NoSuchNode(bad));
        }
        let batch = dims[0];
        if let Some(plan) = &self.cpu
            && sites.iter().all(|&c| plan.materialized(c))
        {
            let (logits, bits) = plan.forward_active(&to_vec(x), batch, sites);
            return Ok(ActiveBatch {
                logits,
                batch,
                sites: sites.to_vec(),
                inner: ActiveInner::Bits(bits),
            });
        }
        let out = self.forward_probe(
            x,
            &Probe {
                capture: sites,
                masks: None,
            },
        )?;
        Ok(ActiveBatch {
            logits: to_vec(out.logits),
            batch,
            sites: sites.to_vec(),
            inner: ActiveInner::Captured(out.captured),
        })
    }

    /// Adds to `counts` (one row per site of `batch`, channel-first positions) the chosen
    /// rows (all when `None`; rows past the batch are ignored) on which each position is `> 0`.
    pub fn count(&self, batch: &ActiveBatch, rows: Option<&[usize]>, counts: &mut ActivityCounts) {
        let rows: Option<Vec<usize>> =
            rows.map(|r| r.iter().copied().filter(|&i| i < batch.batch).collect());
        if rows.as_ref().is_some_and(Vec::is_empty) {
            return;
        }
        match (&batch.inner, &self.cpu) {
            (ActiveInner::Bits(bits), Some(plan)) => {
                plan.count_bits(&batch.sites, bits, batch.batch, rows.as_deref(), counts)
            }
            (ActiveInner::Captured(c), _) => count_captured(c, rows.as_deref(), counts),
            (ActiveInner::Bits(_), None) => unreachable!("bits come from the CPU plan"),
        }
    }
}
