//! The units every scenario is built from: models (import or train), datasets and mixes,
//! decomposition per class, continuous learning, margins and votes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::format::{s, strings};
use super::{Data, Model, Run, join};
use crate::engine::{Kind, Progress, read, write_atomic};
use crate::manifest::{DataSpec, DecomposeSpec, ModelSpec, TrainSpec};
use decomp_eval::report::{ModelEval, TrainMetrics, VoteReport};

/// The split a margins unit composes on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Split {
    Test,
    Train,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Train => "train",
        }
    }
}

/// What a [`Run::eval`] unit evaluates: by default the test split, every class, without
/// per-image ranks.
#[derive(Clone, Copy, Default)]
pub(super) struct Ask<'a> {
    /// The test images of these classes only, relabelled in that order (a model trained on
    /// them).
    pub classes: Option<&'a [usize]>,
    /// Every image's label and rank, on the images and in the order `decomp compose` of the
    /// same data sees them (the same limit), for paired intervals against a vote.
    pub per_image: bool,
    /// The training split instead (per-class accuracy and confusions there: settings chosen
    /// on training images, never on test images).
    pub train_split: bool,
    /// Every image of the split, whatever `--limit` (a frontier point's whole-split check).
    pub all_images: bool,
}

impl Run<'_> {
    pub(super) fn spec_data(&self, role: &str) -> Result<Data> {
        let spec = self
            .m
            .data
            .get(role)
            .with_context(|| format!("manifest has no [data.{role}]"))?;
        self.data_of(spec)
    }

    /// A dataset as `decomp` flags (fetched when missing).
    pub(super) fn data_of(&self, spec: &DataSpec) -> Result<Data> {
        let folder = self.env.dataset_folder(spec)?;
        let mut args = match &spec.path {
            Some(_) => vec!["--dataset-path".to_string(), s(&folder)],
            None => vec![
                "--data-dir".to_string(),
                s(folder.parent().unwrap_or(&folder)),
            ],
        };
        let num_classes = match spec.dataset.as_str() {
            "cifar10" | "fashion-mnist" | "mnist" => 10,
            "cifar100" => 100,
            "cifar100-coarse" => 20,
            _ => {
                let w = folder.join("wnids.txt");
                let text = std::fs::read_to_string(&w)
                    .with_context(|| format!("reading {}", w.display()))?;
                text.lines().filter(|l| !l.trim().is_empty()).count()
            }
        };
        args.splice(0..0, ["--dataset".to_string(), spec.dataset.clone()]);
        let key = json!({ "dataset": spec.dataset, "files": self.eng.tree_hash(&folder)? });
        Ok(Data {
            args,
            key,
            num_classes,
            test_file: None,
        })
    }

    pub(super) fn resolve_weights(&self, w: &str) -> Result<(String, Value)> {
        if let Some(rest) = w.strip_prefix("models:") {
            let dir = self.env.models_dir.as_ref().context("weights use `models:` but no --models-dir (default ../shared/models/cifar10) exists")?;
            let p = dir.join(rest);
            return Ok((s(&p), json!(self.eng.file_hash(&p)?)));
        }
        // A relative path names a file of the workspace (a model committed under models/).
        let p = self.env.root.join(w);
        if p.is_file() {
            return Ok((s(&p), json!(self.eng.file_hash(&p)?)));
        }
        // A known pretrained name: its checksum is fixed by decomp.
        Ok((w.to_string(), json!(w)))
    }

    pub(super) fn model(&self, role: &str) -> Result<Option<Model>> {
        let spec: &ModelSpec = self
            .m
            .models
            .get(role)
            .with_context(|| format!("manifest has no [models.{role}]"))?;
        if let Some(w) = &spec.weights {
            let (weights, wkey) = self.resolve_weights(w)?;
            let key = json!({ "weights": wkey, "arch": spec.arch });
            let stem = Path::new(&weights)
                .file_stem()
                .map_or(role.to_string(), |s| s.to_string_lossy().to_string());
            let dir = self
                .eng
                .unit("import", Kind::Shared, 0, &stem, &key, |work| {
                    let mut a = strings(&[
                        "import",
                        "--weights",
                        &weights,
                        "--out",
                        &s(&work.join("model.ir")),
                    ]);
                    if let Some(arch) = &spec.arch {
                        a.extend(strings(&["--arch", arch]));
                    }
                    self.eng.decomp(&a).map(drop)
                })?;
            let Some(dir) = dir else { return Ok(None) };
            let ir = dir.join("model.ir");
            return Ok(Some(Model {
                hash: self.eng.file_hash(&ir)?,
                ir,
                data: self.spec_data(&spec.data)?,
                arch: spec.arch.clone().unwrap_or_else(|| role.into()),
            }));
        }
        let t = spec
            .train
            .as_ref()
            .with_context(|| format!("[models.{role}] needs `weights` or `train`"))?;
        let data = self.spec_data(&spec.data)?;
        let Some(dir) = self.train(role, 0, &data, None, t)? else {
            return Ok(None);
        };
        let ir = dir.join("best.ir");
        Ok(Some(Model {
            hash: self.eng.file_hash(&ir)?,
            ir,
            data,
            arch: t.arch.clone(),
        }))
    }

    /// The key of a [`Run::train`] unit; with `--init FILE` among the flags, also the
    /// starting weights' hash (a retrained file is another run).
    pub(super) fn train_key(
        &self,
        data: &Data,
        classes: Option<&[usize]>,
        t: &TrainSpec,
    ) -> Result<Value> {
        let mut key = json!({ "data": data.key, "classes": classes, "train": t });
        if let (_, Some(hash)) = self.init_args(t)? {
            key["init"] = hash;
        }
        Ok(key)
    }

    /// The extra flags of a [`Run::train`] unit: `t.args` with the weights after `--init`
    /// resolved when they name the models folder (`models:FILE`), and the hash of those
    /// weights when they are a file (a workspace path or `models:`).
    fn init_args(&self, t: &TrainSpec) -> Result<(Vec<String>, Option<Value>)> {
        let mut args = t.args.clone();
        let Some(i) = args.iter().position(|a| a == "--init") else {
            return Ok((args, None));
        };
        let Some(w) = args.get(i + 1).cloned() else {
            return Ok((args, None));
        };
        let (path, hash) = self.resolve_weights(&w)?;
        let is_file = Path::new(&path).is_file();
        if w.starts_with("models:") {
            args[i + 1] = path;
        }
        Ok((args, is_file.then_some(hash)))
    }

    /// A model's own evaluation on its data's test split (unit `<arch>-test`).
    pub(super) fn model_test(&self, m: &Model, index: usize) -> Result<Option<ModelEval>> {
        let name = format!("{}-test", m.arch);
        self.eval(&name, index, &m.ir, &m.data, Ask::default())
    }

    /// `decomp eval --json` of the model `ir` on `data` as `ask` says (a per-unit stage
    /// `eval`): the parsed output.
    pub(super) fn eval(
        &self,
        name: &str,
        index: usize,
        ir: &Path,
        data: &Data,
        ask: Ask,
    ) -> Result<Option<ModelEval>> {
        let Ask {
            classes,
            per_image,
            train_split,
            all_images,
        } = ask;
        let split = if train_split { "train" } else { "test" };
        // Per-image ranks are compared with the margins' images: the same limit.
        let limit = if all_images {
            None
        } else if per_image {
            self.limit()
        } else {
            self.env.limit
        };
        let mut key = json!({ "model": self.eng.file_hash(ir)?, "data": data.key, "limit": limit });
        if let Some(c) = classes {
            key["classes"] = json!(c);
        }
        if per_image {
            key["per_image"] = json!(true);
        }
        if split != "test" {
            key["split"] = json!(split);
        }
        let dir = self
            .eng
            .unit("eval", Kind::PerUnit, index, name, &key, |work| {
                let mut a = strings(&["eval", "--weights", &s(ir)]);
                if split == "test" {
                    a.extend(data.test().args);
                } else {
                    a.extend(data.args.iter().cloned());
                }
                a.extend(strings(&[
                    "--split",
                    split,
                    "--json",
                    "--device",
                    &self.eng.device,
                ]));
                if let Some(c) = classes {
                    a.extend(["--classes".into(), join(c)]);
                }
                if per_image {
                    a.push("--per-image".into());
                }
                if let Some(n) = limit {
                    a.extend(["--limit".into(), n.to_string()]);
                }
                let out = self.eng.decomp(&a)?;
                write_atomic(&work.join("eval.json"), out.trim())
            })?;
        dir.map(|d| read(&d.join("eval.json"))).transpose()
    }

    /// `decomp train` as a per-unit stage (resumable: see engine).
    pub(super) fn train(
        &self,
        name: &str,
        index: usize,
        data: &Data,
        classes: Option<&[usize]>,
        t: &TrainSpec,
    ) -> Result<Option<PathBuf>> {
        let key = self.train_key(data, classes, t)?;
        let (extra, _) = self.init_args(t)?;
        self.eng
            .resumable_unit("train", Kind::PerUnit, index, name, &key, |work| {
                let mut a = vec!["train".to_string()];
                a.extend(data.args.iter().cloned());
                if let Some(c) = classes {
                    a.extend(["--classes".into(), join(c)]);
                }
                a.extend(strings(&[
                    "--arch",
                    &t.arch,
                    "--recipe",
                    &t.recipe,
                    "--seed",
                    &t.seed.to_string(),
                    "--device",
                    &self.eng.device,
                ]));
                for (flag, v) in [
                    ("--epochs", t.epochs),
                    ("--batch-size", t.batch_size),
                    ("--train-limit", t.train_limit),
                ] {
                    if let Some(v) = v {
                        a.extend([flag.to_string(), v.to_string()]);
                    }
                }
                if let Some(f) = t.val_fraction {
                    a.extend(["--val-fraction".into(), f.to_string()]);
                }
                if t.no_batch_norm {
                    a.push("--no-batch-norm".into());
                }
                a.extend(extra.iter().cloned());
                if data.test_file.is_none() {
                    a.push("--eval-test".into());
                }
                a.extend(["--out-dir".into(), s(work)]);
                if work.join("last.ckpt").is_file() {
                    a.push("--resume".into());
                }
                match self.eng.epochs_now {
                    // `--epochs-now 0`: train nothing; the report lists what is finished.
                    Some(0) => return Ok(Progress::Paused),
                    Some(n) => a.extend(["--max-epochs-now".into(), n.to_string()]),
                    None => {}
                }
                self.eng.decomp(&a)?;
                if !train_finished(work)? {
                    return Ok(Progress::Paused);
                }
                if let Some(t) = &data.test_file {
                    // Mixed data: the test records are another file; evaluate the best model there.
                    let out = self.eng.decomp(&strings(&[
                        "eval",
                        "--weights",
                        &s(&work.join("best.ir")),
                        "--dataset",
                        "cifar10",
                        "--data-file",
                        &s(t),
                        "--json",
                        "--device",
                        &self.eng.device,
                    ]))?;
                    write_atomic(&work.join("test.json"), out.trim())?;
                }
                Ok(Progress::Finished)
            })
    }

    /// `decomp mix`: one class from each part (`{"dataset", "dataset_path", "class"}`, see
    /// [`part`]) as CIFAR-format training and test records.
    pub(super) fn mix(
        &self,
        name: &str,
        kind: Kind,
        index: usize,
        parts: &[Value],
    ) -> Result<Option<Data>> {
        let mut keyed = Vec::new();
        for p in parts {
            let folder = PathBuf::from(
                p["dataset_path"]
                    .as_str()
                    .context("a mix part names its dataset folder")?,
            );
            keyed.push(json!({ "dataset": p["dataset"], "class": p["class"], "files": self.eng.tree_hash(&folder)? }));
        }
        let key = json!({ "mix": keyed });
        let dir = self.eng.unit("mix", kind, index, name, &key, |work| {
            let spec = work.join("spec.json");
            write_atomic(
                &spec,
                &serde_json::to_string_pretty(&json!({ "parts": parts }))?,
            )?;
            self.eng
                .decomp(&strings(&[
                    "mix",
                    "--spec",
                    &s(&spec),
                    "--out-dir",
                    &s(work),
                ]))
                .map(drop)
        })?;
        Ok(dir.map(|d| Data {
            args: strings(&[
                "--dataset",
                "cifar10",
                "--data-file",
                &s(&d.join("train.bin")),
            ]),
            key: json!({ "mix": key }),
            num_classes: parts.len(),
            test_file: Some(d.join("test.bin")),
        }))
    }

    /// Continuous learning: tangling identification of `class` of `model` again, with the
    /// images of `extra_classes` of a mix as further unconcerned inputs.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relearn(
        &self,
        name: &str,
        index: usize,
        model: &Model,
        class: usize,
        module: &Path,
        extra: &Data,
        extra_classes: &[usize],
    ) -> Result<Option<PathBuf>> {
        let concern = module
            .parent()
            .and_then(Path::parent)
            .context("module path")?
            .join("concern.cs");
        let extra_file = extra.args.last().cloned().context("mix data file")?;
        let limit = self.m.decompose.positives;
        let key = json!({ "model": model.hash, "data": model.data.key, "concern": self.eng.file_hash(&concern)?, "extra": extra.key, "extra_classes": extra_classes, "limit": limit, "variant": self.m.decompose.variant });
        let dir = self
            .eng
            .unit("relearn", Kind::PerUnit, index, name, &key, |work| {
                let mut a = strings(&["tangle", "--weights", &s(&model.ir)]);
                a.extend(model.data.args.iter().cloned());
                a.extend(strings(&[
                    "--concern",
                    &s(&concern),
                    "--variants",
                    &self.m.decompose.variant,
                    "--device",
                    &self.eng.device,
                ]));
                a.extend(strings(&[
                    "--extra-unconcerned",
                    &extra_file,
                    "--extra-classes",
                    &join(extra_classes),
                    "--extra-limit",
                    &limit.to_string(),
                ]));
                a.extend(["--out-dir".into(), s(work)]);
                self.eng.decomp(&a).map(drop)
            })?;
        Ok(dir.map(|d| {
            d.join(&self.m.decompose.variant)
                .join(format!("module_{class:03}.mod"))
        }))
    }

    /// Test top-1 of a training run (its own `--eval-test`, or the mix's test records).
    pub(super) fn test_top1(dir: &Path) -> Result<f64> {
        let t = dir.join("test.json");
        if t.is_file() {
            return Ok(read::<ModelEval>(&t)?.top1);
        }
        let m: TrainMetrics = read(&dir.join("metrics.json"))?;
        Ok(m.test_top1.unwrap_or(f64::NAN))
    }

    /// The module of `class` of `model` (one decomposition unit, the manifest's settings).
    pub(super) fn module(
        &self,
        model: &Model,
        class: usize,
        index: usize,
    ) -> Result<Option<PathBuf>> {
        self.module_named(
            model,
            class,
            index,
            &format!("{}-class{class:03}", model.arch),
        )
    }

    /// [`Run::module`] under the unit name `name` (a model other than a manifest role's).
    pub(super) fn module_named(
        &self,
        model: &Model,
        class: usize,
        index: usize,
        name: &str,
    ) -> Result<Option<PathBuf>> {
        let d = &self.m.decompose;
        let dir = self.decompose_class(model, class, index, d, name)?;
        Ok(dir.map(|dir| dir.join(&d.variant).join(format!("module_{class:03}.mod"))))
    }

    /// `decomp decompose` of one class of `model` with settings `d` (`d.variant` may list
    /// several variants, comma-separated): the unit folder, holding
    /// `<variant>/module_<class>.mod` for each.
    pub(super) fn decompose_class(
        &self,
        model: &Model,
        class: usize,
        index: usize,
        d: &DecomposeSpec,
        name: &str,
    ) -> Result<Option<PathBuf>> {
        let data = &model.data;
        let key = json!({ "model": model.hash, "data": data.key, "decompose": d, "class": class });
        self.eng
            .unit("decompose", Kind::PerUnit, index, name, &key, |work| {
                let mut a = strings(&["decompose", "--weights", &s(&model.ir)]);
                a.extend(data.args.iter().cloned());
                a.extend(strings(&[
                    "--classes",
                    &class.to_string(),
                    "--variants",
                    &d.variant,
                    "--positives",
                    &d.positives.to_string(),
                    "--device",
                    &self.eng.device,
                ]));
                a.extend(d.args.iter().cloned());
                a.extend(["--out-dir".into(), s(work)]);
                self.eng.decomp(&a).map(drop)
            })
    }

    /// `--limit` of the command line, else the manifest's `[compose] limit`.
    pub(super) fn limit(&self) -> Option<usize> {
        self.env.limit.or(self.m.compose.limit)
    }

    /// Margins of `modules` (module i stands for dataset class `classes[i]`) on the test
    /// images of those classes (a merge unit).
    pub(super) fn margins(
        &self,
        name: &str,
        modules: &[PathBuf],
        data: &Data,
        classes: &[usize],
    ) -> Result<Option<PathBuf>> {
        self.merge_margins(name, modules, data, classes, Split::Test)
    }

    /// [`Run::margins`] on the training images of `classes` (every one, whatever `--limit`;
    /// for choices made on training data, never on test images).
    pub(super) fn train_margins(
        &self,
        name: &str,
        modules: &[PathBuf],
        data: &Data,
        classes: &[usize],
    ) -> Result<Option<PathBuf>> {
        self.merge_margins(name, modules, data, classes, Split::Train)
    }

    /// [`Run::margins_unit`] as a merge unit keyed by the modules, the data, the classes and
    /// the split (`--limit` for the test split).
    fn merge_margins(
        &self,
        name: &str,
        modules: &[PathBuf],
        data: &Data,
        classes: &[usize],
        split: Split,
    ) -> Result<Option<PathBuf>> {
        let mut key =
            json!({ "modules": self.hashes(modules)?, "data": data.key, "classes": classes });
        match split {
            Split::Test => key["limit"] = json!(self.limit()),
            // A mix's training records are its own file (`data.args`).
            Split::Train => key["split"] = json!("train"),
        }
        self.margins_unit(name, modules, data, classes, Kind::Merge, 0, &key, split)
    }

    /// The content hashes of `files`, in order.
    pub(super) fn hashes(&self, files: &[PathBuf]) -> Result<Vec<String>> {
        files.iter().map(|p| self.eng.file_hash(p)).collect()
    }

    /// [`Run::margins`] as a unit of `kind` with its own key (which must cover the modules,
    /// the data, the classes and the limit).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn margins_unit(
        &self,
        name: &str,
        modules: &[PathBuf],
        data: &Data,
        classes: &[usize],
        kind: Kind,
        index: usize,
        key: &Value,
        split: Split,
    ) -> Result<Option<PathBuf>> {
        let dir = self.eng.unit("margins", kind, index, name, key, |work| {
            let mut a = vec!["compose".to_string()];
            a.extend(modules.iter().map(|p| s(p)));
            match split {
                Split::Test => a.extend(data.test().args),
                Split::Train => a.extend(data.args.iter().cloned()),
            }
            a.extend(strings(&[
                "--split",
                split.name(),
                "--classes",
                &join(classes),
                "--device",
                &self.eng.device,
            ]));
            if let (Split::Test, Some(n)) = (split, self.limit()) {
                a.extend(["--limit".into(), n.to_string()]);
            }
            a.extend([
                "--save-margins".into(),
                s(&work.join("margins.json")),
                "--out".into(),
                s(&work.join("compose.json")),
            ]);
            self.eng.decomp(&a).map(drop)
        })?;
        Ok(dir.map(|d| d.join("margins.json")))
    }

    /// `decomp vote` of the modules `pick` from the margin files (a merge unit).
    pub(super) fn vote(
        &self,
        name: &str,
        margins: &[PathBuf],
        pick: &[String],
    ) -> Result<Option<VoteReport>> {
        self.vote_unit(name, margins, pick, false)
    }

    /// [`Run::vote`] with every voted image's label and rank (`per_image`), for paired
    /// intervals against another evaluation of the same images.
    pub(super) fn vote_per_image(
        &self,
        name: &str,
        margins: &[PathBuf],
        pick: &[String],
    ) -> Result<Option<VoteReport>> {
        self.vote_unit(name, margins, pick, true)
    }

    fn vote_unit(
        &self,
        name: &str,
        margins: &[PathBuf],
        pick: &[String],
        per_image: bool,
    ) -> Result<Option<VoteReport>> {
        let mut key = json!({ "margins": self.hashes(margins)?, "pick": pick });
        if per_image {
            key["per_image"] = json!(true);
        }
        let dir = self.eng.unit("vote", Kind::Merge, 0, name, &key, |work| {
            let mut a = vec!["vote".to_string()];
            for m in margins {
                a.extend(["--margins".into(), s(m)]);
            }
            a.extend([
                "--pick".into(),
                pick.join(","),
                "--out".into(),
                s(&work.join("vote.json")),
            ]);
            if per_image {
                a.push("--per-image".into());
            }
            self.eng.decomp(&a).map(drop)
        })?;
        dir.map(|d| read(&d.join("vote.json"))).transpose()
    }
}

/// Whether the `decomp train` run in `dir` did every epoch of its schedule (not paused by
/// `--max-epochs-now`).
pub(super) fn train_finished(dir: &Path) -> Result<bool> {
    let m: TrainMetrics<PlannedEpochs> = read(&dir.join("metrics.json"))?;
    Ok(m.epochs.len() >= m.config.epochs)
}

/// The part of a training run's configuration (`metrics.json`'s `config`, the training
/// library's `TrainConfig`) xtask reads: the planned number of epochs.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, serde::Serialize)]
pub(super) struct PlannedEpochs {
    pub epochs: usize,
}
