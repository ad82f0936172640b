//! Channel-level decomposition on tiny BatchNorm ResNets with option-A shortcuts: physical
//! extraction equals the masked full model, `tau = 0` reproduces element-level concern
//! identification at channel granularity, channel-module artifacts reject bad input, and
//! the CLI runs the stages one by one.

use std::path::Path;

use crate::support::{cifar_file, decomp};

use decomp_data::Dataset;
use decomp_ir::analysis::cost;
use decomp_ir::channel::{ChannelPlan, channel_spaces, extract, reference};
use decomp_ir::{
    ActivationRate, ChannelConfig, ChannelModule, Compensation, DecompConfig, IrError, ModelIr, Op,
    PositiveFilter, TensorData, read_artifact, write_artifact,
};
use decomp_model::{Device, Engine, Executor, Probe, ResNetConfig, to_vec};

/// A deterministic value in `[-1, 1)` for index `i` and seed `s` (no RNG dependency).
fn noise(i: usize, s: u64) -> f32 {
    let mut x =
        (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ s.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x % 2_000_000) as f32 / 1_000_000.0 - 1.0
}

/// A ResNet of `depth` with BatchNorm statistics perturbed so that channels differ.
fn model(depth: usize, seed: u64) -> ModelIr {
    let mut m = ResNetConfig::new(depth, 4)
        .with_input([3, 12, 12])
        .with_seed(seed)
        .build()
        .expect("build");
    for (k, node) in m.graph.nodes.iter_mut().enumerate() {
        if let Op::BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            ..
        } = &mut node.op
        {
            for c in 0..gamma.data.len() {
                gamma.data[c] = 0.6 + 0.5 * noise(c, seed + k as u64).abs();
                beta.data[c] = 0.3 * noise(c + 100, seed + k as u64);
                running_mean.data[c] = 0.2 * noise(c + 200, seed + k as u64);
                running_var.data[c] = 0.5 + noise(c + 300, seed + k as u64).abs();
            }
        }
    }
    m
}

/// A plan keeping a pseudo-random subset (at least one channel per group), with random
/// non-negative fills when `fills`.
fn plan(m: &ModelIr, seed: u64, keep: f32, fills: bool) -> ChannelPlan {
    let shapes = m.check().expect("valid");
    let spaces = channel_spaces(&m.graph, &shapes).expect("spaces");
    let mut p = ChannelPlan::keep_all(&spaces);
    for (gi, g) in p.groups.iter_mut().enumerate() {
        for c in 0..g.kept.len() {
            g.kept.set(
                c,
                c == 0 || noise(c, seed * 31 + gi as u64) * 0.5 + 0.5 < keep,
            );
        }
        if fills {
            for (si, f) in g.fill.iter_mut().enumerate() {
                for (c, v) in f.iter_mut().enumerate() {
                    *v = (noise(c + 7, seed + 1000 * gi as u64 + si as u64) * 0.5 + 0.5) * 0.8;
                }
            }
        }
    }
    p
}

fn input(n: usize, seed: u64) -> Vec<f32> {
    (0..n * 3 * 12 * 12).map(|i| 1.5 * noise(i, seed)).collect()
}

fn outputs(
    m: &ModelIr,
    masks: &[decomp_ir::NodeMask],
    x: &[f32],
    n: usize,
    engine: Engine,
) -> Vec<f32> {
    let exec = Executor::with_engine(m, &Device::flex(), engine).expect("executor");
    let masks = exec.compile_masks(masks).expect("masks");
    let out = exec
        .forward_probe(
            exec.input_tensor(x.to_vec(), n).expect("input"),
            &Probe {
                capture: &[],
                masks: Some(&masks),
            },
        )
        .expect("forward");
    to_vec(out.logits)
}

/// Each case: (depth, plan seed, kept fraction, compensation). The extracted graph and the
/// masked full model agree to 1e-5 (relative to the output scale) on random inputs, on the
/// burn engine and on the CPU plan, and the extracted graph is smaller whenever a channel
/// is removed.
#[test]
fn extracted_module_equals_masked_full_model() {
    let cases = [
        (8, 1, 1.0, false),
        (8, 2, 0.5, false),
        (8, 3, 0.5, true),
        (14, 4, 0.3, true),
        (14, 5, 0.7, false),
        (20, 6, 0.2, true),
    ];
    for (depth, seed, keep, fills) in cases {
        let m = model(depth, seed);
        let p = plan(&m, seed, keep, fills);
        let head = decomp_tangle::binary_head(&m, 1).expect("head");
        let small = extract(&m, &head, 1, &p).expect("extract");
        let (full, masks) = reference(&m, &head, 1, &p).expect("reference");
        let x = input(6, seed);
        let b = outputs(&full, &masks, &x, 6, Engine::Burn);
        for engine in [Engine::Burn, Engine::Cpu] {
            let a = outputs(&small, &[], &x, 6, engine);
            let scale = b.iter().fold(1.0f32, |s, v| s.max(v.abs()));
            let diff = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |d, (x, y)| d.max((x - y).abs()));
            assert!(
                diff <= 1e-5 * scale,
                "depth {depth} seed {seed} {engine:?}: max difference {diff} (scale {scale})"
            );
        }
        let (kept, total) = p.kept_channels();
        // Same two-way head on both sides: multiply-accumulates drop exactly when a channel goes.
        let (cs, cf) = (
            cost(&small.graph, &small.check().expect("valid")),
            cost(&full.graph, &full.check().expect("valid")),
        );
        assert_eq!(
            kept < total,
            cs.macs < cf.macs,
            "depth {depth} seed {seed}: {kept}/{total} channels, {cs:?} vs {cf:?}"
        );
        if fills && kept < total {
            assert!(
                small
                    .graph
                    .nodes
                    .iter()
                    .any(|n| matches!(n.op, Op::BiasMap { .. })),
                "compensation folds into bias maps"
            );
        }
    }
}

/// The residual stream of each stage is one channel space: stem and every block's Add of
/// a stage share it, and each block's inner channels are a space of their own.
#[test]
fn residual_streams_are_one_space() {
    let m = model(14, 0); // 2 blocks per stage
    let shapes = m.check().expect("valid");
    let s = channel_spaces(&m.graph, &shapes).expect("spaces");
    let space = |name: &str| s.of_node[m.graph.find(name).expect(name)].expect("has a space");
    assert_eq!(space("bn1"), space("layer1.0.add"));
    assert_eq!(space("layer1.0.add"), space("layer1.1.add"));
    assert_ne!(space("layer1.1.add"), space("layer2.0.add"));
    assert_eq!(space("layer2.0.add"), space("layer2.1.add"));
    assert_ne!(space("layer1.0.bn1"), space("layer1.1.bn1"));
    // 3 streams + 6 blocks' inner channels.
    assert_eq!(s.prunable().len(), 9);
}

/// With `tau = 0` and no tangling, a channel is kept exactly when element-level concern
/// identification (same positives) finds any of its positions active.
#[test]
fn tau_zero_reproduces_element_masks() {
    let m = model(8, 3);
    let data = Dataset::synthetic(4, 12, [3, 12, 12], 2);
    let exec = Executor::new(&m, &Device::flex()).expect("executor");
    let cfg = DecompConfig {
        positives_per_class: 10,
        positive_filter: PositiveFilter::All,
        ..DecompConfig::default()
    };
    let classes = [0, 1, 2, 3];
    let (sites, elem) =
        decomp_concern::identify(&exec, &m, &data, &cfg, &classes, 8, &mut |_, _| {})
            .expect("identify");
    let (csites, chan) =
        decomp_concern::identify_channels(&exec, &m, &data, &cfg, &classes, 8, &mut |_, _| {})
            .expect("channels");
    assert_eq!(sites, csites);
    let shapes = exec.shapes();
    for (e, (class, positives, stats)) in elem.iter().zip(&chan) {
        assert_eq!(e.class, *class);
        assert_eq!(&e.positives, positives, "same positives");
        for (mask, st) in e.inactive.masks.iter().zip(&stats.sites) {
            let hw = shapes[mask.node][1] * shapes[mask.node][2];
            for c in 0..st.frac_active.len() {
                let active = (0..hw).any(|p| !mask.zeroed.get(c * hw + p));
                assert_eq!(
                    active,
                    st.frac_active[c] > 0.0,
                    "class {class} node {} channel {c}",
                    mask.node
                );
                assert_eq!(active, st.any_active[c] > 0.0);
            }
        }
        let ch = decomp_ir::ClassChannels {
            class: *class,
            positives: positives.clone(),
            concerned: stats.clone(),
            unconcerned: None,
        };
        let ccfg = ChannelConfig {
            tau: 0.0,
            tau_neg: 2.0,
            rate: ActivationRate::MeanPositions,
            compensation: Compensation::Off,
            ..ChannelConfig::default()
        };
        let p = decomp_tangle::channel_plan(&m, &ch.concerned, None, &ccfg).expect("plan");
        for g in &p.groups {
            for c in 0..g.kept.len() {
                let any = g
                    .sites
                    .iter()
                    .any(|&s| stats.site(s).expect("site").frac_active[c] > 0.0);
                assert_eq!(g.kept.get(c), any || g.kept.count_ones() == 1);
            }
        }
    }
}

/// The class-2 concern (with its unconcerned statistics) of `model(8, 9)` on `data`, with
/// `positives` positives.
fn class_channels(m: &ModelIr, data: &Dataset, positives: usize) -> decomp_ir::ClassChannels {
    let exec = Executor::new(m, &Device::flex()).expect("executor");
    let cfg = DecompConfig {
        positives_per_class: positives,
        positive_filter: PositiveFilter::All,
        ..DecompConfig::default()
    };
    let (sites, chan) =
        decomp_concern::identify_channels(&exec, m, data, &cfg, &[2], 8, &mut |_, _| {})
            .expect("channels");
    let (class, positives, stats) = chan.into_iter().next().expect("one class");
    let (sample, per) = decomp_tangle::unconcerned_sample(data, class, positives.len(), 0);
    let neg = decomp_tangle::channel_untangle(&exec, data, &sites, &sample, 8, &mut |_| {})
        .expect("untangle");
    decomp_ir::ClassChannels {
        class,
        positives,
        concerned: stats,
        unconcerned: Some(decomp_ir::UnconcernedStats {
            images: sample,
            per_class: per,
            stats: neg,
        }),
    }
}

/// Budget selection's and reconstruction's data: `data` on `device`, batches of 8.
fn fit_data<'a>(data: &'a Dataset, device: &'a Device) -> decomp_tangle::FitData<'a> {
    decomp_tangle::FitData {
        train: data,
        device,
        batch_size: 8,
    }
}

/// The origin of the modules these tests build.
fn test_origin() -> decomp_tangle::ModuleOrigin<'static> {
    decomp_tangle::ModuleOrigin {
        model_hash: "h",
        model_path: "p",
        provenance: "test".into(),
    }
}

/// Budget selection keeps the module within its FLOPs budget (the bias maps of removed
/// inputs aside) and reconstruction, on the same channels, brings the module's margins
/// closer to the model's own on the module's sample. Both refuse to run without data.
#[test]
fn budget_selection_and_reconstruction() {
    let m = model(8, 9);
    // 96 images: enough rows to refit the first two stages (12x12 and 6x6 maps), too few
    // for the 3x3 maps of the last, which keeps its weights.
    let data = Dataset::synthetic(4, 60, [3, 12, 12], 4);
    let ch = class_channels(&m, &data, 48);
    let cfg = DecompConfig::default();
    let origin = test_origin();
    let device = Device::flex();
    let fit = fit_data(&data, &device);
    let budget = ChannelConfig {
        budget: Some(0.5),
        fit_images: 96,
        ..ChannelConfig::default()
    };
    let rec_cfg = ChannelConfig {
        reconstruct: true,
        ..budget.clone()
    };
    let build = |c: &ChannelConfig| {
        decomp_tangle::build_channel_module(&m, &ch, &cfg, c, &origin, Some(&fit)).expect("module")
    };
    let (plain, rec) = (build(&budget), build(&rec_cfg));
    assert_eq!(plain.plan, rec.plan, "reconstruction keeps the selection");
    let (kept, total) = plain.plan.kept_channels();
    assert!(kept < total, "something was removed");
    let ratio = plain.cost.flops as f64 / plain.model_cost.flops as f64;
    assert!(ratio <= 0.55, "FLOPs ratio {ratio} over the 0.5 budget");
    // Margins on the module's sample: the model's `z_c - mean of the others` against each
    // module's `mine - other`.
    let class = ch.class;
    let mut idx = ch.positives.clone();
    idx.extend(&ch.unconcerned.as_ref().expect("unconcerned").images);
    let view = data.select(&idx).expect("select");
    let margins = |model: &ModelIr, k: usize| -> Vec<f32> {
        let e = Executor::new(model, &device).expect("exec");
        let mut out = Vec::new();
        for b in view.batches(8) {
            let b = b.expect("batch");
            let n = b.labels.len();
            let z = to_vec(
                e.forward(e.input_tensor(b.images, n).expect("x"))
                    .expect("fwd"),
            );
            for row in z.chunks(k) {
                out.push(if k == 2 {
                    row[0] - row[1]
                } else {
                    let others: f32 = row.iter().sum::<f32>() - row[class];
                    row[class] - others / (k - 1) as f32
                });
            }
        }
        out
    };
    let want = margins(&m, 4);
    let err = |got: Vec<f32>| -> f64 {
        got.iter()
            .zip(&want)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / want.len() as f64
    };
    // Keeping every channel, reconstruction reproduces the model up to the ridge.
    let all = build(&ChannelConfig {
        budget: Some(1.0),
        ..rec_cfg.clone()
    });
    assert_eq!(all.plan.kept_channels().0, all.plan.kept_channels().1);
    let worst = margins(&all.module, 2)
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 0.05,
        "full reconstruction moved a margin by {worst}"
    );
    // Plain least squares (1 pass) and the default ReLU-aware passes (3) both reduce the
    // margin error, and the passes change the fit.
    let one = build(&ChannelConfig {
        relu_passes: 1,
        ..rec_cfg.clone()
    });
    assert_eq!(one.plan, rec.plan, "passes keep the selection");
    let (e_plain, e_one, e_rec) = (
        err(margins(&plain.module, 2)),
        err(margins(&one.module, 2)),
        err(margins(&rec.module, 2)),
    );
    assert!(
        e_one < e_plain && e_rec < e_plain,
        "reconstruction should reduce the margin error: {e_one} (1 pass), {e_rec} (3) vs {e_plain}"
    );
    assert_ne!(e_one, e_rec, "ReLU-aware passes left the fit unchanged");
    let none = decomp_tangle::build_channel_module(&m, &ch, &cfg, &rec_cfg, &origin, None)
        .expect_err("no data refused");
    assert!(none.to_string().contains("training images"), "{none}");
}

/// A budget-selected module of `m` (removed channels at zero: far from the model's margins)
/// and the same module after module training on 40 model epochs of synthetic images; the
/// held-out margin error must at least halve.
fn train_a_module(
    m: &ModelIr,
) -> (
    ChannelModule,
    ChannelModule,
    decomp_tangle::ModelLogits,
    Dataset,
    decomp_ir::ModuleTrainConfig,
) {
    let data = Dataset::synthetic(4, 60, [3, 12, 12], 4);
    let ch = class_channels(m, &data, 48);
    let origin = test_origin();
    let device = Device::flex();
    let fit = fit_data(&data, &device);
    let ccfg = ChannelConfig {
        budget: Some(0.3),
        compensation: decomp_ir::Compensation::Off,
        fit_images: 96,
        ..ChannelConfig::default()
    };
    let built = decomp_tangle::build_channel_module(
        m,
        &ch,
        &DecompConfig::default(),
        &ccfg,
        &origin,
        Some(&fit),
    )
    .expect("module");
    let teacher = decomp_tangle::ModelLogits::compute(m, &data, &device, 8).expect("logits");
    assert_eq!(teacher.logits.len(), data.len() * 4);
    let tc = decomp_ir::ModuleTrainConfig {
        budget_epochs: 40.0,
        lr: 1e-3,
        batch_size: 16,
        validation_images: 48,
        ..Default::default()
    };
    let mut trained = built.clone();
    decomp_tangle::train_channel_module(&mut trained, &teacher, &data, &tc).expect("train");
    let v = trained
        .training
        .as_ref()
        .and_then(|t| t.validation.as_ref())
        .expect("training record with held-out images");
    assert_eq!(v.images, 48);
    assert!(
        v.error[1] < 0.5 * v.error[0],
        "held-out margin error {} -> {}",
        v.error[0],
        v.error[1]
    );
    assert_ne!(trained.module, built.module, "weights moved");
    (built, trained, teacher, data, tc)
}

/// Module training on a budget-selected module: it spends what the budget allows, the
/// held-out margin error falls, the BatchNorm statistics stay, the record says what was
/// spent, and a budget too small for one batch is refused by class.
#[test]
fn module_training_distils_the_margin() {
    let m = model(8, 9);
    let (built, trained, teacher, data, tc) = train_a_module(&m);
    let t = trained.training.as_ref().expect("training record");
    let (mf, mm) = (built.cost.macs as f64, built.model_cost.macs as f64);
    let want = ((40.0 * 3.0 * mm * 240.0 / 4.0 - mm * 240.0 / 4.0) / (3.0 * mf)).floor();
    assert_eq!(t.images as f64, want);
    // A quarter of the 40-epoch budget, short of the part of an image the floor dropped.
    let spent = (3.0 * mf * want + mm * 240.0 / 4.0) / (3.0 * mm * 240.0);
    assert!((t.model_epochs - spent).abs() < 1e-9, "{}", t.model_epochs);
    assert!(
        t.model_epochs <= 10.0 && t.model_epochs > 9.99,
        "{}",
        t.model_epochs
    );
    let stats = |g: &ModelIr| -> Vec<Vec<f32>> {
        g.graph
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                decomp_ir::Op::BatchNorm2d { running_mean, .. } => Some(running_mean.data.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        stats(&trained.module),
        stats(&built.module),
        "BatchNorms stay frozen"
    );
    let tiny = decomp_ir::ModuleTrainConfig {
        budget_epochs: 1e-6,
        ..tc
    };
    let err = decomp_tangle::train_channel_module(&mut built.clone(), &teacher, &data, &tiny)
        .expect_err("a budget of no images");
    assert!(
        err.to_string().contains("module training of class 2"),
        "{err}"
    );
}

/// Hold-out checks: a learning rate far too large ruins the module by the end; with checks
/// the module kept is never worse on the hold-out than the reconstruction (the
/// reconstruction itself when no check beats it), and the record lists every check; without
/// checks the ruined end is kept, and its record says so.
#[test]
fn module_training_keeps_the_best_hold_out_check() {
    let m = model(8, 9);
    let (built, _, teacher, data, tc) = train_a_module(&m);
    let wild = decomp_ir::ModuleTrainConfig {
        budget_epochs: 4.0,
        lr: 0.05,
        warmup: 0.0,
        ..tc
    };
    let record = |cfg: &decomp_ir::ModuleTrainConfig| {
        let mut module = built.clone();
        decomp_tangle::train_channel_module(&mut module, &teacher, &data, cfg).expect("train");
        let t = module.training.clone().expect("record");
        (module, t)
    };
    let (ended, end) = record(&decomp_ir::ModuleTrainConfig {
        checks: 0,
        ..wild.clone()
    });
    let v = end.validation.as_ref().expect("hold-out");
    assert!(end.checks.is_empty());
    assert_eq!(end.kept_step, end.steps, "without checks the end is kept");
    assert!(
        v.error[1] > v.error[0],
        "the wild rate should end worse than it started: {} -> {}",
        v.error[0],
        v.error[1]
    );
    let (kept, best) = record(&wild);
    let w = best.validation.as_ref().expect("hold-out");
    assert_eq!(w.error[0], v.error[0], "the same reconstruction");
    assert_eq!(best.checks.len(), 5);
    assert_eq!(best.checks.last().map(|c| c.step), Some(best.steps));
    assert_eq!(
        best.checks[4].error, v.error[1],
        "the last check is the end"
    );
    let lowest = best
        .checks
        .iter()
        .map(|c| c.error)
        .fold(w.error[0], f64::min);
    assert_eq!(w.error[1], lowest, "the best of the start and the checks");
    assert!(w.error[1] < v.error[1]);
    if best.kept_step == 0 {
        assert_eq!(kept.module, built.module, "the reconstruction kept");
    } else {
        assert_ne!(kept.module, ended.module, "an earlier check kept");
    }
    // The record survives the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("module_002.mod");
    write_artifact(&path, &kept).expect("write");
    let back: ChannelModule = read_artifact(&path).expect("read back");
    assert_eq!(back, kept);
}

/// [`decomp_ir::ModuleTrainConfig`] as format version 5 wrote it (no `checks`).
#[derive(serde::Serialize, serde::Deserialize)]
struct TrainConfigV5 {
    budget_epochs: f64,
    lr: f64,
    batch_size: usize,
    validation_images: usize,
    seed: u64,
    competitive: Option<f32>,
    warmup: f64,
}

impl From<&decomp_ir::ModuleTrainConfig> for TrainConfigV5 {
    fn from(c: &decomp_ir::ModuleTrainConfig) -> Self {
        Self {
            budget_epochs: c.budget_epochs,
            lr: c.lr,
            batch_size: c.batch_size,
            validation_images: c.validation_images,
            seed: c.seed,
            competitive: c.competitive,
            warmup: c.warmup,
        }
    }
}

/// [`ChannelConfig`] as format version 5 wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChannelConfigV5 {
    tau: f32,
    tau_neg: f32,
    rate: ActivationRate,
    compensation: Compensation,
    budget: Option<f32>,
    reconstruct: bool,
    relu_passes: u32,
    fit_head: bool,
    fit_images: usize,
    train: Option<TrainConfigV5>,
}

/// [`decomp_ir::ModuleTraining`] as format version 5 wrote it (no checks).
#[derive(serde::Serialize, serde::Deserialize)]
struct TrainingV5 {
    images: usize,
    epochs: f64,
    flops: f64,
    model_epochs: f64,
    seconds: f64,
    energy_j: Option<f64>,
    validation: Option<decomp_ir::ModuleValidation>,
    train_loss: [f64; 2],
    config: TrainConfigV5,
}

/// [`ChannelModule`] as format version 5 wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChannelModuleV5 {
    class: usize,
    class_name: String,
    model_hash: String,
    model_path: String,
    module: ModelIr,
    plan: ChannelPlan,
    config: DecompConfig,
    channel: ChannelConfigV5,
    counts: decomp_ir::SampleCounts,
    cost: decomp_ir::analysis::Cost,
    model_cost: decomp_ir::analysis::Cost,
    provenance: String,
    training: Option<TrainingV5>,
}

impl decomp_ir::Artifact for ChannelModuleV5 {
    const KIND: decomp_ir::ArtifactKind = decomp_ir::ArtifactKind::ChannelModule;
}

/// Trained modules written before the hold-out checks (format version 5: the modules a
/// session carried in `models/carry/` among them) still read, as trained without checks:
/// the end kept, after all the steps their images took.
#[test]
fn trained_modules_of_format_version_5_read_as_keeping_the_end() {
    let m = model(8, 9);
    let (_, mut trained, ..) = train_a_module(&m);
    let t = trained.training.clone().expect("record");
    // As `decomp tangle --train` records it (the configuration in both places).
    trained.channel.train = Some(t.config.clone());
    let c = &trained.channel;
    let old = ChannelModuleV5 {
        class: trained.class,
        class_name: trained.class_name.clone(),
        model_hash: trained.model_hash.clone(),
        model_path: trained.model_path.clone(),
        module: trained.module.clone(),
        plan: trained.plan.clone(),
        config: trained.config.clone(),
        channel: ChannelConfigV5 {
            tau: c.tau,
            tau_neg: c.tau_neg,
            rate: c.rate,
            compensation: c.compensation,
            budget: c.budget,
            reconstruct: c.reconstruct,
            relu_passes: c.relu_passes,
            fit_head: c.fit_head,
            fit_images: c.fit_images,
            train: c.train.as_ref().map(TrainConfigV5::from),
        },
        counts: trained.counts.clone(),
        cost: trained.cost.clone(),
        model_cost: trained.model_cost.clone(),
        provenance: trained.provenance.clone(),
        training: Some(TrainingV5 {
            images: t.images,
            epochs: t.epochs,
            flops: t.flops,
            model_epochs: t.model_epochs,
            seconds: t.seconds,
            energy_j: t.energy_j,
            validation: t.validation.clone(),
            train_loss: t.train_loss,
            config: TrainConfigV5::from(&t.config),
        }),
    };
    let (mut bytes, _) = decomp_ir::encode_artifact(&old).expect("encode");
    bytes[8..10].copy_from_slice(&5u16.to_le_bytes());
    let back: ChannelModule =
        decomp_ir::decode_artifact(&bytes, Path::new("v5.mod")).expect("a version-5 module reads");
    let mut want = trained.clone();
    want.channel.train.as_mut().expect("trained").checks = 0;
    let w = want.training.as_mut().expect("record");
    w.config.checks = 0;
    w.checks.clear();
    w.steps = t.images.div_ceil(t.config.batch_size);
    w.kept_step = w.steps;
    assert_eq!(
        w.steps, t.steps,
        "every step of the training, as recorded now"
    );
    assert_eq!(back, want);
}

/// The paper's setting: module training of a ResNet without BatchNorm (the zoo's models).
#[test]
fn module_training_distils_the_margin_without_batch_norm() {
    let m = ResNetConfig::new(8, 4)
        .with_input([3, 12, 12])
        .with_seed(9)
        .with_batch_norm(false)
        .build()
        .expect("build");
    assert!(
        !m.graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::BatchNorm2d { .. })),
        "a model without BatchNorm"
    );
    train_a_module(&m);
}

fn module_file(dir: &Path) -> (std::path::PathBuf, ChannelModule) {
    let m = model(8, 9);
    let data = Dataset::synthetic(4, 10, [3, 12, 12], 4);
    let cfg = DecompConfig {
        positives_per_class: 8,
        positive_filter: PositiveFilter::All,
        ..DecompConfig::default()
    };
    let ch = class_channels(&m, &data, 8);
    let ccfg = ChannelConfig {
        tau: 0.3,
        tau_neg: 0.5,
        ..ChannelConfig::default()
    };
    let origin = test_origin();
    let module =
        decomp_tangle::build_channel_module(&m, &ch, &cfg, &ccfg, &origin, None).expect("module");
    let path = dir.join("module_002.mod");
    write_artifact(&path, &module).expect("write");
    (path, module)
}

/// Round trip, then each case damages one field and names what the reader reports.
#[test]
fn channel_module_files_reject_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, module) = module_file(dir.path());
    let back: ChannelModule = read_artifact(&path).expect("read back");
    assert_eq!(back, module);
    assert!(module.cost.flops < module.model_cost.flops);
    type Mutate = fn(&mut ChannelModule);
    let cases: &[(Mutate, &str)] = &[
        (|m| m.cost.flops += 1, "recorded cost"),
        (
            |m| m.module.meta.class_names.push("x".into()),
            "expected [3]",
        ),
        (
            |m| {
                let out = m.module.graph.output;
                m.module.graph.nodes[out].op = Op::Linear {
                    weight: TensorData::zeros(vec![3, 1]),
                    bias: None,
                };
            },
            "weight: expected shape [3,",
        ),
        (
            |m| {
                let id = m
                    .module
                    .graph
                    .nodes
                    .iter()
                    .position(|n| matches!(n.op, Op::ChannelGather { .. }))
                    .expect("a gather");
                if let Op::ChannelGather { sources, .. } = &mut m.module.graph.nodes[id].op {
                    sources[0] = Some(999);
                }
            },
            "reads input channel 999",
        ),
    ];
    for (mutate, want) in cases {
        let mut bad = module.clone();
        mutate(&mut bad);
        let p = dir.path().join("bad.mod");
        write_artifact(&p, &bad).expect("write");
        let err = read_artifact::<ChannelModule>(&p)
            .expect_err("must be rejected")
            .to_string();
        assert!(
            err.contains("bad.mod") && err.contains(want),
            "{want}: {err}"
        );
    }
    // An element-level module reader refuses a channel module by kind, and vice versa.
    let err = read_artifact::<decomp_ir::ModuleIr>(&path).expect_err("wrong kind");
    assert!(
        matches!(err, IrError::WrongKind { .. }) && err.to_string().contains("channel-module"),
        "{err}"
    );
    let m = model(8, 1);
    let mp = dir.path().join("m.ir");
    write_artifact(&mp, &m).expect("write");
    let err = read_artifact::<ChannelModule>(&mp)
        .expect_err("wrong kind")
        .to_string();
    assert!(
        err.contains("artifact kind is model, expected channel-module"),
        "{err}"
    );
}

/// concern -> tangle -> compose -> inspect at channel granularity through the binary, and
/// `decompose` giving the same module files in one go.
#[test]
fn channel_stages_run_alone_on_previous_artifacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let model = ResNetConfig::new(8, 10).build().expect("build");
    let m = d.join("m.ir");
    write_artifact(&m, &model).expect("write model");
    let data = d.join("records.bin");
    cifar_file(&data, 40);
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let common = [
        "--weights",
        &s(&m),
        "--data-file",
        &s(&data),
        "--batch-size",
        "8",
        "--positives",
        "3",
        "--positive-filter",
        "all",
    ];
    let thresholds = [
        "--granularity",
        "channel",
        "--tau",
        "0.4",
        "--tau-neg",
        "0.6",
    ];
    let cs = d.join("c.ccs");
    let mut args = vec![
        "concern",
        "--granularity",
        "channel",
        "--out",
        cs.to_str().expect("utf8"),
    ];
    args.extend(common);
    let (ok, _, err) = decomp(&args);
    assert!(ok, "{err}");
    let stage = d.join("stages");
    let mut args = vec![
        "tangle",
        "--concern",
        cs.to_str().expect("utf8"),
        "--out-dir",
        stage.to_str().expect("utf8"),
    ];
    args.extend(thresholds);
    args.extend(&common[..6]);
    let (ok, _, err) = decomp(&args);
    assert!(ok, "{err}");
    // `--classes` builds only those modules; a class the concern set lacks is refused.
    let two = d.join("two");
    for (classes, ok_wanted) in [("2", true), ("2,11", false)] {
        let mut args = vec![
            "tangle",
            "--concern",
            cs.to_str().expect("utf8"),
            "--out-dir",
            two.to_str().expect("utf8"),
            "--classes",
            classes,
        ];
        args.extend(thresholds);
        args.extend(&common[..6]);
        let (ok, _, err) = decomp(&args);
        assert_eq!(ok, ok_wanted, "--classes {classes}: {err}");
        if !ok {
            assert!(
                err.contains("has no class 11") && err.contains("c.ccs"),
                "{err}"
            );
        }
    }
    let built: Vec<_> = std::fs::read_dir(&two)
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".mod"))
        .collect();
    assert_eq!(built, vec!["module_002.mod".to_string()]);
    let one = d.join("one");
    let mut args = vec!["decompose", "--out-dir", one.to_str().expect("utf8")];
    args.extend(thresholds);
    args.extend(common);
    let (ok, _, err) = decomp(&args);
    assert!(ok, "{err}");
    let mods: Vec<String> = (0..10)
        .map(|c| s(&stage.join(format!("module_{c:03}.mod"))))
        .collect();
    for (c, p) in mods.iter().enumerate() {
        let a: ChannelModule = read_artifact(Path::new(p)).expect("stage module");
        let b: ChannelModule =
            read_artifact(&one.join(format!("module_{c:03}.mod"))).expect("decompose module");
        assert_eq!(a.module, b.module, "class {c}");
        assert_eq!(a.plan, b.plan);
    }
    let mut args: Vec<&str> = vec!["compose"];
    args.extend(mods.iter().map(String::as_str));
    let (ms, ds) = (s(&m), s(&data));
    let margins = s(&dir.path().join("margins.json"));
    args.extend(["--data-file", &ds, "--json", "--reference-model", &ms]);
    args.extend(["--save-margins", &margins]);
    let (ok, out, err) = decomp(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["n"], 40);
    // The saved margins let `vote` recompose the same modules without running them.
    let (ok, vout, err) = decomp(&[
        "vote",
        "--margins",
        &margins,
        "--pick",
        "0:0,0:1,0:2,0:3,0:4,0:5,0:6,0:7,0:8,0:9",
        "--json",
    ]);
    assert!(ok, "{err}");
    let vv: serde_json::Value = serde_json::from_str(vout.trim()).expect("vote JSON");
    let top1 = |x: &serde_json::Value| x.as_f64().expect("top-1");
    assert!(
        (top1(&vv["top1"]) - top1(&v["composed_top1"])).abs() < 1e-9,
        "{vout}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&margins).expect("margins")).expect("JSON");
    assert_eq!(saved["model_top1"], v["model_top1"]);
    assert_eq!(saved["labels"].as_array().expect("labels").len(), 40);
    // `--naive` does not apply to channel modules and is refused, not ignored.
    let mut naive = args.clone();
    naive.push("--naive");
    let (ok, _, err) = decomp(&naive);
    assert!(!ok && err.contains("--naive"), "{err}");
    assert_eq!(v["per_module"].as_array().expect("per module").len(), 10);
    assert!(v["mean_flops_percent"].as_f64().expect("flops %") < 100.0);
    assert!(v["model_top1"].as_f64().is_some());
    let (ok, out, err) = decomp(&["inspect", &mods[0]]);
    assert!(ok, "{err}");
    assert!(out.contains("FLOPs") && out.contains("parameters"), "{out}");
    let (ok, out, err) = decomp(&["inspect", cs.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    assert!(out.contains("channel concern set"), "{out}");
    // Mixing element and channel modules is refused with both file names.
    let (ok, _, err) = decomp(&[
        "compose",
        &mods[0],
        cs.to_str().expect("utf8"),
        "--data-file",
        &s(&data),
    ]);
    assert!(!ok && err.contains("c.ccs"), "{err}");
}
