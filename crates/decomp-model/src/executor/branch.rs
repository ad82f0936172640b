//! Module branching: many modules of one model in one forward pass that splits only where
//! their masks change something ([`Executor::forward_modules`]).

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData as BurnData};
use decomp_ir::{NodeId, NodeMask};

use super::ops::{ExecOp, Value};
use super::{Executor, to_vec};
use crate::ModelError;
use crate::cpu::HostModuleMasks;

/// Masks of several modules (at most 64) over one model, compiled for
/// [`Executor::forward_modules`]. Identical masks are stored once.
pub struct ModuleMasks {
    modules: usize,
    /// Per masked node: its distinct masks, each with the set of modules using it (bit m =
    /// module m) and its `[1, positions]` indicator (1 = zeroed).
    by_node: HashMap<NodeId, Vec<(u64, Tensor<2>)>>,
    /// Nodes whose consumers are all rectifiers (ReLU, ReLU6 clip): there a mask changes
    /// nothing on an image whose masked positions are all `<= 0`.
    relu_fed: Vec<bool>,
    /// The same masks for the CPU plan (`None` off the CPU engine, or when a mask sits on a
    /// node the plan folds away).
    host: Option<HostModuleMasks>,
}

impl ModuleMasks {
    pub fn modules(&self) -> usize {
        self.modules
    }
}

/// Rows of some images that share one value for a set of modules: row `i` of `value` is
/// image `rows[i]` as seen by every module in the bit set `members[i]`.
#[derive(Clone)]
struct Branch {
    rows: Vec<usize>,
    members: Vec<u64>,
    value: Value,
}

fn select_rows(v: &Value, pos: &[usize], device: &Device) -> Value {
    let idx: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(BurnData::new(idx, [pos.len()]), device);
    match v {
        Value::Map(t) => Value::Map(t.clone().select(0, idx)),
        Value::Vec(t) => Value::Vec(t.clone().select(0, idx)),
    }
}

impl Executor {
    /// Compiles the masks of `modules.len()` modules (each a list of node masks).
    pub fn compile_module_masks(&self, modules: &[&[NodeMask]]) -> Result<ModuleMasks, ModelError> {
        if modules.len() > 64 {
            return Err(ModelError::Config(format!(
                "at most 64 modules of one model run together, found {}",
                modules.len()
            )));
        }
        let mut by_node: HashMap<NodeId, Vec<(u64, decomp_ir::BitSet)>> = HashMap::new();
        for (m, masks) in modules.iter().enumerate() {
            self.compile_masks(masks)?; // validates node ids and lengths
            for nm in masks.iter().filter(|nm| nm.zeroed.count_ones() > 0) {
                let entry = by_node.entry(nm.node).or_default();
                match entry.iter_mut().find(|(_, b)| *b == nm.zeroed) {
                    Some((set, _)) => *set |= 1 << m,
                    None => entry.push((1 << m, nm.zeroed.clone())),
                }
            }
        }
        let relu_fed: Vec<bool> = (0..self.ops.len())
            .map(|id| {
                let cons: Vec<usize> = (0..self.ops.len())
                    .filter(|&j| self.inputs[j].contains(&id))
                    .collect();
                // A rectifier (ReLU, or a clip at 0: ReLU6) outputs the same for 0 and for
                // any input <= 0.
                !cons.is_empty()
                    && cons.iter().all(|&j| match self.ops[j] {
                        ExecOp::Relu => true,
                        ExecOp::Clip { min, max } => min == 0.0 && max > 0.0,
                        _ => false,
                    })
            })
            .collect();
        let host = self
            .cpu
            .as_ref()
            .and_then(|p| p.host_module_masks(modules.len(), &by_node, relu_fed.clone()));
        let by_node = by_node
            .into_iter()
            .map(|(node, distinct)| {
                let compiled = distinct
                    .into_iter()
                    .map(|(set, b)| {
                        let ind: Vec<f32> = (0..b.len())
                            .map(|i| if b.get(i) { 1.0 } else { 0.0 })
                            .collect();
                        (
                            set,
                            Tensor::from_data(BurnData::new(ind, [1, b.len()]), &self.device),
                        )
                    })
                    .collect();
                (node, compiled)
            })
            .collect();
        Ok(ModuleMasks {
            modules: modules.len(),
            by_node,
            relu_fed,
            host,
        })
    }

    /// The output of `node` for every module, each `[batch * positions]` row-major on the
    /// host, from one forward pass over all modules.
    ///
    /// Work is shared wherever modules agree: all modules start as one branch over the
    /// whole batch; at a masked node, only the images on which a mask changes something
    /// split off into a new branch for the modules using that mask (a mask on a node that
    /// only feeds ReLUs changes nothing on an image whose masked positions are all `<= 0`).
    /// Each branch is a batch of its own, so the modules' masks are stacked along the batch
    /// axis with shared weights, and an image costs one pass per distinct behaviour.
    pub fn forward_modules(
        &self,
        x: Tensor<4>,
        masks: &ModuleMasks,
        node: NodeId,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let dims = x.dims();
        if dims[1..] != self.shapes[0][..] {
            return Err(ModelError::InputShape {
                found: dims.to_vec(),
                expected: self.shapes[0].clone(),
            });
        }
        if node >= self.ops.len() {
            return Err(ModelError::NoSuchNode(node));
        }
        let batch = dims[0];
        if let (Some(plan), Some(host)) = (&self.cpu, &masks.host)
            && plan.materialized(node)
        {
            return Ok(plan.forward_modules(&to_vec(x), batch, host, node, masks.modules));
        }
        let all: u64 = if masks.modules == 64 {
            u64::MAX
        } else {
            (1u64 << masks.modules) - 1
        };
        let mut values: Vec<Option<Vec<Branch>>> = vec![None; self.ops.len()];
        let mut input = Some(x);
        for id in 0..=node {
            let mut branches = if let ExecOp::Input = self.ops[id] {
                vec![Branch {
                    rows: (0..batch).collect(),
                    members: vec![all; batch],
                    value: Value::Map(input.take().expect("single input node")),
                }]
            } else {
                let args: Vec<&Vec<Branch>> = self.inputs[id]
                    .iter()
                    .map(|&i| values[i].as_ref().expect("inputs computed before use"))
                    .collect();
                match args.as_slice() {
                    [one] => one
                        .iter()
                        .map(|b| Branch {
                            rows: b.rows.clone(),
                            members: b.members.clone(),
                            value: self.apply(id, vec![b.value.clone()]),
                        })
                        .collect(),
                    _ => self.join(id, &args),
                }
            };
            if let Some(distinct) = masks.by_node.get(&id) {
                let mut out = Vec::new();
                for mut b in branches {
                    for (set, ind) in distinct {
                        let hit: Vec<usize> = (0..b.rows.len())
                            .filter(|&i| b.members[i] & set != 0)
                            .collect();
                        if hit.is_empty() {
                            continue;
                        }
                        let flat = b.value.clone().flat(); // [rows, p]
                        let p = flat.dims()[1];
                        let changed: Vec<usize> = if masks.relu_fed[id] {
                            let s = to_vec(
                                (burn::tensor::activation::relu(flat.clone())
                                    * ind.clone().expand([b.rows.len(), p]))
                                .sum_dim(1),
                            );
                            hit.into_iter().filter(|&i| s[i] > 0.0).collect()
                        } else {
                            hit
                        };
                        if changed.is_empty() {
                            continue;
                        }
                        let sub = select_rows(&b.value, &changed, &self.device).flat();
                        let keep = Tensor::ones([1, p], &self.device) - ind.clone();
                        let masked = sub * keep.expand([changed.len(), p]);
                        let shape = &self.shapes[id];
                        let value = if shape.len() == 3 {
                            Value::Map(masked.reshape([
                                changed.len(),
                                shape[0],
                                shape[1],
                                shape[2],
                            ]))
                        } else {
                            Value::Vec(masked)
                        };
                        out.push(Branch {
                            rows: changed.iter().map(|&i| b.rows[i]).collect(),
                            members: changed.iter().map(|&i| b.members[i] & set).collect(),
                            value,
                        });
                        for &i in &changed {
                            b.members[i] &= !set;
                        }
                    }
                    let live: Vec<usize> =
                        (0..b.rows.len()).filter(|&i| b.members[i] != 0).collect();
                    if live.len() == b.rows.len() {
                        out.push(b);
                    } else if !live.is_empty() {
                        out.push(Branch {
                            value: select_rows(&b.value, &live, &self.device),
                            rows: live.iter().map(|&i| b.rows[i]).collect(),
                            members: live.iter().map(|&i| b.members[i]).collect(),
                        });
                    }
                }
                branches = out;
            }
            if id < node {
                self.release(id, &mut values);
            }
            values[id] = Some(branches);
        }
        let per: usize = self.shapes[node].iter().product();
        let mut result = vec![vec![0.0f32; batch * per]; masks.modules];
        for b in values[node].take().expect("node computed") {
            let data = to_vec(b.value.flat());
            for (i, (&r, &set)) in b.rows.iter().zip(&b.members).enumerate() {
                for (m, out) in result.iter_mut().enumerate() {
                    if set >> m & 1 == 1 {
                        out[r * per..(r + 1) * per].copy_from_slice(&data[i * per..(i + 1) * per]);
                    }
                }
            }
        }
        Ok(result)
    }

    /// Applies a multi-input op (Add, Concat) to branched inputs: one output branch per
    /// distinct combination of input branches (one branch of each input) that share an image
    /// and a module.
    fn join(&self, id: NodeId, args: &[&Vec<Branch>]) -> Vec<Branch> {
        // Per input, per image: (branch, position in it).
        let mut where_at: Vec<HashMap<usize, Vec<(usize, usize)>>> = Vec::new();
        for branches in args {
            let mut w: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
            for (j, br) in branches.iter().enumerate() {
                for (pos, &r) in br.rows.iter().enumerate() {
                    w.entry(r).or_default().push((j, pos));
                }
            }
            where_at.push(w);
        }
        // (branch of each input) -> (image, position in each, shared members) per row.
        type Rows = Vec<(usize, Vec<usize>, u64)>;
        let mut combos: Vec<(Vec<usize>, Rows)> = Vec::new();
        for (i, ba) in args[0].iter().enumerate() {
            for (pa, &r) in ba.rows.iter().enumerate() {
                // Partial combinations over the inputs seen so far.
                let mut partial: Vec<(Vec<usize>, Vec<usize>, u64)> =
                    vec![(vec![i], vec![pa], ba.members[pa])];
                for (k, w) in where_at.iter().enumerate().skip(1) {
                    let here = w.get(&r).map(Vec::as_slice).unwrap_or(&[]);
                    let mut next = Vec::new();
                    for (bs, ps, m) in &partial {
                        for &(j, pb) in here {
                            let m2 = m & args[k][j].members[pb];
                            if m2 != 0 {
                                let (mut bs, mut ps) = (bs.clone(), ps.clone());
                                bs.push(j);
                                ps.push(pb);
                                next.push((bs, ps, m2));
                            }
                        }
                    }
                    partial = next;
                }
                for (bs, ps, m) in partial {
                    match combos.iter_mut().find(|(k, _)| *k == bs) {
                        Some((_, v)) => v.push((r, ps, m)),
                        None => combos.push((bs, vec![(r, ps, m)])),
                    }
                }
            }
        }
        combos
            .into_iter()
            .map(|(bs, rows)| {
                let values = bs
                    .iter()
                    .enumerate()
                    .map(|(k, &j)| {
                        let br = &args[k][j];
                        let p: Vec<usize> = rows.iter().map(|x| x.1[k]).collect();
                        if p.len() == br.rows.len() && p.iter().enumerate().all(|(q, &x)| q == x) {
                            br.value.clone()
                        } else {
                            select_rows(&br.value, &p, &self.device)
                        }
                    })
                    .collect();
                Branch {
                    rows: rows.iter().map(|x| x.0).collect(),
                    members: rows.iter().map(|x| x.2).collect(),
                    value: self.apply(id, values),
                }
            })
            .collect()
    }
}
