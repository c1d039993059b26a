//! The physical limit: FLOP per workload counted from the shapes, and the machine's peak
//! (nominal: cores × FLOP per cycle of its widest FMA or tile unit × clock; measured: an FMA
//! loop on every thread).
//!
//! Counting (multiply and add = 2 FLOP), for a batch of `B` sequences of `L` tokens (the
//! virtual token included), `T = B·L`, hidden `h`, feed-forward `f`, `n` layers:
//! * forward, per layer: the four `h×h` projections and the two feed-forward ones,
//!   `2·T·(4h² + 2hf)`, and the attention core (`QKᵀ` and `PV`), `4·B·L²·h`;
//!   the head, `2·B·(h² + h·labels)`. Norms, softmax and GELU are left out (a few %).
//! * a prompt-tuning step: the forward plus a backward that computes input gradients only (the
//!   backbone is frozen): one GEMM per projection (as many FLOP as its forward) and four per
//!   attention core (twice its forward): `2·linear + 3·attention`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::Workload;
use crate::worker::JobKind;

/// FLOP of one iteration of `workload` on the model in `dir` (`None` if its config.json
/// cannot be read).
pub fn workload_flops(workload: Workload, dir: &Path, num_labels: usize) -> Option<f64> {
    let cfg = fedprompt_model::EncoderConfig::from_file(&dir.join("config.json")).ok()?;
    let (b, tokens) = workload.shape();
    Some(step_flops(
        workload.kind(),
        b,
        tokens + 1,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
        num_labels,
    ))
}

/// FLOP of one training step or inference batch (see the module doc for the count).
pub fn step_flops(
    kind: JobKind,
    batch: usize,
    seq: usize,
    hidden: usize,
    ffn: usize,
    layers: usize,
    labels: usize,
) -> f64 {
    let (b, l, h, f, n) = (
        batch as f64,
        seq as f64,
        hidden as f64,
        ffn as f64,
        layers as f64,
    );
    let t = b * l;
    let linear = n * 2.0 * t * (4.0 * h * h + 2.0 * h * f) + 2.0 * b * (h * h + h * labels as f64);
    let attention = n * 4.0 * b * l * l * h;
    match kind {
        JobKind::Train => 2.0 * linear + 3.0 * attention,
        JobKind::Infer | JobKind::Bytes => linear + attention,
    }
}

/// The machine's peak arithmetic rate, nominal and measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachinePeak {
    /// Threads the peak is for (the bench's threads per side).
    pub threads: usize,
    /// Clock in GHz and where it was read.
    pub clock_ghz: f64,
    /// `/sys/.../cpuinfo_max_freq` or `/proc/cpuinfo` (`cpu MHz`).
    pub clock_source: String,
    /// f32 FLOP per cycle per core of the widest FMA unit found.
    pub f32_flop_per_cycle: f64,
    /// Nominal f32 peak, GFLOP/s.
    pub f32_nominal_gflops: f64,
    /// An f32 FMA loop on every thread, GFLOP/s (`None` where no FMA probe exists).
    pub f32_measured_gflops: Option<f64>,
    /// bf16 FLOP per cycle per core (AMX tiles where present, else the f32 rate: bf16 weights
    /// are widened to f32).
    pub bf16_flop_per_cycle: f64,
    /// Nominal bf16 peak, GFLOP/s.
    pub bf16_nominal_gflops: f64,
    /// How the per-cycle rates were found.
    pub how: String,
}

impl MachinePeak {
    /// Detects the vector units and clock and runs the FMA probe on `threads` threads.
    pub fn detect(threads: usize) -> MachinePeak {
        let (clock_ghz, clock_source) = clock();
        let (f32_fpc, isa) = f32_flop_per_cycle();
        let amx = fedprompt_model::ops::bf16::amx_enabled();
        let bf16_fpc = if amx { 1024.0 } else { f32_fpc };
        let cores = threads as f64;
        let how = format!(
            "{isa}; bf16: {}; nominal = {threads} threads × FLOP/cycle × {clock_ghz:.2} GHz \
             ({clock_source})",
            if amx {
                "AMX tdpbf16ps, 16×16×32 products per 16 cycles = 1024 FLOP/cycle per core"
            } else {
                "no AMX: bf16 weights are widened to f32, the f32 rate"
            }
        );
        MachinePeak {
            threads,
            clock_ghz,
            clock_source,
            f32_flop_per_cycle: f32_fpc,
            f32_nominal_gflops: cores * f32_fpc * clock_ghz,
            f32_measured_gflops: fma_probe::measure(threads),
            bf16_flop_per_cycle: bf16_fpc,
            bf16_nominal_gflops: cores * bf16_fpc * clock_ghz,
            how,
        }
    }
}

/// The clock: the maximum frequency if the kernel exposes it, else the `cpu MHz` of
/// `/proc/cpuinfo` (as a VM reports it).
fn clock() -> (f64, String) {
    let sys = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq";
    if let Some(khz) = std::fs::read_to_string(sys)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        return (khz / 1e6, sys.to_string());
    }
    let mhz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    match mhz {
        Some(m) => (m / 1e3, "/proc/cpuinfo cpu MHz".to_string()),
        None => (f64::NAN, "clock unknown".to_string()),
    }
}

/// f32 FLOP per cycle per core and the reasoning: two FMA ports of the widest vector ISA
/// (2 × lanes × 2 FLOP). AMD's AVX-512 (Zen 4) executes 512-bit FMAs as two 256-bit halves,
/// so only Intel's AVX-512 counts as 16 lanes.
fn f32_flop_per_cycle() -> (f64, String) {
    #[cfg(target_arch = "x86_64")]
    {
        let intel = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.contains("GenuineIntel"))
            .unwrap_or(false);
        if std::is_x86_feature_detected!("avx512f") && intel {
            return (
                64.0,
                "f32: AVX-512, 2 FMA ports × 16 lanes × 2 FLOP = 64 FLOP/cycle per core".into(),
            );
        }
        if std::is_x86_feature_detected!("fma") {
            return (
                32.0,
                "f32: 2 FMA ports × 8 lanes (256-bit) × 2 FLOP = 32 FLOP/cycle per core".into(),
            );
        }
    }
    (
        8.0,
        "f32: no FMA vector unit detected; 8 FLOP/cycle assumed".into(),
    )
}

/// A loop of independent FMAs on every thread for about 0.3 s.
mod fma_probe {
    use std::time::Instant;

    use rayon::prelude::*;

    /// Summed GFLOP/s of `threads` threads each running the FMA loop.
    pub fn measure(threads: usize) -> Option<f64> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .ok()?;
        let rates: Vec<Option<f64>> = pool.install(|| {
            (0..threads.max(1))
                .into_par_iter()
                .map(|_| one_thread())
                .collect()
        });
        rates.into_iter().sum()
    }

    fn one_thread() -> Option<f64> {
        let iters = 4_000_000u64;
        let (flop_per_iter, f): (f64, unsafe fn(u64) -> f32) = {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    (12.0 * 32.0, fma512)
                } else if std::is_x86_feature_detected!("fma") {
                    (12.0 * 16.0, fma256)
                } else {
                    return None;
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            return None;
        };
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            // SAFETY: the feature the function needs was detected above.
            let s = unsafe { f(iters) };
            let dt = t.elapsed().as_secs_f64();
            std::hint::black_box(s);
            best = best.max(iters as f64 * flop_per_iter / dt / 1e9);
        }
        Some(best)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma512(n: u64) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm512_setzero_ps(); 12];
        let a = _mm512_set1_ps(std::hint::black_box(1.0000001));
        let b = _mm512_set1_ps(std::hint::black_box(0.9999999));
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(a, *x, b);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma256(n: u64) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_ps(); 12];
        let a = _mm256_set1_ps(std::hint::black_box(1.0000001));
        let b = _mm256_set1_ps(std::hint::black_box(0.9999999));
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(a, *x, b);
            }
        }
        let mut out = [0f32; 8];
        let mut s = 0f32;
        for x in acc {
            _mm256_storeu_ps(out.as_mut_ptr(), x);
            s += out.iter().sum::<f32>();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_train_step_is_about_four_hundred_gflop() {
        // XLM-R base, 8 × (148 + 1): the "about 400 GFLOP".
        let f = step_flops(JobKind::Train, 8, 149, 768, 3072, 12, 10);
        let linear = 12.0 * 2.0 * 1192.0 * (4.0 * 768.0 * 768.0 + 2.0 * 768.0 * 3072.0)
            + 2.0 * 8.0 * (768.0 * 768.0 + 7680.0);
        let attention = 12.0 * 4.0 * 8.0 * 149.0 * 149.0 * 768.0;
        assert_eq!(f, 2.0 * linear + 3.0 * attention);
        assert!((f / 1e9 - 420.0).abs() < 20.0, "{f}");
        let inf = step_flops(JobKind::Infer, 8, 149, 768, 3072, 12, 10);
        assert_eq!(inf, linear + attention);
    }

    #[test]
    fn peak_is_positive() {
        let p = MachinePeak::detect(1);
        assert!(p.f32_flop_per_cycle >= 8.0 && p.bf16_flop_per_cycle >= p.f32_flop_per_cycle);
        assert!(p.how.contains("FLOP/cycle"));
    }
}
