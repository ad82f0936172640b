//! The cost comparison of METHOD.md section 5: energy and CO2e of training from scratch
//! vs decomposition vs reuse/replace.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use decomp_eval::report::{ComposeReport, TrainMetrics};
use serde_json::Value;

use super::{Run, join, seeded_choice};
use crate::engine::{read, unit_wall_s};
use crate::plot;

/// Energy of `wall_s` seconds at the declared power (kWh at the wall, with PUE) and CO2e (lbs).
fn co2e_of(r: &Run, wall_s: f64, measured_j: Option<f64>) -> (f64, f64, &'static str) {
    let c = &r.m.co2e;
    let kwh = match measured_j {
        Some(j) => c.pue * j / 3.6e6,
        None => c.pue * (wall_s / 3600.0) * (c.cpu_w + c.dram_w + c.gpus * c.gpu_w) / 1000.0,
    };
    (
        kwh,
        c.lbs_per_kwh * kwh,
        if measured_j.is_some() {
            "measured"
        } else {
            "declared TDP"
        },
    )
}

/// The cost comparison of METHOD.md section 5.
pub fn co2e(r: &Run) -> Result<()> {
    let Some(base) = r.model("base")? else {
        return Ok(());
    };
    let data = base.data.clone();
    let k = data.num_classes;
    let classes: Vec<usize> = (0..k).collect();
    let mut mods = Vec::new();
    for c in 0..k {
        mods.push(r.module(&base, c, c)?);
    }
    // The training measured: a finished run's metrics (`[co2e] training_metrics`), or a
    // short `[tma]` run trained here and extrapolated.
    let given =
        r.m.co2e
            .training_metrics
            .as_ref()
            .map(|p| r.env.root.join(p));
    let scratch = match &given {
        Some(m) => {
            if !m.is_file() {
                anyhow::bail!(
                    "[co2e] training_metrics: {} is not a file (the metrics.json of a finished training run)",
                    m.display()
                );
            }
            Some(m.parent().context("metrics folder")?.to_path_buf())
        }
        None => {
            let t = r.m.tma.as_ref().context(
                "co2e needs [tma] (a short training run to measure) or [co2e] training_metrics",
            )?;
            r.train("scratch", k, &data, None, t)?
        }
    };
    let Some(mods) = mods.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(());
    };
    let Some(scratch) = scratch else {
        return Ok(());
    };
    let pair = seeded_choice(k, 2, r.m.select.seed);
    let Some(m_pair) = r.margins(
        &format!("{}-{}", base.arch, join(&pair).replace(',', "-")),
        &[mods[pair[0]].clone(), mods[pair[1]].clone()],
        &base.data,
        &pair,
    )?
    else {
        return Ok(());
    };
    let Some(m_all) = r.margins(&format!("{}-all", base.arch), &mods, &base.data, &classes)? else {
        return Ok(());
    };
    let v_pair = r.vote(
        "pair",
        std::slice::from_ref(&m_pair),
        &["0:0".to_string(), "0:1".to_string()],
    )?;
    if !r.reporting()? {
        return Ok(());
    }
    r.gate_compose(
        &format!("the base model {}", base.arch),
        &read::<ComposeReport>(&m_all.with_file_name("compose.json"))?,
        k,
    )?;
    r.gate_trained(
        &format!("the training run ({})", scratch.display()),
        &scratch,
        k,
    )?;
    let _ = v_pair;
    let wall = |unit_file: &Path| unit_wall_s(unit_file.parent().context("unit folder")?);
    let decompose_s: f64 = mods
        .iter()
        .map(|m| {
            wall(
                &m.parent()
                    .and_then(Path::parent)
                    .context("module path")?
                    .join("unit.json"),
            )
        })
        .sum::<Result<f64>>()?;
    // The training configuration stays as written (it is copied into the report).
    let metrics: TrainMetrics<Value> = read(&scratch.join("metrics.json"))?;
    let epochs = &metrics.epochs;
    let train_s: f64 = epochs.iter().map(|e| e.wall_s).sum();
    let measured_j = metrics.energy_j;
    let source = metrics.energy_source.clone();
    let best_epoch = metrics.best_epoch.unwrap_or(epochs.len());
    let to_best_s: f64 = epochs
        .iter()
        .filter(|e| e.epoch <= best_epoch)
        .map(|e| e.wall_s)
        .sum();
    let ips = if epochs.is_empty() {
        f64::NAN
    } else {
        epochs.iter().map(|e| e.images_per_s).sum::<f64>() / epochs.len() as f64
    };
    let pair_s = wall(&m_pair.with_file_name("unit.json"))?;
    let all_s = wall(&m_all.with_file_name("unit.json"))?;
    let n_ep = epochs.len();
    let ce = r.m.co2e.scratch_epochs;
    let costs = |label: String, secs: f64, kind: &str| (label, secs, None, kind.to_string());
    // Rows, then the headline: the fixed-epoch and until-best training against
    // decomposition + reuse and + replace (the paper's Figure 6).
    let (rows, fixed_s, best_s, what_fixed) = if given.is_some() {
        // Every epoch measured; the median epoch discounts epochs slowed by other jobs on
        // the machine (the sum is in the report too).
        let med = crate::stats::median(epochs.iter().map(|e| e.wall_s).collect());
        let (fixed, best) = (med * n_ep as f64, med * best_epoch as f64);
        let rows = vec![
            costs(
                format!(
                    "training run, {n_ep} epochs ({n_ep} x its median measured epoch, {med:.0} s; the epochs summed to {train_s:.0} s)"
                ),
                fixed,
                "measured",
            ),
            costs(
                format!("the same run until its best checkpoint (epoch {best_epoch})"),
                best,
                "measured",
            ),
            costs(
                format!("{ce} epochs (the paper's schedule) at the median measured epoch"),
                med * ce as f64,
                "extrapolated",
            ),
        ];
        (rows, fixed, best, format!("{n_ep} epochs, measured"))
    } else {
        let t = r.m.tma.as_ref().context("[tma]")?;
        let full_train_images = 50_000.0 * (1.0 - t.val_fraction.unwrap_or(0.1));
        let fixed = full_train_images / ips * ce as f64;
        let rows = vec![
            (
                format!(
                    "measured training run ({} epochs{})",
                    epochs.len(),
                    t.train_limit
                        .map_or(String::new(), |n| format!(", {n} images"))
                ),
                train_s,
                measured_j,
                "measured".into(),
            ),
            (
                format!("training run until its best checkpoint (epoch {best_epoch})"),
                to_best_s,
                None,
                "measured".into(),
            ),
            (
                format!(
                    "from scratch, {ce} epochs on {full_train_images:.0} images (extrapolated at {ips:.0} img/s)"
                ),
                fixed,
                None,
                "extrapolated".into(),
            ),
        ];
        (rows, fixed, f64::NAN, format!("{ce} epochs, extrapolated"))
    };
    let rows: Vec<(String, f64, Option<f64>, String)> = rows
        .into_iter()
        .chain([
            (
                format!("decomposition, all {k} classes (one-time)"),
                decompose_s,
                None,
                "measured".into(),
            ),
            (
                "reuse: compose 2 modules on their test images".into(),
                pair_s,
                None,
                "measured".into(),
            ),
            (
                format!("replace: compose {k} modules on the full test split"),
                all_s,
                None,
                "measured".into(),
            ),
        ])
        .collect();
    let mut md = String::new();
    r.header(&mut md);
    let c = &r.m.co2e;
    let _ = writeln!(
        md,
        "Formula (METHOD.md section 5, after Strubell et al. 2019): p_t = {} · t · (p_cpu + p_dram + g · p_gpu) / 1000 kWh, \
         CO2e = {} · p_t lbs. Power: {}. Declared: p_cpu = {} W, p_dram = {} W, g = {}, p_gpu = {} W (this machine exposes \
         no RAPL powercap counters and no GPU).\n",
        c.pue,
        c.lbs_per_kwh,
        if measured_j.is_some() {
            format!(
                "the training run measured its energy ({source}); the other rows use the declared power"
            )
        } else {
            "nothing measured here, so every row uses the declared power (TDP estimate)".into()
        },
        c.cpu_w,
        c.dram_w,
        c.gpus,
        c.gpu_w
    );
    md.push_str(
        "| what | time s | energy kWh | CO2e lbs | power | time |\n|---|---|---|---|---|---|\n",
    );
    let mut csv = String::from("what,seconds,kwh,co2e_lbs,power,time\n");
    let mut js = Vec::new();
    let mut cats = Vec::new();
    let mut bars = Vec::new();
    for (what, secs, j, kind) in &rows {
        let (kwh, lbs, p) = co2e_of(r, *secs, *j);
        let _ = writeln!(
            md,
            "| {what} | {secs:.1} | {kwh:.6} | {lbs:.6} | {p} | {kind} |"
        );
        let _ = writeln!(csv, "\"{what}\",{secs},{kwh},{lbs},{p},{kind}");
        js.push(json!({"what": what, "seconds": secs, "kwh": kwh, "co2e_lbs": lbs, "power": p, "time": kind}));
        cats.push(
            what.split(['(', ':', ','])
                .next()
                .unwrap_or(what)
                .trim()
                .to_string(),
        );
        bars.push(lbs * 1000.0);
    }
    let ratio = |a: f64, b: f64| a / b;
    let (reuse_s, replace_s) = (decompose_s + pair_s, decompose_s + all_s);
    let _ = write!(
        md,
        "\nTraining ({what_fixed}) vs decomposition + reuse: **{:.0}x** more CO2e; vs decomposition + replace: **{:.0}x**.",
        ratio(fixed_s, reuse_s),
        ratio(fixed_s, replace_s),
    );
    if best_s.is_finite() {
        let _ = write!(
            md,
            " Until its best checkpoint: {:.0}x and {:.0}x.",
            ratio(best_s, reuse_s),
            ratio(best_s, replace_s)
        );
    } else {
        let _ = write!(
            md,
            " The measured short training run alone vs decomposition + reuse: {:.1}x.",
            ratio(train_s, reuse_s)
        );
    }
    md.push_str("\n\n");
    md.push_str(
        "## The paper's numbers\n\nThe paper's Figure 6 (CO2e in lbs, training with a fixed number of epochs vs reuse and \
         replacement): reuse emits **23.7x** less (18.3x against training until the best model), replacement **42x** less \
         (31.5x) (METHOD.md section 7). The abstract's \"about 37x\" is not derived in the paper.\n\n![CO2e](co2e.svg)\n",
    );
    plot::bars(
        &r.out_dir().join("co2e.svg"),
        "CO2e per activity (milli-lbs)",
        "CO2e (1e-3 lbs)",
        &cats,
        &[("CO2e", bars)],
    )?;
    let ratios = json!({
        "training": what_fixed,
        "fixed_vs_reuse": ratio(fixed_s, reuse_s),
        "fixed_vs_replace": ratio(fixed_s, replace_s),
        "best_vs_reuse": best_s.is_finite().then(|| ratio(best_s, reuse_s)),
        "best_vs_replace": best_s.is_finite().then(|| ratio(best_s, replace_s)),
    });
    r.finish(
        &md,
        &json!({"rows": js, "ratios": ratios, "training_metrics": metrics}),
        &csv,
    )?;
    Ok(())
}
