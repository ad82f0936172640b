//! `decomp mix`: one small dataset made of classes of several datasets, for inter-dataset
//! reuse and replacement (METHOD.md section 4).
//!
//! Each part contributes one class of one dataset; images are converted to 3 channels and
//! resized to 32x32 (area resampling when shrinking, e.g. Tiny ImageNet's 64x64) and written
//! as CIFAR-10-format records, label = part index: `train.bin`, `test.bin` and
//! `batches.meta.txt` (one name per part). Every stage reads the result with
//! `--dataset cifar10 --data-file DIR/<split>.bin`, and `decomp train` trains on it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::args::DataArgs;
use crate::files::write_atomic;

#[derive(clap::Args)]
pub struct MixArgs {
    /// JSON file: `{"parts": [{"dataset": "cifar10", "data_dir": "..", "class": 3},
    /// {"dataset": "tiny-imagenet", "dataset_path": "..", "class": 5}]}`; at most 10 parts.
    #[arg(long)]
    spec: PathBuf,
    /// Output folder.
    #[arg(long)]
    out_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    dataset: String,
    data_dir: Option<PathBuf>,
    dataset_path: Option<PathBuf>,
    /// Class index in that dataset.
    class: usize,
}

const SIDE: usize = 32;
/// Largest mix spec read: 1 MiB (a spec of 10 parts is a few hundred bytes).
const SPEC_SIZE_LIMIT: u64 = 1 << 20;

pub fn run(a: MixArgs) -> Result<()> {
    let text = crate::files::read_text(&a.spec, SPEC_SIZE_LIMIT, "mix spec")?;
    crate::files::check_out_dir(&a.out_dir, "--out-dir")?;
    let spec: Spec = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid mix spec", a.spec.display()))?;
    if spec.parts.is_empty() || spec.parts.len() > 10 {
        bail!(
            "{}: {} parts, expected 1 to 10 (CIFAR-10 records hold labels 0..9)",
            a.spec.display(),
            spec.parts.len()
        );
    }
    // Everything is read before anything is written, so an output inside a source dataset
    // is refused (`crate::files`) before any file changes.
    let mut names = Vec::new();
    let mut outputs = Vec::new();
    for split in ["train", "test"] {
        let mut bytes = Vec::new();
        let mut counts = Vec::new();
        for (label, p) in spec.parts.iter().enumerate() {
            let args = DataArgs {
                dataset: p.dataset.clone(),
                data_dir: p.data_dir.clone(),
                dataset_path: p.dataset_path.clone(),
                data_file: None,
                split: Some(split.parse()?),
                download: false,
                limit: None,
            };
            let ds = crate::data::open_raw_dataset(&args)?.subset_classes(&[p.class])?;
            if ds.is_empty() {
                bail!(
                    "{}: part {label} ({} class {}) has no {split} image",
                    a.spec.display(),
                    p.dataset,
                    p.class
                );
            }
            let mut ds = ds;
            if ds.image_shape()[0] != 3 {
                ds = ds.with_channels(3)?;
            }
            if ds.image_shape()[1..] != [SIDE, SIDE] {
                ds = ds.with_resize(SIDE, SIDE)?;
            }
            if split == "train" {
                names.push(ds.class_names()[0].replace(char::is_whitespace, "_"));
            }
            for i in 0..ds.len() {
                bytes.push(label as u8);
                bytes.extend(ds.raw_u8(i)?);
            }
            counts.push(ds.len());
        }
        eprintln!("{split}: {counts:?} images per part");
        outputs.push((a.out_dir.join(format!("{split}.bin")), bytes));
    }
    outputs.push((
        a.out_dir.join("batches.meta.txt"),
        format!("{}\n", names.join("\n")).into_bytes(),
    ));
    crate::files::check_out_dir(&a.out_dir, "--out-dir")?;
    for (path, _) in &outputs {
        crate::files::check_output(path)?;
    }
    for (path, bytes) in &outputs {
        write_atomic(path, bytes)?;
    }
    outln!("{}", a.out_dir.display());
    Ok(())
}
