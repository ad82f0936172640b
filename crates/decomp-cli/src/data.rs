//! Finding and opening the images a command reads: the data folder (`decomp_data::locate`,
//! the same for every command and the xtask), the split, normalization for a model, the
//! training images of the decomposition stages, and the class subset composed modules vote
//! over. Registers what it reads as inputs of the command (`crate::files`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use decomp_data::{DataRoot, Dataset, DatasetFolder, DatasetKind, Normalization, Split};
use decomp_ir::ModelIr;

use crate::args::DataArgs;

/// Opens the dataset the flags describe, as stored (native shape and statistics); the split
/// defaults to test. A missing dataset is downloaded unless `--offline`.
pub fn open_raw_dataset(args: &DataArgs) -> Result<Dataset> {
    let kind = DatasetKind::parse(&args.dataset)?;
    let split = args.split.unwrap_or(Split::Test);
    register_inputs(args)?;
    Ok(if let Some(file) = data_file(args) {
        Dataset::from_cifar_file(kind, file)?
    } else if let Some(folder) = &args.dataset_path {
        // A folder named outright is fetched only when its name says what it is (the official
        // folder name or a known subset); otherwise its error gives no download advice.
        let name = folder.file_name().map(|n| n.to_string_lossy().to_string());
        let want = name.map(|n| DatasetFolder::named(kind, &n));
        if let (Some(want), Some(parent)) = (
            want.filter(|w| w.source().is_some() && !folder.exists()),
            folder.parent(),
        ) {
            DataRoot::at(parent).ensure(&want)?;
        }
        Dataset::load_folder(kind, folder, split)?
    } else {
        let folder = data_root(args.data_dir.as_deref())?.ensure(&DatasetFolder::official(kind))?;
        crate::files::input_tree(&folder);
        Dataset::load_folder(kind, &folder, split)?
    })
}

/// `--data-file`, or a `--data-dir` that is a file of records.
pub fn data_file(args: &DataArgs) -> Option<&PathBuf> {
    args.data_file
        .as_ref()
        .or(args.data_dir.as_ref().filter(|d| d.is_file()))
}

/// The data folder: `--data-dir`, else $DECOMP_DATA_DIR, else `../shared/datasets` beside the
/// working directory when present, else the user cache.
pub fn data_root(flag: Option<&Path>) -> Result<DataRoot> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    Ok(DataRoot::resolve_from(flag, &cwd, |k| std::env::var_os(k)))
}

/// Registers the files and folders `args` reads as inputs of the command (`crate::files`),
/// so that no output can replace them; call it before checking outputs.
pub fn register_inputs(args: &DataArgs) -> Result<()> {
    let kind = DatasetKind::parse(&args.dataset)?;
    if let Some(file) = data_file(args) {
        crate::files::input(file);
    } else if let Some(folder) = &args.dataset_path {
        crate::files::input_tree(folder);
    } else {
        let root = data_root(args.data_dir.as_deref())?;
        let want = DatasetFolder::official(kind);
        crate::files::input_tree(
            &root
                .find(&want)
                .unwrap_or_else(|| root.dir.join(&want.name)),
        );
    }
    Ok(())
}

/// Where the images of `args` come from, for messages.
pub fn describe_source(args: &DataArgs) -> String {
    match (&args.data_file, &args.dataset_path, &args.data_dir) {
        (Some(f), _, _) => f.display().to_string(),
        (None, Some(p), _) => p.display().to_string(),
        (None, None, Some(d)) => format!("{} in {}", args.dataset, d.display()),
        (None, None, None) => format!("{} in the default data folder", args.dataset),
    }
}

/// Converts `ds` to the channels and size `model` takes, normalized the way it expects.
pub fn fit_to_model(ds: Dataset, model: &ModelIr) -> Result<Dataset> {
    let [c, h, w] = model.graph.input_shape()?;
    let mut ds = ds;
    if ds.image_shape()[0] != c {
        ds = ds.with_channels(c)?;
    }
    if ds.image_shape()[1..] != [h, w] {
        ds = ds.with_resize(h, w)?;
    }
    let norm = Normalization::new(&model.meta.input_norm.mean, &model.meta.input_norm.std);
    Ok(ds.with_normalization(norm))
}

/// Opens the dataset the flags describe, normalized the way `model` expects; the first
/// `--limit` images. An empty result is an error, never "0 images, top-1 0.00%".
pub fn open_dataset(args: &DataArgs, model: &ModelIr) -> Result<Dataset> {
    let ds = fit_to_model(open_raw_dataset(args)?, model)?;
    let ds = match args.limit {
        Some(n) => ds.take(n),
        None => ds,
    };
    if ds.is_empty() {
        bail!(
            "{}: no images in the {} split",
            describe_source(args),
            args.split.unwrap_or(Split::Test)
        );
    }
    Ok(ds)
}

/// The images the decomposition stages look at: `--split` (default train), the first
/// `--limit` of them, of `model`'s own classes ([`model_classes`]).
pub fn training_data(data: &DataArgs, model: &ModelIr) -> Result<Dataset> {
    let mut d = data.clone();
    d.split = Some(d.split.unwrap_or(Split::Train));
    model_classes(open_dataset(&d, model)?, model)
}

/// The images of the classes `model` predicts, relabelled in its order, when it predicts
/// fewer classes than `ds` has and names each of them as `ds` does (a model trained with
/// `decomp train --classes`, such as a scenario's 2-class baseline): decomposing or
/// evaluating it on its whole dataset then sees its own classes only. Otherwise `ds`
/// unchanged.
pub fn model_classes(ds: Dataset, model: &ModelIr) -> Result<Dataset> {
    let names = &model.meta.class_names;
    if names.is_empty() || names.len() >= ds.num_classes() {
        return Ok(ds);
    }
    let found: Option<Vec<usize>> = names
        .iter()
        .map(|n| ds.class_names().iter().position(|d| d == n))
        .collect();
    let Some(classes) = found else {
        return Ok(ds);
    };
    tracing::info!(
        "the model predicts {} of the dataset's {} classes ({}): using their images only",
        names.len(),
        ds.num_classes(),
        names.join(", ")
    );
    Ok(ds.subset_classes(&classes)?)
}

/// Extra unconcerned images for continuous learning (`tangle --extra-unconcerned`): a file
/// of CIFAR-format records, its labels `classes` only (names or indices), at most `limit`
/// of them (a sample seeded by `seed`), fitted to `model`. Returns them and a description.
pub fn extra_unconcerned(
    file: &Path,
    classes: Option<&[String]>,
    limit: Option<usize>,
    model: &ModelIr,
    seed: u64,
) -> Result<(Dataset, String)> {
    crate::files::input(file);
    let mut ds = Dataset::from_cifar_file(DatasetKind::Cifar10, file)?;
    if let Some(c) = classes {
        let c = crate::flags::resolve_classes(
            "--extra-classes",
            c,
            ds.class_names(),
            ds.num_classes(),
        )?;
        ds = ds.subset_classes(&c)?;
    }
    if let Some(n) = limit {
        ds = ds.shuffled(seed).take(n);
    }
    if ds.is_empty() {
        bail!(
            "--extra-unconcerned {}: no image left after --extra-classes/--extra-limit",
            file.display()
        );
    }
    let what = format!("{} images of {}", ds.len(), file.display());
    Ok((fit_to_model(ds, model)?, what))
}

/// The images composed modules vote over: the dataset `data` names (normalized for
/// `model`, the modules' source), restricted to the dataset class of each module
/// ([`module_classes`]) and relabelled so that label `i` is module `i`'s class. Returns
/// the classes, the images, and whether they are the whole dataset in its own order.
pub fn composed_data(
    given: Option<&[String]>,
    modules: &[(usize, &str)],
    paths: &[PathBuf],
    model: &ModelIr,
    data: &DataArgs,
) -> Result<(Vec<usize>, Dataset, bool)> {
    let full = open_dataset(data, model)?;
    let classes = module_classes(given, modules, paths, &full, data)?;
    let identity =
        classes.len() == full.num_classes() && classes.iter().enumerate().all(|(i, &c)| i == c);
    let images = if identity {
        full
    } else {
        full.subset_classes(&classes)?
    };
    if images.is_empty() {
        bail!(
            "{}: no image of the modules' classes {classes:?}",
            describe_source(data)
        );
    }
    Ok((classes, images, identity))
}

/// The dataset class of each module: `--classes` (names or indices of the dataset's
/// classes), or each module's own class, which must exist in the dataset under the same
/// name (CIFAR modules on Tiny ImageNet images are refused, as `eval` refuses them).
fn module_classes(
    given: Option<&[String]>,
    modules: &[(usize, &str)],
    paths: &[PathBuf],
    ds: &Dataset,
    data: &DataArgs,
) -> Result<Vec<usize>> {
    if let Some(c) = given {
        let classes =
            crate::flags::resolve_classes("--classes", c, ds.class_names(), ds.num_classes())?;
        if classes.len() != modules.len() {
            bail!(
                "--classes lists {} classes for {} modules",
                classes.len(),
                modules.len()
            );
        }
        return Ok(classes);
    }
    let names = ds.class_names();
    for ((class, name), p) in modules.iter().zip(paths) {
        match names.get(*class) {
            None => bail!(
                "{}: module of class {class} ({name}), but {} has {} classes: pass --classes to map modules to dataset classes",
                p.display(),
                describe_source(data),
                ds.num_classes()
            ),
            Some(n)
                if !n.is_empty()
                    && !name.is_empty()
                    && n != name
                    && *n != decomp_data::placeholder_class_name(*class) =>
            {
                bail!(
                    "{}: module of class {class} ({name}), but class {class} of {} is {n:?}: pass --classes to map modules to dataset classes",
                    p.display(),
                    describe_source(data)
                )
            }
            Some(_) => {}
        }
    }
    let classes: Vec<usize> = modules.iter().map(|m| m.0).collect();
    if let Some(i) = (1..classes.len()).find(|&i| classes[..i].contains(&classes[i])) {
        bail!(
            "{}: a second module of class {}: pass --classes to map modules to dataset classes",
            paths[i].display(),
            classes[i]
        );
    }
    Ok(classes)
}

/// A stable description of the images `compose` ran on (margin files of one vote must
/// agree on it): paths canonical, so `../shared/x` and `/work/shared/x` are one set.
pub fn image_set(data: &DataArgs, classes: &[usize]) -> String {
    let split = data.split.unwrap_or(Split::Test);
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let source = match (&data.data_file, &data.dataset_path) {
        (Some(f), _) => format!("file {}", canon(f).display()),
        (None, Some(p)) => format!("folder {} split {}", canon(p).display(), split),
        (None, None) => match &data.data_dir {
            Some(d) => format!("dir {} split {}", canon(d).display(), split),
            None => format!("default data folder split {split}"),
        },
    };
    let classes: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    format!(
        "{} {source} classes {} limit {:?}",
        data.dataset,
        classes.join(","),
        data.limit
    )
}

/// An [`image_set`] description with its paths' `.` and `name/..` steps resolved, so
/// margin files written before paths were canonical compare equal to newer ones.
pub fn same_image_set(a: &str, b: &str) -> bool {
    fn lexical(s: &str) -> String {
        let mut parts: Vec<&str> = Vec::new();
        for seg in s.split('/') {
            match seg {
                "." => {}
                ".." if parts.last().is_some_and(|p| !p.is_empty() && *p != "..") => {
                    parts.pop();
                }
                _ => parts.push(seg),
            }
        }
        parts.join("/")
    }
    a == b || lexical(a) == lexical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sets_compare_by_resolved_paths() {
        let a = "cifar10 dir /work/main/../shared/datasets split test classes 0,1 limit None";
        let b = "cifar10 dir /work/shared/datasets split test classes 0,1 limit None";
        assert!(same_image_set(a, b));
        assert!(same_image_set(
            "x dir /a/./b split test classes 0 limit None",
            "x dir /a/b split test classes 0 limit None"
        ));
        // Another folder, another split, other classes: other images.
        assert!(!same_image_set(a, &b.replace("/shared/", "/other/")));
        assert!(!same_image_set(a, &b.replace("split test", "split train")));
        assert!(!same_image_set(a, &b.replace("classes 0,1", "classes 0,2")));
    }
}
