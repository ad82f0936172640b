//! `decomp vote`: compose any selection of modules from saved margins.
//!
//! A module's margin on an image does not depend on which other modules are composed with
//! it, so `decomp compose --save-margins` runs each model once over an image set and `vote`
//! then evaluates any selection (a pair of classes, all classes with one module replaced by
//! another model's, a class removed) with the same voting rule as `compose`, in
//! milliseconds. Every margin file of one vote must cover the same images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use decomp_compose::label_rank;
use decomp_eval::Accumulator;
use decomp_eval::report::{MARGINS_FORMAT, Margins, VoteReport};

use crate::files::write_atomic;

/// Largest margins file `vote` reads: 1 GiB (10,000 images x 100 modules is about 10 MB).
pub const MARGINS_SIZE_LIMIT: u64 = 1 << 30;

#[derive(clap::Args)]
pub struct VoteArgs {
    /// Margin files from `decomp compose --save-margins`, all over the same images.
    #[arg(long = "margins", required = true)]
    margins: Vec<PathBuf>,
    /// The composed modules, in order, comma-separated: `F:I` is module `I` of margin file
    /// `F` (0-based, in `--margins` order) and stands for that file's label `I`;
    /// `F:I&G:J` votes "mine" only when both do (the smaller margin: a re-verified module);
    /// `F:I*S` scales that module's margins by `S > 0` (a module from another model whose
    /// margins sit on another scale, the factor chosen on training images). Images whose
    /// label no entry stands for are left out.
    #[arg(long, value_delimiter = ',', required = true)]
    pick: Vec<String>,
    /// Top-5 ranking: `voters-first` or `confidence`.
    #[arg(long, default_value = "voters-first")]
    top5_ranking: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write every voted image's label (the entry it stands for) and label rank
    /// (`per_image` in the JSON, in the margin files' image order), for paired comparisons.
    #[arg(long)]
    per_image: bool,
}

/// One part of a composed entry: module `column` of margin file `file`, its margins times
/// `scale`.
#[derive(Clone, Copy, Debug)]
struct Part {
    file: usize,
    column: usize,
    scale: f32,
}

/// One composed entry: the parts whose smallest (scaled) margin it uses.
fn parse_entry(s: &str, files: usize) -> Result<Vec<Part>> {
    s.split('&')
        .map(|part| {
            let (part, scale) = match part.split_once('*') {
                Some((p, f)) => {
                    let v: f32 = f
                        .trim()
                        .parse()
                        .with_context(|| format!("--pick {s:?}: scale {f:?} is not a number"))?;
                    if !(v.is_finite() && v > 0.0) {
                        bail!("--pick {s:?}: scale {f:?}: expected a finite number > 0");
                    }
                    (p, v)
                }
                None => (part, 1.0),
            };
            let (f, i) = part
                .split_once(':')
                .with_context(|| format!("--pick {s:?}: expected FILE:MODULE, e.g. 0:3"))?;
            let f: usize = f
                .trim()
                .parse()
                .with_context(|| format!("--pick {s:?}: file index {f:?} is not a number"))?;
            let i: usize = i
                .trim()
                .parse()
                .with_context(|| format!("--pick {s:?}: module index {i:?} is not a number"))?;
            if f >= files {
                bail!("--pick {s:?}: file index {f}, but {files} --margins files are given");
            }
            Ok(Part {
                file: f,
                column: i,
                scale,
            })
        })
        .collect()
}

/// Refuses a NaN or infinite margin (JSON has no NaN, but `1e39` reads as an infinite
/// `f32`): it would never vote and never rank, so it must not pass silently.
fn check_finite(path: &Path, m: &Margins) -> Result<()> {
    for (i, row) in m.margins.iter().enumerate() {
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: image {i}: the margin of module {j} ({}) is {}, expected a finite number",
                path.display(),
                m.modules[j].path,
                row[j]
            );
        }
    }
    Ok(())
}

pub fn run(a: VoteArgs) -> Result<()> {
    for p in &a.margins {
        crate::files::input(p);
    }
    if let Some(p) = &a.out {
        crate::files::check_output(p)?;
    }
    let files: Vec<Margins> = a
        .margins
        .iter()
        .map(|p| {
            let text = crate::files::read_text(p, MARGINS_SIZE_LIMIT, "margins file")?;
            let m: Margins = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a margins file", p.display()))?;
            if m.format != MARGINS_FORMAT {
                bail!(
                    "{}: format {:?}, expected {MARGINS_FORMAT}",
                    p.display(),
                    m.format
                );
            }
            if m.margins.len() != m.labels.len()
                || m.margins.iter().any(|r| r.len() != m.modules.len())
            {
                bail!(
                    "{}: margins do not have one row per label and one column per module",
                    p.display()
                );
            }
            check_finite(p, &m)?;
            Ok(m)
        })
        .collect::<Result<_>>()?;
    for (p, m) in a.margins.iter().zip(&files).skip(1) {
        if !crate::data::same_image_set(&m.images, &files[0].images) || m.labels != files[0].labels
        {
            bail!(
                "{} covers other images ({}) than {} ({})",
                p.display(),
                m.images,
                a.margins[0].display(),
                files[0].images
            );
        }
    }
    let ranking = crate::args::top5_ranking(&a.top5_ranking)?;
    let entries: Vec<Vec<Part>> = a
        .pick
        .iter()
        .map(|s| parse_entry(s, files.len()))
        .collect::<Result<_>>()?;
    for (s, e) in a.pick.iter().zip(&entries) {
        for &Part {
            file: f, column: i, ..
        } in e
        {
            if i >= files[f].modules.len() {
                bail!(
                    "--pick {s:?}: {} has {} modules",
                    a.margins[f].display(),
                    files[f].modules.len()
                );
            }
        }
    }
    // Label of the image set each entry stands for, and the entry of each label.
    let labels = &files[0].labels;
    let num_labels = files[0]
        .class_names
        .len()
        .max(labels.iter().max().map_or(0, |&l| l + 1));
    let mut entry_of = vec![None; num_labels];
    for (k, e) in entries.iter().enumerate() {
        let l = e[0].column;
        match entry_of.get_mut(l) {
            Some(slot @ None) => *slot = Some(k),
            Some(Some(_)) => bail!("--pick: two entries stand for label {l}"),
            None => bail!(
                "--pick {:?}: label {l} does not occur in the image set",
                a.pick[k]
            ),
        }
    }
    let mut acc = Accumulator::new(entries.len());
    if a.per_image {
        acc = acc.keep_images();
    }
    let mut row = vec![0.0f32; entries.len()];
    for (i, &l) in labels.iter().enumerate() {
        let Some(target) = entry_of[l] else { continue };
        for ((slot, e), s) in row.iter_mut().zip(&entries).zip(&a.pick) {
            *slot = e
                .iter()
                .map(|p| files[p.file].margins[i][p.column] * p.scale)
                .fold(f32::INFINITY, f32::min);
            if !slot.is_finite() {
                bail!(
                    "--pick {s:?}: image {i}: the scaled margin is {slot}, expected a finite number"
                );
            }
        }
        acc.add_rank(target, label_rank(&row, target, ranking))?;
    }
    if acc.count() == 0 {
        bail!("no image of the image set has a label the picked modules stand for");
    }
    let r = acc.finish();
    let out = VoteReport {
        pick: a.pick.clone(),
        classes: entries
            .iter()
            .map(|e| {
                files[e[0].file]
                    .class_names
                    .get(e[0].column)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect(),
        modules: entries
            .iter()
            .map(|e| files[e[0].file].modules[e[0].column].path.clone())
            .collect(),
        n: r.n,
        top1: r.top1,
        top5: r.top5,
        per_class: r.per_class,
        per_class_n: r.per_class_n,
        per_image: acc.per_image().cloned(),
    };
    let text = serde_json::to_string(&out)?;
    if let Some(p) = &a.out {
        write_atomic(p, text.as_bytes())?;
    }
    if a.json {
        outln!("{text}");
    } else {
        outln!(
            "{} modules on {} images: top-1 {:.2}%  top-5 {:.2}%",
            entries.len(),
            out.n,
            out.top1,
            out.top5
        );
    }
    Ok(())
}
