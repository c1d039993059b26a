//! Products with frozen bf16 weights: `dst = [dst +] A · B` where `A` is f32 (activations or
//! gradients) and `B` is a bf16 weight, accumulated in f32.
//!
//! * On CPUs with AMX (`amx-bf16`, Intel Sapphire Rapids and later, enabled for the process
//!   with `arch_prctl(ARCH_REQ_XCOMP_PERM)`), `A` is rounded to bf16 (nearest even) and the
//!   product runs on the tile unit (`tdpbf16ps`: bf16 products, f32 sums).
//! * Elsewhere the bf16 weight is widened to f32 (exactly) and the product is the f32 GEMM of
//!   the `gemm` crate: the same result as an f32 model whose weights were rounded to bf16.
//!
//! Hand-written because no well-kept Rust crate offers a bf16 GEMM: `gemm` 0.19 has f16 but not
//! bf16 kernels, and std::arch's AMX intrinsics are unstable (so the tile instructions are
//! written with `asm!`). avx512_bf16's `vdpbf16ps` was measured too and is not used: on the
//! Sapphire Rapids this was written on it ran at half the f32 FMA rate (39 vs 80 GFLOP/s on
//! one core), so widening to f32 is the faster fallback there.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::packs::PackCache;
use super::{sgemm, Mat, SendConstPtr, SendPtr};

/// A strided bf16 matrix operand (`ptr[r * rs + c * cs]`, raw bf16 bits).
#[derive(Clone, Copy)]
pub(crate) struct BMat {
    pub ptr: *const u16,
    pub rs: isize,
    pub cs: isize,
}

/// Whether the AMX bf16 path is used (detected once; `FEDPROMPT_NO_AMX=1` turns it off, for
/// comparisons and for tests of the fallback).
pub fn amx_enabled() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        if std::env::var_os("FEDPROMPT_NO_AMX").is_some_and(|v| v != "0") {
            return false;
        }
        amx::detect_and_enable()
    })
}

/// `dst (m×n, row stride dst_rs) = [dst +] a (m×k, f32) · b (k×n, bf16)`. With `cache`, `b`
/// must be the same constant operand (same data, strides and shape) at every call that passes
/// that cache: its packed form is made once and reused.
///
/// # Safety
/// Every element addressed by the strides must lie inside live allocations, and no other
/// thread may write the destination block.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32_bf16(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: BMat,
    cache: Option<&PackCache>,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if amx_enabled() {
        amx::gemm(m, n, k, dst, dst_rs, accumulate, a, b, cache, threads);
        return;
    }
    // Fallback: widen B to a contiguous f32 k×n matrix (exact) and run the f32 GEMM. With a
    // cache, a weight whose first product has few rows keeps its widened copy, as an f32
    // weight keeps its row-major copy (else every product makes a pass over the whole weight).
    let widen = move || {
        let mut wide = vec![0f32; k * n];
        let bp = SendConstPtr(b.ptr as *const f32);
        wide.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            let p = bp.get() as *const u16;
            for (c, w) in row.iter_mut().enumerate() {
                // SAFETY: (r, c) with r < k, c < n lies inside `b` (the caller's contract).
                *w = bf16_to_f32(unsafe { *p.offset(r as isize * b.rs + c as isize * b.cs) });
            }
        });
        wide
    };
    let fresh;
    let wide: &[f32] = match cache.and_then(|c| c.row_major(m, k, n, widen)) {
        Some(w) => w,
        None => {
            fresh = widen();
            &fresh
        }
    };
    sgemm(
        m,
        n,
        k,
        dst,
        dst_rs,
        accumulate,
        a,
        Mat {
            ptr: wide.as_ptr(),
            rs: n as isize,
            cs: 1,
        },
        threads,
    );
}

/// bf16 bits → f32 (exact).
#[inline]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 → bf16 bits, round to nearest even (NaN stays NaN).
#[inline]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::*;
    use std::arch::asm;

    /// Rows of a tile and the bf16 elements of a tile row (64 bytes).
    const TR: usize = 16;
    const TK: usize = 32;
    /// Bytes of packed A (bf16 rows) swept by all column pairs before the next rows: about
    /// half of a Sapphire Rapids core's 2 MiB L2.
    const A_BLOCK_BYTES: usize = 1 << 20;

    /// CPUID says AMX-TILE and AMX-BF16, and the kernel grants the tile data state.
    pub(super) fn detect_and_enable() -> bool {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let amx_bf16 = leaf7.edx & (1 << 22) != 0;
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        let avx512 = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl");
        if !(amx_bf16 && amx_tile && avx512) {
            return false;
        }
        request_tile_permission()
    }

    #[cfg(target_os = "linux")]
    fn request_tile_permission() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let r: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only asks the kernel to allow
        // the tile state for this process; it reads and writes no memory of ours.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => r,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        r == 0
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_permission() -> bool {
        false
    }

    /// The 64-byte tile configuration (palette 1): eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    impl TileConfig {
        fn all_16x64() -> Self {
            let mut c = TileConfig {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            };
            for t in 0..8 {
                c.colsb[t] = 64;
                c.rows[t] = TR as u8;
            }
            c
        }
    }

    /// `a` (m×k f32, strided) as bf16 in tile order, zero-padded to `m_pad × k_pad`: per block
    /// of 16 rows, its `k_pad / 32` tiles one after the other, each 16 rows × 32 k contiguous
    /// (1 KiB), so that a tile load reads one contiguous KiB instead of 16 rows a whole packed
    /// row apart.
    fn pack_a(m: usize, k: usize, m_pad: usize, k_pad: usize, a: Mat) -> Vec<u16> {
        let mut out = vec![0u16; m_pad * k_pad];
        let ap = SendConstPtr(a.ptr);
        out.par_chunks_mut(TR * k_pad)
            .take(m.div_ceil(TR))
            .enumerate()
            .for_each(|(tb, block)| {
                let base = ap.get();
                for ri in 0..TR.min(m - tb * TR) {
                    let r = tb * TR + ri;
                    // SAFETY: row r < m, columns < k lie inside `a` (the caller's contract).
                    unsafe {
                        if a.cs == 1 {
                            let src = std::slice::from_raw_parts(base.offset(r as isize * a.rs), k);
                            convert_row_to_tiles(src, &mut block[ri * TK..]);
                        } else {
                            for c in 0..k {
                                block[(c / TK) * TR * TK + ri * TK + c % TK] = f32_to_bf16(
                                    *base.offset(r as isize * a.rs + c as isize * a.cs),
                                );
                            }
                        }
                    }
                }
            });
        out
    }

    /// f32 → bf16 (nearest even) of one row of A into its tile slots: elements `32·kb ..
    /// 32·kb + 32` go to `dst[kb · 512 ..]` (a tile is 16 rows of 32). With avx512_bf16 when
    /// present, 16 at a time.
    fn convert_row_to_tiles(src: &[f32], dst: &mut [u16]) {
        if std::is_x86_feature_detected!("avx512bf16") {
            // SAFETY: the feature was just detected.
            unsafe { convert_row_to_tiles_avx512(src, dst) }
        } else {
            for (kb, chunk) in src.chunks(TK).enumerate() {
                let o = kb * TR * TK;
                dst[o..o + chunk.len()]
                    .iter_mut()
                    .zip(chunk)
                    .for_each(|(d, &s)| *d = f32_to_bf16(s));
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn convert_row_to_tiles_avx512(src: &[f32], dst: &mut [u16]) {
        use std::arch::x86_64::*;
        for (kb, chunk) in src.chunks(TK).enumerate() {
            let d = &mut dst[kb * TR * TK..kb * TR * TK + chunk.len()];
            let mut i = 0;
            while i + 16 <= chunk.len() {
                let v = _mm512_loadu_ps(chunk.as_ptr().add(i));
                let h: __m256bh = _mm512_cvtneps_pbh(v);
                _mm256_storeu_si256(
                    d.as_mut_ptr().add(i).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(h),
                );
                i += 16;
            }
            for j in i..chunk.len() {
                d[j] = f32_to_bf16(chunk[j]);
            }
        }
    }

    /// `b` (k×n bf16, strided) in the tile unit's pair layout: per block of 16 columns,
    /// `k_pad / 2` rows of 16 (even, odd) pairs of k; zero-padded to `n_pad` columns.
    ///
    /// The two layouts of a frozen weight `W [n, k]` have their own loops: `Wᵀ` (the forward,
    /// `rs == 1`: each column is a contiguous row of `W`, copied pair by pair) and `W` (the
    /// input gradient, `cs == 1`: two rows of `W` interleaved); other strides go element by
    /// element.
    fn pack_b(k: usize, n: usize, k_pad: usize, n_pad: usize, b: BMat) -> Vec<u16> {
        let block = k_pad * TR; // elements per 16-column block
        let mut out = vec![0u16; n_pad / TR * block];
        let bp = SendConstPtr(b.ptr as *const f32);
        out.par_chunks_mut(block).enumerate().for_each(|(jb, blk)| {
            let p = bp.get() as *const u16;
            let j0 = jb * TR;
            let cols = (n - j0.min(n)).min(TR);
            if cols == 0 {
                return; // padding only
            }
            // SAFETY: every element read, (kk, j) with kk < k and j < n, lies inside `b` (the
            // caller's contract).
            unsafe {
                if b.rs == 1 && k.is_multiple_of(2) {
                    pack_wt_block(p.offset(j0 as isize * b.cs), b.cs as usize, k, cols, blk);
                } else if b.cs == 1 {
                    pack_w_block(p.add(j0), b.rs as usize, k, cols, blk);
                } else if b.rs == 1 {
                    for jj in 0..cols {
                        let src =
                            std::slice::from_raw_parts(p.offset((j0 + jj) as isize * b.cs), k);
                        for (i, pair) in src.chunks(2).enumerate() {
                            let o = i * 2 * TR + jj * 2;
                            blk[o] = pair[0];
                            if let Some(&v) = pair.get(1) {
                                blk[o + 1] = v;
                            }
                        }
                    }
                } else {
                    for jj in 0..cols {
                        let j = (j0 + jj) as isize;
                        for kk in 0..k {
                            let v = *p.offset(kk as isize * b.rs + j * b.cs);
                            blk[(kk / 2) * 2 * TR + jj * 2 + (kk & 1)] = v;
                        }
                    }
                }
            }
        });
        out
    }

    /// One 16-column block of `Wᵀ` for `W` rows `w` (row stride `ws` elements, `k` even): pair
    /// row `i` holds the (2i, 2i+1) element pairs of the `cols` rows, one 32-bit gather each.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_wt_block(w: *const u16, ws: usize, k: usize, cols: usize, blk: &mut [u16]) {
        use std::arch::x86_64::*;
        let idx: [i32; 16] = std::array::from_fn(|jj| (jj * ws * 2) as i32);
        let vidx = _mm512_loadu_si512(idx.as_ptr().cast());
        let mask: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u16 << cols) - 1
        };
        let out = blk.as_mut_ptr() as *mut u32;
        for i in 0..k / 2 {
            let v = _mm512_mask_i32gather_epi32::<1>(
                _mm512_setzero_si512(),
                mask,
                vidx,
                w.add(2 * i).cast(),
            );
            _mm512_storeu_si512(out.add(i * TR).cast(), v);
        }
    }

    /// One 16-column block of `W` itself (rows `w`, row stride `ws`, `k` rows): pair row `i`
    /// interleaves rows `2i` and `2i + 1` (the odd row zero past `k`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn pack_w_block(w: *const u16, ws: usize, k: usize, cols: usize, blk: &mut [u16]) {
        use std::arch::x86_64::*;
        let mask: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u16 << cols) - 1
        };
        let out = blk.as_mut_ptr() as *mut u32;
        for i in 0..k.div_ceil(2) {
            let even = _mm256_maskz_loadu_epi16(mask, w.add(2 * i * ws).cast());
            let odd = if 2 * i + 1 < k {
                _mm256_maskz_loadu_epi16(mask, w.add((2 * i + 1) * ws).cast())
            } else {
                _mm256_setzero_si256()
            };
            let v = _mm512_or_si512(
                _mm512_cvtepu16_epi32(even),
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(odd)),
            );
            _mm512_storeu_si512(out.add(i * TR).cast(), v);
        }
    }

    /// See [`super::gemm_f32_bf16`]; requires [`detect_and_enable`] to have returned true.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        a: Mat,
        b: BMat,
        cache: Option<&PackCache>,
        threads: usize,
    ) {
        let m_pad = m.div_ceil(2 * TR) * 2 * TR;
        let n_pad = n.div_ceil(2 * TR) * 2 * TR;
        let k_pad = k.div_ceil(TK) * TK;
        let ap = pack_a(m, k, m_pad, k_pad, a);
        let fresh;
        let bp: &[u16] = match cache.and_then(|c| c.tiles(k, n, || pack_b(k, n, k_pad, n_pad, b))) {
            Some(p) => p,
            None => {
                fresh = pack_b(k, n, k_pad, n_pad, b);
                &fresh
            }
        };
        let col_pairs = n_pad / (2 * TR);
        let parts = threads.clamp(1, col_pairs);
        let per = col_pairs.div_ceil(parts);
        let dstp = SendPtr(dst);
        let (app, bpp) = (
            SendConstPtr(ap.as_ptr() as *const f32),
            SendConstPtr(bp.as_ptr() as *const f32),
        );
        (0..parts).into_par_iter().for_each(|t| {
            let lo = t * per;
            let hi = ((t + 1) * per).min(col_pairs);
            if lo < hi {
                // SAFETY: the packed buffers outlive this call; each task writes its own
                // columns of dst.
                unsafe {
                    tiles(
                        m,
                        n,
                        m_pad,
                        k_pad,
                        lo..hi,
                        app.get() as *const u16,
                        bpp.get() as *const u16,
                        dstp.get(),
                        dst_rs,
                        accumulate,
                    )
                }
            }
        });
    }

    /// One task's columns: pairs of 16-column blocks `cols`, all rows, 32×32 at a time with
    /// four accumulator tiles (tmm0–3), two A tiles (tmm4–5) and two B tiles (tmm6–7).
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles(
        m: usize,
        n: usize,
        m_pad: usize,
        k_pad: usize,
        cols: std::ops::Range<usize>,
        ap: *const u16,
        bp: *const u16,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
    ) {
        let cfg = TileConfig::all_16x64();
        let mut out = Out([0f32; 4 * TR * TR]);
        let a_stride = TK * 2; // bytes per row of a packed A tile
        let b_stride = 2 * TR * 2; // bytes per packed B row (16 pairs)
        let b_block = k_pad * TR; // elements per 16-column block
        asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
        // Rows in macro blocks of about A_BLOCK_BYTES of packed A, so that the block stays in
        // L2 while every column pair of this task sweeps it (without blocking, all of A was
        // streamed from L3 or memory once per column pair).
        let mc = (A_BLOCK_BYTES / (k_pad * 2)).max(2 * TR) / (2 * TR) * (2 * TR);
        for mb in (0..m_pad).step_by(mc) {
            for cp in cols.clone() {
                let b0 = bp.add(2 * cp * b_block);
                let b1 = b0.add(b_block);
                for rb in (mb..(mb + mc).min(m_pad)).step_by(2 * TR) {
                    // The two 16-row blocks of A, each `k_pad / 32` contiguous tiles.
                    let a0 = ap.add(rb * k_pad);
                    let a1 = a0.add(TR * k_pad);
                    let rows = (m - rb.min(m)).min(2 * TR);
                    let c0 = cp * 2 * TR;
                    let ncols = (n - c0.min(n)).min(2 * TR);
                    // A whole 32×32 block of dst is loaded into (or stored from) the
                    // accumulator tiles directly; an edge block goes through `out`. Either
                    // way the sum starts from dst's value, so a row's result does not depend
                    // on where it lies in the batch.
                    let direct = rows == 2 * TR && ncols == 2 * TR;
                    let d = dst.add(rb * dst_rs + c0);
                    if direct && accumulate {
                        load_accumulators(d, dst_rs);
                    } else if accumulate {
                        for r in 0..rows {
                            let src = std::slice::from_raw_parts(d.add(r * dst_rs), ncols);
                            out.0[r * 2 * TR..r * 2 * TR + ncols].copy_from_slice(src);
                        }
                        load_accumulators(out.0.as_ptr(), 2 * TR);
                    } else {
                        asm!(
                            "tilezero tmm0",
                            "tilezero tmm1",
                            "tilezero tmm2",
                            "tilezero tmm3",
                            options(nostack, nomem)
                        );
                    }
                    for kb in 0..k_pad / TK {
                        // A tiles: 16 rows × 32 k; B tiles: 16 pair-rows (32 k) × 16 columns.
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}]",
                            "tileloadd tmm5, [{a1} + {sa}]",
                            "tileloadd tmm6, [{b0} + {sb}]",
                            "tileloadd tmm7, [{b1} + {sb}]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(kb * TR * TK),
                            a1 = in(reg) a1.add(kb * TR * TK),
                            b0 = in(reg) b0.add(kb * TK * TR),
                            b1 = in(reg) b1.add(kb * TK * TR),
                            sa = in(reg) a_stride,
                            sb = in(reg) b_stride,
                            options(nostack, readonly),
                        );
                    }
                    if direct {
                        store_accumulators(d, dst_rs);
                        continue;
                    }
                    // out: a 32×32 f32 block, row stride 32 floats.
                    store_accumulators(out.0.as_mut_ptr(), 2 * TR);
                    for r in 0..rows {
                        let d = std::slice::from_raw_parts_mut(d.add(r * dst_rs), ncols);
                        d.copy_from_slice(&out.0[r * 2 * TR..r * 2 * TR + ncols]);
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    #[repr(C, align(64))]
    struct Out([f32; 4 * TR * TR]);

    /// Loads the 32×32 f32 block at `p` (row stride `rs` floats) into the accumulator tiles
    /// tmm0–3 (top left, top right, bottom left, bottom right).
    #[inline(always)]
    unsafe fn load_accumulators(p: *const f32, rs: usize) {
        asm!(
            "tileloadd tmm0, [{p0} + {s}]",
            "tileloadd tmm1, [{p1} + {s}]",
            "tileloadd tmm2, [{p2} + {s}]",
            "tileloadd tmm3, [{p3} + {s}]",
            p0 = in(reg) p,
            p1 = in(reg) p.add(TR),
            p2 = in(reg) p.add(TR * rs),
            p3 = in(reg) p.add(TR * rs + TR),
            s = in(reg) rs * 4,
            options(nostack, readonly),
        );
    }

    /// Stores the accumulator tiles tmm0–3 as the 32×32 f32 block at `p` (row stride `rs`
    /// floats), in [`load_accumulators`]' order.
    #[inline(always)]
    unsafe fn store_accumulators(p: *mut f32, rs: usize) {
        asm!(
            "tilestored [{p0} + {s}], tmm0",
            "tilestored [{p1} + {s}], tmm1",
            "tilestored [{p2} + {s}], tmm2",
            "tilestored [{p3} + {s}], tmm3",
            p0 = in(reg) p,
            p1 = in(reg) p.add(TR),
            p2 = in(reg) p.add(TR * rs),
            p3 = in(reg) p.add(TR * rs + TR),
            s = in(reg) rs * 4,
            options(nostack),
        );
    }
}
