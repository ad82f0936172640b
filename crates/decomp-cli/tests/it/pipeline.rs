//! Concern identification, tangling identification, modularization and composition on a
//! tiny randomly initialized ResNet and synthetic images.

use decomp_compose::{Mode, compose, label_rank, vote};
use decomp_data::Dataset;
use decomp_ir::{
    DecompConfig, ModelIr, ModuleIr, NodeMask, PositiveFilter, Top5Ranking, Variant, read_artifact,
    write_artifact,
};
use decomp_model::{Device, Executor, ResNetConfig, to_vec};

const K: usize = 4;

fn setup() -> (ModelIr, Dataset, Executor) {
    let model = ResNetConfig::new(8, K)
        .with_input([3, 16, 16])
        .with_seed(5)
        .build()
        .expect("build");
    let data = Dataset::synthetic(K, 24, [3, 16, 16], 9);
    let exec = Executor::new(&model, &Device::flex()).expect("executor");
    (model, data, exec)
}

fn cfg(variant: Variant, positives: usize) -> DecompConfig {
    // A random model gets few images right: every image of the class is a positive.
    DecompConfig {
        variant,
        positives_per_class: positives,
        positive_filter: PositiveFilter::All,
        ..DecompConfig::default()
    }
}

fn modules(model: &ModelIr, data: &Dataset, exec: &Executor, cfg: &DecompConfig) -> Vec<ModuleIr> {
    let classes: Vec<usize> = (0..K).collect();
    let (_, concerns) =
        decomp_concern::identify(exec, model, data, cfg, &classes, 16, &mut |_, _| {})
            .expect("concern");
    concerns
        .iter()
        .map(|c| {
            let (sample, per) =
                decomp_tangle::unconcerned_sample(data, c.class, c.positives.len(), cfg.seed);
            let untangled = decomp_tangle::untangle(exec, data, c, &sample, 0.0, 16, &mut |_| {})
                .expect("tangle");
            let origin = decomp_tangle::ModuleOrigin {
                model_hash: "h",
                model_path: "p",
                provenance: "test".into(),
            };
            decomp_tangle::build_module(model, c, &untangled, sample.len(), per, cfg, &origin)
                .expect("module")
        })
        .collect()
}

fn logits(exec: &Executor, data: &Dataset) -> Vec<f32> {
    let b = data.batch(0..data.len()).expect("batch");
    to_vec(
        exec.forward(exec.input_tensor(b.images, data.len()).expect("input"))
            .expect("forward"),
    )
}

fn argmax(r: &[f32]) -> usize {
    (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b })
}

#[test]
fn voting_rule() {
    // (margins, expected vote)
    let cases: &[(&[f32], usize)] = &[
        (&[-1.0, 2.0, 0.5], 1),   // two voters: the more confident
        (&[-1.0, -0.2, -3.0], 1), // no voter: the most confident overall
        (&[0.1, -5.0, -0.1], 0),  // one voter
        (&[0.0, 0.0], 0),         // tie without voters: first
    ];
    for (m, want) in cases {
        assert_eq!(vote(m), *want, "{m:?}");
    }
    let m = [0.3, -0.1, 2.0, -4.0];
    assert_eq!(label_rank(&m, 2, Top5Ranking::VotersFirst), 0);
    assert_eq!(label_rank(&m, 0, Top5Ranking::VotersFirst), 1);
    assert_eq!(label_rank(&m, 3, Top5Ranking::Confidence), 3);
}

/// With empty masks a module's margin is monotone in the model's logit, so composing the
/// K modules reproduces the model's argmax on every image.
#[test]
fn empty_masks_reproduce_the_model() {
    let (model, data, exec) = setup();
    let mut mods = modules(&model, &data, &exec, &cfg(Variant::CiTiMc, 8));
    for m in &mut mods {
        m.masks.clear();
    }
    let run = compose(
        &mods,
        &data,
        &Device::flex(),
        16,
        Top5Ranking::VotersFirst,
        Mode::Batched,
        &mut |_| {},
    )
    .expect("compose");
    let l = logits(&exec, &data);
    for (i, &p) in run.predicted.iter().enumerate() {
        assert_eq!(p, argmax(&l[i * K..(i + 1) * K]), "image {i}");
    }
    assert_eq!(
        run.model_rank
            .as_ref()
            .expect("model evaluated")
            .iter()
            .filter(|&&r| r == 0)
            .count(),
        run.label_rank.iter().filter(|&&r| r == 0).count()
    );
}

/// More concerned images can only shrink the inactive set; adding unconcerned images can
/// only shrink it further.
#[test]
fn masks_shrink_monotonically() {
    let (model, data, exec) = setup();
    let classes: Vec<usize> = (0..K).collect();
    let mut previous: Option<Vec<decomp_ir::ClassConcern>> = None;
    for n in [2, 6, 24] {
        let c = DecompConfig {
            positive_filter: PositiveFilter::All,
            ..cfg(Variant::CiTiMc, n)
        };
        let (_, concerns) =
            decomp_concern::identify(&exec, &model, &data, &c, &classes, 8, &mut |_, _| {})
                .expect("concern");
        for cc in &concerns {
            assert_eq!(cc.positives.len(), n);
            let (sample, _) = decomp_tangle::unconcerned_sample(&data, cc.class, n, 0);
            let untangled = decomp_tangle::untangle(&exec, &data, cc, &sample, 0.0, 8, &mut |_| {})
                .expect("tangle");
            for (u, ci) in untangled.iter().zip(&cc.inactive.masks) {
                assert!(
                    u.zeroed.is_subset(&ci.zeroed),
                    "TI may only remove inactive positions"
                );
            }
        }
        if let Some(prev) = &previous {
            for (a, b) in concerns.iter().zip(prev) {
                for (x, y) in a.inactive.masks.iter().zip(&b.inactive.masks) {
                    assert!(
                        x.zeroed.is_subset(&y.zeroed),
                        "class {}: more positives grew a mask",
                        a.class
                    );
                }
            }
        }
        previous = Some(concerns);
    }
}

/// A module answers "mine" for its class's training images at least as often as the model
/// predicts that class (on the positives, masks only zero non-positive values).
#[test]
fn modules_recognize_their_class() {
    let (model, data, exec) = setup();
    let mods = modules(&model, &data, &exec, &cfg(Variant::McBln, 1000));
    let l = logits(&exec, &data);
    let run = compose(
        &mods,
        &data,
        &Device::flex(),
        16,
        Top5Ranking::VotersFirst,
        Mode::Batched,
        &mut |_| {},
    )
    .expect("compose");
    for c in 0..K {
        let idx = data.indices_of_class(c);
        let model_says = idx
            .iter()
            .filter(|&&i| argmax(&l[i * K..(i + 1) * K]) == c)
            .count();
        let module_says = idx.iter().filter(|&&i| run.margins[i][c] > 0.0).count();
        assert!(
            module_says >= model_says,
            "class {c}: module {module_says} < model {model_says}"
        );
    }
}

/// The batched composed forward and the naive one-pass-per-module path agree.
#[test]
fn batched_equals_naive() {
    let (model, data, exec) = setup();
    for variant in Variant::ALL {
        // Few positives: large masks that often fire on other images.
        let mods = modules(&model, &data, &exec, &cfg(variant, 3));
        assert!(mods.iter().any(|m| !m.masks.is_empty()));
        let dev = Device::flex();
        let a = compose(
            &mods,
            &data,
            &dev,
            16,
            Top5Ranking::VotersFirst,
            Mode::Batched,
            &mut |_| {},
        )
        .expect("batched");
        let b = compose(
            &mods,
            &data,
            &dev,
            16,
            Top5Ranking::VotersFirst,
            Mode::Naive,
            &mut |_| {},
        )
        .expect("naive");
        assert_eq!(a.predicted, b.predicted, "{variant:?}");
        assert_eq!(a.label_rank, b.label_rank, "{variant:?}");
        for (x, y) in a.margins.iter().flatten().zip(b.margins.iter().flatten()) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{variant:?}: {x} vs {y}"
            );
        }
    }
}

/// A module written to disk and read back equals the freshly computed one, and running
/// the same decomposition twice gives the same module (deterministic sampling).
#[test]
fn stored_module_round_trips() {
    let (model, data, exec) = setup();
    let mods = modules(&model, &data, &exec, &cfg(Variant::McBlnBi, 5));
    let again = modules(&model, &data, &exec, &cfg(Variant::McBlnBi, 5));
    assert_eq!(mods, again);
    let dir = tempfile::tempdir().expect("tempdir");
    for m in &mods {
        let p = dir.path().join(format!("m{}.mod", m.class));
        write_artifact(&p, m).expect("write");
        let back: ModuleIr = read_artifact(&p).expect("read");
        assert_eq!(&back, m);
    }
    // A damaged mask is rejected on read.
    let mut bad = mods[0].clone();
    bad.masks.push(NodeMask {
        node: 1,
        zeroed: decomp_ir::BitSet::new(3),
    });
    let p = dir.path().join("bad.mod");
    write_artifact(&p, &bad).expect("write");
    let err = read_artifact::<ModuleIr>(&p)
        .expect_err("invalid mask")
        .to_string();
    assert!(err.contains("has 3 bits"), "{err}");
}

/// MC-BLN zeroes head weights of the units it removes; BI only adds dead positions.
#[test]
fn variants_relate() {
    let (model, data, exec) = setup();
    let mc = modules(&model, &data, &exec, &cfg(Variant::CiTiMc, 6));
    let bln = modules(
        &model,
        &data,
        &exec,
        &DecompConfig {
            bln_delta: 0.05,
            ..cfg(Variant::McBln, 6)
        },
    );
    let bi = modules(
        &model,
        &data,
        &exec,
        &DecompConfig {
            bln_delta: 0.05,
            ..cfg(Variant::McBlnBi, 6)
        },
    );
    for ((a, b), c) in mc.iter().zip(&bln).zip(&bi) {
        assert_eq!(a.masks, b.masks);
        assert_eq!(b.masks, c.masks);
        assert_eq!(b.head, c.head);
        assert!(a.dead.is_empty());
        let removed: usize = b.dead.iter().map(|m| m.zeroed.count_ones()).sum();
        let removed_bi: usize = c.dead.iter().map(|m| m.zeroed.count_ones()).sum();
        assert!(removed_bi >= removed);
        let f = b.head.weight.shape[1];
        let zero_cols = (0..f)
            .filter(|&u| b.head.weight.data[u] == 0.0 && b.head.weight.data[f + u] == 0.0)
            .count();
        let units = decomp_tangle::bln_units(&a.head, b.config.bln_rule, 0.05).len();
        assert_eq!(zero_cols, units);
        if units > 0 {
            assert!(
                removed > 0,
                "removed head units must push dead positions back"
            );
        }
    }
}
