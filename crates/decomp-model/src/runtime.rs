//! Where and how executors run: a device and the engine configuration the binary chose.
//!
//! Libraries never read the environment. The `decomp` binary reads `DECOMP_ENGINE` and
//! `DECOMP_CPU_*` once ([`Runtime::from_vars`]) and hands the [`Runtime`] to the stages, which
//! build their executors through [`ExecutorSource`]; a plain [`Device`] is an
//! [`ExecutorSource`] too, with the default configuration ([`Engine::Auto`], default
//! [`CpuTuning`]).

use burn::tensor::Device;
use decomp_ir::ModelIr;

use crate::{CpuTuning, Engine, Executor, GradEngine, ModelError};

/// A device with the engine choice and CPU-plan tuning every executor on it uses.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub device: Device,
    pub engine: Engine,
    pub tuning: CpuTuning,
}

impl Runtime {
    /// `device` with the default configuration.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            engine: Engine::Auto,
            tuning: CpuTuning::default(),
        }
    }

    /// `device` configured by the variables `var` looks up: `DECOMP_ENGINE` (`auto`, `burn`
    /// or `cpu`; unset is `auto`) and the CPU plan's `DECOMP_CPU_*` ([`CpuTuning::from_vars`]).
    /// The binary passes the process environment.
    pub fn from_vars(
        device: Device,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ModelError> {
        let engine = match var("DECOMP_ENGINE") {
            Some(v) => v
                .parse()
                .map_err(|e: ModelError| ModelError::Config(format!("DECOMP_ENGINE: {e}")))?,
            None => Engine::Auto,
        };
        Ok(Self {
            device,
            engine,
            tuning: CpuTuning::from_vars(var),
        })
    }
}

/// What a stage builds its executors from: a [`Runtime`], or a plain [`Device`] (default
/// configuration).
pub trait ExecutorSource {
    /// The device executors run on.
    fn device(&self) -> &Device;

    /// The engine configuration of executors built here.
    fn config(&self) -> (Engine, CpuTuning) {
        (Engine::Auto, CpuTuning::default())
    }

    /// An executor of `model` with this configuration.
    fn executor(&self, model: &ModelIr) -> Result<Executor, ModelError> {
        let (engine, tuning) = self.config();
        Executor::with_tuning(model, self.device(), engine, tuning)
    }

    /// An executor of `model` that records gradients (burn ops on the device's autodiff
    /// version), for [`Executor::gate_gradients`].
    fn gradient_executor(&self, model: &ModelIr) -> Result<Executor, ModelError> {
        Executor::with_engine(model, &self.device().clone().autodiff(), Engine::Burn)
    }

    /// The CPU training engine for `model` where this configuration trains on it (as
    /// [`crate::train::Trainer`] picks: the `flex` device with engine `auto` on a graph the
    /// engine differentiates, or `cpu`), else `None`: gradients then run on burn autodiff
    /// ([`Self::gradient_executor`]). Engine `cpu` off `flex` is an error.
    fn grad_engine(&self, model: &ModelIr) -> Result<Option<GradEngine>, ModelError> {
        let (engine, tuning) = self.config();
        crate::train::cpu_engine(model, self.device(), engine, tuning)
    }
}

impl ExecutorSource for Device {
    fn device(&self) -> &Device {
        self
    }
}

impl ExecutorSource for Runtime {
    fn device(&self) -> &Device {
        &self.device
    }

    fn config(&self) -> (Engine, CpuTuning) {
        (self.engine, self.tuning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn runtime_reads_the_variables_it_is_given() {
        let rt = Runtime::from_vars(Device::flex(), vars(&[])).expect("defaults");
        assert_eq!((rt.engine, rt.tuning), (Engine::Auto, CpuTuning::default()));
        let rt = Runtime::from_vars(
            Device::flex(),
            vars(&[
                ("DECOMP_ENGINE", "burn"),
                ("DECOMP_CPU_TILE", "8"),
                ("DECOMP_CPU_WINOGRAD", "0"),
                ("DECOMP_CPU_BLOCK", "0"),
            ]),
        )
        .expect("burn");
        assert_eq!(rt.engine, Engine::Burn);
        assert_eq!(rt.tuning.tile, 8);
        assert!(!rt.tuning.winograd);
        assert_eq!(
            rt.tuning.block,
            CpuTuning::default().block,
            "0 is not a block size"
        );
        let err = Runtime::from_vars(Device::flex(), vars(&[("DECOMP_ENGINE", "fastest")]))
            .expect_err("unknown");
        assert!(err.to_string().contains("DECOMP_ENGINE"), "{err}");
    }
}
