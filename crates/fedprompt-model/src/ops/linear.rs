//! A frozen linear layer `y = act(x · Wᵀ + b)` whose backward returns only the input gradient
//! `(dy ⊙ act'(u)) · W`: the weight and bias are constants, so the two GEMMs and the reduction
//! candle's stock backward spends on their gradients are skipped.

use std::sync::{Arc, OnceLock};

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::packs::WeightPacks;
use super::{gemm_threads, gemm_weight, rows_per_task, with_f32, with_weight, Mat};

/// An activation fused into the frozen linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedAct {
    /// None: `y = x · Wᵀ + b`.
    Identity,
    /// Exact (erf) GELU.
    GeluErf,
}

struct FrozenLinearOp {
    /// `[out, in]`, contiguous.
    weight: Tensor,
    /// `[out]`, contiguous.
    bias: Option<Tensor>,
    /// The weight's packed copies, kept by its layer.
    packs: Option<Arc<WeightPacks>>,
    act: FusedAct,
    /// Whether to keep the pre-activation for the backward of a fused activation.
    save: bool,
    saved: OnceLock<Vec<f32>>,
}

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // [..., k] contiguous, or any 2-D layout (rows and columns strided).
        let dims = layout.dims();
        let Some(&k) = dims.last() else {
            bail!("frozen-linear: a scalar input")
        };
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        let (rs, cs) = if layout.is_contiguous() {
            (k, 1)
        } else if dims.len() == 2 {
            (layout.stride()[0], layout.stride()[1])
        } else {
            bail!("frozen-linear: a strided input of rank {}", dims.len())
        };
        let (n, wk) = self.weight.dims2()?;
        if wk != k {
            bail!("frozen-linear: input width {k}, weight {n}×{wk}");
        }
        let x = &storage.as_slice::<f32>()?[layout.start_offset()..];
        let mut y = vec![0f32; rows * n];
        if let Some(b) = &self.bias {
            with_f32(b, |b| {
                y.par_chunks_mut(n * rows_per_task(n))
                    .for_each(|c| c.chunks_mut(n).for_each(|r| r.copy_from_slice(b)))
            })?;
        }
        with_weight(&self.weight, |w, len| {
            assert_eq!(len, n * k, "frozen-linear: weight size");
            if rows > 0 && k > 0 {
                let last = (rows - 1) * rs + (k - 1) * cs;
                assert!(last < x.len(), "frozen-linear: input out of bounds");
            }
            // SAFETY: x spans its layout (checked above), w is [n, k] contiguous, y is rows×n.
            unsafe {
                gemm_weight(
                    rows,
                    n,
                    k,
                    y.as_mut_ptr(),
                    n,
                    self.bias.is_some(),
                    Mat {
                        ptr: x.as_ptr(),
                        rs: rs as isize,
                        cs: cs as isize,
                    },
                    // Wᵀ: element (kk, j) = w[j * k + kk].
                    w,
                    1,
                    k as isize,
                    self.packs.as_deref().map(|p| &p.wt),
                    gemm_threads(),
                )
            }
        })?;
        if self.act == FusedAct::GeluErf {
            let mut out = vec![0f32; y.len()];
            let chunk = n * rows_per_task(n);
            out.par_chunks_mut(chunk)
                .zip(y.par_chunks(chunk))
                .for_each(|(o, u)| super::vmath::gelu_into(u, o));
            if self.save {
                let _ = self.saved.set(y);
            }
            y = out;
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank ≥ 1") = n;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, k) = self.weight.dims2()?;
        let rows = arg.elem_count() / k.max(1);
        let mut dx = vec![0f32; rows * k];
        // dx = g · W
        let input_grad = |g: &[f32], dx: &mut [f32]| {
            with_weight(&self.weight, |w, len| {
                assert_eq!(len, n * k, "frozen-linear: weight size");
                assert_eq!(g.len(), rows * n, "frozen-linear: gradient shape");
                // SAFETY: g is rows×n, w is n×k, dx is rows×k, all contiguous.
                unsafe {
                    gemm_weight(
                        rows,
                        k,
                        n,
                        dx.as_mut_ptr(),
                        k,
                        false,
                        Mat {
                            ptr: g.as_ptr(),
                            rs: n as isize,
                            cs: 1,
                        },
                        w,
                        k as isize,
                        1,
                        self.packs.as_deref().map(|p| &p.w),
                        gemm_threads(),
                    )
                }
            })
        };
        match self.act {
            FusedAct::Identity => with_f32(grad, |g| input_grad(g, &mut dx))??,
            FusedAct::GeluErf => {
                let Some(u) = self.saved.get() else {
                    bail!("frozen-linear: the pre-activation was not kept")
                };
                let gu = with_f32(grad, |g| {
                    let mut out = vec![0f32; u.len()];
                    let chunk = n * rows_per_task(n);
                    out.par_chunks_mut(chunk)
                        .zip(u.par_chunks(chunk).zip(g.par_chunks(chunk)))
                        .for_each(|(o, (u, g))| super::vmath::gelu_grad_mul_into(u, g, o));
                    out
                })?;
                input_grad(&gu, &mut dx)?
            }
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `act(x · Wᵀ + b)` for `x [..., in]`, `weight [out, in]` and `bias [out]` treated as
/// constants: the backward yields the gradient of `x` only.
pub fn frozen_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: FusedAct,
) -> Result<Tensor> {
    frozen_linear_packed(x, weight, None, bias, act)
}

/// [`frozen_linear`] with the weight's packed copies (see [`WeightPacks`]), which must belong
/// to this very constant weight.
pub fn frozen_linear_packed(
    x: &Tensor,
    weight: &Tensor,
    packs: Option<&Arc<WeightPacks>>,
    bias: Option<&Tensor>,
    act: FusedAct,
) -> Result<Tensor> {
    let op = FrozenLinearOp {
        weight: weight.contiguous()?,
        bias: bias.map(|b| b.contiguous()).transpose()?,
        packs: packs.cloned(),
        act,
        save: act != FusedAct::Identity && x.track_op(),
        saved: OnceLock::new(),
    };
    if x.is_contiguous() || x.rank() == 2 {
        x.apply_op1(op)
    } else {
        x.contiguous()?.apply_op1(op)
    }
}
