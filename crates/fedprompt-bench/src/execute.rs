//! Running a [`Plan`]: every round runs every workload once per side, alternating which side
//! goes first, then each model's bytes-per-round job once per side. A failed job becomes a
//! note; the rest of the run goes on.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::plan::{BytesJob, ModelKind, Plan};
use crate::report::median;
use crate::worker::{self, Job, JobResult};
use crate::BenchOptions;
use fedprompt_model::WeightDtype;

/// How the fedprompt side runs a job: in a fresh worker process of `exe` (so that its peak
/// memory is its own), or in this process with `--in-process`.
pub(crate) struct FedpromptSide {
    exe: PathBuf,
    in_process: bool,
    threads: usize,
}

impl FedpromptSide {
    /// The worker binary is `--worker-exe`, else the current executable (resolved, as ever,
    /// also with `--in-process`).
    pub fn new(opts: &BenchOptions) -> Result<Self> {
        let exe = match &opts.worker_exe {
            Some(e) => e.clone(),
            None => std::env::current_exe().context("locating the current executable")?,
        };
        Ok(FedpromptSide {
            exe,
            in_process: opts.in_process,
            threads: opts.threads,
        })
    }

    /// Runs one job.
    pub fn run_job(&self, job: &Job) -> Result<JobResult> {
        if self.in_process {
            worker::execute(job)
        } else {
            worker::run_worker_job(&self.exe, job, Some(self.threads))
        }
    }
}

/// Every variant's results of one timed workload, one per round that succeeded.
#[derive(Default)]
pub(crate) struct WorkloadRuns {
    pub fedprompt: Vec<JobResult>,
    pub torch: Vec<JobResult>,
    /// fedprompt with a bf16 backbone.
    pub fedprompt_bf16: Vec<JobResult>,
    /// PyTorch under bf16 autocast.
    pub torch_bf16: Vec<JobResult>,
}

/// Both sides' bytes-per-round results of one model (`None`: failed or not run).
pub(crate) struct BytesRuns {
    pub model: ModelKind,
    pub fedprompt: Option<JobResult>,
    pub torch: Option<JobResult>,
}

/// Everything a run measured.
pub(crate) struct Measurements {
    /// In the order of [`Plan::workloads`].
    pub workloads: Vec<WorkloadRuns>,
    /// In the order of [`Plan::bytes_jobs`].
    pub bytes: Vec<BytesRuns>,
    /// The jobs that failed, in the order they ran.
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Fedprompt,
    Torch,
    FedpromptBf16,
    TorchBf16,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Fedprompt => "fedprompt",
            Side::Torch => "PyTorch",
            Side::FedpromptBf16 => "fedprompt bf16",
            Side::TorchBf16 => "PyTorch bf16 autocast",
        }
    }

    fn is_torch(self) -> bool {
        matches!(self, Side::Torch | Side::TorchBf16)
    }

    fn dtype(self) -> WeightDtype {
        match self {
            Side::Fedprompt | Side::Torch => WeightDtype::F32,
            Side::FedpromptBf16 | Side::TorchBf16 => WeightDtype::Bf16,
        }
    }

    fn runs(self, runs: &mut WorkloadRuns) -> &mut Vec<JobResult> {
        match self {
            Side::Fedprompt => &mut runs.fedprompt,
            Side::Torch => &mut runs.torch,
            Side::FedpromptBf16 => &mut runs.fedprompt_bf16,
            Side::TorchBf16 => &mut runs.torch_bf16,
        }
    }
}

/// Runs the plan's rounds, then its bytes-per-round jobs.
pub(crate) fn execute(plan: &Plan) -> Measurements {
    let mut notes = Vec::new();
    let workloads = run_rounds(plan, &mut notes);
    let bytes = plan
        .bytes_jobs
        .iter()
        .map(|b| measure_bytes(plan, b, &mut notes))
        .collect();
    Measurements {
        workloads,
        bytes,
        notes,
    }
}

fn run_rounds(plan: &Plan, notes: &mut Vec<String>) -> Vec<WorkloadRuns> {
    let mut runs: Vec<WorkloadRuns> = plan
        .workloads
        .iter()
        .map(|_| WorkloadRuns::default())
        .collect();
    let mut sides = vec![Side::Fedprompt, Side::Torch];
    if plan.bf16 {
        sides.extend([Side::FedpromptBf16, Side::TorchBf16]);
    }
    for round in 0..plan.rounds {
        for (k, (planned, runs)) in plan.workloads.iter().zip(&mut runs).enumerate() {
            // Rotate which variant goes first (and reverse every other round), so slow drifts
            // in machine load hit all of them.
            let mut order = sides.clone();
            order.rotate_left((round + k) % sides.len());
            if (round + k) % 2 == 1 {
                order.reverse();
            }
            let name = planned.workload.name();
            for side in order {
                let label = side.label();
                if side.is_torch() && plan.torch.is_none() {
                    continue;
                }
                eprintln!(
                    "fedprompt bench: round {}/{} {} {} ...",
                    round + 1,
                    plan.rounds,
                    name,
                    label
                );
                let job = Job {
                    dtype: side.dtype(),
                    ..planned.job.clone()
                };
                let result = match (&plan.torch, side.is_torch()) {
                    (Some(t), true) => t.run_job(&job, plan.threads),
                    (_, false) => plan.fedprompt.run_job(&job),
                    (None, true) => continue,
                };
                match result {
                    Ok(r) => {
                        eprintln!(
                            "fedprompt bench:   {label} median {:.3} s/iter",
                            median(&r.times_s)
                        );
                        side.runs(runs).push(r);
                    }
                    Err(e) => notes.push(format!("{name} {label} failed: {e:#}")),
                }
            }
        }
    }
    runs
}

fn measure_bytes(plan: &Plan, bytes_job: &BytesJob, notes: &mut Vec<String>) -> BytesRuns {
    let model = bytes_job.model;
    eprintln!("fedprompt bench: bytes per round, {}", model.describe());
    let fedprompt = plan
        .fedprompt
        .run_job(&bytes_job.job)
        .map_err(|e| {
            notes.push(format!(
                "bytes ({}) fedprompt failed: {e:#}",
                model.describe()
            ))
        })
        .ok();
    let torch = plan.torch.as_ref().and_then(|t| {
        t.run_job(&bytes_job.job, plan.threads)
            .map_err(|e| {
                notes.push(format!(
                    "bytes ({}) PyTorch failed: {e:#}",
                    model.describe()
                ))
            })
            .ok()
    });
    BytesRuns {
        model,
        fedprompt,
        torch,
    }
}
