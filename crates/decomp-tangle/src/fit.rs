//! Data-driven channel modules: budget selection by first-order importance
//! ([`budget_plan`]) and least-squares reconstruction ([`reconstruct`]).
//!
//! Both look at the module's own sample (concerned and unconcerned images) and at the
//! quantity the module is composed on, the margin `mine - other` of its binary head:
//!
//! - **Importance** of a channel: the first-order change of the margin when the channel is
//!   held at its compensation value, `sum over its sites and positions of dm/dx * (x - fill)`
//!   per image (one backward pass gives every channel), squared and averaged over the
//!   sample. Channels are removed greedily by importance per FLOP saved, in rounds that
//!   re-estimate the importance on the already pruned network.
//! - **Reconstruction**: every convolution whose output reaches a mask site is refitted in
//!   graph order by ridge least squares on the pruned network's actual inputs (so earlier
//!   errors are corrected), the target being the model's own pre-activation at that site
//!   (for a residual sum, minus the pruned network's shortcut). Weights of removed input
//!   channels are fitted too: they meet constants, so [`extract`](decomp_ir::channel::extract)
//!   folds them into bias maps as before. Further ReLU-aware passes relax the target where
//!   the model's pre-activation is `<= 0` (the ReLU outputs 0 for any value there) to
//!   `min(prediction, 0)`. Closed form, label-free, no gradient steps; the head is the
//!   model's.

use decomp_data::Dataset;
use decomp_ir::channel::{ChannelPlan, ChannelSpaces, channel_spaces, reference};
use decomp_ir::{BinaryHead, ModelIr, NodeId, Op, Shape, TensorData};
use decomp_model::{
    CompiledMasks, DeviceMatrix, Executor, ExecutorSource, GradEngine, Probe, patch_rows, to_vec,
};
use nalgebra::{DMatrix, DVector};

use crate::TangleError;

/// Rounds of importance estimation between the full model and the budget.
const ROUNDS: usize = 4;
/// Output positions per image used by a reconstruction (evenly spaced when more).
const ROWS_PER_IMAGE: usize = 256;
/// Ridge strength relative to the mean diagonal of the Gram matrix.
const RIDGE: f64 = 1e-3;
/// A convolution is refitted only with at least this many sample rows per fitted weight
/// (an underdetermined fit would memorize the sample).
const MIN_ROWS_PER_WEIGHT: usize = 2;

fn count(spaces: &ChannelSpaces, kept: &[usize], node: NodeId, full: usize) -> usize {
    spaces.of_node[node].map_or(full, |s| kept[s])
}

/// FLOPs of the extracted module when space `s` keeps `kept[s]` channels, counted as
/// [`decomp_ir::analysis::cost`] counts them (the bias maps of removed inputs excepted).
fn plan_flops(model: &ModelIr, shapes: &[Shape], spaces: &ChannelSpaces, kept: &[usize]) -> f64 {
    let mut f = 0.0;
    for (id, node) in model.graph.nodes.iter().enumerate() {
        let s = &shapes[id];
        let hw: usize = s.iter().skip(1).product();
        let out = count(spaces, kept, id, s.first().copied().unwrap_or(0)) * hw.max(1);
        let input = |k: usize| {
            let i = node.inputs[k];
            let si = &shapes[i];
            count(spaces, kept, i, si[0]) * si.iter().skip(1).product::<usize>().max(1)
        };
        f += match &node.op {
            Op::Conv2d { weight, bias, .. } => {
                let cin = count(spaces, kept, node.inputs[0], weight.shape[1]);
                let per = cin * weight.shape[2] * weight.shape[3];
                (2 * out * per + if bias.is_some() { out } else { 0 }) as f64
            }
            Op::Linear { weight, .. } => {
                let cin = count(spaces, kept, node.inputs[0], weight.shape[1]);
                (2 * 2 * cin + 2) as f64
            }
            Op::BatchNorm2d { .. } => (2 * out) as f64,
            Op::Relu
            | Op::Clip { .. }
            | Op::Add
            | Op::Concat
            | Op::ShortcutA { .. }
            | Op::ChannelGather { .. }
            | Op::BiasMap { .. } => out as f64,
            Op::MaxPool2d { kernel, .. } | Op::AvgPool2d { kernel, .. } => {
                (out * kernel[0] * kernel[1]) as f64
            }
            Op::GlobalAvgPool => input(0) as f64,
            Op::Input { .. } | Op::Flatten => 0.0,
        };
    }
    f
}

/// What budget selection, reconstruction and head fitting share: the source model, the
/// module's class and binary head, its sample, and where to run.
#[derive(Clone, Copy)]
pub struct FitJob<'a> {
    pub model: &'a ModelIr,
    pub head: &'a BinaryHead,
    pub class: usize,
    pub sample: &'a Dataset,
    pub batch_size: usize,
    pub device: &'a dyn ExecutorSource,
}

/// Node of `graph` named `name`.
fn by_name(graph: &decomp_ir::Graph, name: &str) -> Result<NodeId, TangleError> {
    graph
        .nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| TangleError::Masks(format!("reference graph lacks node {name:?}")))
}

/// Where [`importance`] computes gate gradients.
enum Gates {
    Cpu(GradEngine),
    /// Burn autodiff, with the reference's masks compiled for it.
    Burn(Executor, CompiledMasks),
}

/// Per prunable group (plan order), per channel: mean over `sample` of the squared
/// first-order change of the margin when the channel is held at its fill value.
fn importance(job: &FitJob<'_>, plan: &ChannelPlan) -> Result<Vec<Vec<f64>>, TangleError> {
    let FitJob {
        model,
        head,
        class,
        sample,
        batch_size,
        device,
    } = *job;
    let (refm, masks) = reference(model, head, class, plan)?;
    // On the CPU training engine where the configuration trains on it (about 10x burn
    // autodiff's speed on a 2-core CPU), else on burn autodiff.
    let engine = match device.grad_engine(&refm)? {
        Some(cpu) => Gates::Cpu(cpu),
        None => {
            let exec = device.gradient_executor(&refm)?;
            let compiled = exec.compile_masks(&masks)?;
            Gates::Burn(exec, compiled)
        }
    };
    // The ReLU after each site, in the reference graph (a fill bias map may sit between).
    let mut gated: Vec<(NodeId, &[f32])> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    for (gi, g) in plan.groups.iter().enumerate() {
        for (site, fill) in g.sites.iter().zip(&g.fill) {
            let relu = model
                .graph
                .consumers(*site)
                .into_iter()
                .find(|&c| matches!(model.graph.nodes[c].op, Op::Relu))
                .ok_or_else(|| TangleError::Masks(format!("site {site} feeds no ReLU")))?;
            gated.push((by_name(&refm.graph, &model.graph.nodes[relu].name)?, fill));
            owner.push(gi);
        }
    }
    let mut imp: Vec<Vec<f64>> = plan
        .groups
        .iter()
        .map(|g| vec![0.0; g.kept.len()])
        .collect();
    let mut n = 0usize;
    for batch in sample.batches(batch_size.max(1)) {
        let b = batch?;
        let nb = b.labels.len();
        let grads = match &engine {
            Gates::Cpu(cpu) => cpu.gate_gradients(&b.images, &masks, &gated)?,
            Gates::Burn(exec, compiled) => {
                exec.gate_gradients(exec.input_tensor(b.images, nb)?, Some(compiled), &gated)?
            }
        };
        for (gi, acc) in imp.iter_mut().enumerate() {
            let c = acc.len();
            let mut per = vec![0.0f64; nb * c];
            for (k, g) in grads.iter().enumerate().filter(|(k, _)| owner[*k] == gi) {
                debug_assert_eq!(g.len(), nb * c, "site {k}");
                for (p, &v) in per.iter_mut().zip(g) {
                    *p += f64::from(v);
                }
            }
            for row in per.chunks(c) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v * v;
                }
            }
        }
        n += nb;
    }
    for acc in &mut imp {
        for a in acc.iter_mut() {
            *a /= n.max(1) as f64;
        }
    }
    Ok(imp)
}

/// Budget selection ([`decomp_ir::ChannelConfig::budget`]): starting from `plan` (every
/// channel kept, fills set), removes channels in [`ROUNDS`] rounds, each removing the least
/// important channels per FLOP saved until the round's share of the way to the budget is
/// reached. Every space keeps at least one channel.
pub fn budget_plan(
    job: &FitJob<'_>,
    mut plan: ChannelPlan,
    budget: f32,
) -> Result<ChannelPlan, TangleError> {
    let model = job.model;
    if !(budget > 0.0 && budget <= 1.0) {
        return Err(TangleError::Masks(format!(
            "budget {budget}: expected a fraction of the model's FLOPs in (0, 1]"
        )));
    }
    let shapes = model.check()?;
    let spaces = channel_spaces(&model.graph, &shapes)?;
    let prunable = spaces.prunable();
    let mut kept: Vec<usize> = spaces.spaces.iter().map(|s| s.channels).collect();
    let full = plan_flops(model, &shapes, &spaces, &kept);
    let target = f64::from(budget) * full;
    for round in 0..ROUNDS {
        for (g, &s) in plan.groups.iter().zip(&prunable) {
            kept[s] = g.kept.count_ones();
        }
        let now = plan_flops(model, &shapes, &spaces, &kept);
        if now <= target {
            break;
        }
        let goal = now - (now - target) / (ROUNDS - round) as f64;
        let imp = importance(job, &plan)?;
        // Marginal FLOPs of one channel of each group at the current widths.
        let mut cand: Vec<(f64, usize, usize)> = Vec::new();
        for (gi, (g, &s)) in plan.groups.iter().zip(&prunable).enumerate() {
            let mut less = kept.clone();
            less[s] -= 1;
            let saved = (now - plan_flops(model, &shapes, &spaces, &less)).max(1.0);
            for c in g.kept.ones() {
                cand.push((imp[gi][c] / saved, gi, c));
            }
        }
        cand.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, gi, c) in cand {
            if plan_flops(model, &shapes, &spaces, &kept) <= goal {
                break;
            }
            let g = &mut plan.groups[gi];
            if g.kept.count_ones() <= 1 {
                continue;
            }
            g.kept.set(c, false);
            kept[prunable[gi]] -= 1;
        }
    }
    Ok(plan)
}

/// Where a convolution's refit targets: the site its (BatchNorm'd) output reaches, and the
/// other addend when that site is a residual sum.
struct Target {
    conv: NodeId,
    /// BatchNorm right after the convolution, if any.
    bn: Option<NodeId>,
    site: NodeId,
    shortcut: Option<NodeId>,
}

fn targets(model: &ModelIr) -> Vec<Target> {
    let g = &model.graph;
    let feeds_relu = |id: NodeId| {
        g.consumers(id)
            .iter()
            .any(|&c| matches!(g.nodes[c].op, Op::Relu))
    };
    let mut out = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        if !matches!(node.op, Op::Conv2d { groups: 1, .. }) || node.inputs[0] == 0 {
            continue;
        }
        let cons = g.consumers(id);
        let (y, bn) = match cons.as_slice() {
            [b] if matches!(g.nodes[*b].op, Op::BatchNorm2d { .. }) => (*b, Some(*b)),
            _ => (id, None),
        };
        if feeds_relu(y) {
            out.push(Target {
                conv: id,
                bn,
                site: y,
                shortcut: None,
            });
            continue;
        }
        if let [a] = g.consumers(y).as_slice()
            && matches!(g.nodes[*a].op, Op::Add)
            && feeds_relu(*a)
            && let Some(&other) = g.nodes[*a].inputs.iter().find(|&&i| i != y)
        {
            out.push(Target {
                conv: id,
                bn,
                site: *a,
                shortcut: Some(other),
            });
        }
    }
    out
}

/// `[rows, cols]` host matrix of a `[b, c, hw]`-shaped capture restricted to channels `ch`
/// and positions `pos`: row `(image, position)`, column channel.
fn rows_of(t: &[f32], b: usize, c: usize, hw: usize, ch: &[usize], pos: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * pos.len() * ch.len());
    for i in 0..b {
        for &p in pos {
            out.extend(ch.iter().map(|&k| t[(i * c + k) * hw + p]));
        }
    }
    out
}

/// Least-squares reconstruction ([`decomp_ir::ChannelConfig::reconstruct`]): returns a copy
/// of `model` whose convolutions reaching a mask site are refitted so that the network of
/// `plan` (removed channels held at their fills) reproduces the model's pre-activations of
/// the kept channels on `sample`. Refitted BatchNorms become `y + beta'` (scale 1).
/// `passes` > 1 adds ReLU-aware passes ([`decomp_ir::ChannelConfig::relu_passes`]): where
/// the model's pre-activation is `<= 0`, the target becomes `min(prediction, -shortcut)`
/// and the convolution is solved again with the same Gram matrix.
pub fn reconstruct(
    job: &FitJob<'_>,
    plan: &ChannelPlan,
    passes: u32,
) -> Result<ModelIr, TangleError> {
    let FitJob {
        model,
        head,
        class,
        sample,
        batch_size,
        device,
    } = *job;
    let shapes = model.check()?;
    let spaces = channel_spaces(&model.graph, &shapes)?;
    let lists = plan
        .kept_lists(&spaces)
        .map_err(|e| TangleError::Masks(format!("channel plan: {e}")))?;
    let original = device.executor(model)?;
    let targets = targets(model);
    // Positions used per target, and the model's own site values there, computed once:
    // per batch, per target `[images, channels, positions]`.
    let positions: Vec<Vec<usize>> = targets
        .iter()
        .map(|t| {
            let hw = shapes[t.site][1] * shapes[t.site][2];
            (0..hw).step_by(hw.div_ceil(ROWS_PER_IMAGE)).collect()
        })
        .collect();
    let sites: Vec<NodeId> = targets.iter().map(|t| t.site).collect();
    let mut wanted: Vec<Vec<Vec<f32>>> = Vec::new();
    for batch in sample.batches(batch_size.max(1)) {
        let b = batch?;
        let nb = b.labels.len();
        let out = original.forward_probe(
            original.input_tensor(b.images, nb)?,
            &Probe {
                capture: &sites,
                masks: None,
            },
        )?;
        wanted.push(
            out.captured
                .into_iter()
                .zip(&targets)
                .zip(&positions)
                .map(|((v, t), pos)| {
                    // `[images, channels, positions]`: the capture at the chosen positions.
                    let s = &shapes[t.site];
                    let hw = s[1] * s[2];
                    to_vec(v)
                        .chunks(hw)
                        .flat_map(|plane| pos.iter().map(move |&p| plane[p]))
                        .collect::<Vec<f32>>()
                })
                .collect(),
        );
    }
    let mut cur = model.clone();
    for (ti, t) in targets.iter().enumerate() {
        let Op::Conv2d {
            weight,
            stride,
            padding,
            ..
        } = &model.graph.nodes[t.conv].op
        else {
            unreachable!("targets are convolutions")
        };
        let [_, cin, kh, kw] = [
            weight.shape[0],
            weight.shape[1],
            weight.shape[2],
            weight.shape[3],
        ];
        let ko: &[usize] = spaces.of_node[t.site].map_or(&[], |s| lists[s].as_slice());
        if ko.is_empty() {
            continue;
        }
        let so = &shapes[t.site];
        let (co, hw) = (so[0], so[1] * so[2]);
        let si = &shapes[model.graph.nodes[t.conv].inputs[0]];
        let pos = &positions[ti];
        let f = cin * kh * kw + 1;
        let (refm, masks) = reference(&cur, head, class, plan)?;
        let exec = device.executor(&refm)?;
        let compiled = exec.compile_masks(&masks)?;
        let conv_ref = by_name(&refm.graph, &model.graph.nodes[t.conv].name)?;
        let mut capture = vec![refm.graph.nodes[conv_ref].inputs[0]];
        if let Some(s) = t.shortcut {
            capture.push(by_name(&refm.graph, &model.graph.nodes[s].name)?);
        }
        let mut gram = DMatrix::<f64>::zeros(f, f);
        let mut rhs = DMatrix::<f64>::zeros(f, ko.len());
        let mut rows_seen = 0usize;
        // Per batch for the ReLU-aware passes: rows, targets and bounds.
        let mut kept_rows: Vec<(DeviceMatrix, Vec<f32>, Vec<f32>)> = Vec::new();
        for (bi, batch) in sample.batches(batch_size.max(1)).enumerate() {
            let b = batch?;
            let nb = b.labels.len();
            let x = exec.input_tensor(b.images, nb)?;
            let out = exec.forward_probe(
                x,
                &Probe {
                    capture: &capture,
                    masks: Some(&compiled),
                },
            )?;
            let mut it = out.captured.into_iter();
            let xin = to_vec(it.next().expect("captured input"));
            // `[nb * positions, cin * kh * kw + 1]`: im2col rows at the sampled positions,
            // then the bias column.
            let u = patch_rows(
                &xin,
                [nb, si[0], si[1], si[2]],
                [kh, kw],
                *stride,
                *padding,
                pos,
                1,
            );
            let np = pos.len();
            // The model's pre-activation at the site, minus the pruned network's shortcut.
            let full = rows_of(
                &wanted[bi][ti],
                nb,
                co,
                np,
                ko,
                &(0..np).collect::<Vec<_>>(),
            );
            let shortcut = it
                .next()
                .map(|sc| rows_of(&to_vec(sc), nb, co, hw, ko, pos));
            let target: Vec<f32> = match &shortcut {
                Some(sc) => full.iter().zip(sc).map(|(t, s)| t - s).collect(),
                None => full.clone(),
            };
            // ReLU-aware passes: where the model's pre-activation is <= 0, any prediction
            // `p` with `p + shortcut <= 0` gives the same ReLU output; the bound is
            // `-shortcut` there and +inf elsewhere.
            let bound: Vec<f32> = if passes > 1 {
                full.iter()
                    .enumerate()
                    .map(|(i, &z)| match (z <= 0.0, &shortcut) {
                        (false, _) => f32::INFINITY,
                        (true, Some(sc)) => -sc[i],
                        (true, None) => 0.0,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let rows = nb * pos.len();
            rows_seen += rows;
            let um = DeviceMatrix::new(u, rows, f, original.device());
            let g = um.gram();
            // Row-major host data into column-major nalgebra storage (G is symmetric).
            for (i, v) in g.iter().enumerate() {
                gram[(i / f, i % f)] += f64::from(*v);
            }
            add_rhs(&mut rhs, &um, &target);
            if passes > 1 {
                kept_rows.push((um, target, bound));
            }
        }
        if rows_seen < MIN_ROWS_PER_WEIGHT * f {
            tracing::warn!(
                conv = %model.graph.nodes[t.conv].name,
                rows = rows_seen,
                weights = f,
                "too few sample rows to refit this convolution: it keeps its weights"
            );
            continue;
        }
        let ridge = RIDGE * (gram.trace() / f as f64).max(1e-12);
        for i in 0..f {
            gram[(i, i)] += ridge;
        }
        let chol = gram.cholesky().ok_or_else(|| {
            TangleError::Masks(format!(
                "reconstruction of {}: the Gram matrix is not positive definite",
                model.graph.nodes[t.conv].name
            ))
        })?;
        let mut sol = chol.solve(&rhs); // [f, ko]
        for _ in 1..passes {
            // Row-major `[f, ko]` copy of the solution.
            let w: Vec<f32> = (0..f)
                .flat_map(|i| (0..ko.len()).map(move |j| (i, j)))
                .map(|(i, j)| sol[(i, j)] as f32)
                .collect();
            let mut relaxed = DMatrix::<f64>::zeros(f, ko.len());
            for (um, target, bound) in &kept_rows {
                let pred = um.mul(&w, ko.len());
                let t: Vec<f32> = target
                    .iter()
                    .zip(bound)
                    .zip(&pred)
                    .map(|((&t, &b), &p)| if b.is_finite() { p.min(b) } else { t })
                    .collect();
                add_rhs(&mut relaxed, um, &t);
            }
            sol = chol.solve(&relaxed);
        }
        write_fit(&mut cur, t, ko, &sol, f)?;
    }
    Ok(cur)
}

/// `rhs += u^T t` for rows `u` (`[rows, f]`) and targets `t` (`[rows, ko]`, row-major).
fn add_rhs(rhs: &mut DMatrix<f64>, u: &DeviceMatrix, t: &[f32]) {
    let ko = rhs.ncols();
    let r = u.t_mul(t, ko);
    // Row-major host data into column-major nalgebra storage.
    for (i, v) in r.iter().enumerate() {
        rhs[(i / ko, i % ko)] += f64::from(*v);
    }
}

/// Writes fitted post-BatchNorm weights `sol` (`[cin*kh*kw + 1, ko]`, last row the bias)
/// into the convolution (and its BatchNorm) of `t`.
fn write_fit(
    model: &mut ModelIr,
    t: &Target,
    ko: &[usize],
    sol: &DMatrix<f64>,
    f: usize,
) -> Result<(), TangleError> {
    let per = f - 1;
    let mut betas: Vec<(usize, f32)> = Vec::with_capacity(ko.len());
    {
        let Op::Conv2d { weight, bias, .. } = &mut model.graph.nodes[t.conv].op else {
            unreachable!("targets are convolutions")
        };
        for (j, &o) in ko.iter().enumerate() {
            let col: DVector<f64> = sol.column(j).into_owned();
            for k in 0..per {
                weight.data[o * per + k] = col[k] as f32;
            }
            betas.push((o, col[per] as f32));
        }
        if t.bn.is_none() {
            let n = weight.shape[0];
            let b = bias.get_or_insert_with(|| TensorData::zeros(vec![n]));
            for &(o, beta) in &betas {
                b.data[o] = beta;
            }
        } else if let Some(b) = bias {
            for &(o, _) in &betas {
                b.data[o] = 0.0;
            }
        }
    }
    if let Some(bn) = t.bn {
        let Op::BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
        } = &mut model.graph.nodes[bn].op
        else {
            unreachable!("checked to be a BatchNorm")
        };
        for &(o, b) in &betas {
            // gamma (y - mean) / sqrt(var + eps) + beta' = y + b
            gamma.data[o] = (f64::from(running_var.data[o]) + *eps).sqrt() as f32;
            beta.data[o] = b + running_mean.data[o];
        }
    }
    model.check()?;
    Ok(())
}

/// Head fitting ([`decomp_ir::ChannelConfig::fit_head`]), **training** of the binary head
/// only: ridge least squares of the extracted module's head so that its margin
/// `mine - other` reproduces the model's own margin on `sample` (the row `other` is kept;
/// `mine` becomes `other + v`, with `v` and the bias fitted). Distillation of one linear
/// layer, closed form.
pub fn fit_head(job: &FitJob<'_>, module: &mut ModelIr) -> Result<(), TangleError> {
    let FitJob {
        model,
        head,
        sample,
        batch_size,
        device,
        ..
    } = *job;
    let original = device.executor(model)?;
    let exec = device.executor(module)?;
    let out = module.graph.output;
    let feat = module.graph.nodes[out].inputs[0];
    let f = module.check()?[feat].iter().product::<usize>() + 1;
    let fo = head.weight.shape[1];
    let mut gram = DMatrix::<f64>::zeros(f, f);
    let mut rhs = DVector::<f64>::zeros(f);
    for batch in sample.batches(batch_size.max(1)) {
        let b = batch?;
        let nb = b.labels.len();
        let mine = exec.forward_probe(
            exec.input_tensor(b.images.clone(), nb)?,
            &Probe {
                capture: &[feat],
                masks: None,
            },
        )?;
        let theirs = original.forward_probe(
            original.input_tensor(b.images, nb)?,
            &Probe {
                capture: &[head.input],
                masks: None,
            },
        )?;
        let x = to_vec(mine.captured[0].clone());
        let z = to_vec(theirs.captured[0].clone());
        for i in 0..nb {
            let zi = &z[i * fo..(i + 1) * fo];
            let m: f64 = (0..fo)
                .map(|k| {
                    f64::from(head.weight.data[k] - head.weight.data[fo + k]) * f64::from(zi[k])
                })
                .sum::<f64>()
                + f64::from(head.bias.data[0] - head.bias.data[1]);
            let mut row: Vec<f64> = x[i * (f - 1)..(i + 1) * (f - 1)]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            row.push(1.0);
            for a in 0..f {
                rhs[a] += row[a] * m;
                for c in 0..f {
                    gram[(a, c)] += row[a] * row[c];
                }
            }
        }
    }
    let ridge = RIDGE * (gram.trace() / f as f64).max(1e-12);
    for i in 0..f {
        gram[(i, i)] += ridge;
    }
    let sol = gram
        .cholesky()
        .ok_or_else(|| {
            TangleError::Masks("head fit: the Gram matrix is not positive definite".into())
        })?
        .solve(&rhs);
    let Op::Linear { weight, bias } = &mut module.graph.nodes[out].op else {
        return Err(TangleError::NoHead(module.graph.nodes[out].name.clone()));
    };
    let k = f - 1;
    for c in 0..k {
        weight.data[c] = weight.data[k + c] + sol[c] as f32;
    }
    let b = bias.get_or_insert_with(|| TensorData::zeros(vec![2]));
    b.data[0] = b.data[1] + sol[k] as f32;
    module.check()?;
    Ok(())
}
