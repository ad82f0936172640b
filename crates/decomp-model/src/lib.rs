//! Model construction, import and execution: the only place IR meets burn.
//!
//! - [`ResNetConfig`] builds CIFAR ResNets (20/32/44/56, with or without BatchNorm,
//!   option-A or option-B shortcuts, any class count, 32x32 or 64x64 input) as [`ModelIr`].
//! - [`import`] reads PyTorch checkpoints (legacy pickle and zip) into IR; [`onnx`] reads
//!   ONNX models of any CNN whose ops the IR has (VGG, MobileNetV2, ResNets, ...).
//! - [`Executor`] runs any valid IR graph on a burn [`Device`], batched, and can capture
//!   node outputs (pre-activations for concern identification) and apply node masks.
//! - [`burn_resnet`] is a plain burn `Module` ResNet: the baseline the executor is
//!   benchmarked against, and the route to burn's own record format (`.bpk`).
//! - [`train`] trains ResNets (SGD/Adam, schedules, augmentation) from scratch or from
//!   imported weights, with checkpoints that resume bit for bit, on the CPU engine on `flex`
//!   and with burn autodiff elsewhere or on request ([`Engine`]).
//! - [`GradEngine`] computes a batch's loss and every parameter gradient on the CPU plan's
//!   own kernels (training-mode BatchNorm included), and [`CpuOptimizer`] applies SGD/Adam
//!   steps with burn's arithmetic: [`train`]'s path on `flex`, checked against burn
//!   autodiff.
//! - [`parse_device`] turns `cpu` / `cuda:N` / `wgpu` into a device; a [`Runtime`] adds the
//!   engine choice and CPU tuning the binary read from `DECOMP_ENGINE` / `DECOMP_CPU_*`
//!   (this crate reads no environment), and stages build executors from it
//!   ([`ExecutorSource`]).
//! - [`DeviceMatrix`] / [`patch_rows`]: the device products and im2col rows the stage
//!   crates' closed-form fits need, so that burn stays in this crate.

pub mod burn_resnet;
mod channel_stats;
mod cpu;
mod device;
mod error;
mod executor;
pub mod import;
mod linalg;
pub mod onnx;
pub mod resnet;
mod runtime;
pub mod train;

pub use burn::tensor::{Device, Tensor, TensorData as BurnTensorData};
pub use channel_stats::ChannelAccumulator;
pub use cpu::CpuTuning;
pub use cpu::grad::{GradEngine, ParamGrad, StepGradients, Target};
pub use cpu::optim::CpuOptimizer;
pub use decomp_gemm::keep_freed_pages;
pub use decomp_ir::ModelIr;
pub use device::{available_devices, parse_device};
pub use error::ModelError;
pub use executor::{
    ActiveBatch, CompiledMasks, Engine, Executor, ForwardOutput, ModuleMasks, Probe, check_finite,
    to_vec,
};
pub use linalg::{DeviceMatrix, patch_rows};
pub use resnet::{ResNetConfig, Shortcut};
pub use runtime::{ExecutorSource, Runtime};
