//! Module composition (stage crate, METHOD.md section 3).
//!
//! [`vote`] / [`label_rank`] implement the voting rule on the modules' logit margins.
//! [`compose`] runs any list of modules (of one or several models) over a dataset and
//! returns per-image predictions; the modules of one model run as **one batched forward**
//! ([`decomp_model::Executor::forward_modules`]), with the naive one-pass-per-module path
//! kept as the reference ([`Mode::Naive`]). [`sizes`] reports module size and overlap.
//! [`compose_channel`] composes physically small channel modules (one pass each, timed).
//! [`ComposedRun::accuracy`] scores a run with `decomp_eval`, and [`compose_report`] /
//! [`channel_compose_report`] build the stage's typed report.

mod channel;
mod report;

use std::collections::BTreeMap;

pub use channel::{ChannelRun, compose_channel, union_cost};
pub use report::{channel_compose_report, compose_report};

use decomp_data::Dataset;
use decomp_eval::{Accumulator, EvalReport};
use decomp_ir::analysis::{active_sets, module_size, overlap};
use decomp_ir::{ModuleIr, Top5Ranking};
use decomp_model::{Executor, ExecutorSource, Probe, to_vec};
use serde::Serialize;

/// Errors of composition.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(transparent)]
    Model(#[from] decomp_model::ModelError),
    #[error(transparent)]
    Data(#[from] decomp_data::DataError),
    #[error(transparent)]
    Eval(#[from] decomp_eval::EvalError),
    #[error("no modules to compose")]
    Empty,
    #[error(
        "dataset has {dataset} classes but {modules} modules are composed (label i must be module i's class)"
    )]
    Classes { dataset: usize, modules: usize },
    #[error("modules {a} and {b} come from models with the same hash but different graphs")]
    HashClash { a: usize, b: usize },
}

/// How composed evaluation runs the modules of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One batched forward per model, masks stacked along a module axis.
    Batched,
    /// One forward pass per module (reference).
    Naive,
}

/// The voting rule: among modules voting "mine" (margin > 0) the most confident; with no
/// voter, the most confident module overall. Confidence is compared through the margin
/// `z_mine - z_other`, a monotone function of the 2-way softmax that never saturates.
pub fn vote(margins: &[f32]) -> usize {
    let best_of = |it: &mut dyn Iterator<Item = usize>| -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in it {
            if best.is_none_or(|b| margins[i] > margins[b]) {
                best = Some(i);
            }
        }
        best
    };
    let voters = &mut (0..margins.len()).filter(|&i| margins[i] > 0.0);
    best_of(voters)
        .or_else(|| best_of(&mut (0..margins.len())))
        .unwrap_or(0)
}

/// Rank (0 = first) of `label` in the composed ranking used for top-k.
pub fn label_rank(margins: &[f32], label: usize, ranking: Top5Ranking) -> usize {
    let key = |i: usize| -> (bool, f32) {
        match ranking {
            Top5Ranking::VotersFirst => (margins[i] > 0.0, margins[i]),
            Top5Ranking::Confidence => (true, margins[i]),
        }
    };
    let kl = key(label);
    (0..margins.len())
        .filter(|&i| {
            let ki = key(i);
            ki.0 & !kl.0 || (ki.0 == kl.0 && (ki.1 > kl.1 || (ki.1 == kl.1 && i < label)))
        })
        .count()
}

/// Per-image outcome of a composed evaluation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ComposedRun {
    pub labels: Vec<usize>,
    /// Voted class (index into the module list).
    pub predicted: Vec<usize>,
    /// Rank of the true label in the composed ranking.
    pub label_rank: Vec<usize>,
    /// Margins `[images][modules]`, kept for analysis.
    pub margins: Vec<Vec<f32>>,
    /// When every module comes from one model whose classes they cover in order: the rank
    /// of the true label among that model's own logits (same images, same pass).
    pub model_rank: Option<Vec<usize>>,
}

impl ComposedRun {
    /// Votes on one batch and records it: image `i` has label `labels[i]` and the module
    /// margins `margins[i]`.
    pub(crate) fn push_batch(
        &mut self,
        labels: &[usize],
        margins: Vec<Vec<f32>>,
        ranking: Top5Ranking,
    ) {
        for (row, &label) in margins.into_iter().zip(labels) {
            self.predicted.push(vote(&row));
            self.label_rank.push(label_rank(&row, label, ranking));
            self.labels.push(label);
            self.margins.push(row);
        }
    }

    /// Accuracy of the composition over its `classes` composed classes (label `i` = module
    /// `i`), and of the source model on the same images when it ran.
    pub fn accuracy(
        &self,
        classes: usize,
    ) -> Result<(EvalReport, Option<EvalReport>), ComposeError> {
        let score = |ranks: &[usize]| -> Result<EvalReport, ComposeError> {
            let mut acc = Accumulator::new(classes);
            for (&label, &rank) in self.labels.iter().zip(ranks) {
                acc.add_rank(label, rank)?;
            }
            Ok(acc.finish())
        };
        Ok((
            score(&self.label_rank)?,
            self.model_rank.as_deref().map(score).transpose()?,
        ))
    }
}

/// Modules of one source model, run together.
struct Group {
    exec: Executor,
    members: Vec<usize>,
    /// Masks of the members, then (when the model is evaluated too) an empty mask list.
    masks: decomp_model::ModuleMasks,
    head_input: usize,
    features: usize,
    /// The model's own output layer `[classes][features]` and bias, when evaluated.
    model_head: Option<(Vec<f32>, Vec<f32>)>,
    /// Name of the model's output node, for errors.
    model_output: String,
    /// Per-channel `(scale, shift)` taking the dataset's normalized pixels to this model's
    /// normalization, when they differ (modules of models trained on other datasets).
    renorm: Option<Vec<(f32, f32)>>,
}

/// `(scale, shift)` per channel with `x_model = x_data * scale + shift`, or `None` when the
/// two normalizations agree.
fn renormalization(
    data: &decomp_data::Normalization,
    model: &decomp_ir::InputNorm,
) -> Option<Vec<(f32, f32)>> {
    if data.mean == model.mean && data.std == model.std {
        return None;
    }
    Some(
        data.mean
            .iter()
            .zip(&data.std)
            .zip(model.mean.iter().zip(&model.std))
            .map(|((&md, &sd), (&mm, &sm))| (sd / sm, (md - mm) / sm))
            .collect(),
    )
}

fn apply_renorm(images: &mut [f32], channels: &[(f32, f32)], plane: usize) {
    let c = channels.len();
    for (i, chunk) in images.chunks_mut(plane).enumerate() {
        let (scale, shift) = channels[i % c];
        for v in chunk {
            *v = *v * scale + shift;
        }
    }
}

fn groups(
    modules: &[ModuleIr],
    data: &Dataset,
    runtime: &dyn ExecutorSource,
    with_model: bool,
) -> Result<Vec<Group>, ComposeError> {
    let mut by_hash: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, m) in modules.iter().enumerate() {
        by_hash.entry(m.model_hash.as_str()).or_default().push(i);
    }
    let mut out = Vec::new();
    for members in by_hash.into_values() {
        let first = &modules[members[0]];
        for &m in &members[1..] {
            if modules[m].model.graph != first.model.graph
                || modules[m].head.input != first.head.input
            {
                return Err(ComposeError::HashClash {
                    a: members[0],
                    b: m,
                });
            }
        }
        let exec = runtime.executor(&first.model)?;
        let mut mask_lists: Vec<&[decomp_ir::NodeMask]> = members
            .iter()
            .map(|&m| modules[m].masks.as_slice())
            .collect();
        if with_model {
            mask_lists.push(&[]);
        }
        let masks = exec.compile_module_masks(&mask_lists)?;
        let model_head = if with_model {
            match &first.model.graph.nodes[first.model.graph.output].op {
                decomp_ir::Op::Linear { weight, bias } => {
                    let k = weight.shape[0];
                    Some((
                        weight.data.clone(),
                        bias.as_ref().map_or(vec![0.0; k], |b| b.data.clone()),
                    ))
                }
                _ => None,
            }
        } else {
            None
        };
        out.push(Group {
            renorm: renormalization(data.normalization(), &first.model.meta.input_norm),
            features: first.head.weight.shape[1],
            head_input: first.head.input,
            exec,
            members,
            masks,
            model_head,
            model_output: first.model.graph.nodes[first.model.graph.output]
                .name
                .clone(),
        });
    }
    Ok(out)
}

/// A NaN or infinite margin of `module` (index in the composed list) on `image`: an error
/// naming the image, the module and the node its head replaces (the model's output node).
/// A NaN margin would never vote and never rank, so it must not pass silently.
fn non_finite_margin(
    model: &decomp_ir::ModelIr,
    image: usize,
    module: usize,
    value: f32,
) -> ComposeError {
    decomp_model::ModelError::NonFinite {
        image,
        node: model.graph.nodes[model.graph.output].name.clone(),
        what: format!("the margin of module {module}"),
        value,
    }
    .into()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Margin `z_mine - z_other` of `module` on features `f`.
fn margin(module: &ModuleIr, f: &[f32]) -> f32 {
    let h = &module.head;
    let n = f.len();
    (dot(&h.weight.data[..n], f) + h.bias.data[0]) - (dot(&h.weight.data[n..], f) + h.bias.data[1])
}

/// Runs `modules` over `data` and votes. Label `i` of `data` must be the class of
/// `modules[i]` (use `Dataset::subset_classes` to arrange it). Each model sees the images
/// in its own input normalization (converted from `data`'s), so modules of models trained
/// with different statistics compose. Executors come from `runtime` (a
/// [`decomp_model::Runtime`] or a plain device).
pub fn compose(
    modules: &[ModuleIr],
    data: &Dataset,
    runtime: &dyn ExecutorSource,
    batch_size: usize,
    ranking: Top5Ranking,
    mode: Mode,
    progress: &mut dyn FnMut(usize),
) -> Result<ComposedRun, ComposeError> {
    if modules.is_empty() {
        return Err(ComposeError::Empty);
    }
    if data.num_classes() != modules.len() {
        return Err(ComposeError::Classes {
            dataset: data.num_classes(),
            modules: modules.len(),
        });
    }
    let covers_model = modules
        .iter()
        .all(|m| m.model_hash == modules[0].model_hash)
        && modules.len() == modules[0].model.num_classes()
        && modules.iter().enumerate().all(|(i, m)| m.class == i);
    let groups = groups(modules, data, runtime, covers_model)?;
    let mut run = ComposedRun {
        model_rank: covers_model.then(Vec::new),
        ..Default::default()
    };
    for batch in data.batches(batch_size.max(1)) {
        let b = batch?;
        let n = b.labels.len();
        let mut margins = vec![vec![0.0f32; modules.len()]; n];
        for g in &groups {
            let mut images = b.images.clone();
            if let Some(r) = &g.renorm {
                apply_renorm(&mut images, r, b.shape[2] * b.shape[3]);
            }
            let x = g.exec.input_tensor(images, n)?;
            let feats: Vec<Vec<f32>> = match mode {
                Mode::Batched => g.exec.forward_modules(x, &g.masks, g.head_input)?,
                Mode::Naive => {
                    let mut lists: Vec<&[decomp_ir::NodeMask]> = g
                        .members
                        .iter()
                        .map(|&m| modules[m].masks.as_slice())
                        .collect();
                    if g.model_head.is_some() {
                        lists.push(&[]);
                    }
                    lists
                        .into_iter()
                        .map(|masks| {
                            let masks = g.exec.compile_masks(masks)?;
                            let out = g.exec.forward_probe(
                                x.clone(),
                                &Probe {
                                    capture: &[g.head_input],
                                    masks: Some(&masks),
                                },
                            )?;
                            Ok(to_vec(
                                out.captured.into_iter().next().expect("one capture"),
                            ))
                        })
                        .collect::<Result<_, decomp_model::ModelError>>()?
                }
            };
            let f = g.features;
            let first = run.labels.len();
            for (&m, fm) in g.members.iter().zip(&feats) {
                for (i, row) in margins.iter_mut().enumerate() {
                    row[m] = margin(&modules[m], &fm[i * f..(i + 1) * f]);
                    if !row[m].is_finite() {
                        return Err(non_finite_margin(&modules[m].model, first + i, m, row[m]));
                    }
                }
            }
            if let (Some((w, bias)), Some(ranks)) = (&g.model_head, run.model_rank.as_mut()) {
                // The model itself: its unmasked features through its own output layer.
                let base = feats.last().expect("model features");
                let k = bias.len();
                for i in 0..n {
                    let x = &base[i * f..(i + 1) * f];
                    let row: Vec<f32> = (0..k)
                        .map(|c| dot(&w[c * f..(c + 1) * f], x) + bias[c])
                        .collect();
                    let output = &g.model_output;
                    decomp_model::check_finite(&row, k, first + i, output, "logit")?;
                    let l = b.labels[i];
                    let r = row
                        .iter()
                        .enumerate()
                        .filter(|&(c, &v)| v > row[l] || (v == row[l] && c < l))
                        .count();
                    ranks.push(r);
                }
            }
        }
        run.push_batch(&b.labels, margins, ranking);
        progress(n);
    }
    Ok(run)
}

/// Size of each module (fraction of the model's layer positions it keeps), and the overlap
/// (Jaccard index of kept positions) of every pair of modules of the same model (`None`
/// across models).
#[derive(Clone, Debug, Serialize)]
pub struct Sizes {
    pub per_module: Vec<f64>,
    pub mean: f64,
    pub overlap: Vec<Vec<Option<f64>>>,
    pub mean_overlap: f64,
}

pub fn sizes(modules: &[ModuleIr]) -> Result<Sizes, ComposeError> {
    let mut per_module = Vec::new();
    let mut sets = Vec::new();
    for m in modules {
        let shapes = m.model.check().map_err(decomp_model::ModelError::from)?;
        let removed: Vec<decomp_ir::NodeMask> = m.masks.iter().chain(&m.dead).cloned().collect();
        per_module.push(module_size(&m.model.graph, &shapes, &removed));
        sets.push(active_sets(&m.model.graph, &shapes, &removed));
    }
    let k = modules.len();
    let mut ov = vec![vec![None; k]; k];
    let (mut sum, mut cnt) = (0.0, 0usize);
    for a in 0..k {
        for b in 0..k {
            if modules[a].model_hash == modules[b].model_hash {
                let v = overlap(&sets[a], &sets[b]);
                ov[a][b] = Some(v);
                if a < b {
                    sum += v;
                    cnt += 1;
                }
            }
        }
    }
    Ok(Sizes {
        mean: per_module.iter().sum::<f64>() / k.max(1) as f64,
        per_module,
        overlap: ov,
        mean_overlap: if cnt == 0 { 1.0 } else { sum / cnt as f64 },
    })
}

#[cfg(test)]
mod tests {
    use decomp_ir::{BinaryHead, DecompConfig, ModelIr, Op, SampleCounts, TensorData};
    use decomp_model::{Device, ResNetConfig};

    use super::*;

    #[test]
    fn voting_prefers_confident_voters() {
        assert_eq!(vote(&[-1.0, 2.0, 3.0]), 2, "the most confident voter");
        assert_eq!(vote(&[0.5, -0.1, 0.2]), 0);
        assert_eq!(
            vote(&[-3.0, -1.0, -2.0]),
            1,
            "no voter: the least unconfident"
        );
        assert_eq!(vote(&[1.0, 1.0]), 0, "ties go to the first");
        assert_eq!(vote(&[0.0, 0.0]), 0, "a zero margin is no vote");
    }

    #[test]
    fn label_rank_counts_who_beats_the_label() {
        let m = [0.5, -0.1, 0.2, 0.2];
        for ranking in [Top5Ranking::VotersFirst, Top5Ranking::Confidence] {
            let ranks: Vec<usize> = (0..4).map(|l| label_rank(&m, l, ranking)).collect();
            assert_eq!(ranks, vec![0, 3, 1, 2], "{ranking:?}: ties by index");
        }
        assert_eq!(label_rank(&[-1.0, -2.0], 1, Top5Ranking::VotersFirst), 1);
    }

    /// Composed accuracy from ranks: top-1 counts rank 0, top-5 ranks below 5 (of at most
    /// `classes`), per class over the class's images; the model's only when it ran.
    #[test]
    fn accuracy_from_ranks() {
        let mut run = ComposedRun {
            labels: vec![0, 1, 1, 2, 2],
            label_rank: vec![0, 1, 0, 5, 4],
            ..Default::default()
        };
        let (c, m) = run.accuracy(6).expect("accuracy");
        assert_eq!((c.n, c.top1, c.top5), (5, 40.0, 80.0));
        assert_eq!(c.per_class[..3], [100.0, 50.0, 0.0]);
        assert!(m.is_none());
        run.model_rank = Some(vec![0, 0, 0, 0, 1]);
        let (_, m) = run.accuracy(6).expect("accuracy");
        assert_eq!(m.map(|m| (m.top1, m.top5)), Some((80.0, 100.0)));
        let (c, _) = run.accuracy(3).expect("3 classes");
        assert_eq!(c.top5, 60.0, "top-5 of 3 classes is top-3");
        assert!(run.accuracy(2).is_err(), "label 2 of a 2-class composition");
    }

    /// The unmasked module of every class of an untrained ResNet-8 (plain binary head).
    fn modules() -> (ModelIr, Vec<ModuleIr>) {
        let model = ResNetConfig::new(8, 3)
            .with_input([3, 8, 8])
            .with_seed(2)
            .build()
            .expect("model");
        let (input, w, b) = match &model.graph.nodes[model.graph.output].op {
            Op::Linear { weight, bias } => (
                model.graph.nodes[model.graph.output].inputs[0],
                weight.clone(),
                bias.clone(),
            ),
            _ => unreachable!("a ResNet ends in a Linear layer"),
        };
        let f = w.shape[1];
        let b = b.map_or(vec![0.0; 3], |b| b.data);
        let modules = (0..3)
            .map(|c| {
                let mut weight = w.data[c * f..(c + 1) * f].to_vec();
                let others: Vec<usize> = (0..3).filter(|&o| o != c).collect();
                weight.extend(
                    (0..f).map(|u| others.iter().map(|&o| w.data[o * f + u]).sum::<f32>() / 2.0),
                );
                let bias = vec![b[c], others.iter().map(|&o| b[o]).sum::<f32>() / 2.0];
                ModuleIr {
                    class: c,
                    class_name: model.meta.class_names[c].clone(),
                    model_hash: model.content_hash(),
                    model_path: "m".into(),
                    model: model.clone(),
                    masks: Vec::new(),
                    dead: Vec::new(),
                    head: BinaryHead {
                        input,
                        weight: TensorData {
                            shape: vec![2, f],
                            data: weight,
                        },
                        bias: TensorData {
                            shape: vec![2],
                            data: bias,
                        },
                    },
                    config: DecompConfig::default(),
                    counts: SampleCounts {
                        positives: 1,
                        unconcerned: 1,
                        unconcerned_per_class: 1,
                    },
                    provenance: String::new(),
                }
            })
            .collect();
        (model, modules)
    }

    /// Unmasked modules vote like their model: margins are `z_c - mean(z_others)` of the
    /// model's logits, batched and naive runs agree, and the model's ranks come out of the
    /// same pass.
    #[test]
    fn unmasked_modules_reproduce_the_model() {
        let (model, modules) = modules();
        // In the model's own normalization, so its logits below see what its modules see.
        let norm = decomp_data::Normalization::new(
            &model.meta.input_norm.mean,
            &model.meta.input_norm.std,
        );
        let data = Dataset::synthetic(3, 5, [3, 8, 8], 1).with_normalization(norm);
        let dev = Device::flex();
        let run = compose(
            &modules,
            &data,
            &dev,
            4,
            Top5Ranking::VotersFirst,
            Mode::Batched,
            &mut |_| {},
        )
        .expect("compose");
        let naive = compose(
            &modules,
            &data,
            &dev,
            4,
            Top5Ranking::VotersFirst,
            Mode::Naive,
            &mut |_| {},
        )
        .expect("naive");
        assert_eq!(
            (&run.labels, &run.predicted),
            (&naive.labels, &naive.predicted)
        );
        let exec = Executor::new(&model, &dev).expect("executor");
        let b = data.batch(0..data.len()).expect("batch");
        let logits = to_vec(
            exec.forward(exec.input_tensor(b.images, data.len()).expect("input"))
                .expect("forward"),
        );
        for (i, row) in run.margins.iter().enumerate() {
            let z = &logits[i * 3..(i + 1) * 3];
            for c in 0..3 {
                let want = z[c] - (z.iter().sum::<f32>() - z[c]) / 2.0;
                assert!(
                    (row[c] - want).abs() < 1e-4,
                    "image {i} module {c}: {} vs {want}",
                    row[c]
                );
            }
            assert_eq!(run.predicted[i], decomp_eval::argmax(z), "image {i}");
        }
        let (composed, model_acc) = run.accuracy(3).expect("accuracy");
        assert_eq!(Some(composed.top1), model_acc.map(|m| m.top1));
        let report = compose_report(
            &modules,
            vec!["a".into(), "b".into(), "c".into()],
            &composed,
            None,
            1.5,
            Mode::Naive,
        )
        .expect("report");
        assert_eq!(
            (
                report.mode.as_str(),
                report.accuracy.n,
                report.accuracy.model_top1
            ),
            ("naive", 15, None)
        );
        assert_eq!(
            (report.mean_module_size, report.mean_overlap),
            (1.0, 1.0),
            "unmasked modules are the whole model"
        );
    }

    #[test]
    fn bad_compositions_are_errors() {
        let (_, modules) = modules();
        let dev = Device::flex();
        let data = Dataset::synthetic(2, 2, [3, 8, 8], 1);
        let run = |m: &[ModuleIr]| {
            compose(
                m,
                &data,
                &dev,
                4,
                Top5Ranking::VotersFirst,
                Mode::Batched,
                &mut |_| {},
            )
        };
        assert!(matches!(run(&[]), Err(ComposeError::Empty)));
        assert!(matches!(
            run(&modules),
            Err(ComposeError::Classes {
                dataset: 2,
                modules: 3
            })
        ));
    }
}
