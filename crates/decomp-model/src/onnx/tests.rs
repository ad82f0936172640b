//! Small ONNX graphs built in code: what each op becomes, and a clear error (never a panic)
//! for every malformed or unsupported file.

use std::path::Path;

use decomp_ir::Op;
use prost::Message;

use super::proto::*;
use super::{OnnxOptions, import_onnx, import_onnx_bytes};
use crate::ModelError;

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn ramp(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32) * 0.37 + seed).sin() * 0.5)
        .collect()
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn value(name: &str, dims: &[Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            }),
        }),
    }
}

fn fixed(v: i64) -> Dimension {
    Dimension {
        dim_value: Some(v),
        dim_param: None,
    }
}

fn param(p: &str) -> Dimension {
    Dimension {
        dim_value: None,
        dim_param: Some(p.into()),
    }
}

/// A model around `nodes` reading `x` [batch, 4, 6, 6] and writing `y`, with CIFAR-style
/// normalization metadata.
fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "test".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: inits,
            input: vec![value("x", &[param("batch"), fixed(4), fixed(6), fixed(6)])],
            output: vec![value("y", &[param("batch"), fixed(3)])],
            ..Default::default()
        }),
        metadata_props: ["input_mean", "input_std"]
            .iter()
            .map(|k| StringStringEntryProto {
                key: k.to_string(),
                value: "0.5,0.5,0.5,0.5".into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Conv -> BN -> ReLU6 -> depthwise conv -> concat -> pool -> flatten via a folded shape
/// chain -> MatMul + Add -> Dropout -> Gemm.
fn every_op() -> ModelProto {
    let nodes = vec![
        node(
            "Conv",
            "/c1/Conv",
            &["x", "c1.weight", "c1.bias"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1]), int("group", 2)],
        ),
        node(
            "BatchNormalization",
            "/bn/BN",
            &[
                "a",
                "bn.weight",
                "bn.bias",
                "bn.running_mean",
                "bn.running_var",
            ],
            &["b"],
            vec![],
        ),
        node("Clip", "/Clip", &["b", "zero", "six"], &["c"], vec![]),
        node(
            "Conv",
            "/dw/Conv",
            &["c", "dw.weight"],
            &["d"],
            vec![ints("pads", &[1, 1, 1, 1]), int("group", 4)],
        ),
        node("Identity", "/Identity", &["d"], &["d2"], vec![]),
        node(
            "Concat",
            "/Concat",
            &["c", "d2"],
            &["e"],
            vec![int("axis", 1)],
        ),
        node(
            "MaxPool",
            "/MaxPool",
            &["e"],
            &["f"],
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ),
        node("Shape", "/Shape", &["f"], &["s"], vec![]),
        node(
            "Gather",
            "/Gather",
            &["s", "idx0"],
            &["n"],
            vec![int("axis", 0)],
        ),
        node("Unsqueeze", "/Unsqueeze", &["n", "axes0"], &["n1"], vec![]),
        node(
            "Concat",
            "/Concat_1",
            &["n1", "minus1"],
            &["target"],
            vec![int("axis", 0)],
        ),
        node("Reshape", "/Reshape", &["f", "target"], &["v"], vec![]),
        node("MatMul", "/MatMul", &["v", "m.weight"], &["h0"], vec![]),
        node("Add", "/Add", &["h0", "m.bias"], &["h"], vec![]),
        node("Dropout", "/Dropout", &["h"], &["h2"], vec![]),
        node(
            "Gemm",
            "/fc/Gemm",
            &["h2", "fc.weight", "fc.bias"],
            &["y"],
            vec![int("transB", 1)],
        ),
    ];
    let inits = vec![
        f32_tensor("c1.weight", &[4, 2, 3, 3], &ramp(72, 0.1)),
        f32_tensor("c1.bias", &[4], &ramp(4, 0.2)),
        f32_tensor("bn.weight", &[4], &[1.0, 0.9, 1.1, 1.2]),
        f32_tensor("bn.bias", &[4], &ramp(4, 0.3)),
        f32_tensor("bn.running_mean", &[4], &ramp(4, 0.4)),
        f32_tensor("bn.running_var", &[4], &[0.5, 1.0, 1.5, 2.0]),
        f32_tensor("zero", &[], &[0.0]),
        f32_tensor("six", &[], &[6.0]),
        f32_tensor("dw.weight", &[4, 1, 3, 3], &ramp(36, 0.5)),
        TensorProto {
            dims: vec![],
            ..i64_tensor("idx0", &[0])
        },
        i64_tensor("axes0", &[0]),
        i64_tensor("minus1", &[-1]),
        f32_tensor("m.weight", &[72, 5], &ramp(360, 0.6)),
        f32_tensor("m.bias", &[5], &ramp(5, 0.7)),
        f32_tensor("fc.weight", &[3, 5], &ramp(15, 0.8)),
        f32_tensor("fc.bias", &[3], &ramp(3, 0.9)),
    ];
    model(nodes, inits)
}

fn import(m: &ModelProto) -> Result<decomp_ir::ModelIr, ModelError> {
    import_onnx_bytes(
        &m.encode_to_vec(),
        Path::new("test.onnx"),
        Path::new("."),
        &OnnxOptions::default(),
    )
}

fn error_of(m: &ModelProto) -> String {
    match import(m) {
        Ok(_) => panic!("import succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_supported_op_maps_onto_the_ir() {
    let m = import(&every_op()).expect("import");
    let kinds: Vec<&str> = m.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(
        kinds,
        [
            "input",
            "conv2d",
            "batchnorm2d",
            "clip",
            "conv2d",
            "concat",
            "maxpool2d",
            "flatten",
            "linear",
            "linear"
        ]
    );
    let names: Vec<&str> = m.graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names[1..3],
        ["c1", "bn"],
        "parameterized nodes are named after their weights"
    );
    assert!(matches!(
        m.graph.nodes[3].op,
        Op::Clip { min: 0.0, max: 6.0 }
    ));
    assert!(
        matches!(&m.graph.nodes[8].op, Op::Linear { bias: Some(b), weight } if b.data.len() == 5 && weight.shape == [5, 72])
    );
    assert_eq!(
        m.graph.relu_inputs(),
        vec![2],
        "the ReLU6 input is a mask site"
    );
    assert_eq!(m.meta.class_names, ["class_0", "class_1", "class_2"]);
}

#[test]
fn truncated_file_is_an_error() {
    let bytes = every_op().encode_to_vec();
    for cut in [1, 7, bytes.len() / 3, bytes.len() - 3] {
        let e = import_onnx_bytes(
            &bytes[..cut],
            Path::new("m.onnx"),
            Path::new("."),
            &OnnxOptions::default(),
        )
        .expect_err("truncated");
        let msg = e.to_string();
        assert!(msg.starts_with("m.onnx: ONNX import: "), "{msg}");
    }
    let e = import_onnx_bytes(
        &bytes[..bytes.len() / 2],
        Path::new("m.onnx"),
        Path::new("."),
        &OnnxOptions::default(),
    )
    .expect_err("truncated");
    assert!(e.to_string().contains("not a valid ONNX protobuf"), "{e}");
}

#[test]
fn damaged_files_never_panic() {
    let bytes = every_op().encode_to_vec();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut errors = 0;
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % b.len() as u64) as usize;
            b[i] ^= (state >> 32) as u8 | 1;
        }
        if import_onnx_bytes(
            &b,
            Path::new("m.onnx"),
            Path::new("."),
            &OnnxOptions::default(),
        )
        .is_err()
        {
            errors += 1;
        }
    }
    assert!(errors > 0);
}

#[test]
fn unknown_op_is_refused_naming_node_and_type() {
    let mut m = every_op();
    let g = m.graph.as_mut().expect("graph");
    g.node[4] = node("LRN", "/lrn/LRN", &["d"], &["d2"], vec![int("size", 3)]);
    let e = error_of(&m);
    assert!(
        e.contains("node '/lrn/LRN' (LRN): operator LRN is not supported"),
        "{e}"
    );
}

#[test]
fn dynamic_input_size_is_refused_unless_given() {
    let mut m = every_op();
    m.graph.as_mut().expect("graph").input[0] =
        value("x", &[param("batch"), fixed(4), param("height"), fixed(6)]);
    let e = error_of(&m);
    assert!(
        e.contains("input 'x' has a dynamic size 'height' at axis 2"),
        "{e}"
    );
    let opts = OnnxOptions {
        input_shape: Some([4, 6, 6]),
        ..Default::default()
    };
    import_onnx_bytes(
        &m.encode_to_vec(),
        Path::new("t.onnx"),
        Path::new("."),
        &opts,
    )
    .expect("with the shape given");
}

#[test]
fn external_data_is_read_beside_the_model_and_missing_data_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = every_op();
    let g = m.graph.as_mut().expect("graph");
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "fc.weight")
        .expect("fc.weight");
    let bytes = std::mem::take(&mut w.raw_data);
    w.data_location = 1;
    w.external_data = vec![
        StringStringEntryProto {
            key: "location".into(),
            value: "weights.bin".into(),
        },
        StringStringEntryProto {
            key: "offset".into(),
            value: "4".into(),
        },
    ];
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, m.encode_to_vec()).expect("write");
    let e = import_onnx(&path, &OnnxOptions::default())
        .expect_err("missing")
        .to_string();
    assert!(
        e.contains("tensor 'fc.weight': external data file") && e.contains("weights.bin"),
        "{e}"
    );
    let mut data = vec![0u8; 4];
    data.extend(&bytes);
    std::fs::write(dir.path().join("weights.bin"), &data).expect("write");
    let with = import_onnx(&path, &OnnxOptions::default()).expect("external data");
    let inline = import(&every_op()).expect("inline");
    assert_eq!(with.graph, inline.graph);
    // A location outside the model's folder is refused.
    let g = m.graph.as_mut().expect("graph");
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "fc.weight")
        .expect("fc.weight");
    w.external_data[0].value = "../weights.bin".into();
    std::fs::write(&path, m.encode_to_vec()).expect("write");
    let e = import_onnx(&path, &OnnxOptions::default())
        .expect_err("outside")
        .to_string();
    assert!(e.contains("plain relative path"), "{e}");
}

#[test]
fn what_the_ir_cannot_express_is_refused_with_the_reason() {
    let cases: Vec<(usize, AttributeProto, &str)> = vec![
        (0, ints("dilations", &[2, 2]), "only dilation 1"),
        (0, ints("pads", &[1, 1, 0, 0]), "asymmetric padding"),
        (6, int("ceil_mode", 1), ""),
    ];
    for (at, a, want) in cases {
        let mut m = every_op();
        let n = &mut m.graph.as_mut().expect("graph").node[at];
        n.attribute.retain(|x| x.name != a.name);
        n.attribute.push(a.clone());
        let r = import(&m);
        if want.is_empty() {
            // ceil_mode on an even map does not change the size: accepted.
            r.expect("ceil_mode without effect");
        } else {
            let e = r.expect_err(&a.name).to_string();
            assert!(e.contains(want) && e.contains("node '"), "{e}");
        }
    }
}

#[test]
fn missing_normalization_and_wrong_class_count_are_refused() {
    let mut m = every_op();
    m.metadata_props.clear();
    assert!(error_of(&m).contains("does not say how its input is normalized"));
    let mut m = every_op();
    m.metadata_props.push(StringStringEntryProto {
        key: "class_names".into(),
        value: "a,b".into(),
    });
    assert!(error_of(&m).contains("2 class names for a model with 3 logits"));
}

#[test]
fn a_node_reading_an_unknown_value_is_refused() {
    let mut m = every_op();
    m.graph.as_mut().expect("graph").node[2].input[0] = "nowhere".into();
    let e = error_of(&m);
    assert!(e.contains("node '/Clip' (Clip): reads 'nowhere'"), "{e}");
}

#[test]
fn a_final_softmax_is_left_out_and_an_inner_one_refused() {
    let mut m = every_op();
    let g = m.graph.as_mut().expect("graph");
    g.node.last_mut().expect("gemm").output[0] = "z".into();
    g.node.push(node(
        "Softmax",
        "/Softmax",
        &["z"],
        &["y"],
        vec![int("axis", 1)],
    ));
    let with = import(&m).expect("final softmax");
    let plain = import(&every_op()).expect("plain");
    assert_eq!(with.graph, plain.graph);
    assert!(
        with.meta.source.contains("final Softmax left out"),
        "{}",
        with.meta.source
    );
    let mut m = every_op();
    let g = m.graph.as_mut().expect("graph");
    g.node[14] = node("Softmax", "/inner", &["h"], &["h2"], vec![]);
    let e = error_of(&m);
    assert!(
        e.contains("node '/inner' (Softmax): Softmax inside the network"),
        "{e}"
    );
}
