//! Module training (issue 17): after selection and reconstruction, a channel module's weights
//! are trained to reproduce the model's binary margin for its class on the training images
//! ([`decomp_ir::ModuleTrainConfig`]), on the CPU training engine with frozen BatchNorms.
//!
//! The targets are linear in the model's logits (`z_c - mean of the other logits`), so one
//! forward pass of the model over the training images ([`ModelLogits`]) serves every module
//! of the model; each module is charged `1 / classes` of it.

use std::time::Instant;

use decomp_data::Dataset;
use decomp_ir::{
    ChannelModule, ModelIr, ModuleCheck, ModuleTrainConfig, ModuleTraining, ModuleValidation,
    analysis,
};
use decomp_model::train::OptimizerConfig;
use decomp_model::{CpuOptimizer, ExecutorSource, GradEngine, Target, to_vec};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::TangleError;

/// The model's logits on every image of a training split, in split order, and what they
/// cost.
#[derive(Clone, Debug)]
pub struct ModelLogits {
    /// `[images][classes]`, row-major.
    pub logits: Vec<f32>,
    pub classes: usize,
    /// Wall-clock seconds of the forward passes.
    pub seconds: f64,
    /// Multiply-accumulates of the forward passes (`images x model FLOPs`).
    pub flops: f64,
}

impl ModelLogits {
    /// Runs `model` over `train` in batches of `batch_size` on `device`.
    pub fn compute(
        model: &ModelIr,
        train: &Dataset,
        device: &dyn ExecutorSource,
        batch_size: usize,
    ) -> Result<Self, TangleError> {
        let start = Instant::now();
        let exec = device.executor(model)?;
        let classes = model.num_classes();
        let mut logits = Vec::with_capacity(train.len() * classes);
        for batch in train.batches(batch_size.max(1)) {
            let b = batch?;
            let n = b.labels.len();
            let first = logits.len() / classes;
            let z = to_vec(exec.forward(exec.input_tensor(b.images, n)?)?);
            exec.check_logits(&z, first)?;
            logits.extend(z);
        }
        let shapes = model.check()?;
        let flops = analysis::cost(&model.graph, &shapes).macs as f64 * train.len() as f64;
        Ok(Self {
            logits,
            classes,
            seconds: start.elapsed().as_secs_f64(),
            flops,
        })
    }

    /// Image `i`'s largest binary margin over all classes: the margin of its largest logit
    /// (a margin is `(K z_c - sum of the logits) / (K - 1)`, increasing in `z_c`).
    pub fn top_margin(&self, i: usize) -> f32 {
        let z = &self.logits[i * self.classes..(i + 1) * self.classes];
        let top = (1..z.len()).fold(0, |best, c| if z[c] > z[best] { c } else { best });
        self.margin(i, top)
    }

    /// Image `i`'s binary margin for `class`: `z_class - mean of the other logits` (what
    /// the binary head of [`crate::binary_head`] computes, and composition votes on).
    pub fn margin(&self, i: usize, class: usize) -> f32 {
        let z = &self.logits[i * self.classes..(i + 1) * self.classes];
        let others: f64 = z.iter().map(|&v| f64::from(v)).sum::<f64>() - f64::from(z[class]);
        (f64::from(z[class]) - others / (self.classes - 1) as f64) as f32
    }
}

/// Trains `module` (of its class, extracted from the model whose logits on `train` are
/// `teacher`) per `cfg`, and records what it spent in `module.training`.
///
/// A seeded hold-out of `cfg.validation_images` training images measures the module before
/// training and at every `cfg.checks`-th of the steps (the last check at the end), and the
/// module kept is the best of these by margin error (the reconstructed one when no check
/// beats it): training never hands back a module worse on the hold-out than it started. The
/// rest are the training images, visited in a seeded order, one pass after another until the
/// budget's images are spent, with Adam (no weight decay) at a learning rate that rises
/// linearly over the first `cfg.warmup` of the steps and decays along a cosine from `cfg.lr`
/// to 0. Without checks (0), the hold-out measures the end, which is kept.
pub fn train_channel_module(
    module: &mut ChannelModule,
    teacher: &ModelLogits,
    train: &Dataset,
    cfg: &ModuleTrainConfig,
) -> Result<(), TangleError> {
    let start = Instant::now();
    let class = module.class;
    let classes = teacher.classes;
    let fail = |reason: String| TangleError::Train { class, reason };
    if train.len() * classes != teacher.logits.len() || classes < 2 {
        return Err(fail(format!(
            "{} model logits for {} training images of {classes} classes",
            teacher.logits.len(),
            train.len()
        )));
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !(0.0..=1.0).contains(&cfg.warmup) {
        return Err(fail(format!(
            "warmup {}: expected a fraction of the steps in [0, 1]",
            cfg.warmup
        )));
    }
    if !positive(cfg.budget_epochs) || !positive(cfg.lr) || cfg.batch_size == 0 {
        return Err(fail(format!(
            "needs a positive budget, learning rate and batch size (budget {} epochs, lr {}, \
             batch {})",
            cfg.budget_epochs, cfg.lr, cfg.batch_size
        )));
    }
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    order.shuffle(&mut rng);
    let held = cfg.validation_images.min(train.len() / 5);
    let (val_idx, train_idx) = order.split_at(held);
    let (val_idx, mut train_idx) = (val_idx.to_vec(), train_idx.to_vec());
    if train_idx.is_empty() {
        return Err(fail("no training images".into()));
    }
    // The budget: all modules together get `budget x 3 x model FLOPs` per training image; a
    // module's share, minus its share of the targets' forward passes, buys images at `3 x
    // module FLOPs` each.
    let (module_flops, model_flops) = (module.cost.macs as f64, module.model_cost.macs as f64);
    let n_train = train.len() as f64;
    let share = cfg.budget_epochs * 3.0 * model_flops * n_train / classes as f64;
    let target_share = teacher.flops / classes as f64;
    let images = ((share - target_share) / (3.0 * module_flops)).floor();
    if images < cfg.batch_size as f64 {
        return Err(fail(format!(
            "a budget of {} epochs leaves {images} images after the targets' forward passes \
             (fewer than one batch of {})",
            cfg.budget_epochs, cfg.batch_size
        )));
    }
    let images = images as usize;
    let steps = images.div_ceil(cfg.batch_size);

    let val = train.select(&val_idx)?;
    let targets_of = |idx: &[usize]| -> (Vec<f32>, Option<Vec<f32>>) {
        let t = idx.iter().map(|&i| teacher.margin(i, class)).collect();
        let floors = cfg
            .competitive
            .map(|d| idx.iter().map(|&i| teacher.top_margin(i) - d).collect());
        (t, floors)
    };
    let (val_targets, val_floors) = targets_of(&val_idx);
    let mut engine = GradEngine::new(module.module.clone())?.with_frozen_batch_norm(true);
    let measure = |engine: &mut GradEngine| {
        validate(
            engine,
            &val,
            (&val_targets, val_floors.as_deref()),
            cfg.batch_size,
        )
    };
    let before = measure(&mut engine)?;
    // The steps after which the hold-out checks measure (the last one at the end), and the
    // best module so far with its step and measurement (the start: the reconstruction).
    let checks = if before.is_some() {
        cfg.checks.min(steps)
    } else {
        0
    };
    let check_at: Vec<usize> = (1..=checks).map(|k| k * steps / checks).collect();
    let mut best: Option<(usize, (f64, f64), ModelIr)> = None;
    let mut curve = Vec::with_capacity(checks);
    let mut optimizer = CpuOptimizer::new(OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
    });
    let mut losses = Vec::with_capacity(steps);
    let mut at = 0;
    // Progress at every tenth of the steps: a module's training can take many minutes.
    let loop_start = Instant::now();
    let tenth = (steps / 10).max(1);
    for step in 0..steps {
        if at == train_idx.len() {
            train_idx.shuffle(&mut rng);
            at = 0;
        }
        let take = cfg
            .batch_size
            .min(images - step * cfg.batch_size)
            .min(train_idx.len() - at);
        let idx = &train_idx[at..at + take];
        at += take;
        let batch = train.select(idx)?.batch(0..take)?;
        let (targets, floors) = targets_of(idx);
        let progress = step as f64 / steps as f64;
        let ramp = if cfg.warmup > 0.0 {
            ((step + 1) as f64 / (cfg.warmup * steps as f64)).min(1.0)
        } else {
            1.0
        };
        let lr = ramp * cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        let (loss, _) = engine
            .step_for(
                &mut optimizer,
                &batch.images,
                Target::Margins {
                    targets: &targets,
                    floors: floors.as_deref(),
                },
                lr,
            )
            .map_err(|e| fail(format!("step {step} of {steps}: {e}")))?;
        losses.push(loss);
        if check_at.contains(&(step + 1))
            && let Some(m) = measure(&mut engine)?
        {
            tracing::info!(
                class,
                step = step + 1,
                steps,
                held_out_error = m.0,
                agreement = m.1,
                "module training: hold-out check"
            );
            curve.push(ModuleCheck {
                step: step + 1,
                error: m.0,
                agreement: m.1,
            });
            let best_error = best
                .as_ref()
                .map_or(before.map_or(f64::INFINITY, |b| b.0), |b| b.1.0);
            if m.0 < best_error {
                best = Some((step + 1, m, engine.model().clone()));
            }
        }
        if (step + 1) % tenth == 0 && step + 1 < steps {
            let done = step + 1;
            let elapsed = loop_start.elapsed().as_secs_f64();
            let recent = &losses[done - tenth..];
            tracing::info!(
                class,
                step = done,
                steps,
                loss = recent.iter().sum::<f64>() / recent.len() as f64,
                lr,
                eta_s = (elapsed / done as f64 * (steps - done) as f64).round(),
                "module training"
            );
        }
    }
    // With checks, the best of the start and the checks (the end among them); without, the
    // end, measured.
    let (kept_step, after, model) = if checks > 0 {
        match best {
            Some((step, m, model)) => (step, Some(m), model),
            None => (0, before, module.module.clone()),
        }
    } else {
        (steps, measure(&mut engine)?, engine.into_model())
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let seen = images;
    module.module = model;
    module.training = Some(ModuleTraining {
        images: seen,
        epochs: seen as f64 / train_idx.len() as f64,
        flops: 3.0 * module_flops * seen as f64 + target_share,
        model_epochs: (3.0 * module_flops * seen as f64 + target_share)
            / (3.0 * model_flops * n_train),
        seconds: start.elapsed().as_secs_f64() + teacher.seconds / classes as f64,
        energy_j: None,
        validation: before.zip(after).map(|(b, a)| ModuleValidation {
            images: val_idx.len(),
            error: [b.0, a.0],
            agreement: [b.1, a.1],
        }),
        train_loss: [mean(&losses[..tenth]), mean(&losses[steps - tenth..])],
        config: cfg.clone(),
        checks: curve,
        kept_step,
        steps,
    });
    Ok(())
}

/// The training loss and sign agreement of the engine's model on `val` (targets and floors in
/// `val`'s order): a forward pass, which changes nothing (frozen BatchNorms, no step); `None`
/// without images.
fn validate(
    engine: &mut GradEngine,
    val: &Dataset,
    (targets, floors): (&[f32], Option<&[f32]>),
    batch_size: usize,
) -> Result<Option<(f64, f64)>, TangleError> {
    if val.is_empty() {
        return Ok(None);
    }
    let (mut err, mut agree, mut first) = (0.0, 0usize, 0);
    for batch in val.batches(batch_size) {
        let b = batch?;
        let n = b.labels.len();
        let (loss, correct) = engine.loss_for(
            &b.images,
            Target::Margins {
                targets: &targets[first..first + n],
                floors: floors.map(|f| &f[first..first + n]),
            },
        )?;
        err += loss * n as f64;
        agree += correct;
        first += n;
    }
    Ok(Some((err / first as f64, agree as f64 / first as f64)))
}

#[cfg(test)]
mod tests {
    use super::ModelLogits;

    #[test]
    fn top_margin_is_the_largest_class_margin() {
        let logits = vec![0.5, -1.0, 2.0, 1.5, 3.0, 3.0, -2.0, 0.0];
        let t = ModelLogits {
            logits,
            classes: 4,
            seconds: 0.0,
            flops: 0.0,
        };
        for i in 0..2 {
            let max = (0..4)
                .map(|c| t.margin(i, c))
                .fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(t.top_margin(i), max, "image {i}");
        }
        assert_eq!(t.top_margin(0), t.margin(0, 2));
    }
}
