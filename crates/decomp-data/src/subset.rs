//! Derived datasets: a documented, checksummed selection of classes from an official dataset.
//!
//! The one known subset is `tiny-imagenet-subset20`, the second dataset of the inter-dataset
//! experiments (`experiments/table3.toml`, `table5.toml`). It is the folder the ICSE'22 paper's
//! authors published (`github.com/rangeetpan/IMagenet`, commit `6125d8a1`, folder
//! `tiny-imagenet-200/`: the official Tiny ImageNet plus two classes they added, gorilla
//! `n02480855` and groom `n10148035`) reduced to 20 classes, as `shared/datasets/README.md`
//! describes. The selection ([`select`]):
//!
//! * `wnids.txt`: the 20 ids of [`SUBSET20_WNIDS`], one per line (the first 18 ids of the
//!   official `wnids.txt`, then the authors' two);
//! * `words.txt`: the lines of the source `words.txt` naming one of them, in source order;
//! * `val/val_annotations.txt`: the lines of the authors' annotations (the official ones plus
//!   theirs) naming one of them, in source order, bytes and line ends unchanged (a last line
//!   without a line end gets `\n`); `val/images/`: those images;
//! * `train/<wnid>/`: copied whole for each of the 20 ids.
//!
//! The 18 official classes come from the official zip ([`crate::fetch::official_archives`]);
//! the authors' annotations file and their two classes' 1,100 images, which the official zip
//! lacks, are fetched file by file from the pinned commit. GitHub publishes no checksums for
//! them, so the result is verified as a whole: its tree hash ([`tree_sha256`], equal to
//! `find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`)
//! must equal [`SUBSET20_TREE_SHA256`], the hash of the folder the experiments were run on;
//! anything else is refused and removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fetch::{self, lock, remove_stale_staging};
use crate::{DataError, DatasetKind};

/// The 20 classes of `tiny-imagenet-subset20`, in label order.
pub const SUBSET20_WNIDS: [&str; 20] = [
    "n02124075",
    "n04067472",
    "n04540053",
    "n04099969",
    "n07749582",
    "n01641577",
    "n02802426",
    "n09246464",
    "n07920052",
    "n03970156",
    "n03891332",
    "n02106662",
    "n03201208",
    "n02279972",
    "n02132136",
    "n04146614",
    "n07873807",
    "n02364673",
    "n02480855",
    "n10148035",
];

/// [`tree_sha256`] of `shared/datasets/tiny-imagenet-subset20` (11,021 files).
pub const SUBSET20_TREE_SHA256: &str =
    "f4a25ad2b10310293c79b41f88e4dcdb4478c2b765880188483a8fc1c7e2f64e";

/// The authors' `tiny-imagenet-200/` folder at the pinned commit, file by file.
const AUTHORS_URL: &str = "https://raw.githubusercontent.com/rangeetpan/IMagenet/6125d8a1069df02232eb57678fd46c700411dd45/tiny-imagenet-200/";

/// A documented class selection from an official dataset, with the hash of the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsetSpec {
    /// The folder name (`tiny-imagenet-subset20`).
    pub name: String,
    /// The official dataset it is cut from (Tiny ImageNet).
    pub kind: DatasetKind,
    /// The classes kept, in label order.
    pub wnids: Vec<String>,
    /// URL prefix (ending in `/`) of a `tiny-imagenet-200/`-shaped folder holding the files the
    /// official archive lacks.
    pub extra_url: String,
    /// Classes whose `train/<wnid>/images/<wnid>_<k>.JPEG` (`k < extra_train_images`) come
    /// from `extra_url`.
    pub extra_classes: Vec<String>,
    pub extra_train_images: usize,
    /// Take `val/val_annotations.txt` from `extra_url` (and the val images it lists for
    /// `extra_classes`).
    pub extra_annotations: bool,
    /// The required [`tree_sha256`] of the result (`None`: not checked).
    pub tree_sha256: Option<String>,
}

/// The subsets that [`crate::locate::DataRoot::ensure`] can build.
pub fn known_subsets() -> Vec<SubsetSpec> {
    vec![SubsetSpec {
        name: "tiny-imagenet-subset20".to_string(),
        kind: DatasetKind::TinyImageNet,
        wnids: SUBSET20_WNIDS.iter().map(|s| s.to_string()).collect(),
        extra_url: AUTHORS_URL.to_string(),
        extra_classes: vec!["n02480855".to_string(), "n10148035".to_string()],
        extra_train_images: 500,
        extra_annotations: true,
        tree_sha256: Some(SUBSET20_TREE_SHA256.to_string()),
    }]
}

/// Builds `spec` from the official dataset folder `base` into `dest_dir/spec.name` (atomically:
/// in a temporary folder renamed into place once verified; one process at a time).
#[tracing::instrument(level = "info", skip_all, fields(subset = %spec.name))]
pub fn build(spec: &SubsetSpec, base: &Path, dest_dir: &Path) -> Result<PathBuf, DataError> {
    let folder = dest_dir.join(&spec.name);
    let _guard = lock(dest_dir, &spec.name)?;
    if folder.is_dir() && fetch::missing_files(spec.kind, &folder).is_empty() {
        return Ok(folder);
    }
    if folder.exists() {
        return Err(DataError::InvalidArgument(format!(
            "{} exists but is incomplete, expected the complete {} subset; remove it to build it again",
            folder.display(),
            spec.name
        )));
    }
    remove_stale_staging(dest_dir, &spec.name);
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.download.", spec.name))
        .tempdir_in(dest_dir)
        .map_err(|e| DataError::io("create a temporary folder in", dest_dir, e))?;
    let extra = staging.path().join("extra");
    fetch_extras(spec, &extra)?;
    let out = staging.path().join(&spec.name);
    select(spec, &[&extra, base], &out)?;
    if let Some(expected) = &spec.tree_sha256 {
        let found = tree_sha256(&out)?;
        if found != expected.to_ascii_lowercase() {
            // `staging` is removed when dropped here.
            return Err(DataError::Checksum {
                url: format!(
                    "{} (built from {} and {})",
                    spec.name,
                    base.display(),
                    spec.extra_url
                ),
                expected: format!("tree sha256 {expected}"),
                found: format!("tree sha256 {found}"),
            });
        }
    }
    std::fs::rename(&out, &folder)
        .map_err(|e| DataError::io("rename the built subset to", &folder, e))?;
    tracing::info!(folder = %folder.display(), "subset built and verified");
    Ok(folder)
}

/// Downloads the files of `spec` that the official archive lacks into `extra`.
fn fetch_extras(spec: &SubsetSpec, extra: &Path) -> Result<(), DataError> {
    let get = |rel: &str| {
        fetch::download_unverified(&format!("{}{rel}", spec.extra_url), &extra.join(rel))
    };
    let annotations = "val/val_annotations.txt";
    if spec.extra_annotations {
        get(annotations)?;
    }
    let wanted: HashSet<&str> = spec.extra_classes.iter().map(String::as_str).collect();
    let mut files: Vec<String> = Vec::new();
    if spec.extra_annotations && !wanted.is_empty() {
        let text = read(&extra.join(annotations))?;
        for line in text.lines() {
            let mut fields = line.split('\t');
            if let (Some(file), Some(wnid)) = (fields.next(), fields.next())
                && wanted.contains(wnid.trim())
            {
                files.push(format!("val/images/{}", file.trim()));
            }
        }
    }
    for wnid in &spec.extra_classes {
        files.extend(
            (0..spec.extra_train_images).map(|k| format!("train/{wnid}/images/{wnid}_{k}.JPEG")),
        );
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(files.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} files ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(format!("downloading {} extra files", spec.name));
    tracing::info!(files = files.len(), from = %spec.extra_url, "downloading the files the official archive lacks");
    for rel in &files {
        get(rel)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|e| DataError::io("read", path, e))
}

/// The first of `sources` that holds `rel`.
fn pick(sources: &[&Path], rel: &str) -> Result<PathBuf, DataError> {
    sources
        .iter()
        .map(|s| s.join(rel))
        .find(|p| p.exists())
        .ok_or_else(|| DataError::MissingFile {
            path: sources.last().map_or(PathBuf::from(rel), |s| s.join(rel)),
            expected: "a file of the official Tiny ImageNet layout".to_string(),
        })
}

/// Lines of `text` whose field `field` (tab-separated) is in `keep`, each with its own line
/// end (`\n` or `\r\n`, kept as it is; a last line without one gets `\n`).
fn keep_lines(text: &str, field: usize, keep: &HashSet<&str>) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        if line
            .split('\t')
            .nth(field)
            .is_some_and(|w| keep.contains(w.trim()))
        {
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

/// Writes the selection of `spec` into `out`, taking each file from the first of `sources`
/// (folders in the official `tiny-imagenet-200/` layout) that has it. See the module docs.
pub fn select(spec: &SubsetSpec, sources: &[&Path], out: &Path) -> Result<(), DataError> {
    let keep: HashSet<&str> = spec.wnids.iter().map(String::as_str).collect();
    let write = |rel: &str, bytes: &[u8]| {
        let path = out.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io("create", dir, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| DataError::io("write", &path, e))
    };
    let mut wnids = spec.wnids.join("\n");
    wnids.push('\n');
    write("wnids.txt", wnids.as_bytes())?;
    let words = keep_lines(&read(&pick(sources, "words.txt")?)?, 0, &keep);
    write("words.txt", words.as_bytes())?;
    let annotations = keep_lines(&read(&pick(sources, "val/val_annotations.txt")?)?, 1, &keep);
    write("val/val_annotations.txt", annotations.as_bytes())?;
    for line in annotations.lines() {
        let file = line.split('\t').next().unwrap_or("").trim();
        let rel = format!("val/images/{file}");
        copy(&pick(sources, &rel)?, &out.join(&rel))?;
    }
    for wnid in &spec.wnids {
        let rel = format!("train/{wnid}");
        copy_dir(&pick(sources, &rel)?, &out.join(&rel))?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<(), DataError> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io("create", dir, e))?;
    }
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| DataError::io("copy", from, e))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), DataError> {
    for (rel, _) in files_below(from)? {
        copy(&from.join(&rel), &to.join(&rel))?;
    }
    Ok(())
}

/// Every regular file below `root` as (relative path with `/`, absolute path), sorted by the
/// relative path's bytes.
fn files_below(root: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| DataError::io("list", &dir, e))?;
            let path = entry.path();
            let ty = entry
                .file_type()
                .map_err(|e| DataError::io("stat", &path, e))?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The SHA-256 of the `sha256sum` listing of every file below `root`, sorted by path:
/// `find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`.
pub fn tree_sha256(root: &Path) -> Result<String, DataError> {
    let mut listing = Sha256::new();
    for (rel, path) in files_below(root)? {
        let mut file = std::fs::File::open(&path).map_err(|e| DataError::io("open", &path, e))?;
        let mut h = Sha256::new();
        std::io::copy(&mut file, &mut h).map_err(|e| DataError::io("read", &path, e))?;
        listing.update(format!("{}  {rel}\n", hex::encode(h.finalize())).as_bytes());
    }
    Ok(hex::encode(listing.finalize()))
}
