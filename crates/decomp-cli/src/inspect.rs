//! `decomp inspect`: what an artifact holds, for every kind of artifact file.

use std::path::Path;

use anyhow::{Result, bail};
use decomp_eval::report::percent;
use decomp_ir::{ArtifactKind, ChannelConcernSet, ChannelModule, ConcernSet, ModelIr, ModuleIr};
use decomp_model::train::TrainCheckpoint;

use crate::files::read_artifact;

pub fn inspect(path: &Path) -> Result<()> {
    let kind = match decomp_ir::artifact::peek_kind(path)? {
        Some(k) => k,
        // Not an artifact (or an unknown kind): reading it says which, with the offset.
        None => {
            read_artifact::<ModelIr>(path)?;
            bail!("{}: not an artifact this build can inspect", path.display());
        }
    };
    match kind {
        ArtifactKind::Model => model(&read_artifact(path)?),
        ArtifactKind::Module => module(&read_artifact(path)?),
        ArtifactKind::ConcernSet => concern_set(&read_artifact(path)?),
        ArtifactKind::TrainCheckpoint => checkpoint(path, &read_artifact(path)?),
        ArtifactKind::ChannelModule => channel_module(path, &read_artifact(path)?),
        ArtifactKind::ChannelConcernSet => channel_concern_set(&read_artifact(path)?),
        ArtifactKind::Report => bail!(
            "{}: a report artifact (kind 4); decomp writes reports as JSON, this build has nothing to show of it",
            path.display()
        ),
    }
}

fn concern_set(set: &ConcernSet) -> Result<()> {
    outln!(
        "concern set of {} ({}) on {}",
        set.model_path,
        set.model_hash,
        set.dataset
    );
    outln!("config: {:?}", set.config);
    outln!("sites: {:?}; {:.1} s", set.sites, set.seconds);
    for c in &set.classes {
        let inactive: usize = c.inactive.masks.iter().map(|m| m.zeroed.count_ones()).sum();
        outln!(
            "class {:3}: {} positives, {inactive} inactive positions",
            c.class,
            c.positives.len()
        );
    }
    Ok(())
}

fn checkpoint(path: &Path, c: &TrainCheckpoint) -> Result<()> {
    outln!(
        "training checkpoint {} of {} ({} classes)",
        path.display(),
        c.model.meta.arch,
        c.model.num_classes()
    );
    outln!("epochs done: {} of {}", c.epochs_done, c.config.epochs);
    outln!("config: {:?}", c.config);
    outln!("data: {}", c.data_id);
    match &c.best {
        Some(b) => outln!("best epoch: {} (accuracy {:.4})", b.epoch, b.accuracy),
        None => outln!("best epoch: none yet"),
    }
    for m in &c.history {
        outln!(
            "epoch {:3}: loss {:.4} train {:.4} val {} lr {:.3e}",
            m.epoch,
            m.train_loss,
            m.train_acc,
            m.val_acc.map_or("-".to_string(), |v| format!("{v:.4}")),
            m.lr
        );
    }
    Ok(())
}

fn module(m: &ModuleIr) -> Result<()> {
    let shapes = m.model.check()?;
    outln!(
        "module of class {} ({}) from {} ({})",
        m.class,
        m.class_name,
        m.model_path,
        m.model_hash
    );
    outln!("config: {:?}", m.config);
    outln!("samples: {:?}", m.counts);
    outln!("provenance: {}", m.provenance);
    let f = m.head.weight.shape[1];
    let removed = (0..f)
        .filter(|&u| m.head.weight.data[u] == 0.0 && m.head.weight.data[f + u] == 0.0)
        .count();
    outln!(
        "head: {f} inputs from node {}, {removed} removed",
        m.head.input
    );
    for (what, list) in [("mask", &m.masks), ("dead", &m.dead)] {
        for nm in list.iter() {
            let n: usize = shapes[nm.node].iter().product();
            outln!(
                "{what:>4} {:<24} {:>7} of {:>7} positions",
                m.model.graph.nodes[nm.node].name,
                nm.zeroed.count_ones(),
                n
            );
        }
    }
    let removed: Vec<decomp_ir::NodeMask> = m.masks.iter().chain(&m.dead).cloned().collect();
    outln!(
        "module size: {:.4}",
        decomp_ir::analysis::module_size(&m.model.graph, &shapes, &removed)
    );
    Ok(())
}

fn model(model: &ModelIr) -> Result<()> {
    let shapes = model.check()?;
    outln!("arch: {}", model.meta.arch);
    outln!("source: {}", model.meta.source);
    outln!("classes: {}", model.meta.class_names.join(", "));
    outln!(
        "input norm: mean {:?} std {:?}",
        model.meta.input_norm.mean,
        model.meta.input_norm.std
    );
    outln!("parameters: {}", model.graph.num_params());
    for (i, (n, s)) in model.graph.nodes.iter().zip(&shapes).enumerate() {
        outln!(
            "{i:4} {:<24} {:<14} {:?} <- {:?}",
            n.name,
            n.op.kind(),
            s,
            n.inputs
        );
    }
    Ok(())
}

fn channel_module(path: &Path, m: &ChannelModule) -> Result<()> {
    outln!(
        "channel module of class {} ({}) from {} ({})",
        m.class,
        m.class_name,
        m.model_path,
        m.model_hash
    );
    outln!("config: {:?}", m.config);
    outln!("channel: {:?}", m.channel);
    outln!("samples: {:?}", m.counts);
    outln!("provenance: {}", m.provenance);
    if let Some(t) = &m.training {
        outln!(
            "trained: {} images ({:.2} epochs), {:.3e} FLOPs = {:.3} epochs of the model's training, {:.1} s{}",
            t.images,
            t.epochs,
            t.flops,
            t.model_epochs,
            t.seconds,
            t.energy_j.map_or(String::new(), |j| format!(", {j:.0} J"))
        );
        outln!(
            "  training loss (first / last tenth of the steps): {:.4} -> {:.4}",
            t.train_loss[0],
            t.train_loss[1]
        );
        if let Some(v) = &t.validation {
            outln!(
                "  held-out ({} images): margin error {:.4} -> {:.4}, sign agreement {:.2}% -> {:.2}%",
                v.images,
                v.error[0],
                v.error[1],
                100.0 * v.agreement[0],
                100.0 * v.agreement[1]
            );
        }
        if !t.checks.is_empty() {
            let curve: Vec<String> = t
                .checks
                .iter()
                .map(|c| format!("{}: {:.4} ({:.2}%)", c.step, c.error, 100.0 * c.agreement))
                .collect();
            outln!(
                "  hold-out checks (step: margin error): {}",
                curve.join(", ")
            );
        }
        outln!(
            "  kept: {} of {} steps{}",
            t.kept_step,
            t.steps,
            match t.kept_step {
                0 => " (the reconstructed module: no check beat it)",
                k if k == t.steps => " (the end)",
                _ => " (the best check)",
            }
        );
    }
    let (kept, total) = m.plan.kept_channels();
    outln!("channels kept: {kept} of {total}");
    for g in &m.plan.groups {
        let names: Vec<String> = g.sites.iter().map(|s| s.to_string()).collect();
        outln!(
            "  sites [{}]: {} of {} channels",
            names.join(", "),
            g.kept.count_ones(),
            g.kept.len()
        );
    }
    outln!(
        "parameters: {} ({:.1}% of the model's {})",
        m.cost.params,
        percent(m.cost.params, m.model_cost.params),
        m.model_cost.params
    );
    outln!(
        "FLOPs: {} ({:.1}% of the model's {})",
        m.cost.flops,
        percent(m.cost.flops, m.model_cost.flops),
        m.model_cost.flops
    );
    outln!(
        "MACs: {} ({:.1}%)",
        m.cost.macs,
        percent(m.cost.macs, m.model_cost.macs)
    );
    outln!("bytes on disk: {}", std::fs::metadata(path)?.len());
    Ok(())
}

fn channel_concern_set(s: &ChannelConcernSet) -> Result<()> {
    outln!(
        "channel concern set of {} ({}) on {}",
        s.model_path,
        s.model_hash,
        s.dataset
    );
    outln!("config: {:?}", s.config);
    outln!(
        "sites: {:?}; concern {:.1} s, tangle {:.1} s",
        s.sites,
        s.seconds,
        s.tangle_seconds
    );
    let mean_rate = |st: &decomp_ir::ChannelStats| {
        let v: Vec<f32> = st
            .sites
            .iter()
            .flat_map(|x| x.frac_active.iter().copied())
            .collect();
        v.iter().sum::<f32>() / v.len().max(1) as f32
    };
    for c in &s.classes {
        let neg = c
            .unconcerned
            .as_ref()
            .map_or("no unconcerned statistics".to_string(), |u| {
                format!(
                    "{} unconcerned, mean rate {:.3}",
                    u.images.len(),
                    mean_rate(&u.stats)
                )
            });
        outln!(
            "class {:3}: {} positives, mean rate {:.3}; {neg}",
            c.class,
            c.positives.len(),
            mean_rate(&c.concerned)
        );
    }
    Ok(())
}
