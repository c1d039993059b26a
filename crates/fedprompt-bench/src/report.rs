//! From [`Measurements`] to the [`BenchReport`]: medians, speed and memory ratios, the
//! bytes-per-round rows, the machine (CPU, cores, load average); and the report written to
//! `bench.md` and `bench.json` and printed.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::execute::{BytesRuns, Measurements, WorkloadRuns};
use crate::markdown::render_markdown;
use crate::plan::{ModelKind, Plan, PlannedWorkload, Workload};
use crate::worker::{JobKind, JobResult, MethodBytes};

/// One side's measurement of a workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SideResult {
    /// Seconds per timed iteration, all rounds.
    pub times_s: Vec<f64>,
    /// Median of `times_s`.
    pub median_s: f64,
    /// Batch size ÷ `median_s`.
    pub examples_per_s: f64,
    /// Largest `VmHWM` over its processes.
    pub peak_rss_bytes: Option<u64>,
    /// Median model-load seconds over its processes.
    pub load_s: f64,
    /// Trainable parameters of the measured classifier.
    pub trainable_params: usize,
    /// Last training loss of the last process (sanity; `None` for inference).
    pub last_loss: Option<f64>,
    /// Compute threads its first process reported.
    pub threads: usize,
    /// Achieved GFLOP/s: the workload's counted FLOP ÷ `median_s`.
    pub gflops: Option<f64>,
    /// `gflops` as a fraction of the peak it is compared with (f32 measured, or bf16 nominal
    /// for the bf16 variants).
    pub peak_fraction: Option<f64>,
}

/// One workload's row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadResult {
    /// The workload.
    pub workload: Workload,
    /// The model it ran on.
    pub model: ModelKind,
    /// Training steps or inference.
    pub kind: JobKind,
    /// Examples per iteration.
    pub batch: usize,
    /// Tokens per example.
    pub tokens: usize,
    /// Warm-up iterations per process.
    pub warmup: usize,
    /// Timed iterations per process.
    pub iters: usize,
    /// fedprompt's measurement (`None`: it failed in every round).
    pub fedprompt: Option<SideResult>,
    /// PyTorch's measurement (`None`: not run, or failed in every round).
    pub torch: Option<SideResult>,
    /// fedprompt with a bf16 backbone (`None`: `--no-bf16`, or failed).
    pub fedprompt_bf16: Option<SideResult>,
    /// PyTorch under bf16 autocast (`None`: not run, or failed).
    pub torch_bf16: Option<SideResult>,
    /// FLOP of one iteration, counted from the shapes.
    pub flops: Option<f64>,
    /// fedprompt examples/s ÷ PyTorch examples/s (> 1: fedprompt faster).
    pub speed_ratio: Option<f64>,
    /// fedprompt peak RSS ÷ PyTorch peak RSS (< 1: fedprompt leaner).
    pub memory_ratio: Option<f64>,
    /// fedprompt bf16 examples/s ÷ PyTorch (fp32) examples/s.
    pub bf16_speed_ratio: Option<f64>,
    /// fedprompt bf16 examples/s ÷ PyTorch bf16-autocast examples/s.
    pub bf16_vs_autocast_ratio: Option<f64>,
    /// fedprompt bf16 peak RSS ÷ PyTorch (fp32) peak RSS.
    pub bf16_memory_ratio: Option<f64>,
    /// fedprompt bf16 peak RSS ÷ PyTorch bf16-autocast peak RSS.
    pub bf16_vs_autocast_memory_ratio: Option<f64>,
}

/// Bytes per round of one method on one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BytesRow {
    /// The model.
    pub model: ModelKind,
    /// `prompt`, `lora` or `full`.
    pub method: String,
    /// Trainable parameters on the fedprompt side.
    pub fedprompt_params: Option<usize>,
    /// Their size as a safetensors file.
    pub fedprompt_bytes: Option<u64>,
    /// Trainable parameters on the PEFT side.
    pub peft_params: Option<usize>,
    /// Size of PEFT's `adapter_model.safetensors` (full: the whole state dict).
    pub peft_bytes: Option<u64>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// One row per workload, in the order they ran.
    pub workloads: Vec<WorkloadResult>,
    /// Three rows (prompt, LoRA, full) per model; empty with `--no-bytes`.
    pub bytes: Vec<BytesRow>,
    /// torch / transformers / peft versions, if available.
    pub torch_versions: Option<serde_json::Value>,
    /// What was skipped or failed, in order.
    pub notes: Vec<String>,
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
    /// Compute threads per side.
    pub threads: usize,
    /// Rounds run.
    pub rounds: usize,
    /// The machine's peak, for the FLOP/s columns.
    pub peak: crate::flops::MachinePeak,
    /// 1-minute load average before and after.
    pub loadavg: (Option<f64>, Option<f64>),
    /// Seconds the whole run took.
    pub wall_s: f64,
    /// The report as Markdown (`bench.md`).
    pub markdown: String,
}

/// Median of a sample (mean of the two middle values for even sizes).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The 1-minute load average (`/proc/loadavg`).
pub(crate) fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

impl BenchReport {
    /// The report of a run that started at `started` with load average `load_before`; the
    /// load average after and the wall time are taken now.
    pub(crate) fn new(
        plan: &Plan,
        measured: Measurements,
        peak: crate::flops::MachinePeak,
        load_before: Option<f64>,
        started: Instant,
    ) -> BenchReport {
        let workloads = plan
            .workloads
            .iter()
            .zip(&measured.workloads)
            .map(|(planned, runs)| WorkloadResult::new(planned, runs, &peak))
            .collect();
        let bytes = measured.bytes.iter().flat_map(bytes_rows).collect();
        let mut notes = plan.notes.clone();
        notes.extend(measured.notes);
        let mut report = BenchReport {
            workloads,
            bytes,
            torch_versions: plan.torch.as_ref().map(|t| t.versions.clone()),
            notes,
            cpu: cpu_name(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            threads: plan.threads,
            rounds: plan.rounds,
            peak,
            loadavg: (load_before, loadavg()),
            wall_s: started.elapsed().as_secs_f64(),
            markdown: String::new(),
        };
        report.markdown = render_markdown(&report);
        report
    }

    /// Writes `bench.md` and `bench.json` into `out` and prints the Markdown.
    pub(crate) fn write(&self, out: &Path) -> Result<()> {
        std::fs::write(out.join("bench.md"), &self.markdown)?;
        std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(self)?)?;
        println!("{}", self.markdown);
        println!(
            "(written to {} and {})",
            out.join("bench.md").display(),
            out.join("bench.json").display()
        );
        Ok(())
    }
}

impl SideResult {
    /// One side's results over all rounds (`None`: none succeeded).
    fn from_runs(
        results: &[JobResult],
        batch: usize,
        flops: Option<f64>,
        peak_gflops: Option<f64>,
    ) -> Option<SideResult> {
        let first = results.first()?;
        let times: Vec<f64> = results.iter().flat_map(|r| r.times_s.clone()).collect();
        let med = median(&times);
        let gflops = flops.map(|f| f / med / 1e9).filter(|g| g.is_finite());
        Some(SideResult {
            gflops,
            peak_fraction: gflops.zip(peak_gflops).map(|(g, p)| g / p),
            median_s: med,
            examples_per_s: batch as f64 / med,
            peak_rss_bytes: results.iter().filter_map(|r| r.peak_rss_bytes).max(),
            load_s: median(&results.iter().map(|r| r.load_s).collect::<Vec<_>>()),
            trainable_params: first.trainable_params,
            last_loss: results.last().and_then(|r| r.last_loss),
            threads: first.threads,
            times_s: times,
        })
    }
}

impl WorkloadResult {
    fn new(
        planned: &PlannedWorkload,
        runs: &WorkloadRuns,
        peak: &crate::flops::MachinePeak,
    ) -> WorkloadResult {
        let job = &planned.job;
        let f32_peak = peak.f32_measured_gflops.or(Some(peak.f32_nominal_gflops));
        let bf16_peak = Some(peak.bf16_nominal_gflops);
        let side =
            |r: &[JobResult], p: Option<f64>| SideResult::from_runs(r, job.batch, planned.flops, p);
        let fp = side(&runs.fedprompt, f32_peak);
        let th = side(&runs.torch, f32_peak);
        let fb = side(&runs.fedprompt_bf16, bf16_peak);
        let tb = side(&runs.torch_bf16, bf16_peak);
        WorkloadResult {
            workload: planned.workload,
            model: planned.workload.model(),
            kind: job.kind,
            batch: job.batch,
            tokens: job.seq_len,
            warmup: job.warmup,
            iters: job.iters,
            flops: planned.flops,
            speed_ratio: speed_ratio(&fp, &th),
            memory_ratio: memory_ratio(&fp, &th),
            bf16_speed_ratio: speed_ratio(&fb, &th),
            bf16_vs_autocast_ratio: speed_ratio(&fb, &tb),
            bf16_memory_ratio: memory_ratio(&fb, &th),
            bf16_vs_autocast_memory_ratio: memory_ratio(&fb, &tb),
            fedprompt: fp,
            torch: th,
            fedprompt_bf16: fb,
            torch_bf16: tb,
        }
    }
}

/// `a`'s examples/s ÷ `b`'s.
fn speed_ratio(a: &Option<SideResult>, b: &Option<SideResult>) -> Option<f64> {
    Some(a.as_ref()?.examples_per_s / b.as_ref()?.examples_per_s)
}

/// `a`'s peak RSS ÷ `b`'s.
fn memory_ratio(a: &Option<SideResult>, b: &Option<SideResult>) -> Option<f64> {
    let x = a.as_ref()?.peak_rss_bytes?;
    let y = b.as_ref()?.peak_rss_bytes?;
    (y > 0).then(|| x as f64 / y as f64)
}

/// The prompt, LoRA and full rows of one model.
fn bytes_rows(runs: &BytesRuns) -> impl Iterator<Item = BytesRow> + '_ {
    ["prompt", "lora", "full"].into_iter().map(|method| {
        let f = method_bytes(&runs.fedprompt, method);
        let t = method_bytes(&runs.torch, method);
        BytesRow {
            model: runs.model,
            method: method.to_string(),
            fedprompt_params: f.map(|b| b.params),
            fedprompt_bytes: f.map(|b| b.bytes),
            peft_params: t.map(|b| b.params),
            peft_bytes: t.map(|b| b.bytes),
        }
    })
}

/// `method`'s entry in a bytes-per-round result.
fn method_bytes<'a>(result: &'a Option<JobResult>, method: &str) -> Option<&'a MethodBytes> {
    result
        .as_ref()
        .and_then(|r| r.bytes.iter().find(|b| b.method == method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::small_plan;
    use crate::worker::MethodBytes;

    fn job_result(times_s: Vec<f64>, peak_rss_bytes: u64) -> JobResult {
        JobResult {
            times_s,
            peak_rss_bytes: Some(peak_rss_bytes),
            ..Default::default()
        }
    }

    #[test]
    fn medians_ratios_rows_and_notes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut plan = small_plan(tmp.path(), |_| ()).unwrap();
        plan.workloads[0].flops = Some(64e9);
        let infer = WorkloadRuns {
            fedprompt: vec![job_result(vec![1.0, 3.0], 100), job_result(vec![2.0], 300)],
            torch: vec![job_result(vec![4.0], 200)],
            fedprompt_bf16: vec![job_result(vec![1.0], 100)],
            torch_bf16: vec![job_result(vec![2.0], 400)],
        };
        let bytes = JobResult {
            bytes: vec![MethodBytes {
                method: "lora".into(),
                params: 7,
                bytes: 70,
            }],
            ..Default::default()
        };
        let measured = Measurements {
            workloads: vec![infer, WorkloadRuns::default()],
            bytes: vec![BytesRuns {
                model: ModelKind::Small,
                fedprompt: Some(bytes),
                torch: None,
            }],
            notes: vec!["failed".into()],
        };
        let peak = crate::flops::MachinePeak::detect(1);
        let r = BenchReport::new(&plan, measured, peak, None, Instant::now());
        let fp = r.workloads[0].fedprompt.as_ref().unwrap();
        assert_eq!(fp.times_s, [1.0, 3.0, 2.0]);
        assert_eq!((fp.median_s, fp.examples_per_s), (2.0, 32.0));
        assert_eq!(fp.peak_rss_bytes, Some(300));
        assert_eq!(r.workloads[0].speed_ratio, Some(2.0));
        assert_eq!(r.workloads[0].memory_ratio, Some(1.5));
        assert_eq!(r.workloads[0].bf16_speed_ratio, Some(4.0));
        assert_eq!(r.workloads[0].bf16_vs_autocast_ratio, Some(2.0));
        assert_eq!(r.workloads[0].bf16_memory_ratio, Some(0.5));
        assert_eq!(r.workloads[0].bf16_vs_autocast_memory_ratio, Some(0.25));
        // FLOP/s: the counted FLOP over the median; none where FLOP are unknown.
        assert_eq!(fp.gflops, Some(32.0));
        assert_eq!(
            r.workloads[0].fedprompt_bf16.as_ref().unwrap().gflops,
            Some(64.0)
        );
        assert!(r.workloads[1].flops.is_none());
        assert!(r.workloads[1].fedprompt.is_none() && r.workloads[1].speed_ratio.is_none());
        let methods: Vec<_> = r.bytes.iter().map(|b| b.method.as_str()).collect();
        assert_eq!(methods, ["prompt", "lora", "full"]);
        assert_eq!(
            (r.bytes[1].fedprompt_params, r.bytes[1].fedprompt_bytes),
            (Some(7), Some(70))
        );
        assert_eq!(
            (r.bytes[0].fedprompt_bytes, r.bytes[1].peft_bytes),
            (None, None)
        );
        assert_eq!(r.notes.len(), 2);
        assert!(r.notes[0].contains("--no-torch") && r.notes[1] == "failed");
        assert_eq!(r.markdown, render_markdown(&r));
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
