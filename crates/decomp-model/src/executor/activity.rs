//! Activity: which positions of the mask sites are active (`> 0`) per image, the
//! quantity concern and tangling identification reduce.

use burn::tensor::{Tensor, TensorData as BurnData};
use decomp_ir::NodeId;

use super::{Executor, Probe, to_vec};
use crate::ModelError;

/// Marks in `active` (one bitset per captured site) every position whose value is `> 0`
/// for at least one of the chosen rows (all rows when `rows` is `None`). The reduction runs
/// on the device; only one row per site comes back to the host.
pub fn accumulate_active(
    captured: &[Tensor<2>],
    rows: Option<&[usize]>,
    active: &mut [decomp_ir::BitSet],
) {
    if rows.is_some_and(<[usize]>::is_empty) {
        return;
    }
    for (t, acc) in captured.iter().zip(active.iter_mut()) {
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
        let max = to_vec(t.max_dim(0));
        for (i, v) in max.iter().enumerate() {
            if *v > 0.0 {
                acc.set(i, true);
            }
        }
    }
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

    /// Marks in `active` (one bitset per site of `batch`, channel-first positions) every
    /// position that is `> 0` on at least one of the chosen rows (all rows when `None`).
    pub fn accumulate(
        &self,
        batch: &ActiveBatch,
        rows: Option<&[usize]>,
        active: &mut [decomp_ir::BitSet],
    ) {
        if rows.is_some_and(<[usize]>::is_empty) {
            return;
        }
        match (&batch.inner, &self.cpu) {
            (ActiveInner::Bits(bits), Some(plan)) => {
                plan.accumulate_bits(&batch.sites, bits, batch.batch, rows, active)
            }
            (ActiveInner::Captured(c), _) => accumulate_active(c, rows, active),
            (ActiveInner::Bits(_), None) => unreachable!("bits come from the CPU plan"),
        }
    }
}
