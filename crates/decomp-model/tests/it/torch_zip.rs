//! A minimal `torch.save` (zip serialization) writer for tests: `data.pkl` plus one raw
//! little-endian `f32` storage per tensor. Shared with `decomp-cli`'s tests through a
//! `#[path]` module, so keep it free of crate-local imports.
#![allow(dead_code)] // each test crate uses a part

use std::io::Write;

use decomp_ir::{ModelIr, Op, TensorData};

/// Pickle protocol 2 of `{name: _rebuild_tensor_v2(storage_i, 0, size, stride, False, OrderedDict())}`.
pub fn data_pkl(tensors: &[(String, &TensorData)]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    let unicode = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| match i32::try_from(v) {
        Ok(v) => {
            p.push(b'J'); // BININT
            p.extend(v.to_le_bytes());
        }
        Err(_) => {
            p.extend([0x8a, 8]); // LONG1, 8 bytes
            p.extend((v as u64).to_le_bytes());
        }
    };
    for (i, (name, t)) in tensors.iter().enumerate() {
        unicode(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        // persistent id ('storage', torch.FloatStorage, key, 'cpu', numel)
        p.push(b'(');
        unicode(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, t.data.len());
        p.extend(b"tQ");
        int(&mut p, 0);
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1].saturating_mul(t.shape[d + 1]);
        }
        for dims in [&t.shape, &stride] {
            p.push(b'(');
            for &d in dims.iter() {
                int(&mut p, d);
            }
            p.push(b't');
        }
        p.push(0x89); // False
        p.extend(b"ccollections\nOrderedDict\n)R");
        p.extend(b"tR");
    }
    p.extend(b"u.");
    p
}

pub fn write_zip_checkpoint(path: &std::path::Path, model: &ModelIr, prefix: &str) {
    write_zip_tensors(path, &state_dict(model, prefix));
}

/// The tensors PyTorch's CIFAR ResNet stores for `model`, named with `prefix`.
pub fn state_dict<'a>(model: &'a ModelIr, prefix: &str) -> Vec<(String, &'a TensorData)> {
    let mut tensors: Vec<(String, &TensorData)> = Vec::new();
    for node in &model.graph.nodes {
        let n = format!("{prefix}{}", node.name);
        match &node.op {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                tensors.push((format!("{n}.weight"), weight));
                if let Some(b) = bias {
                    tensors.push((format!("{n}.bias"), b));
                }
            }
            Op::BatchNorm2d {
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => {
                tensors.push((format!("{n}.weight"), gamma));
                tensors.push((format!("{n}.bias"), beta));
                tensors.push((format!("{n}.running_mean"), running_mean));
                tensors.push((format!("{n}.running_var"), running_var));
            }
            _ => {}
        }
    }
    tensors
}

/// Writes `tensors` as a zip checkpoint. Each storage holds `data` as given, and the
/// pickle declares `shape` as given: a test may make them disagree.
pub fn write_zip_tensors(path: &std::path::Path, tensors: &[(String, &TensorData)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).expect("create"));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).expect("entry");
    z.write_all(&data_pkl(tensors)).expect("pkl");
    for (i, (_, t)) in tensors.iter().enumerate() {
        z.start_file(format!("archive/data/{i}"), opts)
            .expect("entry");
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        z.write_all(&bytes).expect("storage");
    }
    z.start_file("archive/version", opts).expect("entry");
    z.write_all(b"3\n").expect("version");
    z.finish().expect("finish");
}
