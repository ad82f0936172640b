//! `run-experiment NAME --slurm`: the shards of a manifest experiment as a Slurm array job.
//!
//! One array task per shard runs a private copy of this xtask and of the `decomp` binary
//! (`<runs>/bin/{xtask,decomp}-slurm-<stamp>`) with `--shard I/N` on the shared `--runs`
//! folder (or, with `--task-runs`, on its own `<runs>/tasks/<I>`). The merge step (the
//! unsharded run that builds the report) is `merge.sbatch`: a job depending on the array,
//! or run here with `--wait`. This process follows the tasks (state and finished units per
//! shard), resubmits failed shards up to `--retries` times, and points at the log of every
//! failure. Scripts and logs live in `<runs>/slurm/<name>-<stamp>/`.
//!
//! A task counts as done only when its script wrote `done/<shard>` after the xtask ended
//! successfully, so the follower needs no accounting database (`sacct`): the queue
//! (`squeue --states=all`) says when a task has ended, the marker whether it succeeded.
//!
//! The unit store's rules are what make this safe on a shared filesystem: per-class units
//! of different shards are disjoint, work folders are named by host and process
//! (`.tmp-<host>-<pid>`) so no two processes ever write into the same folder, and a unit
//! exists only once renamed into place, so a task killed mid-unit leaves a work folder that
//! is never read and the unit is redone by the resubmitted task.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Slurm flags of `run-experiment`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SlurmArgs {
    /// Run the experiment as a Slurm array job (one task per shard), follow it, resubmit
    /// failed shards and run the merge step as a dependent job (or here with --wait).
    #[arg(long)]
    pub slurm: bool,
    /// Only write the sbatch scripts (array and merge) and print how to submit them.
    #[arg(long)]
    pub slurm_script_only: bool,
    /// Number of array tasks (shards) [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub array: Option<u32>,
    /// Slurm partition of every job.
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit of every job (sbatch --time, e.g. 2:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// Memory of every job (sbatch --mem, e.g. 8G).
    #[arg(long)]
    pub mem: Option<String>,
    /// GPUs of every job (sbatch --gpus, e.g. 1 or a100:1).
    #[arg(long)]
    pub gpus: Option<String>,
    /// CPUs of every task (sbatch --cpus-per-task).
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// How often failed shards are resubmitted before giving up [default: 2].
    #[arg(long)]
    pub retries: Option<u32>,
    /// Run the merge step in this process after the tasks, instead of as a dependent job.
    #[arg(long)]
    pub wait: bool,
    /// Give each task its own runs folder (<runs>/tasks/<I>); the merge step copies their
    /// finished units into <runs>/store.
    #[arg(long)]
    pub task_runs: bool,
    /// Seconds between two looks at the queue [default: 10].
    #[arg(long)]
    pub poll: Option<f64>,
}

impl SlurmArgs {
    /// Whether Slurm is asked for; refuses Slurm flags without `--slurm`.
    pub fn active(&self) -> Result<bool> {
        let on = self.slurm || self.slurm_script_only;
        let given = [
            ("--array", self.array.is_some()),
            ("--partition", self.partition.is_some()),
            ("--time", self.time.is_some()),
            ("--mem", self.mem.is_some()),
            ("--gpus", self.gpus.is_some()),
            ("--cpus-per-task", self.cpus_per_task.is_some()),
            ("--retries", self.retries.is_some()),
            ("--wait", self.wait),
            ("--task-runs", self.task_runs),
            ("--poll", self.poll.is_some()),
        ];
        if !on && let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            bail!("{flag} needs --slurm or --slurm-script-only");
        }
        if self.poll.is_some_and(|p| !(p.is_finite() && p > 0.0)) {
            bail!("--poll must be a positive number of seconds");
        }
        Ok(on)
    }

    fn tasks(&self) -> u32 {
        self.array.unwrap_or(2)
    }
}

/// What every task runs: `run-experiment` with these settings.
pub struct Job {
    /// Experiment name, or an absolute path to a manifest.
    pub name: String,
    /// Short name (the report folder).
    pub short: String,
    /// The `decomp` binary to copy.
    pub decomp: PathBuf,
    pub runs: PathBuf,
    /// `--data-dir` as given (else every task resolves the data as this process did).
    pub data_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    pub out: PathBuf,
    pub device: String,
    pub only: Option<String>,
    pub from: Option<String>,
    /// `--limit` for every task.
    pub limit: Option<usize>,
    /// `--epochs-now` for every task.
    pub epochs_now: Option<usize>,
}

impl Job {
    /// Settings of a `run-experiment` call; the manifest is read once here so a wrong name
    /// fails before anything is submitted.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        root: &Path,
        decomp: PathBuf,
        runs: PathBuf,
        data_dir: Option<PathBuf>,
        models_dir: Option<PathBuf>,
        out: PathBuf,
        device: String,
        sel: crate::engine::Selection,
    ) -> Result<Self> {
        if sel.shard.is_some() {
            bail!("--shard is for one process; --slurm runs every shard as an array task");
        }
        let (short, _) = crate::manifest::Manifest::load(root, name)?;
        let name = if name.ends_with(".toml") {
            abs(Path::new(name))?.display().to_string()
        } else {
            name.to_string()
        };
        Ok(Self {
            name,
            short,
            decomp: abs(&decomp)?,
            runs: abs(&runs)?,
            data_dir: data_dir.as_deref().map(abs).transpose()?,
            models_dir: models_dir.as_deref().map(abs).transpose()?,
            out: abs(&out)?,
            device,
            only: sel.only,
            from: sel.from,
            limit: None,
            epochs_now: None,
        })
    }
}

/// The two scripts of one submission and where they live.
struct Scripts {
    dir: PathBuf,
    array: PathBuf,
    merge: PathBuf,
    job_name: String,
    bins: [PathBuf; 2],
}

/// An absolute path for scripts run elsewhere (`..` resolved where the path exists).
fn abs(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .with_context(|| format!("making {} absolute", p.display()))
}

/// `s` as one shell word.
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn shp(p: &Path) -> String {
    sh(&p.display().to_string())
}

/// `#SBATCH` lines shared by both scripts.
fn directives(a: &SlurmArgs, job_name: &str, log: &Path, cpus: bool) -> String {
    let mut s = format!(
        "#SBATCH --job-name={}\n#SBATCH --output={}\n",
        sh(job_name),
        shp(log)
    );
    for (flag, v) in [
        ("partition", &a.partition),
        ("time", &a.time),
        ("mem", &a.mem),
        ("gpus", &a.gpus),
    ] {
        if let Some(v) = v {
            let _ = writeln!(s, "#SBATCH --{flag}={}", sh(v));
        }
    }
    if cpus && let Some(c) = a.cpus_per_task {
        let _ = writeln!(s, "#SBATCH --cpus-per-task={c}");
    }
    s
}

/// The `run-experiment` command line of a task (`shard` is a shell expression) or of the
/// merge step (`None`).
fn command(
    job: &Job,
    xtask: &Path,
    decomp: &Path,
    runs: &str,
    shard: Option<(&str, u32)>,
) -> String {
    let mut c = format!("{} run-experiment {}", shp(xtask), sh(&job.name));
    if let Some((i, n)) = shard {
        let _ = write!(c, " --shard \"{i}/{n}\"");
    }
    // Everything the experiment reads was fetched before submission: tasks download nothing
    // (compute nodes often have no internet) and fail clearly if something is missing.
    let _ = write!(c, " \\\n  --decomp-bin {} --offline", shp(decomp));
    if let Some(d) = &job.data_dir {
        let _ = write!(c, " --data-dir {}", shp(d));
    }
    if let Some(m) = &job.models_dir {
        let _ = write!(c, " --models-dir {}", shp(m));
    }
    let _ = write!(
        c,
        " \\\n  --out {} --runs {runs} --device {}",
        shp(&job.out),
        sh(&job.device)
    );
    for (flag, v) in [("--only", &job.only), ("--from", &job.from)] {
        if let Some(v) = v {
            let _ = write!(c, " {flag} {}", sh(v));
        }
    }
    for (flag, v) in [("--limit", job.limit), ("--epochs-now", job.epochs_now)] {
        if let Some(v) = v {
            let _ = write!(c, " {flag} {v}");
        }
    }
    c
}

/// The array script: one task per shard.
fn array_script(
    a: &SlurmArgs,
    job: &Job,
    dir: &Path,
    job_name: &str,
    bins: &[PathBuf; 2],
) -> String {
    let n = a.tasks();
    let mut s = format!(
        "#!/bin/bash\n# {} as a Slurm array: task I runs shard I/{n} (written by `cargo xtask run-experiment --slurm`).\n",
        job.short
    );
    s.push_str(&directives(a, job_name, &dir.join("logs/%A_%a.log"), true));
    let _ = writeln!(s, "#SBATCH --array=0-{}", n - 1);
    let runs = if a.task_runs {
        format!("{}/tasks/\"$shard\"", shp(&job.runs))
    } else {
        shp(&job.runs)
    };
    let _ = write!(
        s,
        "set -euo pipefail\n\
         shard=${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch}}\n\
         echo \"shard $shard/{n}: job ${{SLURM_ARRAY_JOB_ID:-}}_$shard on $(hostname)\"\n\
         {}\n\
         # Written only on success: the follower's evidence that this shard is done.\n\
         touch {}/\"$shard\"\n",
        command(job, &bins[0], &bins[1], &runs, Some(("$shard", n))),
        shp(&dir.join("done"))
    );
    s
}

/// The merge script: after the array, the unsharded run on the merged store.
fn merge_script(
    a: &SlurmArgs,
    job: &Job,
    dir: &Path,
    job_name: &str,
    bins: &[PathBuf; 2],
) -> String {
    let store = job.runs.join("store");
    let mut s = format!(
        "#!/bin/bash\n# The merge step of {}: run after every task of the array has succeeded.\n",
        job.short
    );
    s.push_str(&directives(
        a,
        &format!("{job_name}-merge"),
        &dir.join("logs/merge-%j.log"),
        true,
    ));
    let _ = write!(
        s,
        "set -euo pipefail\nstore={}\nmkdir -p \"$store\"\n\
         # No task of the array runs any more: work folders left by killed tasks (on any host)\n\
         # are never read; remove them.\n\
         find \"$store\" -mindepth 2 -maxdepth 2 -name '*.tmp-*' -exec rm -rf {{}} +\n",
        shp(&store)
    );
    if a.task_runs {
        let _ = write!(
            s,
            "# Finished units of every task's store, renamed into place one by one.\n\
             for done in {}/tasks/*/store/*/*/unit.json; do\n\
             \x20 [ -e \"$done\" ] || continue\n\
             \x20 unit=${{done%/unit.json}}\n\
             \x20 stage=$(basename \"$(dirname \"$unit\")\")\n\
             \x20 dst=\"$store/$stage/$(basename \"$unit\")\"\n\
             \x20 [ -e \"$dst\" ] && continue\n\
             \x20 mkdir -p \"$store/$stage\"\n\
             \x20 cp -a \"$unit\" \"$dst.tmp-merge-$$\"\n\
             \x20 mv -T \"$dst.tmp-merge-$$\" \"$dst\"\n\
             done\n",
            shp(&job.runs)
        );
    }
    let _ = write!(
        s,
        "{}\ntouch {}\n",
        command(job, &bins[0], &bins[1], &shp(&job.runs), None),
        shp(&dir.join("done/merge"))
    );
    s
}

/// Writes both scripts and the private binaries of one submission.
fn write_scripts(a: &SlurmArgs, job: &Job) -> Result<Scripts> {
    let stamp = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        std::process::id()
    );
    let dir = job
        .runs
        .join("slurm")
        .join(format!("{}-{stamp}", job.short));
    for d in [dir.join("logs"), dir.join("done"), job.runs.join("bin")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let bins = [
        job.runs.join("bin").join(format!("xtask-slurm-{stamp}")),
        job.runs.join("bin").join(format!("decomp-slurm-{stamp}")),
    ];
    for (from, to) in [(&xtask, &bins[0]), (&job.decomp, &bins[1])] {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    let job_name = format!("decomp-{}", job.short);
    let array = dir.join("array.sbatch");
    let merge = dir.join("merge.sbatch");
    crate::engine::write_atomic(&array, &array_script(a, job, &dir, &job_name, &bins))?;
    crate::engine::write_atomic(&merge, &merge_script(a, job, &dir, &job_name, &bins))?;
    Ok(Scripts {
        dir,
        array,
        merge,
        job_name,
        bins,
    })
}

/// Runs a Slurm command and returns its stdout.
fn slurm(cmd: &str, args: &[String]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (is Slurm installed and SLURM_CONF set?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `sbatch --parsable`: the job id.
fn sbatch(args: &[String]) -> Result<String> {
    let mut a = vec!["--parsable".to_string()];
    a.extend(args.iter().cloned());
    let out = slurm("sbatch", &a)?;
    let id = out.split(';').next().unwrap_or_default().trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed {out:?}, not a job id");
    }
    Ok(id)
}

/// Array task ids as squeue prints them: `3`, `[0-3]`, `0,2,5-7`, `[0-9%2]`.
fn task_ids(s: &str) -> Vec<u32> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let s = s.split('%').next().unwrap_or_default();
    let mut v = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    v.extend(a..=b);
                }
            }
            None => v.extend(part.parse::<u32>().ok()),
        }
    }
    v
}

/// Queue state of every listed array task: (array job id, task id) -> (state, reason).
fn parse_queue(text: &str) -> BTreeMap<(String, u32), (String, String)> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 4 {
            continue;
        }
        for t in task_ids(f[1]) {
            m.insert(
                (f[0].trim().to_string(), t),
                (f[2].trim().to_string(), f[3].trim().to_string()),
            );
        }
    }
    m
}

fn queue(job_name: &str) -> Result<BTreeMap<(String, u32), (String, String)>> {
    let text = slurm(
        "squeue",
        &[
            "--noheader".into(),
            "--states=all".into(),
            format!("--name={job_name}"),
            "--format=%F|%K|%T|%r".into(),
        ],
    )?;
    Ok(parse_queue(&text))
}

/// States after which a job runs no more.
fn ended(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "RESIZING"
            | "SUSPENDED"
            | "STAGE_OUT"
            | "SIGNALING"
    )
}

/// Lines of a task's log that say a unit finished.
fn units_done(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| {
        t.lines().filter(|l| l.contains(": done in ")).count()
    })
}

/// One shard's current attempt.
struct Shard {
    job: String,
    attempt: u32,
    /// Last state printed, to print changes only.
    shown: String,
    /// Polls since submission without a queue entry.
    missing: u32,
}

/// Writes the scripts, then (unless `--slurm-script-only`) submits, follows, resubmits and
/// merges.
pub fn run(a: &SlurmArgs, job: &Job) -> Result<()> {
    let sc = write_scripts(a, job)?;
    let n = a.tasks();
    if a.slurm_script_only {
        println!(
            "wrote {} and {}; submit with:\n  a=$(sbatch --parsable {}) && sbatch --dependency=afterok:$a {}\n\
             (the scripts run the binaries {} and {}; remove them when done)",
            sc.array.display(),
            sc.merge.display(),
            shp(&sc.array),
            shp(&sc.merge),
            sc.bins[0].display(),
            sc.bins[1].display()
        );
        return Ok(());
    }
    let result = follow(a, job, &sc, n);
    for b in &sc.bins {
        let _ = std::fs::remove_file(b);
    }
    result
}

fn follow(a: &SlurmArgs, job: &Job, sc: &Scripts, n: u32) -> Result<()> {
    let retries = a.retries.unwrap_or(2);
    let poll = Duration::from_secs_f64(a.poll.unwrap_or(10.0));
    let first = sbatch(&[sc.array.display().to_string()])?;
    println!(
        "submitted array job {first}: {n} tasks of {} (scripts and logs: {})",
        job.short,
        sc.dir.display()
    );
    let mut shards: Vec<Shard> = (0..n)
        .map(|_| Shard {
            job: first.clone(),
            attempt: 0,
            shown: String::new(),
            missing: 0,
        })
        .collect();
    let merge_job = if a.wait {
        None
    } else {
        let id = sbatch(&[
            format!("--dependency=afterok:{first}"),
            "--kill-on-invalid-dep=no".into(),
            sc.merge.display().to_string(),
        ])?;
        println!("submitted merge job {id} (runs after every shard has succeeded)");
        Some(id)
    };
    let start = Instant::now();
    let log = |job: &str, i: u32| sc.dir.join(format!("logs/{job}_{i}.log"));
    let mut queue_errors = 0;
    loop {
        std::thread::sleep(poll);
        let q = match queue(&sc.job_name) {
            Ok(q) => {
                queue_errors = 0;
                q
            }
            // A busy controller: look again, up to a few times in a row.
            Err(e) if queue_errors < 5 => {
                queue_errors += 1;
                eprintln!("squeue: {e:#} (trying again)");
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut resubmit = Vec::new();
        let mut running = 0;
        for (i, sh) in shards.iter_mut().enumerate() {
            let i = i as u32;
            let ok = sc.dir.join("done").join(i.to_string()).is_file();
            let state = q
                .get(&(sh.job.clone(), i))
                .map(|(s, r)| (s.clone(), r.clone()));
            let line = match &state {
                _ if ok => "done".to_string(),
                Some((s, _)) if !ended(s) => {
                    running += 1;
                    format!("{s}, {} units done", units_done(&log(&sh.job, i)))
                }
                // The marker of a task that just ended may take a moment to show on a
                // network filesystem: a few polls of grace.
                Some((s, _)) if s == "COMPLETED" && sh.missing < 3 => {
                    sh.missing += 1;
                    running += 1;
                    continue;
                }
                Some((s, r)) => {
                    resubmit.push(i);
                    format!(
                        "failed ({s}{})",
                        if r == "None" || r.is_empty() {
                            String::new()
                        } else {
                            format!(", {r}")
                        }
                    )
                }
                None => {
                    sh.missing += 1;
                    if sh.missing < 3 {
                        running += 1;
                        continue;
                    }
                    resubmit.push(i);
                    "failed (left the queue without finishing)".to_string()
                }
            };
            if line != sh.shown {
                let at = format!("{:.0} s", start.elapsed().as_secs_f64());
                if line.starts_with("failed") {
                    println!(
                        "[{at}] shard {i}/{n} (job {}_{i}): {line}; log: {}",
                        sh.job,
                        log(&sh.job, i).display()
                    );
                } else {
                    println!("[{at}] shard {i}/{n} (job {}_{i}): {line}", sh.job);
                }
                sh.shown = line;
            }
        }
        if !resubmit.is_empty() {
            let attempt = resubmit
                .iter()
                .map(|&i| shards[i as usize].attempt)
                .max()
                .unwrap_or(0)
                + 1;
            if attempt > retries {
                if let Some(m) = &merge_job {
                    let _ = slurm("scancel", std::slice::from_ref(m));
                }
                bail!(
                    "shards {resubmit:?} of {} failed after {retries} resubmissions; logs: {}",
                    job.short,
                    sc.dir.join("logs").display()
                );
            }
            let list = resubmit
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let id = sbatch(&[format!("--array={list}"), sc.array.display().to_string()])?;
            println!("resubmitted shards {list} as job {id} (attempt {attempt} of {retries})");
            for &i in &resubmit {
                let s = &mut shards[i as usize];
                s.job = id.clone();
                s.attempt = attempt;
                s.missing = 0;
            }
            if let Some(m) = &merge_job {
                let dep = shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{}_{i}", s.job))
                    .collect::<Vec<_>>()
                    .join(":");
                slurm(
                    "scontrol",
                    &[
                        "update".into(),
                        format!("JobId={m}"),
                        format!("Dependency=afterok:{dep}"),
                    ],
                )?;
            }
            continue;
        }
        if running == 0 {
            break;
        }
    }
    println!(
        "all {n} shards done in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    match merge_job {
        None => {
            println!("merge step here: {}", sc.merge.display());
            let st = Command::new("bash")
                .arg(&sc.merge)
                .status()
                .with_context(|| format!("running {}", sc.merge.display()))?;
            if !st.success() {
                bail!("the merge step failed ({st})");
            }
        }
        Some(m) => {
            let mut gone = 0;
            loop {
                std::thread::sleep(poll);
                let text = slurm(
                    "squeue",
                    &[
                        "--noheader".into(),
                        "--states=all".into(),
                        format!("--jobs={m}"),
                        "--format=%T|%r".into(),
                    ],
                )
                .unwrap_or_default();
                let (state, reason) = text.split_once('|').unwrap_or((text.as_str(), ""));
                let log = sc.dir.join(format!("logs/merge-{m}.log"));
                if sc.dir.join("done/merge").is_file() {
                    println!("merge job {m} done (log: {})", log.display());
                    break;
                }
                // Ended without its marker: give a network filesystem a few polls to show it.
                if state.is_empty() || ended(state) {
                    gone += 1;
                    if gone >= 3 {
                        bail!(
                            "merge job {m} ended without finishing ({state} {reason}); log: {}",
                            log.display()
                        );
                    }
                }
            }
        }
    }
    // The merge step run here printed where the report is.
    let report = job.out.join(&job.short).join("report.md");
    if !a.wait && report.is_file() {
        println!("report: {}", report.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            name: "table2".into(),
            short: "table2".into(),
            decomp: "/b/decomp".into(),
            runs: "/shared/runs".into(),
            data_dir: Some("/data sets".into()),
            models_dir: Some("/m".into()),
            out: "/r".into(),
            device: "cpu".into(),
            only: None,
            from: Some("decompose".into()),
            limit: None,
            epochs_now: None,
        }
    }

    #[test]
    fn scripts_name_every_setting() {
        let a = SlurmArgs {
            slurm: true,
            array: Some(3),
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            mem: Some("8G".into()),
            gpus: Some("a100:1".into()),
            ..Default::default()
        };
        let bins = [
            PathBuf::from("/shared/runs/bin/x"),
            PathBuf::from("/shared/runs/bin/d"),
        ];
        let s = array_script(
            &a,
            &job(),
            Path::new("/shared/runs/slurm/t"),
            "decomp-table2",
            &bins,
        );
        for want in [
            "#SBATCH --array=0-2\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --time=1:00:00\n",
            "#SBATCH --mem=8G\n",
            "#SBATCH --gpus=a100:1\n",
            "#SBATCH --output=/shared/runs/slurm/t/logs/%A_%a.log\n",
            "/shared/runs/bin/x run-experiment table2 --shard \"$shard/3\"",
            "--decomp-bin /shared/runs/bin/d --offline --data-dir '/data sets' --models-dir /m",
            "--runs /shared/runs --device cpu --from decompose",
            "touch /shared/runs/slurm/t/done/\"$shard\"",
        ] {
            assert!(s.contains(want), "{want:?} missing from\n{s}");
        }
        assert!(!s.contains("cpus-per-task"));
        let m = merge_script(
            &a,
            &job(),
            Path::new("/shared/runs/slurm/t"),
            "decomp-table2",
            &bins,
        );
        assert!(
            m.contains("#SBATCH --job-name=decomp-table2-merge\n"),
            "{m}"
        );
        assert!(!m.contains("--shard"), "{m}");
        assert!(!m.contains("tasks/"), "{m}");
        assert!(m.contains("touch /shared/runs/slurm/t/done/merge"), "{m}");
        let per_task = SlurmArgs {
            task_runs: true,
            ..a
        };
        let s = array_script(&per_task, &job(), Path::new("/t"), "j", &bins);
        assert!(s.contains("--runs /shared/runs/tasks/\"$shard\""), "{s}");
        let m = merge_script(&per_task, &job(), Path::new("/t"), "j", &bins);
        assert!(
            m.contains("for done in /shared/runs/tasks/*/store/*/*/unit.json"),
            "{m}"
        );
    }

    #[test]
    fn quoting_and_queue_parsing() {
        assert_eq!(sh("a/b-c.d"), "a/b-c.d");
        assert_eq!(sh("it's here"), r"'it'\''s here'");
        assert_eq!(sh(""), "''");
        assert_eq!(task_ids("[0-3%2]"), vec![0, 1, 2, 3]);
        assert_eq!(task_ids("0,2,5-6"), vec![0, 2, 5, 6]);
        assert_eq!(task_ids("N/A"), Vec::<u32>::new());
        let q = parse_queue("12|[0-1]|PENDING|Priority\n12|2|FAILED|NonZeroExitCode\n");
        assert_eq!(q[&("12".into(), 1)].0, "PENDING");
        assert_eq!(
            q[&("12".into(), 2)],
            ("FAILED".into(), "NonZeroExitCode".into())
        );
        assert!(ended("FAILED") && ended("CANCELLED") && ended("COMPLETED"));
        assert!(!ended("RUNNING") && !ended("PENDING"));
        assert!(
            SlurmArgs {
                wait: true,
                ..Default::default()
            }
            .active()
            .is_err()
        );
        assert!(!SlurmArgs::default().active().expect("off"));
    }
}
