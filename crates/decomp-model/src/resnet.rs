//! Builders for the CIFAR ResNet v1 family (He et al. 2016, section 4.2) in IR form.
//!
//! Node names follow the PyTorch reference implementation (`conv1`, `bn1`,
//! `layer{1,2,3}.{i}.conv1`, ..., `linear`) so that checkpoints import by name.

use decomp_ir::{Graph, InputNorm, ModelIr, ModelMeta, NodeId, Op, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ModelError;

/// How a residual block matches shapes when it changes resolution or width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// Parameter-free: subsample by 2 and zero-pad channels (`planes / 4` on each side).
    A,
    /// Projection: 1x1 strided convolution (+ BatchNorm when the model has it).
    B,
}

/// Builds a CIFAR ResNet of depth `6n + 2` (20, 32, 44, 56, 110, ...).
#[derive(Clone, Debug)]
pub struct ResNetConfig {
    /// Total depth; must be `6n + 2`.
    pub depth: usize,
    /// Output classes.
    pub num_classes: usize,
    /// BatchNorm after every conv (pretrained CIFAR models) or not (the paper's models,
    /// whose convolutions then carry a bias).
    pub batch_norm: bool,
    pub shortcut: Shortcut,
    /// Input `[channels, height, width]`; `[3, 32, 32]` for CIFAR, `[3, 64, 64]` for Tiny
    /// ImageNet.
    pub input: [usize; 3],
    /// Seed of the He-normal initialization.
    pub seed: u64,
}

impl ResNetConfig {
    /// A CIFAR-10-shaped ResNet with BatchNorm and option-A shortcuts.
    pub fn new(depth: usize, num_classes: usize) -> Self {
        Self {
            depth,
            num_classes,
            batch_norm: true,
            shortcut: Shortcut::A,
            input: [3, 32, 32],
            seed: 0,
        }
    }

    pub fn with_batch_norm(mut self, on: bool) -> Self {
        self.batch_norm = on;
        self
    }

    pub fn with_shortcut(mut self, s: Shortcut) -> Self {
        self.shortcut = s;
        self
    }

    pub fn with_input(mut self, input: [usize; 3]) -> Self {
        self.input = input;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Blocks per stage, `n = (depth - 2) / 6`.
    pub fn blocks_per_stage(&self) -> Result<usize, ModelError> {
        if self.depth < 8 || !(self.depth - 2).is_multiple_of(6) {
            return Err(ModelError::Config(format!(
                "ResNet depth must be 6n+2 (20, 32, 44, 56, ...), found {}",
                self.depth
            )));
        }
        Ok((self.depth - 2) / 6)
    }

    /// Number of values the model stores (weights, biases, BatchNorm statistics), computed
    /// from the configuration alone; `None` when it overflows `usize`.
    pub fn stored_values(&self) -> Option<usize> {
        let n = self.blocks_per_stage().ok()?;
        // A k x k convolution from `cin` to `cout` channels with its BatchNorm or bias.
        let conv = |cin: usize, cout: usize, k: usize| -> Option<usize> {
            let per_channel = if self.batch_norm { 4 } else { 1 };
            cin.checked_mul(k * k)?
                .checked_add(per_channel)?
                .checked_mul(cout)
        };
        let mut total = conv(self.input[0], 16, 3)?;
        let mut in_planes = 16;
        for (stage, planes) in [16usize, 32, 64].into_iter().enumerate() {
            let first = conv(in_planes, planes, 3)?
                .checked_add(conv(planes, planes, 3)?)?
                .checked_add(match self.shortcut {
                    Shortcut::B if stage > 0 => conv(in_planes, planes, 1)?,
                    _ => 0,
                })?;
            let rest = conv(planes, planes, 3)?
                .checked_mul(2)?
                .checked_mul(n - 1)?;
            total = total.checked_add(first)?.checked_add(rest)?;
            in_planes = planes;
        }
        total.checked_add(self.num_classes.checked_mul(65)?)
    }

    /// Checks class count, input size and parameter count against [`decomp_ir::limits`]
    /// before anything is allocated (the activation sizes are checked on the graph).
    pub fn check_size(&self) -> Result<(), ModelError> {
        use decomp_ir::limits::{
            MAX_CLASSES, MAX_GRAPH_VALUES, MAX_NODE_VALUES, MAX_PARAMS, MAX_SPATIAL,
        };
        self.blocks_per_stage()?;
        if self.num_classes == 0 || self.num_classes > MAX_CLASSES {
            return Err(ModelError::Config(format!(
                "{} classes, expected 1 to {MAX_CLASSES} (limits::MAX_CLASSES)",
                self.num_classes
            )));
        }
        let [c, h, w] = self.input;
        if c == 0
            || h == 0
            || w == 0
            || h.max(w) > MAX_SPATIAL
            || c.saturating_mul(h).saturating_mul(w) > MAX_NODE_VALUES
        {
            return Err(ModelError::Config(format!(
                "input {:?}: expected 1 to {MAX_SPATIAL} pixels on a side (limits::MAX_SPATIAL) and at most {MAX_NODE_VALUES} values (limits::MAX_NODE_VALUES)",
                self.input
            )));
        }
        let what = format!(
            "ResNet-{} with {} classes and input {:?}",
            self.depth, self.num_classes, self.input
        );
        let shown =
            |v: Option<usize>| v.map_or_else(|| "more than usize::MAX".into(), |v| v.to_string());
        match self.stored_values() {
            Some(p) if p <= MAX_PARAMS => {}
            p => {
                return Err(ModelError::Config(format!(
                    "{what} stores {} values, over the limit of {MAX_PARAMS} (limits::MAX_PARAMS)",
                    shown(p)
                )));
            }
        }
        match self.residual_values() {
            Some(v) if v <= MAX_GRAPH_VALUES => Ok(()),
            v => Err(ModelError::Config(format!(
                "{what} holds at least {} values per image in its residual blocks, over the limit of {MAX_GRAPH_VALUES} (limits::MAX_GRAPH_VALUES)",
                shown(v)
            ))),
        }
    }

    /// A lower bound of the values all nodes hold per image: those of the residual blocks'
    /// convolutions, BatchNorms, ReLUs and sums (the exact count is checked on the built
    /// graph). `None` when it overflows `usize`.
    fn residual_values(&self) -> Option<usize> {
        let n = self.blocks_per_stage().ok()?;
        let nodes = if self.batch_norm { 7 } else { 5 };
        let [_, mut h, mut w] = self.input;
        let mut total = 0usize;
        for (stage, planes) in [16usize, 32, 64].into_iter().enumerate() {
            if stage > 0 {
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
            }
            let block = planes.checked_mul(h)?.checked_mul(w)?.checked_mul(nodes)?;
            total = total.checked_add(block.checked_mul(n)?)?;
        }
        Some(total)
    }

    /// Builds the model with freshly initialized weights, after [`ResNetConfig::check_size`].
    pub fn build(&self) -> Result<ModelIr, ModelError> {
        self.check_size()?;
        let n = self.blocks_per_stage()?;
        let mut b = Builder {
            graph: Graph::new(self.input),
            rng: ChaCha8Rng::seed_from_u64(self.seed),
            bn: self.batch_norm,
        };
        let mut x = b.conv_bn("conv1", "bn1", 0, self.input[0], 16, 1);
        x = b.graph.push("relu", Op::Relu, vec![x]);
        let mut in_planes = 16;
        for (stage, planes) in [16usize, 32, 64].into_iter().enumerate() {
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let p = format!("layer{}.{i}", stage + 1);
                let y = b.conv_bn(
                    &format!("{p}.conv1"),
                    &format!("{p}.bn1"),
                    x,
                    in_planes,
                    planes,
                    stride,
                );
                let y = b.graph.push(format!("{p}.relu1"), Op::Relu, vec![y]);
                let y = b.conv_bn(
                    &format!("{p}.conv2"),
                    &format!("{p}.bn2"),
                    y,
                    planes,
                    planes,
                    1,
                );
                let short = if stride != 1 || in_planes != planes {
                    match self.shortcut {
                        Shortcut::A => b.graph.push(
                            format!("{p}.shortcut"),
                            Op::ShortcutA {
                                stride,
                                pad_before: planes / 4,
                                pad_after: planes - in_planes - planes / 4,
                            },
                            vec![x],
                        ),
                        Shortcut::B => b.conv_bn_k(
                            &format!("{p}.shortcut.0"),
                            &format!("{p}.shortcut.1"),
                            x,
                            in_planes,
                            planes,
                            stride,
                            1,
                        ),
                    }
                } else {
                    x
                };
                let s = b.graph.push(format!("{p}.add"), Op::Add, vec![y, short]);
                x = b.graph.push(format!("{p}.relu2"), Op::Relu, vec![s]);
                in_planes = planes;
            }
        }
        x = b.graph.push("avgpool", Op::GlobalAvgPool, vec![x]);
        x = b.graph.push("flatten", Op::Flatten, vec![x]);
        let head = fresh_head(&mut b.rng, self.num_classes, 64);
        b.graph.push("linear", head, vec![x]);
        let model = ModelIr {
            meta: ModelMeta {
                arch: format!("resnet{}", self.depth),
                class_names: (0..self.num_classes)
                    .map(|i| format!("class_{i}"))
                    .collect(),
                input_norm: InputNorm {
                    mean: vec![0.0; self.input[0]],
                    std: vec![1.0; self.input[0]],
                },
                source: format!(
                    "initialized: ResNet-{} bn={} shortcut={:?} seed={}",
                    self.depth, self.batch_norm, self.shortcut, self.seed
                ),
            },
            graph: b.graph,
        };
        model.check()?;
        Ok(model)
    }
}

struct Builder {
    graph: Graph,
    rng: ChaCha8Rng,
    bn: bool,
}

impl Builder {
    /// He-normal weights (`std = sqrt(2 / fan_in)`).
    fn he(&mut self, shape: Vec<usize>, fan_in: usize) -> TensorData {
        he(&mut self.rng, shape, fan_in)
    }

    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        x: NodeId,
        cin: usize,
        cout: usize,
        stride: usize,
    ) -> NodeId {
        self.conv_bn_k(conv, bn, x, cin, cout, stride, 3)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_bn_k(
        &mut self,
        conv: &str,
        bn: &str,
        x: NodeId,
        cin: usize,
        cout: usize,
        stride: usize,
        k: usize,
    ) -> NodeId {
        let weight = self.he(vec![cout, cin, k, k], cin * k * k);
        let bias = (!self.bn).then(|| TensorData::zeros(vec![cout]));
        let y = self.graph.push(
            conv,
            Op::Conv2d {
                weight,
                bias,
                stride: [stride; 2],
                padding: [k / 2; 2],
                groups: 1,
            },
            vec![x],
        );
        if !self.bn {
            return y;
        }
        self.graph.push(
            bn,
            Op::BatchNorm2d {
                gamma: TensorData {
                    shape: vec![cout],
                    data: vec![1.0; cout],
                },
                beta: TensorData::zeros(vec![cout]),
                running_mean: TensorData::zeros(vec![cout]),
                running_var: TensorData {
                    shape: vec![cout],
                    data: vec![1.0; cout],
                },
                eps: 1e-5,
            },
            vec![y],
        )
    }
}

/// One standard normal sample (Box-Muller), so initialization depends on `rand` alone.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// He-normal values of `shape` for `fan_in` inputs per output.
fn he(rng: &mut ChaCha8Rng, shape: Vec<usize>, fan_in: usize) -> TensorData {
    let std = (2.0 / fan_in as f64).sqrt();
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| (standard_normal(rng) * std) as f32)
        .collect();
    TensorData { shape, data }
}

/// A freshly initialized classifier from `features` inputs to `classes` outputs: He-normal
/// weights, biases uniform in +-1/sqrt(features) (PyTorch's default for a linear layer's bias).
fn fresh_head(rng: &mut ChaCha8Rng, classes: usize, features: usize) -> Op {
    let weight = he(rng, vec![classes, features], features);
    let bound = 1.0 / (features as f32).sqrt();
    let bias = (0..classes)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Op::Linear {
        weight,
        bias: Some(TensorData {
            shape: vec![classes],
            data: bias,
        }),
    }
}

/// `model` with its classifier (the output node, a linear layer) replaced by a freshly
/// initialized one for `class_names` (seeded by `seed`), every other weight kept: the start
/// of a transfer to another set of classes (`decomp train --init M --new-head`).
pub fn with_new_head(
    model: &ModelIr,
    class_names: Vec<String>,
    seed: u64,
) -> Result<ModelIr, ModelError> {
    let mut out = model.clone();
    let id = out.graph.output;
    let node = &mut out.graph.nodes[id];
    let Op::Linear { weight, .. } = &node.op else {
        return Err(ModelError::Config(format!(
            "a new head replaces a linear output layer; the output node `{}` is {}",
            node.name,
            node.op.kind()
        )));
    };
    let features = weight.shape.get(1).copied().unwrap_or(0);
    if features == 0 || class_names.len() < 2 {
        return Err(ModelError::Config(format!(
            "a new head needs a linear output layer with inputs and at least 2 classes (`{}`: \
             {features} inputs, {} classes)",
            node.name,
            class_names.len()
        )));
    }
    node.op = fresh_head(
        &mut ChaCha8Rng::seed_from_u64(seed),
        class_names.len(),
        features,
    );
    out.meta.source = format!(
        "{}; new head for {} classes (seed {seed})",
        out.meta.source,
        class_names.len()
    );
    out.meta.class_names = class_names;
    out.check()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new head has the new classes' shape and names, seeded values, and leaves every
    /// other node as it was; a model whose output is no linear layer is refused by name.
    #[test]
    fn new_head_replaces_only_the_classifier() {
        let model = ResNetConfig::new(8, 10).build().expect("build");
        let names = vec!["bird".to_string(), "deer".to_string()];
        let a = with_new_head(&model, names.clone(), 3).expect("new head");
        assert_eq!(a.num_classes(), 2);
        assert_eq!(a.meta.class_names, names);
        let out = a.graph.output;
        let Op::Linear { weight, bias } = &a.graph.nodes[out].op else {
            panic!("linear head")
        };
        assert_eq!(weight.shape, [2, 64]);
        assert_eq!(bias.as_ref().map(|b| b.shape.clone()), Some(vec![2]));
        for (i, (x, y)) in a.graph.nodes.iter().zip(&model.graph.nodes).enumerate() {
            if i != out {
                assert_eq!(x, y, "node {i}");
            }
        }
        assert_eq!(
            with_new_head(&model, names.clone(), 3)
                .expect("again")
                .graph,
            a.graph
        );
        assert_ne!(
            with_new_head(&model, names.clone(), 4).expect("seed").graph,
            a.graph
        );
        let mut relu_out = model.clone();
        relu_out.graph.output = relu_out.graph.output - 1;
        let err = with_new_head(&relu_out, names, 3)
            .expect_err("not linear")
            .to_string();
        assert!(err.contains("linear output layer"), "{err}");
    }

    #[test]
    fn stored_values_match_the_built_graph() {
        for cfg in [
            ResNetConfig::new(8, 10),
            ResNetConfig::new(14, 3).with_batch_norm(false),
            ResNetConfig::new(20, 7).with_shortcut(Shortcut::B),
            ResNetConfig::new(8, 2)
                .with_shortcut(Shortcut::B)
                .with_batch_norm(false)
                .with_input([1, 28, 28]),
        ] {
            let model = cfg.build().expect("build");
            let counted: usize = model.graph.nodes.iter().map(|n| n.op.stored_values()).sum();
            assert_eq!(cfg.stored_values(), Some(counted), "{cfg:?}");
            let shapes = model.check().expect("valid");
            let values: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
            let bound = cfg.residual_values().expect("small");
            assert!(
                bound <= values && values < 2 * bound,
                "{cfg:?}: {bound} vs {values}"
            );
        }
    }

    #[test]
    fn absurd_sizes_are_refused_before_building() {
        for (cfg, expected) in [
            (ResNetConfig::new(600_002, 10), "limits::MAX_PARAMS"),
            (ResNetConfig::new(10_004, 10), "limits::MAX_GRAPH_VALUES"),
            (
                ResNetConfig::new(20, 10).with_input([3, 4096, 4096]),
                "limits::MAX_GRAPH_VALUES",
            ),
            (
                ResNetConfig::new(20, 100_000_000_000),
                "limits::MAX_CLASSES",
            ),
            (
                ResNetConfig::new(20, 10).with_input([3, 100_000, 100_000]),
                "limits::MAX_SPATIAL",
            ),
            (ResNetConfig::new(20, usize::MAX), "limits::MAX_CLASSES"),
        ] {
            let err = cfg.build().expect_err("too large").to_string();
            assert!(err.contains(expected), "{cfg:?}: {err}");
        }
    }
}
