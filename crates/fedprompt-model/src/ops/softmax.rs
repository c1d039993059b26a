//! Softmax over the last dimension in one parallel pass, with a backward
//! `dx = p ⊙ (g − Σ g ⊙ p)` in one more.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_slice, rows_per_task, with_f32};

/// In-place softmax of one row.
#[inline]
pub(crate) fn softmax_row(r: &mut [f32]) {
    let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    r.iter_mut().for_each(|v| *v -= max);
    super::vmath::exp_in_place(r);
    let inv = 1.0 / super::vmath::sum(r);
    r.iter_mut().for_each(|v| *v *= inv);
}

/// `dx = p ⊙ (g − Σ g ⊙ p)` for one row, written into `dx`.
#[inline]
pub(crate) fn softmax_row_bwd(p: &[f32], g: &[f32], dx: &mut [f32]) {
    let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
    for ((d, &p), &g) in dx.iter_mut().zip(p).zip(g) {
        *d = p * (g - dot);
    }
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(storage, layout)?;
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut y = x.to_vec();
        y.par_chunks_mut(n * rows_per_task(n))
            .for_each(|c| c.chunks_mut(n).for_each(softmax_row));
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = arg.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_f32(res, |p| {
            with_f32(grad, |g| {
                let mut dx = vec![0f32; p.len()];
                let chunk = n * rows_per_task(n);
                dx.par_chunks_mut(chunk)
                    .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
                    .for_each(|(dx, (p, g))| {
                        for ((dx, p), g) in dx.chunks_mut(n).zip(p.chunks(n)).zip(g.chunks(n)) {
                            softmax_row_bwd(p, g, dx);
                        }
                    });
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Softmax over the last dimension of an f32 CPU tensor, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}
