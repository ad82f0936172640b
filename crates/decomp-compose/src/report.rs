//! The typed report of the compose stage ([`decomp_eval::report`]), built from a run's
//! accuracy, the modules and their costs.

use decomp_eval::EvalReport;
use decomp_eval::report::{
    ChannelComposeReport, ChannelModuleReport, ComposeReport, ComposedAccuracy, mean, percent,
};
use decomp_ir::{ChannelModule, ModelIr, ModuleIr, encode_artifact};

use crate::{ChannelRun, ComposeError, Mode, sizes, union_cost};

/// The report of composing element modules `modules` (files `paths`): the composed accuracy
/// `composed`, the source model's `model` on the same images when it ran, module sizes and
/// overlaps ([`sizes`]), wall seconds and the mode.
pub fn compose_report(
    modules: &[ModuleIr],
    paths: Vec<String>,
    composed: &EvalReport,
    model: Option<&EvalReport>,
    seconds: f64,
    mode: Mode,
) -> Result<ComposeReport, ComposeError> {
    let first = modules.first().ok_or(ComposeError::Empty)?;
    let s = sizes(modules)?;
    Ok(ComposeReport {
        modules: paths,
        classes: modules.iter().map(|m| m.class_name.clone()).collect(),
        variant: first.config.variant.name().into(),
        config: first.config.clone(),
        accuracy: ComposedAccuracy::new(composed, model),
        model_per_class: model.map(|m| m.per_class.clone()),
        module_size: s.per_module,
        mean_module_size: s.mean,
        mean_overlap: s.mean_overlap,
        overlap: s.overlap,
        seconds,
        mode: format!("{mode:?}").to_lowercase(),
    })
}

/// The report of composing channel modules `modules` (files `paths` of `bytes` bytes) in
/// `run`: accuracies as for [`compose_report`], per-module cost, file size and time
/// (relative to `reference`, the source model, when it ran), and the FLOPs of the separate
/// passes against one pass over the union of the modules' channels ([`union_cost`], when
/// `reference` is given and every module comes from it).
#[allow(clippy::too_many_arguments)]
pub fn channel_compose_report(
    modules: &[ChannelModule],
    paths: &[String],
    bytes: &[u64],
    run: &ChannelRun,
    composed: &EvalReport,
    model: Option<&EvalReport>,
    reference: Option<&ModelIr>,
    seconds: f64,
) -> Result<ChannelComposeReport, ComposeError> {
    let first = modules.first().ok_or(ComposeError::Empty)?;
    let per_module: Vec<ChannelModuleReport> = modules
        .iter()
        .zip(paths)
        .zip(bytes)
        .zip(&run.module_seconds)
        .map(|(((m, p), &bytes), &s)| {
            let (kept, total) = m.plan.kept_channels();
            ChannelModuleReport {
                path: p.clone(),
                class: m.class,
                class_name: m.class_name.clone(),
                cost: m.cost,
                flops_percent: percent(m.cost.flops, m.model_cost.flops),
                params_percent: percent(m.cost.params, m.model_cost.params),
                bytes,
                seconds: s,
                time_ratio: run.model_seconds.map(|t| s / t),
                kept_channels: kept,
                total_channels: total,
                training: m.training.clone(),
            }
        })
        .collect();
    let mean_of = |f: &dyn Fn(&ChannelModuleReport) -> f64| {
        mean(&per_module.iter().map(f).collect::<Vec<_>>())
    };
    let union = match reference {
        Some(m) if modules.iter().all(|x| x.model_hash == first.model_hash) => {
            Some(union_cost(m, modules)?.flops)
        }
        _ => None,
    };
    Ok(ChannelComposeReport {
        granularity: "channel".into(),
        classes: modules.iter().map(|m| m.class_name.clone()).collect(),
        config: first.config.clone(),
        channel: first.channel.clone(),
        accuracy: ComposedAccuracy::new(composed, model),
        model_cost: first.model_cost,
        model_bytes: reference.map(|m| encode_artifact(m).map_or(0, |(b, _)| b.len() as u64)),
        model_seconds: run.model_seconds,
        mean_flops_percent: mean_of(&|m| m.flops_percent),
        mean_params_percent: mean_of(&|m| m.params_percent),
        mean_bytes: mean_of(&|m| m.bytes as f64),
        mean_time_ratio: run
            .model_seconds
            .map(|_| mean_of(&|m| m.time_ratio.unwrap_or(f64::NAN))),
        passes: "separate".into(),
        separate_flops: modules.iter().map(|m| m.cost.flops).sum(),
        union_flops: union,
        per_module,
        seconds,
    })
}
