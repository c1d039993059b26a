//! The forward product `x · Wᵀ` of the `gemm` crate with the frozen weight `W [n, k]` read
//! two ways: column-wise (the view `Wᵀ` of `W`, what the fused layers did before keeping a
//! copy) and as a row-major copy of `Wᵀ` (what [`fedprompt_model::ops::packs`] keeps), on the
//! demo's and the bench's shapes:
//!
//! ```sh
//! T=2 cargo run --release -p fedprompt-model --example weight_layout
//! ```
//!
//! Three interleaved rounds; each prints the best wall time's GFLOP/s. `T` sets the threads (1).

use std::time::Instant;

fn rate(m: usize, k: usize, n: usize, column_view: bool, threads: usize, reps: usize) -> f64 {
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104729) % 1000) as f32 * 1e-3)
        .collect();
    let mut wt = vec![0f32; k * n];
    for j in 0..n {
        for kk in 0..k {
            wt[kk * n + j] = w[j * k + kk];
        }
    }
    // (pointer, row stride, column stride) of the k × n right operand.
    let (rhs, rs, cs) = if column_view {
        (w.as_ptr(), 1, k as isize)
    } else {
        (wt.as_ptr(), n as isize, 1)
    };
    let mut y = vec![0f32; m * n];
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        // SAFETY: every operand spans its strides' extent.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                rhs,
                cs,
                rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let shapes = [
        (320usize, 384usize, 1152usize),
        (320, 384, 384),
        (320, 384, 1536),
        (320, 1536, 384),
        (1184, 768, 2304),
        (1184, 768, 3072),
        (1184, 3072, 768),
        (4736, 768, 3072),
    ];
    for (m, k, n) in shapes {
        let reps = (2e10 / (2.0 * (m * n * k) as f64)).clamp(5.0, 200.0) as usize;
        let (mut view, mut copy) = (0f64, 0f64);
        for _ in 0..3 {
            view = view.max(rate(m, k, n, true, threads, reps));
            copy = copy.max(rate(m, k, n, false, threads, reps));
        }
        println!(
            "{m}x{k}x{n} threads {threads}: column view {view:.0} GFLOP/s, row-major copy {copy:.0} GFLOP/s ({:+.0}%)",
            (copy / view - 1.0) * 100.0
        );
    }
}
