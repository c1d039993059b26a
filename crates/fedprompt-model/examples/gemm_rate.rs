//! The rate of the frozen-weight product alone (the fused layer's GEMMs, here `x · Wᵀ`, the
//! forward; the input gradient `g · W` runs the same kernel on the other packing) on the bench
//! workloads' shapes (rows = batch × tokens), f32 and bf16 weights:
//!
//! ```sh
//! cargo run --release -p fedprompt-model --example gemm_rate            # all shapes
//! FEDPROMPT_NO_AMX=1 cargo run --release -p fedprompt-model --example gemm_rate
//! ```
//!
//! Prints GFLOP/s by the process's CPU time (user + system, all threads, averaged over the
//! repetitions: steadier than wall time on a machine shared with other jobs, and above the
//! 10 ms tick) and by the fastest repetition's wall time. `REPS` sets the repetitions (20).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use fedprompt_model::ops::linear::{frozen_linear_packed, FusedAct};
use fedprompt_model::ops::packs::WeightPacks;

/// CPU seconds (user + system, all threads) of this process so far.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> candle_core::Result<()> {
    let mut shapes = vec![
        (1184usize, 768usize, 768usize),
        (1184, 768, 3072),
        (1184, 3072, 768),
        (576, 384, 384),
        (576, 384, 1536),
    ];
    // `SHAPES="m,k,n;m,k,n"` replaces the list.
    if let Ok(list) = std::env::var("SHAPES") {
        shapes = list
            .split(';')
            .filter_map(|s| {
                let v: Vec<usize> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
                (v.len() == 3).then(|| (v[0], v[1], v[2]))
            })
            .collect();
    }
    // `KEEP=1`: the weight keeps its fast layout between repetitions (as a layer's weight does).
    let keep = std::env::var("KEEP").is_ok_and(|v| v == "1");
    fedprompt_model::alloc::keep_freed_memory();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let only: Option<String> = std::env::args().nth(1);
    println!(
        "threads {}, amx {}",
        candle_core::utils::get_num_threads(),
        fedprompt_model::ops::bf16::amx_enabled()
    );
    for (m, k, n) in shapes {
        for dtype in [DType::F32, DType::BF16] {
            let name = if dtype == DType::F32 { "f32" } else { "bf16" };
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)?.to_dtype(dtype)?;
            let flop = 2.0 * (m * k * n) as f64;
            let packs = keep.then(|| std::sync::Arc::new(WeightPacks::default()));
            if keep {
                drop(frozen_linear_packed(
                    &x,
                    &w,
                    packs.as_ref(),
                    None,
                    FusedAct::Identity,
                )?);
            }
            let (mut wall, mut cpu) = (f64::MAX, 0f64);
            for _ in 0..reps {
                let (t0, c0) = (Instant::now(), cpu_s());
                let y = frozen_linear_packed(&x, &w, packs.as_ref(), None, FusedAct::Identity)?;
                let (t1, c1) = (Instant::now(), cpu_s());
                drop(y);
                wall = wall.min((t1 - t0).as_secs_f64());
                cpu += c1 - c0;
            }
            let cpu = cpu / reps as f64;
            let rate = |s: f64| if s > 0.0 { flop / s / 1e9 } else { f64::NAN };
            println!(
                "{m}x{k}x{n} {name}: {:.1} GFLOP/s by CPU time ({:.1} ms), {:.1} by the fastest wall time ({:.1} ms)",
                rate(cpu),
                cpu * 1e3,
                rate(wall),
                wall * 1e3,
            );
        }
    }
    Ok(())
}
