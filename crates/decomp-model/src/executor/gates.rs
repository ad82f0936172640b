//! Gate gradients on burn autodiff: first-order sensitivity of a module margin to holding
//! channels at their mean.

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData as BurnData, s};
use decomp_ir::NodeId;

use super::{CompiledMasks, Executor, Probe, to_vec};
use crate::ModelError;

impl Executor {
    /// First-order sensitivity of the margin `logit 0 - logit 1` (a module's `mine - other`)
    /// to holding channels at their mean: every node of `gated` (a `[c, h, w]` node, e.g. a
    /// ReLU) gets a per-image, per-channel gate `g` applied as `mean + g * (x - mean)`, and
    /// the result is `d margin / d g` at `g = 1`, per gated node `[batch * c]` row-major.
    /// So entry `(b, c)` is `sum over positions of d margin / d x * (x - mean)` on image `b`:
    /// the first-order change of image `b`'s margin when channel `c` is replaced by its mean.
    /// The executor must run on an autodiff device ([`Device::autodiff`]) with burn ops;
    /// `masks` are applied as in [`Executor::forward_probe`].
    pub fn gate_gradients(
        &self,
        x: Tensor<4>,
        masks: Option<&CompiledMasks>,
        gated: &[(NodeId, &[f32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let x = x.to_device(&self.device);
        let batch = x.dims()[0];
        let mut gates = HashMap::new();
        let mut leaves = Vec::with_capacity(gated.len());
        for &(node, mean) in gated {
            let shape = self.shapes.get(node).ok_or(ModelError::NoSuchNode(node))?;
            if shape.len() != 3 || shape[0] != mean.len() {
                return Err(ModelError::Config(format!(
                    "gate on node {node}: {} means for a node of shape {shape:?}",
                    mean.len()
                )));
            }
            let c = shape[0];
            let g = Tensor::<2>::ones([batch, c], &self.device).require_grad();
            leaves.push(g.clone());
            let m = Tensor::<1>::from_data(BurnData::new(mean.to_vec(), [c]), &self.device)
                .reshape([1, c, 1, 1]);
            gates.insert(node, (g.reshape([batch, c, 1, 1]), m));
        }
        let out = self.forward_burn(
            x,
            &Probe {
                capture: &[],
                masks,
            },
            Some(&gates),
        )?;
        let [_, k] = out.logits.dims();
        if k != 2 {
            return Err(ModelError::Config(format!(
                "gate gradients need a two-output graph (mine, other), this one has {k} outputs"
            )));
        }
        let margin = out.logits.clone().slice(s![.., 0..1]) - out.logits.slice(s![.., 1..2]);
        let grads = margin.sum().backward();
        leaves
            .iter()
            .map(|g| {
                g.grad(&grads).map(to_vec).ok_or_else(|| {
                    ModelError::Config(
                        "gate gradients: the executor's device does not record gradients \
                         (build it on device.autodiff())"
                            .into(),
                    )
                })
            })
            .collect()
    }
}
