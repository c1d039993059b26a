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
//! Only for weights that never change: a layer holds one [`WeightPacks`] per frozen linear map
//! and shares it only with copies of the same constant tensor.

use std::sync::OnceLock;

/// One kept copy (see the module doc).
#[derive(Debug, Default)]
pub struct PackCache(OnceLock<Packed>);

#[derive(Debug)]
enum Packed {
    /// A `k × n` bf16 operand in the tile unit's pair layout.
    Tiles { k: usize, n: usize, data: Vec<u16> },
    /// A `k × n` f32 operand, row-major.
    RowMajor { k: usize, n: usize, data: Vec<f32> },
}

impl PackCache {
    /// The kept tile layout of a `k × n` operand, made by `make` on the first call; `None` if
    /// this cache holds something else (a caller's mistake: the product then packs afresh).
    pub(crate) fn tiles(
        &self,
        k: usize,
        n: usize,
        make: impl FnOnce() -> Vec<u16>,
    ) -> Option<&[u16]> {
        match self.0.get_or_init(|| Packed::Tiles { k, n, data: make() }) {
            Packed::Tiles { k: pk, n: pn, data } if (*pk, *pn) == (k, n) => Some(data),
            _ => None,
        }
    }

    /// The kept row-major copy of a `k × n` operand, made by `make` on the first call; `None`
    /// if this cache holds something else.
    pub(crate) fn row_major(
        &self,
        k: usize,
        n: usize,
        make: impl FnOnce() -> Vec<f32>,
    ) -> Option<&[f32]> {
        match self
            .0
            .get_or_init(|| Packed::RowMajor { k, n, data: make() })
        {
            Packed::RowMajor { k: pk, n: pn, data } if (*pk, *pn) == (k, n) => Some(data),
            _ => None,
        }
    }

    fn bytes(&self) -> usize {
        match self.0.get() {
            Some(Packed::Tiles { data, .. }) => data.len() * 2,
            Some(Packed::RowMajor { data, .. }) => data.len() * 4,
            None => 0,
        }
    }
}

/// The kept copies of one frozen weight `W [n, k]`, one per product it takes part in: `wt`
/// for the forward (`x · Wᵀ`), `w` for the input gradient (`g · W`). Each is made the first
/// time that product runs, so an inference process makes only `wt`.
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
