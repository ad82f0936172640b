//! Integration tests of the IR: validation, artifact round trip, golden bytes, and a
//! property test feeding corrupted files to the reader.

use std::path::Path;

use decomp_ir::{
    Artifact, ArtifactKind, BitSet, Graph, InputNorm, IrError, ModelIr, ModelMeta, Op, TensorData,
    decode_artifact, encode_artifact, read_artifact, read_artifact_limited, write_artifact,
};
use proptest::prelude::*;

mod channel;

fn t(shape: &[usize], seed: f32) -> TensorData {
    let n = shape.iter().product();
    TensorData {
        shape: shape.to_vec(),
        data: (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect(),
    }
}

/// A small model using every op kind.
fn tiny_model() -> ModelIr {
    let mut g = Graph::new([3, 8, 8]);
    let c1 = g.push(
        "conv1",
        Op::Conv2d {
            weight: t(&[4, 3, 3, 3], 1.0),
            bias: Some(t(&[4], 2.0)),
            stride: [1, 1],
            padding: [1, 1],
            groups: 1,
        },
        vec![0],
    );
    let bn = g.push(
        "bn1",
        Op::BatchNorm2d {
            gamma: t(&[4], 3.0),
            beta: t(&[4], 4.0),
            running_mean: t(&[4], 5.0),
            running_var: TensorData {
                shape: vec![4],
                data: vec![1.0, 2.0, 0.5, 1.5],
            },
            eps: 1e-5,
        },
        vec![c1],
    );
    let r = g.push("relu", Op::Relu, vec![bn]);
    let mp = g.push(
        "pool",
        Op::MaxPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        },
        vec![r],
    );
    let sc = g.push(
        "short",
        Op::ShortcutA {
            stride: 1,
            pad_before: 2,
            pad_after: 2,
        },
        vec![mp],
    );
    let c2 = g.push(
        "conv2",
        Op::Conv2d {
            weight: t(&[8, 2, 3, 3], 6.0),
            bias: None,
            stride: [1, 1],
            padding: [1, 1],
            groups: 2,
        },
        vec![mp],
    );
    let add = g.push("add", Op::Add, vec![c2, sc]);
    let ap = g.push(
        "avg",
        Op::AvgPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        },
        vec![add],
    );
    let gp = g.push("gap", Op::GlobalAvgPool, vec![ap]);
    let f = g.push("flatten", Op::Flatten, vec![gp]);
    g.push(
        "linear",
        Op::Linear {
            weight: t(&[3, 8], 7.0),
            bias: Some(t(&[3], 8.0)),
        },
        vec![f],
    );
    ModelIr {
        meta: ModelMeta {
            arch: "tiny".into(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            input_norm: InputNorm {
                mean: vec![0.5; 3],
                std: vec![0.25; 3],
            },
            source: "tests".into(),
        },
        graph: g,
    }
}

#[test]
fn shapes_are_inferred() {
    let m = tiny_model();
    let shapes = m.check().expect("valid model");
    let by_name = |n: &str| shapes[m.graph.find(n).expect("node")].clone();
    assert_eq!(by_name("conv1"), vec![4, 8, 8]);
    assert_eq!(by_name("pool"), vec![4, 4, 4]);
    assert_eq!(by_name("short"), vec![8, 4, 4]);
    assert_eq!(by_name("avg"), vec![8, 2, 2]);
    assert_eq!(by_name("gap"), vec![8, 1, 1]);
    assert_eq!(by_name("linear"), vec![3]);
    assert_eq!(
        m.graph.relu_inputs(),
        vec![m.graph.find("bn1").expect("bn1")]
    );
}

/// Each case: a mutation of the tiny model and a fragment the error must contain.
#[test]
fn bad_shapes_name_the_op() {
    type Mutate = fn(&mut ModelIr);
    let cases: &[(Mutate, &str)] = &[
        (
            |m| {
                m.graph.nodes[1].op = Op::Conv2d {
                    weight: t(&[4, 5, 3, 3], 0.0),
                    bias: None,
                    stride: [1, 1],
                    padding: [1, 1],
                    groups: 1,
                }
            },
            "node 1 (conv1, conv2d): weight: expected shape [4, 3, 3, 3]",
        ),
        (
            |m| {
                if let Op::BatchNorm2d { gamma, .. } = &mut m.graph.nodes[2].op {
                    gamma.data.pop();
                }
            },
            "node 2 (bn1, batchnorm2d): gamma: shape [4] needs 4 values, found 3",
        ),
        (
            |m| m.graph.nodes[7].inputs = vec![6, 4],
            "node 7 (add, add): input shapes differ",
        ),
        (
            |m| m.graph.nodes[3].inputs = vec![5],
            "does not come before it",
        ),
        (
            |m| {
                m.graph.nodes[11].op = Op::Linear {
                    weight: t(&[3, 9], 0.0),
                    bias: None,
                }
            },
            "node 11 (linear, linear): weight: expected shape [3, 8]",
        ),
        (
            |m| {
                m.graph.nodes[4].op = Op::MaxPool2d {
                    kernel: [0, 2],
                    stride: [2, 2],
                    padding: [0, 0],
                }
            },
            "kernel and stride must be non-zero",
        ),
        (
            |m| {
                m.graph.nodes[6].op = Op::Conv2d {
                    weight: t(&[8, 2, 3, 3], 0.0),
                    bias: None,
                    stride: [1, 1],
                    padding: [1, 1],
                    groups: 3,
                }
            },
            "groups 3 must divide",
        ),
        (
            |m| m.meta.class_names.push("d".into()),
            "expected [4] (one logit per class name)",
        ),
        (
            |m| m.meta.input_norm.std = vec![1.0, 0.0, 1.0],
            "finite positive stds",
        ),
        (
            |m| m.graph.nodes[4].name = "relu".into(),
            "duplicate node name",
        ),
        // Issue 19: non-finite numbers and sizes over the limits name the node.
        (
            |m| {
                if let Op::Linear { bias: Some(b), .. } = &mut m.graph.nodes[11].op {
                    b.data[2] = f32::NAN;
                }
            },
            "node 11 (linear, linear): bias: value 2 is NaN, expected a finite number",
        ),
        (
            |m| {
                if let Op::Conv2d { weight, .. } = &mut m.graph.nodes[6].op {
                    weight.data[0] = f32::INFINITY;
                }
            },
            "node 6 (conv2, conv2d): weight: value 0 is inf",
        ),
        (
            |m| {
                if let Op::BatchNorm2d { running_mean, .. } = &mut m.graph.nodes[2].op {
                    running_mean.data[1] = f32::NEG_INFINITY;
                }
            },
            "node 2 (bn1, batchnorm2d): running_mean: value 1 is -inf",
        ),
        (
            |m| {
                if let Op::BatchNorm2d { running_var, .. } = &mut m.graph.nodes[2].op {
                    running_var.data[3] = f32::INFINITY;
                }
            },
            "running_var: value 3 is inf",
        ),
        (
            |m| {
                if let Op::BatchNorm2d { running_var, .. } = &mut m.graph.nodes[2].op {
                    running_var.data[3] = -1.0;
                }
            },
            "running_var: value 3 is -1, expected a variance",
        ),
        (
            |m| {
                if let Op::BatchNorm2d { eps, .. } = &mut m.graph.nodes[2].op {
                    *eps = f64::INFINITY;
                }
            },
            "node 2 (bn1, batchnorm2d): eps is inf, expected a finite positive number",
        ),
        (
            |m| m.meta.input_norm.mean = vec![0.0, f32::NAN, 0.0],
            "finite means",
        ),
        (
            |m| {
                m.graph.nodes[0].op = Op::Input {
                    shape: [3, 5000, 5000],
                }
            },
            "node 0 (input, input): output shape [3, 5000, 5000] holds more than 67108864 values per image (limits::MAX_NODE_VALUES)",
        ),
        (
            |m| {
                m.graph.nodes[0].op = Op::Input {
                    shape: [3, 8, 5000],
                }
            },
            "larger than 4096 pixels on a side (limits::MAX_SPATIAL)",
        ),
        (
            |m| {
                if let Op::Conv2d { padding, .. } = &mut m.graph.nodes[1].op {
                    *padding = [usize::MAX, 1];
                }
            },
            "node 1 (conv1, conv2d): padding [18446744073709551615, 1] is larger than 4096 (limits::MAX_SPATIAL)",
        ),
        (
            |m| {
                if let Op::Conv2d { padding, .. } = &mut m.graph.nodes[1].op {
                    *padding = [4000, 4000];
                }
            },
            "node 1 (conv1, conv2d): the zero-padded input [3, 8008, 8008]",
        ),
        (
            |m| {
                m.graph.nodes[4].op = Op::MaxPool2d {
                    kernel: [2, 2],
                    stride: [1 << 20, 2],
                    padding: [0, 0],
                }
            },
            "stride [1048576, 2] is larger than 4096",
        ),
        (
            |m| {
                m.graph.nodes[5].op = Op::ShortcutA {
                    stride: 1,
                    pad_before: 1 << 30,
                    pad_after: 2,
                }
            },
            "node 5 (short, shortcut_a): output shape [1073741830, 4, 4] holds more than",
        ),
    ];
    for (i, (mutate, expected)) in cases.iter().enumerate() {
        let mut m = tiny_model();
        mutate(&mut m);
        let err = m
            .check()
            .expect_err(&format!("case {i} must fail"))
            .to_string();
        assert!(
            err.contains(expected),
            "case {i}: {err:?} lacks {expected:?}"
        );
    }
}

#[test]
fn round_trip_through_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/model.ir");
    let m = tiny_model();
    let hash = write_artifact(&path, &m).expect("write");
    let back: ModelIr = read_artifact(&path).expect("read");
    assert_eq!(back, m);
    let (_, hash2) = encode_artifact(&m).expect("encode");
    assert_eq!(hash, hash2);
    // Only the artifact is left in the folder: no temporary files.
    let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("ls")
        .collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn content_hash_ignores_provenance() {
    let a = tiny_model();
    let mut b = tiny_model();
    b.meta.source = "another/path/to/the/same/weights.th".into();
    assert_eq!(a.content_hash(), b.content_hash());
    if let Op::Linear {
        bias: Some(bias), ..
    } = &mut b.graph.nodes[11].op
    {
        bias.data[0] += 1.0;
    }
    assert_ne!(a.content_hash(), b.content_hash());
}

#[test]
fn size_limit_and_kind_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.ir");
    write_artifact(&path, &tiny_model()).expect("write");
    let err = read_artifact_limited::<ModelIr>(&path, 100).expect_err("too large");
    assert!(matches!(err, IrError::TooLarge { .. }), "{err}");

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Other(u8);
    impl Artifact for Other {
        const KIND: ArtifactKind = ArtifactKind::Report;
    }
    let err = read_artifact::<Other>(&path)
        .expect_err("wrong kind")
        .to_string();
    assert!(
        err.contains("artifact kind is model, expected report"),
        "{err}"
    );
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_model.ir");
/// The same model written by format versions 1 to 5 (models did not change in versions 2
/// to 6).
const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_model_v1.ir");
const GOLDEN_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_model_v2.ir");
const GOLDEN_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_model_v3.ir");
const GOLDEN_V4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_model_v4.ir");
const GOLDEN_V5: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_model_v5.ir");
/// [`tiny_concern_set`] written by format version 4, before `min_active_fraction`.
const GOLDEN_CS_V4: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/tiny_concern_v4.cs"
);

/// The bytes of format version 6 are frozen: if this fails, the encoding changed and
/// FORMAT_VERSION must be bumped (with a reader for the old version). Regenerate with
/// `DECOMP_UPDATE_GOLDEN=1 cargo test -p decomp-ir`. Version-1 to -5 model files still read.
#[test]
fn golden_file_is_stable() {
    let (bytes, _) = encode_artifact(&tiny_model()).expect("encode");
    if std::env::var_os("DECOMP_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &bytes).expect("write golden");
    }
    let golden = std::fs::read(GOLDEN).expect("golden file is committed");
    assert_eq!(&golden[..8], b"DECOMPIR");
    assert_eq!(
        u16::from_le_bytes([golden[8], golden[9]]),
        6,
        "format version"
    );
    assert_eq!(bytes, golden, "encoding of the tiny model changed");
    let m: ModelIr = decode_artifact(&golden, Path::new(GOLDEN)).expect("decode golden");
    assert_eq!(m, tiny_model());
    for (version, path) in [
        (1u16, GOLDEN_V1),
        (2, GOLDEN_V2),
        (3, GOLDEN_V3),
        (4, GOLDEN_V4),
        (5, GOLDEN_V5),
    ] {
        let old = std::fs::read(path).expect("older golden files are committed");
        assert_eq!(
            u16::from_le_bytes([old[8], old[9]]),
            version,
            "format version"
        );
        let m: ModelIr = decode_artifact(&old, Path::new(path)).expect("decode an older version");
        assert_eq!(m, tiny_model());
        if version >= 4 {
            continue;
        }
        // An older channel module (its payload changed in versions 2, 3 and 4) is refused
        // by name.
        let mut cm = old.clone();
        cm[10..12].copy_from_slice(&(ArtifactKind::ChannelModule as u16).to_le_bytes());
        let e = decode_artifact::<decomp_ir::ChannelModule>(&cm, Path::new("old.mod"))
            .expect_err("older channel module")
            .to_string();
        assert!(
            e.contains(&format!(
                "old.mod: artifact format version {version}, this build reads versions 4..=6"
            )),
            "{e}"
        );
    }
}

/// A concern set of format version 4 (its configuration has no `min_active_fraction`) reads
/// with the paper's rule (0); the current version round-trips a non-zero fraction, also
/// through JSON, where an older report without the field reads as 0.
#[test]
fn configurations_of_version_4_read_with_the_papers_rule() {
    let old = std::fs::read(GOLDEN_CS_V4).expect("committed");
    assert_eq!(u16::from_le_bytes([old[8], old[9]]), 4, "format version");
    let set: decomp_ir::ConcernSet =
        decode_artifact(&old, Path::new(GOLDEN_CS_V4)).expect("decode version 4");
    assert_eq!(set, tiny_concern_set());
    assert_eq!(set.config.min_active_fraction, 0.0);
    let mut new = tiny_concern_set();
    new.config.min_active_fraction = 0.05;
    let (bytes, _) = encode_artifact(&new).expect("encode");
    assert_eq!(bytes.len(), old.len() + 4, "one f32 more");
    let back: decomp_ir::ConcernSet = decode_artifact(&bytes, Path::new("new.cs")).expect("decode");
    assert_eq!(back, new);
    assert_eq!(decomp_ir::decoding_version(), decomp_ir::FORMAT_VERSION);
    let json = serde_json::to_value(&new.config).expect("json");
    let again: decomp_ir::DecompConfig = serde_json::from_value(json.clone()).expect("json");
    assert_eq!(again, new.config);
    let mut older = json;
    older
        .as_object_mut()
        .expect("object")
        .remove("min_active_fraction");
    let read: decomp_ir::DecompConfig = serde_json::from_value(older).expect("older json");
    assert_eq!(read, tiny_concern_set().config);
}

#[test]
fn header_errors_say_what_is_wrong() {
    let (bytes, _) = encode_artifact(&tiny_model()).expect("encode");
    let p = Path::new("x.ir");
    let check = |b: &[u8], frag: &str| {
        let e = decode_artifact::<ModelIr>(b, p)
            .expect_err(frag)
            .to_string();
        assert!(e.contains(frag), "{e:?} lacks {frag:?}");
    };
    check(b"PK\x03\x04", "not a decomp artifact");
    check(&bytes[..30], "truncated header");
    let mut v = bytes.clone();
    v[8] = 9;
    check(&v, "artifact format version 9");
    check(&bytes[..bytes.len() - 1], "declares a");
    let mut v = bytes.clone();
    let last = v.len() - 1;
    v[last] ^= 1;
    check(&v, "SHA-256 does not match");
}

/// Re-seals a payload with a correct header, so corruption reaches the decoder itself.
fn reseal(payload: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::new();
    out.extend_from_slice(b"DECOMPIR");
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(ArtifactKind::Model as u16).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha2::Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

#[test]
fn bitset_operations() {
    let mut a = BitSet::full(70);
    assert_eq!(a.count_ones(), 70);
    let mut b = BitSet::new(70);
    b.set(3, true);
    b.set(69, true);
    assert!(b.is_subset(&a));
    a.intersect_with(&b);
    assert_eq!(a.ones().collect::<Vec<_>>(), vec![3, 69]);
    assert!(!a.get(70));
    assert!(a.check().is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    /// Random byte flips, truncations and insertions anywhere in the file: always an
    /// error (or, for a harmless flip, the same model), never a panic.
    #[test]
    fn corrupted_files_give_errors(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        mode in 0u8..3,
    ) {
        let m = tiny_model();
        let (mut bytes, _) = encode_artifact(&m).expect("encode");
        match mode {
            0 => for (i, x) in &flips { let k = i.index(bytes.len()); bytes[k] ^= x | 1; },
            1 => bytes.truncate(cut.index(bytes.len())),
            _ => { let k = cut.index(bytes.len()); bytes.insert(k, flips[0].1); },
        }
        prop_assert!(decode_artifact::<ModelIr>(&bytes, Path::new("fuzz.ir")).is_err());
    }

    /// Corrupt the payload but fix up length and checksum: the bincode decoder and the
    /// validator must reject or accept without panicking or allocating wildly.
    #[test]
    fn corrupted_payloads_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let m = tiny_model();
        let (bytes, _) = encode_artifact(&m).expect("encode");
        let mut payload = bytes[52..].to_vec();
        for (i, x) in &flips { let k = i.index(payload.len()); payload[k] ^= x; }
        if truncate { payload.truncate(cut.index(payload.len())); }
        if let Ok(back) = decode_artifact::<ModelIr>(&reseal(&payload), Path::new("fuzz.ir")) {
            prop_assert!(back.check().is_ok());
        }
    }
}

/// A small concern set with every configuration field away from its default, so a golden
/// file of it pins the payload layout of the method's configuration.
fn tiny_concern_set() -> decomp_ir::ConcernSet {
    use decomp_ir::{
        BlnRule, ClassConcern, ConcernSet, DecompConfig, MaskSite, NodeMask, PositiveFilter,
        SiteMasks, Top5Ranking, Variant,
    };
    let mut zeroed = BitSet::new(10);
    zeroed.set(3, true);
    zeroed.set(7, true);
    ConcernSet {
        model_hash: "ab".repeat(32),
        model_path: "models/tiny.ir".into(),
        dataset: "cifar10".into(),
        config: DecompConfig {
            variant: Variant::McBlnBi,
            positives_per_class: 7,
            positive_filter: PositiveFilter::Confident(0.9),
            mask_site: MaskSite::ConvOutput,
            bln_rule: BlnRule::OnlyOther,
            bln_delta: 0.25,
            top5_ranking: Top5Ranking::Confidence,
            seed: 11,
            ..DecompConfig::default()
        },
        sites: vec![2],
        classes: vec![ClassConcern {
            class: 1,
            inactive: SiteMasks {
                masks: vec![NodeMask { node: 2, zeroed }],
            },
            positives: vec![4, 5, 9],
        }],
        seconds: 1.5,
    }
}
