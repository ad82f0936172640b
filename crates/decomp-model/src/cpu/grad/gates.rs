//! Gate gradients on the CPU training engine: the first-order sensitivity of a two-logit
//! margin to holding channels at their mean, as [`crate::Executor::gate_gradients`] computes
//! it on burn autodiff (the reference, and the path off the CPU), for channel selection.

use super::*;

impl GradEngine {
    /// First-order sensitivity of the margin `logit 0 - logit 1` to holding channels at
    /// their mean, on `images` (`[n, c, h, w]` channel-first, normalized) with `masks` zeroing
    /// node outputs as a probe's masks do: every node of `gated` (a ReLU) gets a per-image,
    /// per-channel gate `g` applied as `mean + g * (x - mean)` after its mask, and the result
    /// is `d margin / d g` at `g = 1`, per gated node `[n * c]` row-major, entry `(b, c)` the
    /// sum over positions of `d margin / d x * (x - mean)` on image `b`.
    ///
    /// BatchNorms normalize with their running statistics (inference mode) whatever
    /// [`Self::with_frozen_batch_norm`] says; the model is not changed.
    pub fn gate_gradients(
        &self,
        images: &[f32],
        masks: &[NodeMask],
        gated: &[(NodeId, &[f32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        // Inside the thread pool, as `gradients_for`.
        rayon::scope(|_| self.gates_in_pool(images, masks, gated))
    }

    fn gates_in_pool(
        &self,
        images: &[f32],
        masks: &[NodeMask],
        gated: &[(NodeId, &[f32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let g = &self.model.graph;
        let count = g.nodes.len();
        let per = numel(&self.shapes[0]);
        let n = images.len() / per;
        if n == 0 || images.len() != n * per {
            return Err(ModelError::Train(format!(
                "{} image values: expected a positive multiple of {per} ({:?})",
                images.len(),
                self.shapes[0]
            )));
        }
        let out = g.output;
        if self.shapes[out] != [2] {
            return Err(ModelError::Config(format!(
                "gate gradients need a two-output graph (mine, other), this one outputs {:?}",
                self.shapes[out]
            )));
        }
        // Masks in storage order; several on one node all apply. Only nodes the backward
        // pass handles tile by tile (not the input, a linear layer or the output).
        let mut zeroed: Vec<Option<Vec<bool>>> = vec![None; count];
        for m in masks {
            let node = m.node;
            let shape = self.shapes.get(node).ok_or(ModelError::NoSuchNode(node))?;
            if matches!(g.nodes[node].op, Op::Input { .. } | Op::Linear { .. }) || node == out {
                return Err(ModelError::Config(format!(
                    "a mask on node {node} ({}): the CPU engine masks feature maps between \
                     the input and the head only",
                    g.nodes[node].name
                )));
            }
            if m.zeroed.len() != numel(shape) {
                return Err(ModelError::MaskShape {
                    node,
                    name: g.nodes[node].name.clone(),
                    found: m.zeroed.len(),
                    expected: numel(shape),
                });
            }
            let z = zeroed[node].get_or_insert_with(|| vec![false; numel(shape)]);
            for i in m.zeroed.ones() {
                z[storage_index(shape, i)] = true;
            }
        }
        let mut gates: Vec<Option<&[f32]>> = vec![None; count];
        for &(node, mean) in gated {
            let shape = self.shapes.get(node).ok_or(ModelError::NoSuchNode(node))?;
            if !matches!(g.nodes[node].op, Op::Relu) || shape.len() != 3 || shape[0] != mean.len() {
                return Err(ModelError::Config(format!(
                    "gate on node {node} ({}): expected a ReLU of a [c, h, w] map with c = {} \
                     means, found {} of shape {shape:?}",
                    g.nodes[node].name,
                    mean.len(),
                    g.nodes[node].op.kind()
                )));
            }
            gates[node] = Some(mean);
        }
        let (plan, sizes) = self.plan_for(n)?;
        let pass = Pass {
            frozen_batch_norm: true,
            masks: &zeroed,
            gates: &gates,
            ..self.pass(&plan, &sizes)
        };
        let (values, saved) = pass.forward(images, per);
        let mut first = 0;
        for (t, &k) in values[out].iter().zip(&sizes) {
            check_finite(t, 2, first, &g.nodes[out].name, "logit")?;
            first += k;
        }
        // d margin / d logits: (1, -1) for every image.
        let dlogits: Tiles = sizes.iter().map(|&k| [1.0, -1.0].repeat(k)).collect();
        let saved: Vec<Option<BnSaved>> = saved.into_iter().map(|s| s.map(|(s, _)| s)).collect();
        let mut back = pass.backward(values, &saved, out, dlogits);
        Ok(gated
            .iter()
            .map(|&(node, mean)| {
                let tiles = std::mem::take(&mut back.gates[node]);
                if tiles.is_empty() {
                    // No gradient reaches the node: the margin does not depend on it.
                    vec![0.0; n * mean.len()]
                } else {
                    tiles.concat()
                }
            })
            .collect())
    }
}

/// Per image of a tile of `n`, per channel: `sum over positions of dy * (y - mean)`, the
/// derivative of the loss at `g = 1` for a gate `mean + g * (y - mean)` on `y` (channels-last
/// tiles).
pub(super) fn gate_sums(dy: &[f32], y: &[f32], mean: &[f32], n: usize) -> Vec<f32> {
    let c = mean.len();
    let per = dy.len() / n;
    let mut out = Vec::with_capacity(n * c);
    for (d, v) in dy.chunks_exact(per).zip(y.chunks_exact(per)) {
        let mut acc = vec![0.0f64; c];
        for (dp, vp) in d.chunks_exact(c).zip(v.chunks_exact(c)) {
            for (((a, &dd), &vv), &m) in acc.iter_mut().zip(dp).zip(vp).zip(mean) {
                *a += f64::from(dd) * f64::from(vv - m);
            }
        }
        out.extend(acc.iter().map(|&a| a as f32));
    }
    out
}
