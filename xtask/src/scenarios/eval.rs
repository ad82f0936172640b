//! `eval`: models evaluated on image sets (a dataset split, or a file of records), one unit
//! per model and set; the report lists top-1/top-5 and throughput.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::json;

use super::Run;
use super::format::{s, strings};
use crate::engine::{Kind, read, write_atomic, write_report};
use decomp_eval::report::ModelEval;

pub fn eval(r: &Run) -> Result<()> {
    let mut rows: Vec<(String, String, Option<ModelEval>)> = Vec::new();
    let mut index = 0;
    for (role, spec) in &r.m.models {
        let w = spec
            .weights
            .as_ref()
            .with_context(|| format!("[models.{role}]: eval needs `weights`"))?;
        let (weights, wkey) = r.resolve_weights(w)?;
        for set in &r.m.eval {
            let data = r.m.data.get(&set.data).with_context(|| {
                format!(
                    "[[eval]] {}: manifest has no [data.{}]",
                    set.label, set.data
                )
            })?;
            if data.optional && super::optional_folder(&r.env.data, data).is_none() {
                continue;
            }
            let folder = r.env.dataset_folder(data)?;
            let (images, files) = match (&set.file, &set.split) {
                (Some(f), _) => {
                    let file = folder.join(f);
                    let hash = r.eng.file_hash(&file)?;
                    (strings(&["--data-file", &s(&file)]), hash)
                }
                (None, split) => {
                    let split = split.as_deref().unwrap_or("test");
                    let mut a = match &data.path {
                        Some(_) => strings(&["--dataset-path", &s(&folder)]),
                        None => strings(&["--data-dir", &s(folder.parent().unwrap_or(&folder))]),
                    };
                    a.extend(strings(&["--split", split]));
                    (a, r.eng.tree_hash(&folder)?)
                }
            };
            let key = json!({ "weights": wkey, "arch": spec.arch, "dataset": data.dataset, "images": set, "files": files, "limit": r.env.limit });
            let name = format!("{role}-{}", set.label);
            let dir = r
                .eng
                .unit("eval", Kind::PerUnit, index, &name, &key, |work| {
                    let mut a = vec!["eval".to_string()];
                    if let Some(arch) = &spec.arch {
                        a.extend(strings(&["--arch", arch]));
                    }
                    a.extend(strings(&[
                        "--weights",
                        &weights,
                        "--dataset",
                        &data.dataset,
                        "--json",
                        "--device",
                        &r.eng.device,
                    ]));
                    a.extend(images.iter().cloned());
                    if let Some(n) = r.env.limit {
                        a.extend(["--limit".into(), n.to_string()]);
                    }
                    let out = r.eng.decomp(&a)?;
                    write_atomic(&work.join("eval.json"), out.trim())
                })?;
            index += 1;
            let v: Option<ModelEval> = dir.map(|d| read(&d.join("eval.json"))).transpose()?;
            if let (Some(v), None, "test") = (&v, &set.file, set.split.as_deref().unwrap_or("test"))
            {
                r.gate_eval(&format!("{role} ({weights})"), v, v.class_names.len())?;
            }
            rows.push((role.clone(), set.label.clone(), v));
        }
    }
    if !r.reporting()? {
        return Ok(());
    }
    let out = r.out_dir();
    let mut md = format!("# {}\n\n{}\n\n", r.m.title, r.m.notes.trim());
    md.push_str(
        "| model | images | n | top-1 % | top-5 % | images/s |\n|---|---|---|---|---|---|\n",
    );
    let mut js = Vec::new();
    for (model, images, v) in rows {
        let v = v.with_context(|| format!("eval of {model} on {images} missing"))?;
        let _ = writeln!(
            md,
            "| {model} | {images} | {} | {:.2} | {:.2} | {:.0} |",
            v.n, v.top1, v.top5, v.images_per_second
        );
        js.push(json!({"model": model, "images": images, "result": v}));
    }
    write_report(&out.join("report.md"), &md)?;
    write_report(&out.join("eval.json"), &serde_json::to_string_pretty(&js)?)?;
    Ok(())
}
