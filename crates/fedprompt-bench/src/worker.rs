//! The fedprompt side of one measurement, run in its own process so that its peak memory
//! (`VmHWM`) is its own: [`run_worker_job`] spawns the current binary (or a chosen one) with
//! `FEDPROMPT_BENCH_WORKER=1`; that binary must call [`maybe_run_worker`] first thing in `main`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fedprompt_model::{Backbone, Batch, Classifier, ForwardCtx, MethodConfig, WeightDtype};
use serde::{Deserialize, Serialize};

use crate::sizes::safetensors_size;

/// Environment variable that turns a binary into a bench worker (see [`maybe_run_worker`]).
pub const WORKER_ENV: &str = "FEDPROMPT_BENCH_WORKER";
/// Prefix of the worker's one result line on stdout.
pub const RESULT_MARKER: &str = "FEDPROMPT_BENCH_RESULT ";

/// What a worker process measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Prompt-tuning training steps (forward, cross-entropy, backward, AdamW).
    Train,
    /// Batched inference (eval mode, prompt classifier).
    Infer,
    /// Bytes per round of each method's trainable set as safetensors.
    Bytes,
}

/// One measurement, given to the worker as JSON on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// What to measure.
    pub kind: JobKind,
    /// The model folder (`config.json`, `model.safetensors`, `tokenizer.json`).
    pub model_dir: PathBuf,
    /// Examples per iteration.
    pub batch: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Labels of the classification head.
    pub num_labels: usize,
    /// Seed of the classifier's initialisation and of training-mode dropout.
    pub seed: u64,
    /// AdamW learning rate.
    pub lr: f64,
    /// Precision of the frozen backbone: fedprompt's weight dtype; on the PyTorch side `bf16`
    /// runs the step under `torch.autocast("cpu", dtype=torch.bfloat16)`.
    #[serde(default)]
    pub dtype: WeightDtype,
}

/// Bytes per round of one method.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodBytes {
    /// `prompt`, `lora` or `full`.
    pub method: String,
    /// Trainable parameters.
    pub params: usize,
    /// Size of the trainable set as a safetensors file.
    pub bytes: u64,
}

/// What a worker reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobResult {
    /// Seconds per timed iteration.
    pub times_s: Vec<f64>,
    /// Model load (and classifier build) seconds.
    pub load_s: f64,
    /// `VmHWM` of the worker at the end, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Trainable parameters of the measured classifier.
    pub trainable_params: usize,
    /// Last training loss (sanity).
    pub last_loss: Option<f64>,
    /// For [`JobKind::Bytes`].
    pub bytes: Vec<MethodBytes>,
    /// Threads the worker's candle pool uses.
    pub threads: usize,
}

/// If this process was started as a bench worker (`FEDPROMPT_BENCH_WORKER` set), reads the
/// job from stdin, runs it, prints the result line and exits; otherwise returns at once.
/// Call it first thing in `main` of any binary that calls [`crate::run`].
pub fn maybe_run_worker() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    let code = match worker_main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fedprompt bench worker: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn worker_main() -> Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let job: Job = serde_json::from_str(&input).context("reading the worker's job")?;
    let res = execute(&job)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{RESULT_MARKER}{}", serde_json::to_string(&res)?)?;
    out.flush()?;
    Ok(())
}

/// `VmHWM` (peak resident set size) of this process, in bytes.
pub fn vm_hwm_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

pub(crate) fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Deterministic token ids, identical to `scripts/bench_torch.py`'s: `<s>` (0), then
/// pseudo-random ids in `[5, vocab)`, then `</s>` (2); no padding.
pub fn token_rows(batch: usize, seq_len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|i| {
            (0..seq_len)
                .map(|j| {
                    if j == 0 {
                        0
                    } else if j + 1 == seq_len {
                        2
                    } else {
                        let k = (i * seq_len + j) as u64;
                        (5 + (k * 7919 + 13) % (vocab as u64 - 5)) as u32
                    }
                })
                .collect()
        })
        .collect()
}

fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

fn prompt_method() -> MethodConfig {
    MethodConfig::Prompt {
        num_virtual_tokens: 1,
        init_text: None,
    }
}

/// Runs a job in this process.
pub fn execute(job: &Job) -> Result<JobResult> {
    let t0 = Instant::now();
    let backbone = Backbone::load_with(&job.model_dir, job.dtype)
        .with_context(|| format!("loading {}", job.model_dir.display()))?;
    let cfg = backbone.config().clone();
    let labels = labels(job.num_labels);
    let mut res = JobResult {
        threads: candle_core::utils::get_num_threads(),
        ..Default::default()
    };
    match job.kind {
        JobKind::Bytes => {
            let methods = [
                ("prompt", prompt_method()),
                ("lora", MethodConfig::paper_lora()),
                ("full", MethodConfig::Full),
            ];
            for (name, m) in methods {
                let clf = Classifier::new(&backbone, &m, &labels, job.seed)?;
                let entries: Vec<(String, Vec<usize>)> = clf
                    .trainable()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_tensor().dims().to_vec()))
                    .collect();
                res.bytes.push(MethodBytes {
                    method: name.to_string(),
                    params: clf.trainable().num_params(),
                    bytes: safetensors_size(&entries)?,
                });
            }
            res.load_s = t0.elapsed().as_secs_f64();
        }
        JobKind::Train | JobKind::Infer => {
            let clf = Classifier::new(&backbone, &prompt_method(), &labels, job.seed)?;
            res.trainable_params = clf.trainable().num_params();
            let rows = token_rows(job.batch, job.seq_len, cfg.vocab_size);
            let batch = Batch::from_ids(&rows, None, cfg.pad_token_id)?;
            let y: Vec<u32> = (0..job.batch)
                .map(|i| (i % job.num_labels) as u32)
                .collect();
            let y = Tensor::new(y.as_slice(), &Device::Cpu)?;
            res.load_s = t0.elapsed().as_secs_f64();
            if job.kind == JobKind::Train {
                let mut opt = AdamW::new(
                    clf.trainable().vars(),
                    ParamsAdamW {
                        lr: job.lr,
                        ..Default::default()
                    },
                )?;
                for it in 0..job.warmup + job.iters {
                    let t = Instant::now();
                    let ctx = ForwardCtx::train(job.seed.wrapping_add(it as u64));
                    let logits = clf.forward(&batch, &ctx)?;
                    let loss = fedprompt_model::nn::cross_entropy(&logits, &y)?;
                    opt.backward_step(&loss)?;
                    let l = loss.to_scalar::<f32>()?;
                    let dt = t.elapsed().as_secs_f64();
                    if it >= job.warmup {
                        res.times_s.push(dt);
                    }
                    res.last_loss = Some(l as f64);
                }
            } else {
                let ctx = ForwardCtx::eval();
                for it in 0..job.warmup + job.iters {
                    let t = Instant::now();
                    let logits = clf.forward(&batch, &ctx)?;
                    let _: Vec<Vec<f32>> = logits.to_vec2()?;
                    let dt = t.elapsed().as_secs_f64();
                    if it >= job.warmup {
                        res.times_s.push(dt);
                    }
                }
            }
        }
    }
    res.peak_rss_bytes = vm_hwm_bytes();
    Ok(res)
}

/// Runs `job` in a fresh process of `exe` (which must call [`maybe_run_worker`]), with
/// `threads` compute threads if given.
pub fn run_worker_job(exe: &Path, job: &Job, threads: Option<usize>) -> Result<JobResult> {
    let mut cmd = Command::new(exe);
    cmd.env(WORKER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(t) = threads {
        cmd.env("RAYON_NUM_THREADS", t.to_string())
            .env("CANDLE_NUM_THREADS", t.to_string());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the bench worker {}", exe.display()))?;
    {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no worker stdin"))?;
        stdin.write_all(serde_json::to_string(job)?.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix(RESULT_MARKER));
    match line {
        Some(l) => Ok(serde_json::from_str(l).context("parsing the worker's result")?),
        None if out.status.success() => bail!(
            "{} ran but did not answer as a bench worker: call \
             fedprompt_bench::maybe_run_worker() first thing in its main(), or pass another \
             worker binary (--worker-exe, e.g. target/release/fedprompt-bench)",
            exe.display()
        ),
        None => bail!(
            "the bench worker failed ({}); see its stderr above",
            out.status
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_parses() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(2048 * 1024));
        assert!(vm_hwm_bytes().unwrap() > 0);
    }

    #[test]
    fn token_rows_shape() {
        let rows = token_rows(3, 5, 100);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.len() == 5 && r[0] == 0 && r[4] == 2));
        assert!(rows.iter().flatten().all(|&t| t < 100));
    }
}
