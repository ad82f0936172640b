//! The CPU inference plan behind [`Executor`](crate::Executor) on the `flex` device.
//!
//! Compiled once from a [`ModelIr`]: every BatchNorm that is the only consumer of a
//! convolution is folded into the convolution's weights and bias (the convolution's own output
//! is then never materialized, and the fused node produces exactly the BatchNorm's output, so
//! masks and captures at BatchNorm outputs keep their meaning); feature maps are kept
//! channels-last (`[image][y][x][channel]`, "storage order"); convolutions run as im2col over
//! a cache-sized block of output pixels followed by one product with the `gemm` crate (through
//! [`decomp_gemm::sgemm`]), the bias preloaded into the destination; batches are split into
//! tiles of a few images that rayon runs in parallel.
//!
//! Everything the stages see keeps the IR's channel-first meaning: masks and captured
//! positions are indexed `c * h * w + y * w + x` and converted at the boundary.
//!
//! Files: this one holds the plan's types; `compile` builds a plan from the IR (BatchNorm
//! folding, weight layout), `run` executes it (tiles, probes, module branches, every op but
//! convolutions), `conv` runs convolutions (Winograd or im2col + product), `winograd` holds
//! the F(2x2, 3x3) transforms, `kernels` the register-blocked products, `layout` the
//! conversions between channel-first and channels-last positions, `grouped` the grouped and
//! depthwise convolutions. Training: `pool` (recycled buffers), `grad`
//! (`GradEngine`: training-mode forward and backward on an unfolded plan, the loss and
//! every parameter's gradient) and `optim` (`CpuOptimizer`: SGD and Adam with burn's
//! arithmetic).

use std::collections::HashMap;

use decomp_gemm::{Gemm, sgemm};
use decomp_ir::{ActivityCounts, BitSet, ModelIr, NodeId, NodeMask, Op, Shape};
use rayon::prelude::*;

mod compile;
mod conv;
mod elementwise;
pub mod grad;
mod grouped;
mod kernels;
mod layout;
pub mod optim;
mod pool;
mod run;
mod winograd;

use kernels::*;
use layout::*;
use winograd::*;

/// Tuning knobs of the CPU plan. Defaults are the fastest measured settings for
/// ResNet-20 at batch 128 on a 2-core AVX2/AVX-512 machine (`benches/executor.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTuning {
    /// Images per parallel task.
    pub tile: usize,
    /// Elements of the im2col block (output pixels x kernel size) per matrix product.
    pub block: usize,
    /// 3x3 stride-1 convolutions with padding 1 as Winograd F(2x2, 3x3): 2.25x fewer
    /// multiplications, within float rounding of the direct product.
    pub winograd: bool,
    /// Register-blocked product kernels compiled per SIMD level (any output width up to 64,
    /// weights padded to a multiple of 8 columns; CPUs with FMA) instead of the `gemm`
    /// crate, for the Winograd products and the im2col / 1x1 convolutions.
    pub small_kernels: bool,
}

impl Default for CpuTuning {
    fn default() -> Self {
        Self {
            tile: 4,
            block: 1 << 16,
            winograd: true,
            small_kernels: true,
        }
    }
}

impl CpuTuning {
    /// Defaults, overridden by the variables `DECOMP_CPU_TILE` / `DECOMP_CPU_BLOCK` when set
    /// to a positive number and `DECOMP_CPU_WINOGRAD` / `DECOMP_CPU_SMALL_KERNELS` (`0` is
    /// off), for tuning experiments. `var` looks a variable up: the binary passes the
    /// environment, this crate never reads it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str, default: usize| {
            var(name)
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
        };
        let d = Self::default();
        Self {
            tile: get("DECOMP_CPU_TILE", d.tile),
            block: get("DECOMP_CPU_BLOCK", d.block),
            winograd: var("DECOMP_CPU_WINOGRAD").map_or(d.winograd, |v| v != "0"),
            small_kernels: var("DECOMP_CPU_SMALL_KERNELS").map_or(d.small_kernels, |v| v != "0"),
        }
    }
}

struct Conv {
    /// `[kh * kw * cin, cp]`, row `(ky * kw + kx) * cin + ci`, BatchNorm scale folded in,
    /// columns from `cout` on zero.
    w: Vec<f32>,
    /// Winograd-domain weights `G g G^T` as `[16][cin][cp]`, for 3x3 stride-1 padding-1
    /// convolutions.
    wino: Option<Vec<f32>>,
    /// `[cout]`, BatchNorm shift folded in.
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    /// Columns of the weights and of the Winograd products: `cout` rounded up to a multiple
    /// of 8 (zero columns), so that the register-blocked kernels cover every width up to 64,
    /// as channel modules have (their outputs beyond `cout` are computed and dropped).
    cp: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    in_hw: [usize; 2],
    out_hw: [usize; 2],
}

enum POp {
    Input,
    /// A convolution folded into its BatchNorm: never computed.
    Folded,
    Conv(Conv),
    /// A BatchNorm that could not be folded: `x * scale[c] + shift[c]`.
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    Relu,
    Add,
    Pool {
        max: bool,
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
    },
    GlobalAvgPool,
    Flatten,
    /// `w` is `[in, out]`.
    Linear {
        w: Vec<f32>,
        bias: Vec<f32>,
        out: usize,
    },
    ShortcutA {
        stride: usize,
        pad_before: usize,
    },
    /// A fixed map added to every image, channels-last `[h, w, c]`.
    BiasMap {
        map: Vec<f32>,
    },
    /// Subsample by `stride`, then output channel `o` is input channel `sources[o]` or the
    /// constant `fill[o]`.
    Gather {
        stride: usize,
        sources: Vec<Option<usize>>,
        fill: Vec<f32>,
    },
    /// `min(max(x, min), max)` (ReLU6).
    Clip {
        min: f32,
        max: f32,
    },
    /// Channel concatenation: per pixel, the inputs' channel vectors one after another.
    Concat,
    /// A grouped convolution (`grouped.rs`): depthwise stencil or one product per group.
    Grouped(grouped::Grouped),
}

struct PNode {
    op: POp,
    inputs: Vec<NodeId>,
}

/// A model compiled for the CPU; see the module docs.
pub(crate) struct CpuPlan {
    nodes: Vec<PNode>,
    shapes: Vec<Shape>,
    output: NodeId,
    last_use: Vec<usize>,
    tuning: CpuTuning,
    /// Buffers an op consumes without returning go back to [`pool`]: the training engine's
    /// plan ([`CpuPlan::unfolded`]), whose passes take every buffer from the pool. Inference
    /// never gives buffers back (see `pool`).
    recycle: bool,
}

/// Masks of one probe in storage order: per node, a multiplier per position (1 keep, 0 zero).
pub(crate) struct HostMasks {
    keep: HashMap<NodeId, Vec<f32>>,
}

/// Module masks in storage order: per node, its distinct masks as (modules using it, zeroed
/// storage positions).
pub(crate) struct HostModuleMasks {
    by_node: HashMap<NodeId, Vec<(u64, Vec<u32>)>>,
    relu_fed: Vec<bool>,
    all: u64,
}

/// A node value handed to an op: moved when this op is its last reader.
enum Arg<'a> {
    Owned(Vec<f32>),
    Borrowed(&'a [f32]),
}

impl Arg<'_> {
    fn as_slice(&self) -> &[f32] {
        match self {
            Arg::Owned(v) => v,
            Arg::Borrowed(s) => s,
        }
    }

    fn into_owned(self) -> Vec<f32> {
        match self {
            Arg::Owned(v) => v,
            Arg::Borrowed(s) => {
                let mut v = pool::take(s.len());
                v.copy_from_slice(s);
                v
            }
        }
    }
}
