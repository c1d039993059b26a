//! The PyTorch + PEFT side: `python scripts/bench_torch.py --json ...`, one process per job.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::worker::{Job, JobKind, JobResult};
use crate::BenchOptions;

/// The embedded copy of `scripts/bench_torch.py`, used when the file is not found on disk.
pub const SCRIPT: &str = include_str!("../../../scripts/bench_torch.py");

/// A Python that imports torch, transformers and peft, and the script to run.
pub struct TorchSide {
    /// The Python to run.
    pub python: String,
    /// The `bench_torch.py` it runs.
    pub script: PathBuf,
    /// `{"torch": ..., "transformers": ..., "peft": ...}` as the probe reported them.
    pub versions: serde_json::Value,
}

fn find_script(opts: &BenchOptions) -> Result<PathBuf> {
    if let Some(s) = &opts.torch_script {
        return Ok(s.clone());
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let p = dir.join("scripts").join("bench_torch.py");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let p = opts.out.join("bench_torch.py");
    std::fs::write(&p, SCRIPT).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

fn last_json(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str(l).ok())
}

fn call(
    python: &str,
    script: &Path,
    args: &[String],
    threads: Option<usize>,
) -> Result<serde_json::Value> {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = threads {
        // torch.set_num_threads in the script; these keep MKL/OpenMP pools in line too.
        cmd.env("OMP_NUM_THREADS", t.to_string())
            .env("MKL_NUM_THREADS", t.to_string());
    }
    cmd.env("TOKENIZERS_PARALLELISM", "false")
        .env("TRANSFORMERS_VERBOSITY", "error");
    let out = cmd
        .output()
        .with_context(|| format!("starting `{python}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v = last_json(&stdout);
    match v {
        Some(v) if v["ok"].as_bool() == Some(true) => Ok(v),
        Some(v) => bail!("{}", v["error"].as_str().unwrap_or("failed")),
        None => {
            let tail: String = stderr
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "{} exited with {} and no result; stderr tail:\n{tail}",
                script.display(),
                out.status
            )
        }
    }
}

impl TorchSide {
    /// Finds the script and checks that the Python imports torch, transformers and peft.
    pub fn probe(opts: &BenchOptions) -> Result<Self> {
        let script = find_script(opts)?;
        let python = opts.python();
        let v = call(&python, &script, &["--probe".into()], None)?;
        Ok(TorchSide {
            python,
            script,
            versions: v["versions"].clone(),
        })
    }

    /// Runs one job in a fresh Python process.
    pub fn run_job(&self, job: &Job, threads: usize) -> Result<JobResult> {
        let mode = match job.kind {
            JobKind::Train => "train",
            JobKind::Infer => "infer",
            JobKind::Bytes => "bytes",
        };
        let args: Vec<String> = vec![
            "--mode".into(),
            mode.into(),
            "--model".into(),
            job.model_dir.display().to_string(),
            "--num-labels".into(),
            job.num_labels.to_string(),
            "--batch".into(),
            job.batch.to_string(),
            "--seq".into(),
            job.seq_len.to_string(),
            "--warmup".into(),
            job.warmup.to_string(),
            "--iters".into(),
            job.iters.to_string(),
            "--threads".into(),
            threads.to_string(),
            "--seed".into(),
            job.seed.to_string(),
            "--lr".into(),
            job.lr.to_string(),
        ];
        let mut args = args;
        if job.dtype == fedprompt_model::WeightDtype::Bf16 {
            args.push("--autocast".into());
        }
        let v = call(&self.python, &self.script, &args, Some(threads))?;
        let times_s: Vec<f64> = v["times_s"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let bytes = match v.get("bytes") {
            Some(b) => serde_json::from_value(b.clone()).map_err(|e| anyhow!("bytes: {e}"))?,
            None => Vec::new(),
        };
        Ok(JobResult {
            times_s,
            load_s: v["load_s"].as_f64().unwrap_or(f64::NAN),
            peak_rss_bytes: v["peak_rss_bytes"].as_u64(),
            trainable_params: v["trainable_params"].as_u64().unwrap_or(0) as usize,
            last_loss: v["last_loss"].as_f64(),
            bytes,
            threads: v["threads"].as_u64().unwrap_or(0) as usize,
        })
    }
}
