//! Layer normalisation over the last dimension, one parallel pass forward and one backward;
//! gamma and beta gradients are computed only when they are tracked (trainable).

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::vmath::{add_layer_norm_row, layer_norm_grad_row, layer_norm_row, row_stats};
use super::{contiguous_slice, rows_per_task, with_f32};

/// `s = o + res` (written into `o`), then `y = LayerNorm(s)`, row by row in one parallel pass.
pub(crate) fn add_layer_norm_rows(
    o: &mut [f32],
    res: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
) {
    let h = gamma.len();
    let chunk = h * rows_per_task(h);
    o.par_chunks_mut(chunk)
        .zip(res.par_chunks(chunk).zip(y.par_chunks_mut(chunk)))
        .for_each(|(o, (res, y))| {
            for ((s, r), y) in o.chunks_mut(h).zip(res.chunks(h)).zip(y.chunks_mut(h)) {
                add_layer_norm_row(s, r, gamma, beta, eps, y);
            }
        });
}

/// The input gradient of LayerNorm with constant `gamma` at input `x`, for the output
/// gradient `g`, written into `dx`, row by row in one parallel pass.
pub(crate) fn layer_norm_input_grad_rows(
    x: &[f32],
    g: &[f32],
    gamma: &[f32],
    eps: f32,
    dx: &mut [f32],
) {
    let h = gamma.len();
    let chunk = h * rows_per_task(h);
    dx.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(dx, (x, g))| {
            for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                layer_norm_grad_row(x, g, gamma, eps, dx);
            }
        });
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(s1, l1)?;
        let gamma = contiguous_slice(s2, l2)?;
        let beta = contiguous_slice(s3, l3)?;
        let h = gamma.len();
        if h == 0 || beta.len() != h || l1.dims().last() != Some(&h) {
            bail!(
                "fused-layer-norm: shapes {:?}, {h}, {}",
                l1.dims(),
                beta.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        let chunk = h * rows_per_task(h);
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(h).zip(x.chunks(h)) {
                    layer_norm_row(x, gamma, beta, self.eps, y);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = gamma.elem_count();
        let want_params = gamma.track_op() || beta.track_op();
        let eps = self.eps;
        let (dx, dgb) = with_f32(x, |x| {
            with_f32(grad, |g| {
                with_f32(gamma, |gamma| {
                    let mut dx = vec![0f32; x.len()];
                    let chunk = h * rows_per_task(h);
                    let parts = dx
                        .par_chunks_mut(chunk)
                        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
                        .map(|(dx, (x, g))| {
                            let mut acc = if want_params {
                                vec![0f32; 2 * h]
                            } else {
                                Vec::new()
                            };
                            let mut gy = vec![0f32; h];
                            for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                                let (mean, rstd) = row_stats(x, eps);
                                let mut sa = 0f32;
                                let mut sb = 0f32;
                                for i in 0..h {
                                    let xh = (x[i] - mean) * rstd;
                                    let v = g[i] * gamma[i];
                                    gy[i] = v;
                                    sa += v;
                                    sb += v * xh;
                                }
                                let a = sa / h as f32;
                                let b = sb / h as f32;
                                for i in 0..h {
                                    let xh = (x[i] - mean) * rstd;
                                    dx[i] = rstd * (gy[i] - a - xh * b);
                                }
                                if want_params {
                                    let (dg, db) = acc.split_at_mut(h);
                                    for i in 0..h {
                                        let xh = (x[i] - mean) * rstd;
                                        dg[i] += g[i] * xh;
                                        db[i] += g[i];
                                    }
                                }
                            }
                            acc
                        })
                        .collect::<Vec<_>>();
                    let dgb = want_params.then(|| {
                        let mut tot = vec![0f32; 2 * h];
                        for p in parts {
                            tot.iter_mut().zip(p).for_each(|(t, p)| *t += p);
                        }
                        tot
                    });
                    (dx, dgb)
                })
            })
        })???;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        match dgb {
            Some(v) => {
                let dg = Tensor::from_vec(v[..h].to_vec(), gamma.shape(), gamma.device())?;
                let db = Tensor::from_vec(v[h..].to_vec(), beta.shape(), beta.device())?;
                Ok((
                    Some(dx),
                    gamma.track_op().then_some(dg),
                    beta.track_op().then_some(db),
                ))
            }
            None => Ok((Some(dx), None, None)),
        }
    }
}

/// Layer norm of `x [..., H]` with `gamma [H]`, `beta [H]`; differentiable in all three.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let gamma = gamma.contiguous()?;
    let beta = beta.contiguous()?;
    x.apply_op3(&gamma, &beta, LayerNormOp { eps: eps as f32 })
}
