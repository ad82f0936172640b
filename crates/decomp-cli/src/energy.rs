//! Measured energy of a stretch of work, where the machine exposes a meter.
//!
//! - CPU runs: Linux RAPL counters under `/sys/class/powercap/intel-rapl:N/energy_uj`
//!   (package domains; AMD Zen exposes its package counter there too), with counter
//!   wrap-around handled through `max_energy_range_uj`. Reading them may need root.
//! - CUDA runs (built with `--features cuda`): NVML's total energy counter of every GPU,
//!   loaded at run time (`libnvidia-ml.so`), where the driver supports it (Volta and newer).
//!
//! When neither is readable, `source()` says `none` and the caller falls back to a declared
//! power estimate (see the `co2e` experiment). Nothing here fails a run.

use std::path::PathBuf;

/// Reads one energy counter family.
pub struct EnergyMeter {
    kind: MeterKind,
}

enum MeterKind {
    None,
    /// `(energy_uj file, max_energy_range_uj)` per package domain.
    Rapl(Vec<(PathBuf, u64)>),
    #[cfg(feature = "cuda")]
    Nvml(nvml_wrapper::Nvml),
}

/// A counter snapshot taken by [`EnergyMeter::start`].
pub struct Reading(Vec<u64>);

impl EnergyMeter {
    /// The meter for work on `device` (`cpu`, `cuda[:N]`, `wgpu`).
    pub fn for_device(device: &str) -> Self {
        #[cfg(feature = "cuda")]
        if device.starts_with("cuda")
            && let Ok(nvml) = nvml_wrapper::Nvml::init()
        {
            return Self {
                kind: MeterKind::Nvml(nvml),
            };
        }
        let _ = device;
        let zones = rapl_zones();
        let meter = Self {
            kind: if zones.is_empty() {
                MeterKind::None
            } else {
                MeterKind::Rapl(zones)
            },
        };
        // A counter that exists but cannot be read (permissions) counts as no meter.
        if meter.read().is_none() {
            return Self {
                kind: MeterKind::None,
            };
        }
        meter
    }

    /// Where measurements come from: `rapl`, `nvml` or `none`.
    pub fn source(&self) -> &'static str {
        match &self.kind {
            MeterKind::None => "none",
            MeterKind::Rapl(_) => "rapl",
            #[cfg(feature = "cuda")]
            MeterKind::Nvml(_) => "nvml",
        }
    }

    fn read(&self) -> Option<Vec<u64>> {
        match &self.kind {
            MeterKind::None => None,
            MeterKind::Rapl(zones) => zones
                .iter()
                .map(|(p, _)| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
                .collect(),
            #[cfg(feature = "cuda")]
            MeterKind::Nvml(nvml) => {
                let n = nvml.device_count().ok()?;
                (0..n)
                    .map(|i| {
                        nvml.device_by_index(i)
                            .ok()?
                            .total_energy_consumption()
                            .ok()
                    })
                    .collect()
            }
        }
    }

    /// Snapshot of the counters now.
    pub fn start(&self) -> Reading {
        Reading(self.read().unwrap_or_default())
    }

    /// Joules spent since `start`, or `None` without a readable meter.
    pub fn joules_since(&self, start: &Reading) -> Option<f64> {
        let now = self.read()?;
        if now.len() != start.0.len() {
            return None;
        }
        match &self.kind {
            MeterKind::None => None,
            MeterKind::Rapl(zones) => Some(
                now.iter()
                    .zip(&start.0)
                    .zip(zones)
                    .map(|((&b, &a), (_, range))| counter_delta(a, b, *range) as f64 * 1e-6)
                    .sum(),
            ),
            // NVML reports millijoules since the driver was loaded.
            #[cfg(feature = "cuda")]
            MeterKind::Nvml(_) => Some(
                now.iter()
                    .zip(&start.0)
                    .map(|(&b, &a)| b.saturating_sub(a) as f64 * 1e-3)
                    .sum(),
            ),
        }
    }
}

/// `b - a` for a counter that wraps at `range` (0 = unknown range: no wrap assumed).
fn counter_delta(a: u64, b: u64, range: u64) -> u64 {
    if b >= a {
        b - a
    } else if range > a {
        range - a + b
    } else {
        0
    }
}

/// Top-level RAPL package zones (`intel-rapl:N`, not their `intel-rapl:N:M` subzones).
fn rapl_zones() -> Vec<(PathBuf, u64)> {
    let Ok(dir) = std::fs::read_dir("/sys/class/powercap") else {
        return Vec::new();
    };
    let mut zones: Vec<(PathBuf, u64)> = dir
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("intel-rapl:")
                .is_some_and(|rest| !rest.contains(':'))
        })
        .map(|e| {
            let range = std::fs::read_to_string(e.path().join("max_energy_range_uj"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            (e.path().join("energy_uj"), range)
        })
        .collect();
    zones.sort();
    zones
}

#[cfg(test)]
mod tests {
    use super::counter_delta;

    #[test]
    fn counter_wraps() {
        assert_eq!(counter_delta(10, 25, 100), 15);
        assert_eq!(counter_delta(90, 5, 100), 15);
        assert_eq!(counter_delta(90, 5, 0), 0);
    }
}
