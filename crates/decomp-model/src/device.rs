//! Choosing the burn device from a user-facing name; the binary calls this once.

use burn::tensor::Device;

use crate::ModelError;

/// Device names this build accepts, for help texts.
pub fn available_devices() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "cuda") {
        v.push("cuda[:N]");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    v
}

/// Parses `cpu` (burn `flex`), `cuda`, `cuda:N` or `wgpu` into a device. GPU names need
/// the matching Cargo feature; without it the error says which one.
pub fn parse_device(name: &str) -> Result<Device, ModelError> {
    let unavailable = |why: &str| {
        Err(ModelError::Device(
            name.to_string(),
            format!(
                "{why}; this build supports: {}",
                available_devices().join(", ")
            ),
        ))
    };
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => match i.parse::<usize>() {
            Ok(i) => (k, i),
            Err(_) => return unavailable("the index after ':' must be a number"),
        },
        None => (name, 0),
    };
    match kind {
        "cpu" | "flex" => Ok(Device::flex()),
        "cuda" => cuda(index).map_or_else(|| unavailable("rebuild with `--features cuda`"), Ok),
        "wgpu" => wgpu(index).map_or_else(|| unavailable("rebuild with `--features wgpu`"), Ok),
        _ => unavailable("unknown device"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Option<Device> {
    Some(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Option<Device> {
    None
}

#[cfg(feature = "wgpu")]
fn wgpu(index: usize) -> Option<Device> {
    use burn::tensor::DeviceKind;
    Some(Device::wgpu(if index == 0 {
        DeviceKind::DefaultDevice
    } else {
        DeviceKind::DiscreteGpu(index)
    }))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_index: usize) -> Option<Device> {
    None
}
