//! Training IR-built ResNets: from scratch or from an imported checkpoint (fine-tuning), with
//! checkpoints that resume bit for bit.
//!
//! - [`TrainConfig`]: optimizer ([`OptimizerConfig`]: SGD with momentum and weight decay, or
//!   Adam), base learning rate and [`Schedule`] (step or cosine), epochs, batch size,
//!   augmentation ([`AugmentConfig`]) and seed. Named recipes (`he2016`, `paper-keras`) are
//!   presets of this struct, kept in `experiments/recipes.toml`.
//! - [`Trainer`]: one training run. [`Trainer::run_epoch`] trains one epoch and validates;
//!   [`Trainer::checkpoint`] captures everything needed to continue ([`TrainCheckpoint`]:
//!   model, optimizer state, epochs done, metrics history, best epoch so far), and
//!   [`Trainer::resume`] continues from one.
//!
//! Two training engines compute the steps, chosen as the [`Executor`](crate::Executor)'s engine is
//! ([`Engine`], from the [`Runtime`] the binary built from `DECOMP_ENGINE`): on the `flex`
//! (CPU) device [`Engine::Auto`] trains on the CPU engine's kernels ([`GradEngine`] and
//! [`CpuOptimizer`]) when it can differentiate the model, burn autodiff otherwise;
//! [`Engine::Burn`] forces burn autodiff (the path on GPUs and the reference),
//! [`Engine::Cpu`] the CPU engine. Both run the same batches, augmentation,
//! learning rate per step, validation and checkpoints; a checkpoint's `optimizer` bytes are
//! the engine's own state (burn's record, or [`CpuOptimizer::to_bytes`], told apart by its
//! magic), so a run resumes on the engine that wrote it: under [`Engine::Auto`] that engine
//! is chosen, an explicit other engine is refused.
//!
//! Determinism: every random choice of epoch `e` (shuffle order, augmentation) is drawn from
//! generators seeded by `(seed, e)`, parameters have name-derived ids so the optimizer state
//! reattaches to a rebuilt model, and an epoch only ever starts from a checkpoint taken at an
//! epoch boundary. A run killed anywhere and resumed therefore repeats exactly the epochs an
//! uninterrupted run would have computed (the CPU backend computes the same floats for the
//! same inputs).
//!
//! No file I/O here: the caller writes checkpoints, metrics and the best model.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData as BurnData};
use decomp_data::{Augmentation, Batch, Dataset};
use decomp_ir::{Artifact, ArtifactKind, ModelIr};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::ModelError;
use crate::burn_resnet::ResNet;
use crate::executor::{Engine, check_finite, to_vec};
use crate::{CpuOptimizer, CpuTuning, ExecutorSource, GradEngine, Runtime};

/// The optimizer and its hyper-parameters (the learning rate is [`TrainConfig::lr`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerConfig {
    /// SGD with momentum; `weight_decay` is an L2 penalty added to the gradient.
    Sgd {
        momentum: f64,
        /// PyTorch's dampening (0 = the usual heavy-ball momentum).
        dampening: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// Adam; `weight_decay` is an L2 penalty added to the gradient (Keras-style kernel
    /// regularization, not AdamW's decoupled decay).
    Adam {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        weight_decay: f64,
    },
}

/// How the learning rate changes over training. Progress is the fraction of all epochs done
/// (`epoch / epochs`), so a short run follows the same shape as a full-length one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// The base learning rate throughout.
    Constant,
    /// Piecewise constant by epoch: from the first epoch whose progress is at least
    /// `milestones[i]`, the rate is `lr * factors[i]` (absolute factors, not cumulative).
    Step {
        milestones: Vec<f64>,
        factors: Vec<f64>,
    },
    /// Cosine annealing per step from `lr` to `lr * min_factor` over the whole run.
    Cosine { min_factor: f64 },
}

/// Training augmentation, applied on the fly to every training batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Black padding (pixels per side) before a random crop to the original size.
    pub pad_crop: usize,
    /// Random shift as a fraction of the image size, edges repeated.
    pub shift: f32,
    /// Random horizontal flip.
    pub flip: bool,
}

impl From<AugmentConfig> for Augmentation {
    fn from(a: AugmentConfig) -> Self {
        Augmentation {
            pad_crop: a.pad_crop,
            shift: a.shift,
            flip: a.flip,
        }
    }
}

/// Everything that decides a training run's arithmetic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub optimizer: OptimizerConfig,
    /// Base learning rate.
    pub lr: f64,
    pub schedule: Schedule,
    pub epochs: usize,
    pub batch_size: usize,
    pub augment: AugmentConfig,
    /// Seeds the shuffle order and augmentation of every epoch.
    pub seed: u64,
    /// Batch size of the validation pass (no effect on the result).
    pub eval_batch_size: usize,
}

impl TrainConfig {
    /// Checks the values a user can get wrong; the error names the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, msg: String| Err(ModelError::Config(format!("{field}: {msg}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if self.epochs == 0 {
            return bad("epochs", "0, expected at least 1".into());
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch_size", "0, expected at least 1".into());
        }
        if let Schedule::Step {
            milestones,
            factors,
        } = &self.schedule
        {
            if milestones.len() != factors.len() {
                return bad(
                    "schedule",
                    format!(
                        "{} milestones but {} factors, expected one factor per milestone",
                        milestones.len(),
                        factors.len()
                    ),
                );
            }
            if milestones.windows(2).any(|w| w[0] > w[1])
                || milestones.iter().any(|m| !(0.0..=1.0).contains(m))
            {
                return bad(
                    "schedule.milestones",
                    format!("{milestones:?}, expected increasing fractions of the run in [0, 1]"),
                );
            }
        }
        let finite_in = |field: &str, v: f64, lo: f64, hi: f64| -> Result<(), ModelError> {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                bad(field, format!("{v}, expected a number in [{lo}, {hi}]"))
            }
        };
        match self.optimizer {
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                weight_decay,
                ..
            } => {
                finite_in("momentum", momentum, 0.0, 1.0)?;
                finite_in("dampening", dampening, 0.0, 1.0)?;
                finite_in("weight_decay", weight_decay, 0.0, 1.0)?;
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => {
                finite_in("beta1", beta1, 0.0, 1.0)?;
                finite_in("beta2", beta2, 0.0, 1.0)?;
                finite_in("epsilon", epsilon, 0.0, 1.0)?;
                finite_in("weight_decay", weight_decay, 0.0, 1.0)?;
            }
        }
        match &self.schedule {
            Schedule::Step { factors, .. } => {
                for &f in factors {
                    finite_in("schedule.factors", f, 0.0, 1e6)?;
                }
            }
            Schedule::Cosine { min_factor } => {
                finite_in("schedule.min_factor", *min_factor, 0.0, 1.0)?
            }
            Schedule::Constant => {}
        }
        if !(0.0..1.0).contains(&self.augment.shift) {
            return bad(
                "augment.shift",
                format!("{}, expected [0, 1)", self.augment.shift),
            );
        }
        Ok(())
    }

    /// The learning rate at `epoch` after `step` of `steps` batches of that epoch.
    pub fn lr_at(&self, epoch: usize, step: usize, steps: usize) -> f64 {
        let epochs = self.epochs as f64;
        match &self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step {
                milestones,
                factors,
            } => {
                let progress = epoch as f64 / epochs;
                let factor = milestones
                    .iter()
                    .zip(factors)
                    .filter(|(m, _)| progress + 1e-9 >= **m)
                    .map(|(_, f)| *f)
                    .next_back()
                    .unwrap_or(1.0);
                self.lr * factor
            }
            Schedule::Cosine { min_factor } => {
                let t = (epoch as f64 + step as f64 / steps.max(1) as f64) / epochs;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos());
                self.lr * (min_factor + (1.0 - min_factor) * cos)
            }
        }
    }

    fn optimizer(&self) -> ModuleOptimizer {
        match self.optimizer {
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => SgdConfig::new()
                .with_momentum((momentum > 0.0).then_some(MomentumConfig {
                    momentum,
                    dampening,
                    nesterov,
                }))
                .with_weight_decay(
                    (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)),
                )
                .init(),
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => AdamConfig::new()
                .with_beta_1(beta1 as f32)
                .with_beta_2(beta2 as f32)
                .with_epsilon(epsilon as f32)
                .with_weight_decay(
                    (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)),
                )
                .init(),
        }
    }
}

/// What one epoch measured (a row of the run's `metrics.json`, typed with the reports).
pub use decomp_eval::report::EpochMetrics;

/// The best epoch so far by validation accuracy (by training accuracy without validation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    pub epoch: usize,
    pub accuracy: f64,
}

/// A training run's complete resumable state, taken at an epoch boundary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainCheckpoint {
    pub config: TrainConfig,
    /// Identifies the training data (dataset, classes, split); resuming on other data is
    /// refused. Chosen by the caller.
    pub data_id: String,
    /// The model after `epochs_done` epochs (parameters and BatchNorm statistics).
    pub model: ModelIr,
    /// The optimizer state of the engine that trained: burn's record (burnpack bytes, keyed
    /// by name-derived parameter ids) or [`CpuOptimizer::to_bytes`] (starts with
    /// the magic `decomp-cpu-optm\x01`).
    pub optimizer: Vec<u8>,
    pub epochs_done: usize,
    pub history: Vec<EpochMetrics>,
    pub best: Option<BestEpoch>,
}

impl Artifact for TrainCheckpoint {
    const KIND: ArtifactKind = ArtifactKind::TrainCheckpoint;

    fn validate(&self) -> Result<(), String> {
        self.model.check().map_err(|e| e.to_string())?;
        if self.history.len() != self.epochs_done {
            return Err(format!(
                "{} epochs done but {} rows of metrics, expected one row per epoch",
                self.epochs_done,
                self.history.len()
            ));
        }
        Ok(())
    }
}

/// The outcome of one epoch.
#[derive(Clone, Debug)]
pub struct EpochOutcome {
    pub metrics: EpochMetrics,
    /// True when this epoch is the new best (the caller saves the model).
    pub improved: bool,
}

/// The model and optimizer of one training engine. The model is `None` after a failed step
/// (a failed run is never checkpointed).
#[allow(clippy::large_enum_variant)] // one per training run
enum Backend {
    /// burn autodiff; the model lives on the autodiff device.
    Burn {
        model: Option<ResNet>,
        optim: ModuleOptimizer,
    },
    /// The CPU engine's kernels; the model is IR inside the engine.
    Cpu {
        engine: Option<GradEngine>,
        optim: CpuOptimizer,
    },
}

/// One training run: the model with its training engine, its optimizer and its history.
pub struct Trainer {
    config: TrainConfig,
    data_id: String,
    /// The model as IR: names, shapes and metadata; parameters are written back on export
    /// (burn engine only).
    template: ModelIr,
    /// The plain device and the engine configuration (validation runs an executor of it).
    runtime: Runtime,
    backend: Backend,
    epochs_done: usize,
    history: Vec<EpochMetrics>,
    best: Option<BestEpoch>,
}

/// Says where in the run (`at`: epoch and step, or validation) a training or non-finite
/// error happened.
fn located(e: ModelError, at: &str) -> ModelError {
    match e {
        ModelError::Train(msg) => ModelError::Train(format!("{at}: {msg}")),
        e @ ModelError::NonFinite { .. } => ModelError::Train(format!("{at}, {e}")),
        e => e,
    }
}

/// Seed of the random stream `stream` of `epoch` (64-bit mix of the three).
fn epoch_seed(seed: u64, epoch: usize, stream: u64) -> u64 {
    let mut z = seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The CPU training engine for `model` when `engine` picks it on `device`, else `None`
/// (burn autodiff). [`Engine::Cpu`] off `flex`, or on a model the engine cannot
/// differentiate, is an error.
pub(crate) fn cpu_engine(
    model: &ModelIr,
    device: &Device,
    engine: Engine,
    tuning: CpuTuning,
) -> Result<Option<GradEngine>, ModelError> {
    let is_flex = *device == Device::flex();
    let engine = match engine {
        Engine::Burn => Ok(None),
        Engine::Auto if !is_flex => Ok(None),
        Engine::Auto => Ok(GradEngine::new(model.clone()).ok()),
        Engine::Cpu if !is_flex => Err(ModelError::Config(format!(
            "the cpu training engine runs on the flex device only, not {device:?}"
        ))),
        Engine::Cpu => GradEngine::new(model.clone()).map(Some),
    }?;
    Ok(engine.map(|g| g.with_tuning(tuning)))
}

/// Why a model neither training engine takes cannot be trained: burn autodiff builds CIFAR
/// ResNets only, and the CPU engine differentiates a fixed set of ops (an imported VGG or
/// MobileNet decomposes and composes, but does not train).
fn untrainable(model: &ModelIr, burn: ModelError) -> ModelError {
    let cpu = GradEngine::new(model.clone())
        .err()
        .map_or_else(String::new, |e| format!("; CPU training engine: {e}"));
    ModelError::Train(format!(
        "{} cannot be trained: burn-autodiff training builds CIFAR ResNets only ({burn}){cpu}",
        model.meta.arch
    ))
}

/// The name (`DECOMP_ENGINE` value) of an engine that wrote optimizer state (for errors).
fn engine_name(cpu: bool) -> &'static str {
    if cpu { "cpu" } else { "burn" }
}

impl Trainer {
    /// A new run starting from `init` (random initialization or imported weights) on the
    /// training engine [`Engine::Auto`] picks (see the module docs). `device` is the
    /// plain device; burn autodiff trains on its autodiff version.
    pub fn new(
        init: ModelIr,
        config: TrainConfig,
        data_id: String,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::with_engine(init, config, data_id, device, Engine::Auto)
    }

    /// Like [`Trainer::new`] with an explicit training engine.
    pub fn with_engine(
        init: ModelIr,
        config: TrainConfig,
        data_id: String,
        device: &Device,
        engine: Engine,
    ) -> Result<Self, ModelError> {
        Self::start(init, config, data_id, Runtime::new(device.clone()), engine)
    }

    /// Like [`Trainer::new`] with the engine and CPU tuning of `runtime` (training and
    /// validation).
    pub fn with_runtime(
        init: ModelIr,
        config: TrainConfig,
        data_id: String,
        runtime: &Runtime,
    ) -> Result<Self, ModelError> {
        Self::start(init, config, data_id, runtime.clone(), runtime.engine)
    }

    /// A new run training on `engine`, validating with executors of `runtime`.
    fn start(
        init: ModelIr,
        config: TrainConfig,
        data_id: String,
        runtime: Runtime,
        engine: Engine,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let device = &runtime.device;
        let backend = match cpu_engine(&init, device, engine, runtime.tuning)? {
            Some(engine) => Backend::Cpu {
                engine: Some(engine),
                optim: CpuOptimizer::new(config.optimizer.clone()),
            },
            None => Backend::Burn {
                model: Some(
                    ResNet::from_ir(&init, &device.clone().autodiff())
                        .map_err(|e| untrainable(&init, e))?,
                ),
                optim: config.optimizer(),
            },
        };
        Ok(Self {
            config,
            data_id,
            template: init,
            runtime,
            backend,
            epochs_done: 0,
            history: Vec::new(),
            best: None,
        })
    }

    /// Continues the run a checkpoint was taken from. `config` and `data_id` must be the
    /// ones it was taken with, except `epochs`, which may grow (train longer). The training
    /// engine is [`Engine::Auto`]'s choice, the one that wrote the checkpoint.
    pub fn resume(
        checkpoint: TrainCheckpoint,
        config: &TrainConfig,
        data_id: &str,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::resume_with_engine(checkpoint, config, data_id, device, Engine::Auto)
    }

    /// Like [`Trainer::resume`] with an explicit training engine, which must be the one that
    /// wrote the checkpoint.
    pub fn resume_with_engine(
        checkpoint: TrainCheckpoint,
        config: &TrainConfig,
        data_id: &str,
        device: &Device,
        engine: Engine,
    ) -> Result<Self, ModelError> {
        Self::restart(
            checkpoint,
            config,
            data_id,
            Runtime::new(device.clone()),
            engine,
        )
    }

    /// Like [`Trainer::resume`] with the engine and CPU tuning of `runtime`; its engine must
    /// be the one that wrote the checkpoint (under [`Engine::Auto`], it is).
    pub fn resume_with_runtime(
        checkpoint: TrainCheckpoint,
        config: &TrainConfig,
        data_id: &str,
        runtime: &Runtime,
    ) -> Result<Self, ModelError> {
        Self::restart(checkpoint, config, data_id, runtime.clone(), runtime.engine)
    }

    /// A resumed run training on `engine`, validating with executors of `runtime`.
    fn restart(
        checkpoint: TrainCheckpoint,
        config: &TrainConfig,
        data_id: &str,
        runtime: Runtime,
        engine: Engine,
    ) -> Result<Self, ModelError> {
        let device = &runtime.device;
        config.validate()?;
        let same = TrainConfig {
            epochs: checkpoint.config.epochs,
            ..config.clone()
        };
        if same != checkpoint.config {
            return Err(ModelError::Config(format!(
                "the checkpoint was taken with a different training configuration: checkpoint {:?}, now {:?}",
                checkpoint.config, config
            )));
        }
        if checkpoint.data_id != data_id {
            return Err(ModelError::Config(format!(
                "the checkpoint was taken on other training data: checkpoint `{}`, now `{data_id}`",
                checkpoint.data_id
            )));
        }
        let written_cpu = CpuOptimizer::owns(&checkpoint.optimizer);
        let engine = match engine {
            Engine::Auto if written_cpu => Engine::Cpu,
            Engine::Auto => Engine::Burn,
            e => e,
        };
        if (engine == Engine::Cpu) != written_cpu {
            return Err(ModelError::Config(format!(
                "the checkpoint was written by the {} training engine and cannot resume on the {} one (set DECOMP_ENGINE={} or auto)",
                engine_name(written_cpu),
                engine_name(!written_cpu),
                engine_name(written_cpu)
            )));
        }
        let backend = match cpu_engine(&checkpoint.model, device, engine, runtime.tuning)? {
            Some(engine) => Backend::Cpu {
                engine: Some(engine),
                optim: CpuOptimizer::from_bytes(config.optimizer.clone(), &checkpoint.optimizer)?,
            },
            None => Backend::Burn {
                model: Some(
                    ResNet::from_ir(&checkpoint.model, &device.clone().autodiff())
                        .map_err(|e| untrainable(&checkpoint.model, e))?,
                ),
                optim: config
                    .optimizer()
                    .from_bytes(Bytes::from_bytes_vec(checkpoint.optimizer))
                    .map_err(|e| {
                        ModelError::Config(format!("optimizer state in the checkpoint: {e}"))
                    })?,
            },
        };
        Ok(Self {
            config: config.clone(),
            data_id: checkpoint.data_id,
            template: checkpoint.model,
            runtime,
            backend,
            epochs_done: checkpoint.epochs_done,
            history: checkpoint.history,
            best: checkpoint.best,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    pub fn finished(&self) -> bool {
        self.epochs_done >= self.config.epochs
    }

    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    pub fn best(&self) -> Option<BestEpoch> {
        self.best
    }

    /// The training engine this run uses: [`Engine::Cpu`] or [`Engine::Burn`].
    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Burn { .. } => Engine::Burn,
            Backend::Cpu { .. } => Engine::Cpu,
        }
    }

    /// The current model as IR (parameters and BatchNorm statistics written back), checked:
    /// a step that left a NaN or infinite parameter behind is an error naming the node, so
    /// such a model is never validated, checkpointed or saved.
    pub fn model_ir(&self) -> Result<ModelIr, ModelError> {
        let lost = || ModelError::Train("the model was lost by a failed step".into());
        let ir = match &self.backend {
            Backend::Burn { model, .. } => {
                let mut ir = self.template.clone();
                model.as_ref().ok_or_else(lost)?.write_into(&mut ir)?;
                ir
            }
            Backend::Cpu { engine, .. } => engine.as_ref().ok_or_else(lost)?.model().clone(),
        };
        ir.check()
            .map_err(|e| ModelError::Train(format!("the trained model is invalid: {e}")))?;
        Ok(ir)
    }

    /// The resumable state after the last finished epoch.
    pub fn checkpoint(&self) -> Result<TrainCheckpoint, ModelError> {
        let optimizer = match &self.backend {
            Backend::Burn { optim, .. } => optim
                .into_bytes()
                .map_err(|e| ModelError::Config(format!("serializing the optimizer state: {e}")))?
                .to_vec(),
            Backend::Cpu { optim, .. } => optim.to_bytes()?,
        };
        Ok(TrainCheckpoint {
            config: self.config.clone(),
            data_id: self.data_id.clone(),
            model: self.model_ir()?,
            optimizer,
            epochs_done: self.epochs_done,
            history: self.history.clone(),
            best: self.best,
        })
    }

    /// Trains the next epoch on `train`, then validates on `val` (may be empty).
    /// `progress(done, total)` is called after every batch with image counts.
    pub fn run_epoch(
        &mut self,
        train: &Dataset,
        val: &Dataset,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<EpochOutcome, ModelError> {
        if train.is_empty() {
            return Err(ModelError::Config("the training split is empty".into()));
        }
        if self.config.batch_size > train.len() {
            return Err(ModelError::Config(format!(
                "batch size {} is larger than the training split ({} images): not one full \
                 batch per epoch; lower --batch-size or use more training images",
                self.config.batch_size,
                train.len()
            )));
        }
        let epoch = self.epochs_done;
        let start = Instant::now();
        let cfg = self.config.clone();
        let order = train.shuffled(epoch_seed(cfg.seed, epoch, 1));
        let mut aug_rng = ChaCha8Rng::seed_from_u64(epoch_seed(cfg.seed, epoch, 2));
        let augmentation = Augmentation::from(cfg.augment);
        let steps = order.len().div_ceil(cfg.batch_size);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (step, batch) in order.batches(cfg.batch_size).enumerate() {
            let mut batch = batch?;
            augmentation.apply(&mut batch, order.normalization(), &mut aug_rng);
            let n = batch.labels.len();
            let lr = cfg.lr_at(epoch, step, steps);
            let (loss_value, right) = self
                .step(batch, lr)
                .map_err(|e| located(e, &format!("epoch {} step {step}", epoch + 1)))?;
            correct += right;
            loss_sum += loss_value * n as f64;
            seen += n;
            progress(seen, order.len());
        }
        let train_s = start.elapsed().as_secs_f64();
        let (val_loss, val_acc) = if val.is_empty() {
            (None, None)
        } else {
            let (l, a) = self
                .evaluate(val)
                .map_err(|e| located(e, &format!("epoch {} validation", epoch + 1)))?;
            (Some(l), Some(a))
        };
        self.epochs_done += 1;
        let train_acc = correct as f64 / seen as f64;
        let metrics = EpochMetrics {
            epoch: self.epochs_done,
            lr: cfg.lr_at(epoch, 0, steps),
            train_loss: loss_sum / seen as f64,
            train_acc,
            val_loss,
            val_acc,
            wall_s: start.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_s,
            energy_j: None,
        };
        let score = val_acc.unwrap_or(train_acc);
        let improved = self.best.is_none_or(|b| score > b.accuracy);
        if improved {
            self.best = Some(BestEpoch {
                epoch: self.epochs_done,
                accuracy: score,
            });
        }
        debug!(
            epoch = self.epochs_done,
            train_loss = metrics.train_loss,
            train_acc,
            val_acc = ?val_acc,
            images_per_s = metrics.images_per_s,
            "epoch done"
        );
        self.history.push(metrics.clone());
        Ok(EpochOutcome { metrics, improved })
    }

    /// One optimizer step at learning rate `lr` on an (already augmented) batch. Returns the
    /// batch's mean cross-entropy and the number of images the model got right before the
    /// update. A NaN or infinite logit is a [`ModelError::NonFinite`] naming the image's
    /// position in the batch and the output node. Public for throughput probes;
    /// [`Trainer::run_epoch`] is the normal entry.
    pub fn step(&mut self, batch: Batch, lr: f64) -> Result<(f64, usize), ModelError> {
        let lost = || ModelError::Train("the model was lost by a failed step".into());
        let (model, optim) = match &mut self.backend {
            Backend::Cpu { engine, optim } => {
                // Taken out so that a failed step leaves no model behind, as on burn's path.
                let mut e = engine.take().ok_or_else(lost)?;
                let out = e.step(optim, &batch.images, &batch.labels, lr)?;
                *engine = Some(e);
                return Ok(out);
            }
            Backend::Burn { model, optim } => (model.take().ok_or_else(lost)?, optim),
        };
        let ad = self.runtime.device.clone().autodiff();
        let n = batch.labels.len();
        let x = Tensor::<4>::from_data(BurnData::new(batch.images, batch.shape), &ad);
        let targets: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
        let y = Tensor::<1, Int>::from_data(BurnData::new(targets, [n]), &ad);
        let logits = model.forward(x);
        let output = &self.template.graph.nodes[self.template.graph.output].name;
        let k = self.template.num_classes();
        check_finite(&to_vec(logits.clone().detach()), k, 0, output, "logit")?;
        let loss = CrossEntropyLossConfig::new()
            .init(&ad)
            .forward(logits.clone(), y);
        let loss_value = f64::from(to_vec(loss.clone().detach())[0]);
        if !loss_value.is_finite() {
            return Err(ModelError::Train(format!(
                "diverged: loss {loss_value} (lower the learning rate)"
            )));
        }
        let predicted = to_vec(logits.detach().argmax(1).float().reshape([n]));
        let correct = predicted
            .iter()
            .zip(&batch.labels)
            .filter(|(p, l)| **p as usize == **l)
            .count();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(lr, model, grads);
        if let Backend::Burn { model: slot, .. } = &mut self.backend {
            *slot = Some(model);
        }
        Ok((loss_value, correct))
    }

    /// Records the caller's energy measurement for the last epoch (before checkpointing).
    pub fn set_last_energy(&mut self, joules: Option<f64>) {
        if let Some(last) = self.history.last_mut() {
            last.energy_j = joules;
        }
    }

    /// Mean cross-entropy and top-1 of the current model on `data` (inference mode: the
    /// IR executor with BatchNorm running statistics). A NaN or infinite logit is a
    /// [`ModelError::NonFinite`] naming the image of `data` and the output node.
    pub fn evaluate(&self, data: &Dataset) -> Result<(f64, f64), ModelError> {
        let ir = self.model_ir()?;
        let exec = self.runtime.executor(&ir)?;
        let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for batch in data.batches(self.config.eval_batch_size) {
            let batch = batch?;
            let n = batch.labels.len();
            let logits = to_vec(exec.forward(exec.input_tensor(batch.images, n)?)?);
            exec.check_logits(&logits, seen)?;
            seen += n;
            let k = logits.len() / n.max(1);
            for (row, &label) in logits.chunks(k).zip(&batch.labels) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
                loss += f64::from(lse - row[label]);
                let arg = decomp_eval::argmax(row);
                correct += usize::from(arg == label);
            }
        }
        let n = data.len() as f64;
        Ok((loss / n, correct as f64 / n))
    }
}
