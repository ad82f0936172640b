//! Activity: which positions of the mask sites are active (`> 0`) per image, the
//! quantity concern and tangling identification reduce.

use burn::tensor::{Tensor, TensorData as BurnData};
use decomp_ir::NodeId;

use super::{Executor, Probe, to_vec};
use crate::ModelError;

/// How many images each position of some mask sites was active (`> 0`) on, over every image
/// counted so far: what concern and tangling identification reduce. The paper's rule keeps a
/// position active when any one image activates it ([`ActivityCounts::active`] with 0);
/// a larger fraction ignores rare activity (`DecompConfig::min_active_fraction`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityCounts {
    /// Images counted.
    pub images: usize,
    /// Per site, per channel-first position: images on which it was `> 0`.
    pub counts: Vec<Vec<u32>>,
}

impl ActivityCounts {
    /// No image counted yet, for sites of `sizes` positions each.
    pub fn new(sizes: impl IntoIterator<Item = usize>) -> Self {
        Self {
            images: 0,
            counts: sizes.into_iter().map(|n| vec![0; n]).collect(),
        }
    }

    /// Adds host values: per site, `[images * positions]` channel-first (as
    /// [`Executor::forward_probe`] captures them). The plain reference of [`Executor::count`].
    pub fn add_values(&mut self, values: &[Vec<f32>]) {
        let mut images = 0;
        for (v, n) in values.iter().zip(self.counts.iter_mut()) {
            let per = n.len().max(1);
            images = v.len() / per;
            for img in v.chunks_exact(per) {
                for (c, &x) in n.iter_mut().zip(img) {
                    *c += u32::from(x > 0.0);
                }
            }
        }
        self.images += images;
    }

    /// Per site, the positions active on more than `fraction` of the counted images
    /// (`0`: on at least one). None when no image was counted.
    pub fn active(&self, fraction: f32) -> Vec<decomp_ir::BitSet> {
        let bar = f64::from(fraction.max(0.0)) * self.images as f64;
        self.counts
            .iter()
            .map(|c| {
                let mut set = decomp_ir::BitSet::new(c.len());
                for (i, &n) in c.iter().enumerate() {
                    if n > 0 && f64::from(n) > bar {
                        set.set(i, true);
                    }
                }
                set
            })
            .collect()
    }
}

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

#[cfg(test)]
mod tests {
    use super::ActivityCounts;

    /// Active means `> 0` on more than the fraction of the counted images: with 0 on any
    /// one; a count exactly at the bar stays inactive; nothing is active before any image.
    #[test]
    fn active_positions_follow_the_fraction() {
        let mut c = ActivityCounts::new([4, 2]);
        assert!(c.active(0.0).iter().all(|s| s.count_ones() == 0));
        c.images = 10;
        c.counts = vec![vec![0, 1, 2, 3], vec![10, 0]];
        let ones = |q: f32| -> Vec<Vec<usize>> {
            c.active(q)
                .iter()
                .map(|s| (0..s.len()).filter(|&i| s.get(i)).collect())
                .collect()
        };
        assert_eq!(ones(0.0), vec![vec![1, 2, 3], vec![0]]);
        assert_eq!(ones(0.1), vec![vec![2, 3], vec![0]]);
        assert_eq!(ones(0.2), vec![vec![3], vec![0]]);
        assert_eq!(ones(0.99), vec![vec![], vec![0]]);
    }
}
