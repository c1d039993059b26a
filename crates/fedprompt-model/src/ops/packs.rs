//! Copies of a frozen weight in the layout its products read fastest, made on first use and
//! then kept by the weight's layer.
//!
//! * bf16 weights on the AMX path: the tile unit's pair layout, of `Wᵀ` (the forward) and of
//!   `W` (the input gradient). Without it every product packs the weight afresh: 10% of a demo
//!   training step on the small model.
//! * f32 weights: `Wᵀ` stored row-major for the forward `x · Wᵀ`. The `gemm` crate reads a
//!   row-major right operand faster than the column view `Wᵀ` of `W [n, k]`: measured on the
//!   demo's shapes (320 rows, hidden 384), +8–21% on the projections from the hidden width and
//!   +56% on the feed-forward output (k = 1536) with two threads. The input gradient `g · W`
//!   reads `W` itself, already row-major.
//!
//! When a copy is kept, the first product that reads a weight in a given layout decides:
//!
//! * bf16 tile layouts are always kept: they are the size of the bf16 weight, and packing is
//!   our own kernel's per-call pass over the weight (a bf16 XLM-R-base inference cut into parts
//!   of 2368 rows packed every weight twice per layer). +0.15 GiB of peak memory on the bench's
//!   bf16 base-infer (0.45 → 0.61 GiB, still about 0.35x PyTorch's).
//! * f32 row-major copies only up to [`KEEP_MAX_ROWS`] rows (the demo's batches: a few
//!   hundred; the bench's small-model ones: 256 and 1024; the parts of a cut XLM-R-base
//!   training batch: 592). There packing the weight costs a large share of each product, and
//!   the copy is made and kept. Beyond (the bench's XLM-R-base inference parts: 2368 rows) the
//!   `gemm` crate's per-call packing is amortised within the product, so nothing is kept and
//!   each frozen matrix stays in memory once: keeping the copies there measured +0.34 GiB
//!   (base-infer peak memory 0.53 → 0.87 GiB, above the 0.6x-PyTorch budget) for a gain
//!   inside the noise.
//!
//! Only for weights that never change: a layer holds one [`WeightPacks`] per frozen linear map
//! and shares it only with copies of the same constant tensor.

use std::sync::OnceLock;

/// A weight whose first product has at most this many rows keeps its f32 row-major copy.
pub const KEEP_MAX_ROWS: usize = 1024;

/// One kept copy (see the module doc).
#[derive(Debug, Default)]
pub struct PackCache(OnceLock<Packed>);

#[derive(Debug)]
enum Packed {
    /// A `k × n` bf16 operand in the tile unit's pair layout.
    Tiles { k: usize, n: usize, data: Vec<u16> },
    /// A `k × n` f32 operand, row-major.
    RowMajor { k: usize, n: usize, data: Vec<f32> },
    /// The first product had many rows: nothing is kept.
    Declined,
}

impl PackCache {
    /// The kept copy, made on the first call by `make` if `keep` (else nothing is ever kept).
    fn get(&self, keep: bool, make: impl FnOnce() -> Packed) -> &Packed {
        self.0
            .get_or_init(|| if keep { make() } else { Packed::Declined })
    }

    /// The kept tile layout of a `k × n` bf16 operand, made on the first call whatever the
    /// product's rows: the layout is half the size of an f32 copy, and the AMX kernel's
    /// per-call packing (our own code, not amortised inside a library kernel) costs at every
    /// size.
    pub(crate) fn tiles(
        &self,
        k: usize,
        n: usize,
        make: impl FnOnce() -> Vec<u16>,
    ) -> Option<&[u16]> {
        match self.get(true, || Packed::Tiles { k, n, data: make() }) {
            Packed::Tiles { k: pk, n: pn, data } if (*pk, *pn) == (k, n) => Some(data),
            _ => None,
        }
    }

    /// The kept row-major copy of a `k × n` f32 operand in a product of `m` rows, as
    /// [`PackCache::tiles`].
    pub(crate) fn row_major(
        &self,
        m: usize,
        k: usize,
        n: usize,
        make: impl FnOnce() -> Vec<f32>,
    ) -> Option<&[f32]> {
        match self.get(m <= KEEP_MAX_ROWS, || Packed::RowMajor {
            k,
            n,
            data: make(),
        }) {
            Packed::RowMajor { k: pk, n: pn, data } if (*pk, *pn) == (k, n) => Some(data),
            _ => None,
        }
    }

    fn bytes(&self) -> usize {
        match self.0.get() {
            Some(Packed::Tiles { data, .. }) => data.len() * 2,
            Some(Packed::RowMajor { data, .. }) => data.len() * 4,
            Some(Packed::Declined) | None => 0,
        }
    }
}

/// The kept copies of one frozen weight `W [n, k]`, one per product it takes part in: `wt`
/// for the forward (`x · Wᵀ`), `w` for the input gradient (`g · W`). Each is made (or
/// declined) the first time that product runs, so an inference process makes only `wt`.
#[derive(Debug, Default)]
pub struct WeightPacks {
    /// The forward's operand `Wᵀ`.
    pub(crate) wt: PackCache,
    /// The input gradient's operand `W`.
    pub(crate) w: PackCache,
}

impl WeightPacks {
    /// Bytes held by the copies made so far.
    pub fn bytes(&self) -> usize {
        self.wt.bytes() + self.w.bytes()
    }
}
