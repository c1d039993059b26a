//! A whole frozen transformer layer (post-LN, erf GELU) as one op: the packed Q/K/V
//! projection, the attention core, the output projection, dropout, residual and layer norm,
//! the feed-forward block, dropout, residual and layer norm.
//!
//! Why one op: a frozen layer's backward needs only its input gradient, so of all the
//! activations only five are needed — the packed projection and the attention probabilities
//! (attention backward), the two pre-norm sums (layer-norm backward) and the feed-forward
//! pre-activation (GELU backward). Composed of separate ops, candle's graph would keep every
//! intermediate alive (each op's inputs) until the loss is dropped; here the op keeps exactly
//! those five and frees each as soon as its backward has used it. It also runs bias, dropout,
//! residual and norm as one pass each instead of separate ones, and records one graph node per
//! layer instead of about twelve.
//!
//! Numerics are those of the composed ops (the same kernels, the same dropout masks from the
//! same seeds); `tests/ops.rs` checks values and input gradients against the composed layer.
//!
//! A large enough batch is cut into one part per thread (`ops::batch_parts`): each part runs
//! the whole layer, forward and backward, with its products on one thread, the parts side by
//! side. Dropout masks are drawn at each element's position in the whole batch, so the numbers
//! are the same bit for bit (`tests/parity.rs`).

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{AttentionOp, AttnDropout};
use super::dropout::dropout_range_in_place;
use super::norm::{add_layer_norm_rows, layer_norm_input_grad_rows};
use super::packs::{PackCache, WeightPacks};
use super::vmath::{gelu_grad_mul_in_place, gelu_in_place, gelu_into};
use super::{
    batch_parts, contiguous_slice, each_on_one_thread, gemm_threads, gemm_weight, rows_per_task,
    with_weight, Mat,
};

/// The frozen parameters of one layer (weights `[out, in]`, f32 or bf16; the rest f32).
#[derive(Clone, Debug)]
pub struct FrozenLayerParams {
    /// Query, key and value packed, `[3H, H]`.
    pub qkv_w: Tensor,
    /// `[3H]`.
    pub qkv_b: Tensor,
    /// Attention output projection `[H, H]`.
    pub out_w: Tensor,
    /// `[H]`.
    pub out_b: Tensor,
    /// Attention layer norm gamma `[H]`.
    pub ln1_g: Tensor,
    /// Attention layer norm beta `[H]`.
    pub ln1_b: Tensor,
    /// Its epsilon.
    pub ln1_eps: f64,
    /// Feed-forward in `[F, H]`.
    pub inter_w: Tensor,
    /// `[F]`.
    pub inter_b: Tensor,
    /// Feed-forward out `[H, F]`.
    pub output_w: Tensor,
    /// `[H]`.
    pub output_b: Tensor,
    /// Output layer norm gamma `[H]`.
    pub ln2_g: Tensor,
    /// Output layer norm beta `[H]`.
    pub ln2_b: Tensor,
    /// Its epsilon.
    pub ln2_eps: f64,
    /// Attention heads.
    pub heads: usize,
    /// The packed copies of the four weights, in the order above (qkv, out, inter, output);
    /// `None` packs on every product.
    pub packs: Option<[Arc<WeightPacks>; 4]>,
}

/// Indices of [`FrozenLayerParams::packs`].
pub(super) const QKV: usize = 0;
pub(super) const OUT: usize = 1;
pub(super) const INTER: usize = 2;
pub(super) const OUTPUT: usize = 3;

impl FrozenLayerParams {
    /// The kept `Wᵀ` (forward) pack of weight `i`.
    pub(super) fn wt(&self, i: usize) -> Option<&PackCache> {
        self.packs.as_ref().map(|p| &p[i].wt)
    }

    /// The kept `W` (input gradient) pack of weight `i`.
    pub(super) fn w(&self, i: usize) -> Option<&PackCache> {
        self.packs.as_ref().map(|p| &p[i].w)
    }
}

/// Dropout of one layer in training: the attention probabilities', and the seeds of the two
/// hidden dropouts (after the attention output and after the feed-forward block).
#[derive(Clone, Copy, Debug)]
pub struct LayerDropout {
    /// Dropout of the attention probabilities.
    pub attn: Option<AttnDropout>,
    /// Hidden dropout after the attention output projection: `(p, seed)`.
    pub hidden1: Option<(f32, u64)>,
    /// Hidden dropout after the feed-forward block: `(p, seed)`.
    pub hidden2: Option<(f32, u64)>,
}

/// What the backward needs, freed as it goes.
struct Saved {
    qkv: Vec<f32>,
    probs: Vec<f32>,
    s1: Vec<f32>,
    s2: Vec<f32>,
    u: Vec<f32>,
}

/// Small f32 parameters, read once per op.
pub(super) struct Vectors {
    pub(super) qkv_b: Vec<f32>,
    pub(super) out_b: Vec<f32>,
    pub(super) ln1_g: Vec<f32>,
    pub(super) ln1_b: Vec<f32>,
    pub(super) inter_b: Vec<f32>,
    pub(super) output_b: Vec<f32>,
    pub(super) ln2_g: Vec<f32>,
    pub(super) ln2_b: Vec<f32>,
}

impl Vectors {
    /// The small parameters of `params` as plain vectors.
    pub(super) fn of(params: &FrozenLayerParams) -> Result<Self> {
        let vec = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        Ok(Vectors {
            qkv_b: vec(&params.qkv_b)?,
            out_b: vec(&params.out_b)?,
            ln1_g: vec(&params.ln1_g)?,
            ln1_b: vec(&params.ln1_b)?,
            inter_b: vec(&params.inter_b)?,
            output_b: vec(&params.output_b)?,
            ln2_g: vec(&params.ln2_g)?,
            ln2_b: vec(&params.ln2_b)?,
        })
    }
}

struct FrozenLayerOp {
    p: FrozenLayerParams,
    v: Vectors,
    attn: AttentionOp,
    drop: LayerDropout,
    save: bool,
    /// Per part of the batch: its first sequence, its sequences, what its backward needs.
    saved: Mutex<Option<Vec<(usize, usize, Saved)>>>,
}

/// `rows` copies of `bias`, the start of a GEMM that accumulates onto it.
///
/// Written once: the buffer is not zeroed first (on reused heap memory that zeroing was a
/// separate pass over the whole output, 5–9% of a bf16 XLM-R-base inference step).
pub(super) fn bias_rows(bias: &[f32], rows: usize) -> Vec<f32> {
    let n = bias.len();
    let mut y: Vec<f32> = Vec::with_capacity(rows * n);
    if n == 0 {
        return y;
    }
    y.spare_capacity_mut()[..rows * n]
        .par_chunks_mut(n * rows_per_task(n))
        .for_each(|c| {
            c.chunks_mut(n).for_each(|r| {
                for (d, &b) in r.iter_mut().zip(bias) {
                    d.write(b);
                }
            })
        });
    // SAFETY: every one of the rows · n elements was written just above.
    unsafe { y.set_len(rows * n) };
    y
}

/// `dst (rows×n) [+]= a (rows×k, contiguous) · Wᵀ` for a weight `w [n, k]`.
pub(super) fn mul_wt(
    a: &[f32],
    rows: usize,
    k: usize,
    w: &Tensor,
    cache: Option<&PackCache>,
    dst: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let n = dst.len() / rows.max(1);
    with_weight(w, |wp, len| {
        assert!(len == n * k && a.len() == rows * k && dst.len() == rows * n);
        // SAFETY: all three buffers have the asserted sizes and are contiguous.
        unsafe {
            gemm_weight(
                rows,
                n,
                k,
                dst.as_mut_ptr(),
                n,
                accumulate,
                Mat {
                    ptr: a.as_ptr(),
                    rs: k as isize,
                    cs: 1,
                },
                wp,
                1,
                k as isize,
                cache,
                gemm_threads(),
            )
        }
    })
}

/// The tail of a post-LN sublayer: `s = bias + input · Wᵀ` (the input freed as soon as it is
/// used), `dropout(s)`, `s += res`, then `y = LayerNorm(s)`. Returns `(s, y)`: the pre-norm sum
/// is what the norm's backward needs.
#[allow(clippy::too_many_arguments)]
pub(super) fn project_residual_norm(
    input: Vec<f32>,
    rows: usize,
    k: usize,
    w: &Tensor,
    cache: Option<&PackCache>,
    bias: &[f32],
    dropout: impl FnOnce(&mut [f32]),
    res: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut s = bias_rows(bias, rows);
    mul_wt(&input, rows, k, w, cache, &mut s, true)?;
    drop(input);
    dropout(&mut s);
    let mut y = vec![0f32; s.len()];
    add_layer_norm_rows(&mut s, res, gamma, beta, eps as f32, &mut y);
    Ok((s, y))
}

/// `dst (rows×k) [+]= g (rows×n, contiguous) · W` for a weight `w [n, k]` (an input gradient).
pub(super) fn mul_w(
    g: &[f32],
    rows: usize,
    n: usize,
    w: &Tensor,
    cache: Option<&PackCache>,
    dst: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let k = dst.len() / rows.max(1);
    with_weight(w, |wp, len| {
        assert!(len == n * k && g.len() == rows * n && dst.len() == rows * k);
        // SAFETY: all three buffers have the asserted sizes and are contiguous.
        unsafe {
            gemm_weight(
                rows,
                k,
                n,
                dst.as_mut_ptr(),
                k,
                accumulate,
                Mat {
                    ptr: g.as_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
                wp,
                k as isize,
                1,
                cache,
                gemm_threads(),
            )
        }
    })
}

impl FrozenLayerOp {
    fn dims(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
        let (b, l, h) = match dims {
            [b, l, h] => (*b, *l, *h),
            d => bail!("frozen-layer: expected [B, L, H], got {d:?}"),
        };
        let f = self.v.inter_b.len();
        let heads = self.p.heads;
        if heads == 0 || h % heads != 0 || self.v.qkv_b.len() != 3 * h || self.v.ln1_g.len() != h {
            bail!("frozen-layer: hidden {h}, heads {heads}, parameters of another width");
        }
        Ok((b, l, h, f, h / heads))
    }

    /// The forward of the batch `x [b, l, h]`, cut into parts by [`batch_parts`] (each part's
    /// products on one thread, the parts side by side); keeps what the backward needs when
    /// `save`.
    #[allow(clippy::too_many_arguments)]
    fn run_forward(
        &self,
        x: &[f32],
        b: usize,
        l: usize,
        h: usize,
        f: usize,
        d: usize,
    ) -> Result<Vec<f32>> {
        let parts = batch_parts(b, l);
        let keep = |saved: Vec<(usize, usize, Saved)>| {
            if self.save {
                *self.saved.lock().expect("frozen-layer: poisoned") = Some(saved);
            }
        };
        if parts.len() == 1 {
            let (y, saved) = self.run_forward_part(x, 0, b, l, h, f, d)?;
            keep(saved.map(|s| (0, b, s)).into_iter().collect());
            return Ok(y);
        }
        let outs = each_on_one_thread(parts, |(first, n)| {
            let xp = &x[first * l * h..(first + n) * l * h];
            let (y, saved) = self.run_forward_part(xp, first, n, l, h, f, d)?;
            Ok::<_, candle_core::Error>((y, saved.map(|s| (first, n, s))))
        });
        let mut y = Vec::with_capacity(b * l * h);
        let mut saved = Vec::with_capacity(outs.len());
        for out in outs {
            let (yp, sp) = out?;
            y.extend_from_slice(&yp);
            saved.extend(sp);
        }
        keep(saved);
        Ok(y)
    }

    /// The forward of sequences `first..first + b` of the op's batch (`x` holds just them).
    #[allow(clippy::too_many_arguments)]
    fn run_forward_part(
        &self,
        x: &[f32],
        first: usize,
        b: usize,
        l: usize,
        h: usize,
        f: usize,
        d: usize,
    ) -> Result<(Vec<f32>, Option<Saved>)> {
        let t = b * l;
        let v = &self.v;
        // Element offset of this part in the batch's [B, L, H] tensors (dropout masks).
        let at = first * l * h;
        let mut qkv = bias_rows(&v.qkv_b, t);
        mul_wt(x, t, h, &self.p.qkv_w, self.p.wt(QKV), &mut qkv, true)?;
        let (ctx, probs) = self.attn.run_forward(&qkv, first, b, l, h, d);
        let (s1, a) = project_residual_norm(
            ctx,
            t,
            h,
            &self.p.out_w,
            self.p.wt(OUT),
            &v.out_b,
            |s| {
                if let Some((p, seed)) = self.drop.hidden1 {
                    dropout_range_in_place(s, at, p, seed);
                }
            },
            x,
            &v.ln1_g,
            &v.ln1_b,
            self.p.ln1_eps,
        )?;
        let mut u = bias_rows(&v.inter_b, t);
        mul_wt(&a, t, h, &self.p.inter_w, self.p.wt(INTER), &mut u, true)?;
        let chunk = f * rows_per_task(f);
        let act = if self.save {
            let mut g = vec![0f32; t * f];
            g.par_chunks_mut(chunk)
                .zip(u.par_chunks(chunk))
                .for_each(|(g, u)| gelu_into(u, g));
            g
        } else {
            u.par_chunks_mut(chunk).for_each(gelu_in_place);
            std::mem::take(&mut u)
        };
        let (s2, y) = project_residual_norm(
            act,
            t,
            f,
            &self.p.output_w,
            self.p.wt(OUTPUT),
            &v.output_b,
            |s| {
                if let Some((p, seed)) = self.drop.hidden2 {
                    dropout_range_in_place(s, at, p, seed);
                }
            },
            &a,
            &v.ln2_g,
            &v.ln2_b,
            self.p.ln2_eps,
        )?;
        drop(a);
        let saved = self.save.then_some(Saved {
            qkv,
            probs,
            s1,
            s2,
            u,
        });
        Ok((y, saved))
    }

    /// The input gradient from the output gradient `dy [b, l, h]`, part by part as the
    /// forward cut the batch.
    #[allow(clippy::too_many_arguments)]
    fn run_backward(
        &self,
        saved: Vec<(usize, usize, Saved)>,
        dy: &[f32],
        b: usize,
        l: usize,
        h: usize,
        f: usize,
        d: usize,
    ) -> Result<Vec<f32>> {
        let covered: usize = saved.iter().map(|p| p.1).sum();
        if covered != b {
            bail!("frozen-layer: kept activations of {covered} sequences for a batch of {b}");
        }
        if saved.len() == 1 {
            let (first, n, s) = saved.into_iter().next().expect("one part");
            return self.run_backward_part(s, dy, first, n, l, h, f, d);
        }
        let outs = each_on_one_thread(saved, |(first, n, s)| {
            let dyp = &dy[first * l * h..(first + n) * l * h];
            self.run_backward_part(s, dyp, first, n, l, h, f, d)
        });
        let mut dx = Vec::with_capacity(b * l * h);
        for out in outs {
            dx.extend_from_slice(&out?);
        }
        Ok(dx)
    }

    /// The input gradient of sequences `first..first + b` (`dy` holds just them).
    #[allow(clippy::too_many_arguments)]
    fn run_backward_part(
        &self,
        s: Saved,
        dy: &[f32],
        first: usize,
        b: usize,
        l: usize,
        h: usize,
        f: usize,
        d: usize,
    ) -> Result<Vec<f32>> {
        let t = b * l;
        let v = &self.v;
        let at = first * l * h;
        let Saved {
            qkv,
            probs,
            s1,
            s2,
            u,
        } = s;
        // Output layer norm.
        let mut ds2 = vec![0f32; t * h];
        layer_norm_input_grad_rows(&s2, dy, &v.ln2_g, self.p.ln2_eps as f32, &mut ds2);
        drop(s2);
        // Through the dropout, the feed-forward out projection and GELU (into `u`).
        let mut dg = u;
        {
            let dropped;
            let do2: &[f32] = match self.drop.hidden2 {
                Some((p, seed)) => {
                    let mut x = ds2.clone();
                    dropout_range_in_place(&mut x, at, p, seed);
                    dropped = x;
                    &dropped
                }
                None => &ds2,
            };
            // dg holds u; compute g·W into a fresh buffer, then multiply by GELU'(u) in place.
            let mut gw = vec![0f32; t * f];
            mul_w(
                do2,
                t,
                h,
                &self.p.output_w,
                self.p.w(OUTPUT),
                &mut gw,
                false,
            )?;
            let chunk = f * rows_per_task(f);
            dg.par_chunks_mut(chunk)
                .zip(gw.par_chunks(chunk))
                .for_each(|(u, g)| gelu_grad_mul_in_place(u, g));
        }
        // da = ds2 (residual) + du · W_in
        let mut da = ds2;
        mul_w(&dg, t, f, &self.p.inter_w, self.p.w(INTER), &mut da, true)?;
        drop(dg);
        // Attention layer norm.
        let mut ds1 = vec![0f32; t * h];
        layer_norm_input_grad_rows(&s1, &da, &v.ln1_g, self.p.ln1_eps as f32, &mut ds1);
        drop((s1, da));
        // Through the dropout and the attention output projection.
        let mut dctx = vec![0f32; t * h];
        match self.drop.hidden1 {
            Some((p, seed)) => {
                let mut x = ds1.clone();
                dropout_range_in_place(&mut x, at, p, seed);
                mul_w(&x, t, h, &self.p.out_w, self.p.w(OUT), &mut dctx, false)?;
            }
            None => mul_w(&ds1, t, h, &self.p.out_w, self.p.w(OUT), &mut dctx, false)?,
        }
        let dqkv = self
            .attn
            .run_backward(&qkv, &probs, &dctx, first, b, l, h, d);
        drop((qkv, probs, dctx));
        // dx = ds1 (residual) + dqkv · W_qkv
        let mut dx = ds1;
        mul_w(&dqkv, t, 3 * h, &self.p.qkv_w, self.p.w(QKV), &mut dx, true)?;
        Ok(dx)
    }
}

impl CustomOp1 for FrozenLayerOp {
    fn name(&self) -> &'static str {
        "frozen-layer"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, l, h, f, d) = self.dims(layout.dims())?;
        let x = contiguous_slice(storage, layout)?;
        let y = self.run_forward(x, b, l, h, f, d)?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, l, h, f, d) = self.dims(arg.dims())?;
        let Some(saved) = self.saved.lock().expect("frozen-layer: poisoned").take() else {
            bail!("frozen-layer: the activations were not kept, or a second backward ran")
        };
        let grad = grad.contiguous()?;
        let dx = super::with_f32(&grad, |dy| self.run_backward(saved, dy, b, l, h, f, d))??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// The frozen layer applied to `x [B, L, H]` (f32, CPU) with the additive key mask `mask`
/// (`[B·L]`) and, in training, dropout; differentiable in `x` only (the parameters are
/// constants).
pub fn frozen_layer(
    x: &Tensor,
    params: &FrozenLayerParams,
    mask: Vec<f32>,
    dropout: LayerDropout,
) -> Result<Tensor> {
    let v = Vectors::of(params)?;
    let (_, _, h) = x.dims3()?;
    let d = h / params.heads.max(1);
    let save = x.track_op();
    let op = FrozenLayerOp {
        p: params.clone(),
        v,
        attn: AttentionOp::new(params.heads, mask, d, dropout.attn, save),
        drop: dropout,
        save,
        saved: Mutex::new(None),
    };
    x.contiguous()?.apply_op1(op)
}
