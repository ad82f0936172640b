//! Per-channel activation statistics of captured mask sites, reduced on the device.

use burn::tensor::{Tensor, TensorData as BurnData};
use decomp_ir::{ChannelStats, NodeId, Shape, SiteChannelStats};

use crate::executor::to_vec;

/// Sums, per site and channel, over the images added so far: images with any position
/// `> 0`, fraction of positions `> 0`, and mean of `max(x, 0)` and of its square over
/// positions.
#[derive(Clone, Debug)]
pub struct ChannelAccumulator {
    sites: Vec<(NodeId, usize, usize)>,
    images: usize,
    any: Vec<Vec<f64>>,
    frac: Vec<Vec<f64>>,
    relu: Vec<Vec<f64>>,
    sq: Vec<Vec<f64>>,
}

impl ChannelAccumulator {
    /// An empty accumulator for `sites` with output shapes `shapes` (indexed by node);
    /// vector sites count as `[n, 1, 1]`.
    pub fn new(sites: &[NodeId], shapes: &[Shape]) -> Self {
        let sites: Vec<(NodeId, usize, usize)> = sites
            .iter()
            .map(|&s| {
                let sh = &shapes[s];
                let c = sh[0];
                (s, c, sh.iter().product::<usize>() / c.max(1))
            })
            .collect();
        let zeros = || sites.iter().map(|&(_, c, _)| vec![0.0; c]).collect();
        Self {
            any: zeros(),
            frac: zeros(),
            relu: zeros(),
            sq: zeros(),
            sites,
            images: 0,
        }
    }

    /// Adds the chosen rows (all when `None`) of the captured site outputs, each
    /// `[batch, positions]` in the order of the sites.
    pub fn add(&mut self, captured: &[Tensor<2>], rows: Option<&[usize]>) {
        let n = rows.map_or_else(
            || captured.first().map_or(0, |t| t.dims()[0]),
            <[usize]>::len,
        );
        if n == 0 {
            return;
        }
        self.images += n;
        for (k, t) in captured.iter().enumerate() {
            let (_, c, hw) = self.sites[k];
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
            let t = t.reshape([n, c, hw]);
            let count = t.clone().greater_elem(0.0).float().sum_dim(2); // [n, c, 1]
            let any = to_vec(count.clone().greater_elem(0.0).float().sum_dim(0)); // [1, c, 1]
            let frac = to_vec(count.sum_dim(0));
            let r = burn::tensor::activation::relu(t);
            let sq = to_vec(r.clone().powi_scalar(2).sum_dim(2).sum_dim(0));
            let relu = to_vec(r.sum_dim(2).sum_dim(0));
            for ch in 0..c {
                self.any[k][ch] += f64::from(any[ch]);
                self.frac[k][ch] += f64::from(frac[ch]) / hw as f64;
                self.relu[k][ch] += f64::from(relu[ch]) / hw as f64;
                self.sq[k][ch] += f64::from(sq[ch]) / hw as f64;
            }
        }
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// Averages over the images added.
    pub fn finish(self) -> ChannelStats {
        let d = self.images.max(1) as f64;
        let avg = |v: &[f64]| -> Vec<f32> { v.iter().map(|x| ((x / d) as f32).max(0.0)).collect() };
        ChannelStats {
            images: self.images,
            sites: self
                .sites
                .iter()
                .enumerate()
                .map(|(k, &(node, _, _))| SiteChannelStats {
                    node,
                    any_active: avg(&self.any[k]).into_iter().map(|v| v.min(1.0)).collect(),
                    frac_active: avg(&self.frac[k]).into_iter().map(|v| v.min(1.0)).collect(),
                    mean_relu: avg(&self.relu[k]),
                    mean_sq_relu: avg(&self.sq[k]),
                })
                .collect(),
        }
    }
}
