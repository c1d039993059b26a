//! Fused CPU kernels with their own backward passes, for the frozen-backbone training step:
//! a frozen linear layer (input gradient only, optional fused erf-GELU), layer norm, softmax,
//! and the attention core (scores, mask, softmax, dropout and the weighted sum, per head, read
//! and written in place in the `[B, L, heads·d]` layout).
//!
//! Each op works on f32 CPU tensors and is checked against the composed candle version in
//! `tests/ops.rs`, values and gradients, contiguous and strided inputs.

pub mod attention;
pub mod bf16;
pub mod dropout;
pub mod last_layer;
pub mod layer;
pub mod linear;
pub mod norm;
pub mod packs;
pub mod softmax;
pub(crate) mod vmath;

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

/// The contiguous f32 data of a CPU storage seen through `layout`.
pub(crate) fn contiguous_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused op: expected a contiguous input"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copied first only if strided).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(contiguous_slice(cpu, layout)?)),
        _ => bail!("fused op: only CPU tensors are supported"),
    }
}

/// A frozen weight's data, f32 or raw bf16 bits.
#[derive(Clone, Copy)]
pub(crate) enum WeightPtr {
    /// f32 elements.
    F32(*const f32),
    /// bf16 elements (raw bits).
    Bf16(*const u16),
}

/// Runs `f` on the contiguous data of a CPU f32 or bf16 tensor (copied first only if strided).
pub(crate) fn with_weight<R>(t: &Tensor, f: impl FnOnce(WeightPtr, usize) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("fused op: only CPU tensors are supported")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        bail!("fused op: expected a contiguous weight")
    };
    match cpu {
        CpuStorage::F32(v) => Ok(f(WeightPtr::F32(v[a..b].as_ptr()), b - a)),
        CpuStorage::BF16(v) => Ok(f(WeightPtr::Bf16(v[a..b].as_ptr().cast()), b - a)),
        _ => bail!("fused op: weights must be f32 or bf16, got {:?}", t.dtype()),
    }
}

/// `dst = [dst +] a · B` where `B` (k×n) is a weight seen through strides `(rs, cs)`: the f32
/// GEMM for f32 weights, [`bf16::gemm_f32_bf16`] for bf16 ones. `cache` keeps this very
/// operand's fast layout between calls (see [`packs`]; only when its first product has few
/// rows): the tile layout of a bf16 weight, a row-major copy of an f32 weight read column-wise
/// (`rs == 1`, the forward's `Wᵀ`).
///
/// The f32 copy is used only where the `gemm` crate runs its blocked kernel for both layouts
/// (more than one row and column, `k > 2`, more than 16 × 16 outputs): there the sums run in
/// the same order whatever the operand's layout, so the result is bit for bit the one of
/// reading `W` column-wise. Its small-size kernels (dot products for `rs == 1`) sum in
/// another order, so tiny products keep reading `W`.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_weight(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    w: WeightPtr,
    rs: isize,
    cs: isize,
    cache: Option<&packs::PackCache>,
    threads: usize,
) {
    match w {
        WeightPtr::F32(ptr) => {
            let copy = match cache {
                Some(c) if rs == 1 && cs != 1 && m > 1 && n > 1 && k > 2 && m * n > 256 => {
                    c.row_major(m, k, n, || {
                        let p = SendConstPtr(ptr);
                        // SAFETY: (kk, j) for kk < k, j < n lies inside the weight (the contract).
                        row_major_copy(k, n, |kk, j| unsafe {
                            *p.get().offset(kk as isize + j as isize * cs)
                        })
                    })
                }
                _ => None,
            };
            let b = match copy {
                Some(t) => Mat {
                    ptr: t.as_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
                None => Mat { ptr, rs, cs },
            };
            sgemm(m, n, k, dst, dst_rs, accumulate, a, b, threads)
        }
        WeightPtr::Bf16(ptr) => bf16::gemm_f32_bf16(
            m,
            n,
            k,
            dst,
            dst_rs,
            accumulate,
            a,
            bf16::BMat { ptr, rs, cs },
            cache,
            threads,
        ),
    }
}

/// The `k × n` matrix `at(kk, j)` row-major, built in 64 × 64 blocks (the source is read
/// column-wise).
fn row_major_copy(k: usize, n: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    const B: usize = 64;
    let mut out = vec![0f32; k * n];
    out.par_chunks_mut(B * n)
        .enumerate()
        .for_each(|(kb, rows)| {
            let k0 = kb * B;
            for j0 in (0..n).step_by(B) {
                for j in j0..(j0 + B).min(n) {
                    for (i, row) in rows.chunks_mut(n).enumerate() {
                        row[j] = at(k0 + i, j);
                    }
                }
            }
        });
    out
}

/// A mutable pointer that may be shared by threads writing disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: users only write disjoint regions from different threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// A read-only pointer shared by threads.
#[derive(Clone, Copy)]
pub(crate) struct SendConstPtr(pub *const f32);
// SAFETY: read-only.
unsafe impl Send for SendConstPtr {}
unsafe impl Sync for SendConstPtr {}

impl SendConstPtr {
    /// The pointer (a method, so that closures capture the whole wrapper).
    pub fn get(self) -> *const f32 {
        self.0
    }
}

/// A strided f32 matrix operand: `ptr[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// `dst (m×n, row stride dst_rs, unit column stride) = [dst +] a (m×k) · b (k×n)`, with the
/// `gemm` crate candle itself uses; `threads > 1` splits the work with rayon.
///
/// # Safety
/// Every element addressed by the strides must lie inside live allocations, and no other
/// thread may write the destination block.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        par,
    )
}

thread_local! {
    static GEMM_THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Threads for a large GEMM: as set by [`with_gemm_threads`] on this thread, else those of the
/// rayon pool it runs in (an experiment running several runs at once gives each its own pool;
/// outside any pool, the global one: `RAYON_NUM_THREADS`, else one per core).
pub(crate) fn gemm_threads() -> usize {
    GEMM_THREADS
        .with(|c| c.get())
        .unwrap_or_else(rayon::current_num_threads)
}

/// Fewest rows (sequences × positions) per part for a batch to be cut over the threads.
pub const MIN_PART_ROWS: usize = 256;

/// Whether `FEDPROMPT_NO_BATCH_SPLIT=1` asks never to cut a batch (for comparisons).
pub(crate) fn batch_split_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("FEDPROMPT_NO_BATCH_SPLIT").is_some_and(|v| v == "1"))
}

/// How a batch of `b` sequences of `l` positions is cut: `(first sequence, sequences)` per
/// part, one part per GEMM thread ([`gemm_threads`]) when every part keeps at least
/// [`MIN_PART_ROWS`] rows, else the whole batch. Each part's products then run on one thread,
/// the parts side by side: on products of a few hundred rows per thread (the operands of a
/// part stay in its core's L2) that is faster than each product split over the threads
/// (docs/performance.md). Rows are computed independently, so the results do not change.
pub(crate) fn batch_parts(b: usize, l: usize) -> Vec<(usize, usize)> {
    let n = gemm_threads();
    if n < 2 || batch_split_off() || b < n || (b / n) * l < MIN_PART_ROWS {
        return vec![(0, b)];
    }
    (0..n)
        .map(|p| (b * p / n, b * (p + 1) / n - b * p / n))
        .collect()
}

/// Runs `f` on every item side by side (rayon), each call with its GEMMs on one thread: the
/// parts of a batch cut by [`batch_parts`]. The results come back in the items' order.
pub(crate) fn each_on_one_thread<I: Send, T: Send>(
    items: Vec<I>,
    f: impl Fn(I) -> T + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    items
        .into_par_iter()
        .map(|item| with_gemm_threads(1, || f(item)))
        .collect()
}

/// Runs `f` with this thread's GEMMs on `threads` threads (e.g. one part of a batch cut over
/// the threads). The products' results do not depend on it: rows and columns are split, never
/// the sum.
pub(crate) fn with_gemm_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            GEMM_THREADS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(GEMM_THREADS.with(|c| c.replace(Some(threads))));
    f()
}

/// Rows per rayon task for row-wise kernels on rows of `width` elements (≈ 16 K elements).
pub(crate) fn rows_per_task(width: usize) -> usize {
    (16384 / width.max(1)).max(1)
}
