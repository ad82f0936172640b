//! Composition of physically small channel modules ([`compose_channel`]): each module is
//! its own small graph, run as a separate pass, timed, and voted on as before.
//!
//! Separate passes versus one pass over the union of the modules' channels: modules of one
//! model hold different channel sets (and different constants for removed channels), so a
//! union graph would have to mask per module from the first pruned site on, i.e. run K
//! branches of a graph at least as large as each module. [`union_cost`] gives that cost so
//! reports can state which is cheaper; for distinct modules separate passes always are.

use std::time::Instant;

use decomp_data::Dataset;
use decomp_ir::analysis::{Cost, cost};
use decomp_ir::channel::{ChannelGroup, ChannelPlan, extract};
use decomp_ir::{BinaryHead, ChannelModule, ModelIr, Op, TensorData, Top5Ranking};
use decomp_model::{Executor, ExecutorSource, to_vec};
use serde::Serialize;

use crate::{ComposeError, ComposedRun, non_finite_margin};

/// A composed evaluation of channel modules, with wall-clock time per module.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelRun {
    pub run: ComposedRun,
    /// Seconds of forward passes per module (synced: logits read back), over all batches.
    pub module_seconds: Vec<f64>,
    /// Seconds of forward passes of the reference model over the same batches, interleaved.
    pub model_seconds: Option<f64>,
}

/// Runs every module of `modules` over `data` (label `i` = class of `modules[i]`) and votes
/// on the margins `z_mine - z_other`. With `reference` (the source model of every module,
/// covering its classes in order), the model runs on the same batches: its ranks give the
/// model's accuracy and its time the speed ratio, both measured in the same run.
pub fn compose_channel(
    modules: &[ChannelModule],
    data: &Dataset,
    runtime: &dyn ExecutorSource,
    batch_size: usize,
    ranking: Top5Ranking,
    reference: Option<&ModelIr>,
    progress: &mut dyn FnMut(usize),
) -> Result<ChannelRun, ComposeError> {
    if modules.is_empty() {
        return Err(ComposeError::Empty);
    }
    if data.num_classes() != modules.len() {
        return Err(ComposeError::Classes {
            dataset: data.num_classes(),
            modules: modules.len(),
        });
    }
    let execs: Vec<Executor> = modules
        .iter()
        .map(|m| runtime.executor(&m.module))
        .collect::<Result<_, _>>()?;
    let model = reference.map(|m| runtime.executor(m)).transpose()?;
    let mut run = ComposedRun {
        model_rank: model.as_ref().map(|_| Vec::new()),
        ..Default::default()
    };
    let mut module_seconds = vec![0.0; modules.len()];
    let mut model_seconds = 0.0;
    for batch in data.batches(batch_size.max(1)) {
        let b = batch?;
        let n = b.labels.len();
        let x = execs[0].input_tensor(b.images, n)?;
        let mut margins = vec![vec![0.0f32; modules.len()]; n];
        let first = run.labels.len();
        for (m, exec) in execs.iter().enumerate() {
            let t = Instant::now();
            let logits = to_vec(exec.forward(x.clone())?);
            module_seconds[m] += t.elapsed().as_secs_f64();
            for (i, row) in margins.iter_mut().enumerate() {
                row[m] = logits[2 * i] - logits[2 * i + 1];
                if !row[m].is_finite() {
                    return Err(non_finite_margin(&modules[m].module, first + i, m, row[m]));
                }
            }
        }
        if let (Some(exec), Some(ranks)) = (&model, run.model_rank.as_mut()) {
            let t = Instant::now();
            let logits = to_vec(exec.forward(x)?);
            model_seconds += t.elapsed().as_secs_f64();
            exec.check_logits(&logits, first)?;
            let k = logits.len() / n;
            for i in 0..n {
                let row = &logits[i * k..(i + 1) * k];
                let l = b.labels[i];
                ranks.push(
                    row.iter()
                        .enumerate()
                        .filter(|&(c, &v)| v > row[l] || (v == row[l] && c < l))
                        .count(),
                );
            }
        }
        run.push_batch(&b.labels, margins, ranking);
        progress(n);
    }
    Ok(ChannelRun {
        run,
        module_seconds,
        model_seconds: model.map(|_| model_seconds),
    })
}

/// Cost of running `modules` (all of one source model `model`) in one pass over the union
/// of their kept channels: the part before the first pruned site is shared, the rest runs
/// once per module (their channel sets and constants differ). Compare with the sum of
/// [`ChannelModule::cost`].
pub fn union_cost(model: &ModelIr, modules: &[ChannelModule]) -> Result<Cost, ComposeError> {
    let Some(first) = modules.first() else {
        return Err(ComposeError::Empty);
    };
    let mut groups: Vec<ChannelGroup> = first.plan.groups.clone();
    for m in &modules[1..] {
        for (g, o) in groups.iter_mut().zip(&m.plan.groups) {
            g.kept.union_with(&o.kept);
        }
    }
    for g in &mut groups {
        for f in &mut g.fill {
            f.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let (input, k) = match &model.graph.nodes[model.graph.output].op {
        Op::Linear { weight, .. } => (
            model.graph.nodes[model.graph.output].inputs[0],
            weight.shape[1],
        ),
        _ => {
            return Err(decomp_model::ModelError::Config(
                "the model's output is not a Linear layer".into(),
            )
            .into());
        }
    };
    let head = BinaryHead {
        input,
        weight: TensorData::zeros(vec![2, k]),
        bias: TensorData::zeros(vec![2]),
    };
    let union = extract(model, &head, 0, &ChannelPlan { groups })
        .map_err(decomp_model::ModelError::from)?;
    let ushapes = union.check().map_err(decomp_model::ModelError::from)?;
    let total = cost(&union.graph, &ushapes);
    // Shared prefix: the nodes up to the first mask site (zero fills insert no node, so
    // the union graph keeps the model's node order).
    let first_site = model.graph.relu_inputs().first().copied().unwrap_or(0);
    let mut prefix = union.graph.clone();
    prefix.nodes.truncate(first_site + 1);
    let shared = cost(&prefix, &ushapes[..=first_site]);
    let n = modules.len() as u64;
    Ok(Cost {
        params: total.params,
        constants: total.constants,
        macs: shared.macs + n * (total.macs - shared.macs),
        flops: shared.flops + n * (total.flops - shared.flops),
    })
}
