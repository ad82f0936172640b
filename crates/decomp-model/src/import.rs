//! Import of PyTorch checkpoints (legacy pickle `.th`/`.pth` and current zip `.pt`).
//!
//! Parsing is done by `pytorch-reader` (the reader behind burn-store's PyTorch support,
//! which reads both the legacy and zip serializations). This module maps tensor names onto
//! an IR skeleton and reports every missing, unexpected or misshapen tensor at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use decomp_ir::{InputNorm, ModelIr, Op, TensorData};
use pytorch_reader::{DType, PytorchReader};

use crate::ModelError;
use crate::resnet::{ResNetConfig, Shortcut};

/// Key prefixes that wrap a state dict: a `{'state_dict': ...}` checkpoint, and the
/// `module.` that `nn.DataParallel` adds.
const WRAPPERS: [&str; 4] = ["state_dict.", "model_state_dict.", "model.", "module."];

/// Tensors that PyTorch stores but inference never reads.
const IGNORED_SUFFIXES: [&str; 1] = ["num_batches_tracked"];

/// Input normalization of the akamaster CIFAR-10 checkpoints (ImageNet statistics).
pub fn akamaster_norm() -> InputNorm {
    InputNorm {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    }
}

/// A checkpoint's tensors as `f32`, keyed by name with wrapper prefixes removed.
pub struct StateDict {
    pub tensors: BTreeMap<String, TensorData>,
}

fn strip(mut key: &str) -> &str {
    while let Some(rest) = WRAPPERS.iter().find_map(|w| key.strip_prefix(w)) {
        key = rest;
    }
    key
}

impl StateDict {
    /// Reads every floating-point tensor of a PyTorch checkpoint; a NaN or infinite value
    /// is an error naming the tensor.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let err = |msg: String| ModelError::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        if !path.is_file() {
            return Err(err("no such file".into()));
        }
        let reader = PytorchReader::new(path).map_err(|e| err(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, t) in reader.tensors() {
            let key = strip(name).to_string();
            if IGNORED_SUFFIXES.iter().any(|s| key.ends_with(s)) {
                continue;
            }
            let bytes = t.read().map_err(|e| err(format!("tensor {name}: {e}")))?;
            let data: Vec<f32> = match t.dtype() {
                DType::F32 => bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                DType::F64 => bytes
                    .chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        f64::from_le_bytes(a) as f32
                    })
                    .collect(),
                other => {
                    return Err(err(format!(
                        "tensor {name} has dtype {other:?}, expected float32 or float64"
                    )));
                }
            };
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(err(format!(
                    "tensor {name}: value {i} is {}, expected a finite number",
                    data[i]
                )));
            }
            let shape = t.shape().to_vec();
            if decomp_ir::checked_product(&shape) != Some(data.len()) {
                return Err(err(format!(
                    "tensor {name}: shape {shape:?} but {} values",
                    data.len()
                )));
            }
            if tensors
                .insert(key.clone(), TensorData { shape, data })
                .is_some()
            {
                return Err(err(format!("two tensors map to the name {key}")));
            }
        }
        Ok(Self { tensors })
    }

    /// Guesses the CIFAR ResNet that produced these tensors (depth from the number of
    /// blocks, BatchNorm from `bn1`, shortcut type, classes from `linear.weight`).
    pub fn detect_resnet(&self) -> Option<ResNetConfig> {
        let blocks = (0..)
            .take_while(|i| {
                self.tensors
                    .contains_key(&format!("layer1.{i}.conv1.weight"))
            })
            .count();
        let classes = self.tensors.get("linear.weight")?.shape.first().copied()?;
        let conv1 = self.tensors.get("conv1.weight")?;
        let bn = self.tensors.contains_key("bn1.weight");
        let b = self
            .tensors
            .keys()
            .any(|k| k.contains(".shortcut.0.weight"));
        (blocks > 0).then(|| {
            ResNetConfig::new(6 * blocks + 2, classes)
                .with_batch_norm(bn)
                .with_shortcut(if b { Shortcut::B } else { Shortcut::A })
                .with_input([conv1.shape[1], 32, 32])
        })
    }

    /// Fills every parameter of `skeleton` from these tensors, matched by node name.
    pub fn load_into(&self, skeleton: &mut ModelIr, origin: &Path) -> Result<(), ModelError> {
        let mut used = BTreeSet::new();
        let mut missing = Vec::new();
        let mut bad_shape = Vec::new();
        for node in &mut skeleton.graph.nodes {
            let name = node.name.clone();
            let mut slots: Vec<(&str, &mut TensorData)> = match &mut node.op {
                Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                    let mut v = vec![("weight", weight)];
                    if let Some(b) = bias {
                        v.push(("bias", b));
                    }
                    v
                }
                Op::BatchNorm2d {
                    gamma,
                    beta,
                    running_mean,
                    running_var,
                    ..
                } => vec![
                    ("weight", gamma),
                    ("bias", beta),
                    ("running_mean", running_mean),
                    ("running_var", running_var),
                ],
                _ => vec![],
            };
            for (suffix, slot) in slots.iter_mut() {
                let key = format!("{name}.{suffix}");
                match self.tensors.get(&key) {
                    None => missing.push(format!("{key} {:?}", slot.shape)),
                    Some(t) if t.shape != slot.shape => bad_shape.push(format!(
                        "{key}: checkpoint {:?}, model {:?}",
                        t.shape, slot.shape
                    )),
                    Some(t) => {
                        **slot = t.clone();
                        used.insert(key);
                    }
                }
            }
        }
        let extra: Vec<String> = self
            .tensors
            .iter()
            .filter(|(k, _)| !used.contains(*k))
            .filter(|(k, _)| !bad_shape.iter().any(|b| b.starts_with(&format!("{k}:"))))
            .map(|(k, t)| format!("{k} {:?}", t.shape))
            .collect();
        if missing.is_empty() && extra.is_empty() && bad_shape.is_empty() {
            skeleton.check()?;
            return Ok(());
        }
        let mut details = String::new();
        for (title, list) in [
            ("missing from the checkpoint", &missing),
            ("unexpected in the checkpoint", &extra),
            ("wrong shape", &bad_shape),
        ] {
            if !list.is_empty() {
                details.push_str(&format!("  {title} ({}):\n", list.len()));
                for item in list {
                    details.push_str(&format!("    {item}\n"));
                }
            }
        }
        Err(ModelError::Mismatch {
            path: origin.to_path_buf(),
            arch: skeleton.meta.arch.clone(),
            details: details.trim_end().to_string(),
        })
    }
}

/// Imports a CIFAR ResNet checkpoint. `expected` (e.g. from `--arch resnet20`) is checked
/// against the checkpoint; without it the architecture is detected from tensor names.
pub fn import_resnet(
    path: &Path,
    expected: Option<&ResNetConfig>,
    input_norm: InputNorm,
    class_names: Option<Vec<String>>,
) -> Result<ModelIr, ModelError> {
    StateDict::read(path)?.to_resnet(path, expected, input_norm, class_names)
}

impl StateDict {
    /// The CIFAR ResNet these tensors describe (see [`import_resnet`]); `origin` names the
    /// checkpoint in errors and provenance.
    pub fn to_resnet(
        &self,
        path: &Path,
        expected: Option<&ResNetConfig>,
        input_norm: InputNorm,
        class_names: Option<Vec<String>>,
    ) -> Result<ModelIr, ModelError> {
        let sd = self;
        let cfg = match expected {
            Some(c) => c.clone(),
            None => sd.detect_resnet().ok_or_else(|| ModelError::Checkpoint {
                path: path.to_path_buf(),
                msg: "not a CIFAR ResNet state dict (no conv1.weight / layer1.0.conv1.weight / linear.weight); pass --arch".into(),
            })?,
        };
        let mut model = cfg.build().map_err(|e| ModelError::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("the ResNet its tensors describe cannot be built: {e}"),
        })?;
        sd.load_into(&mut model, path)?;
        let k = model.num_classes();
        match class_names {
            Some(names) if names.len() == k => model.meta.class_names = names,
            Some(names) => {
                return Err(ModelError::Config(format!(
                    "{} class names given for a {k}-class checkpoint",
                    names.len()
                )));
            }
            None => {}
        }
        model.meta.input_norm = input_norm;
        model.meta.source = format!("pytorch checkpoint {}", path.display());
        model.check()?;
        Ok(model)
    }
}
