//! The last frozen layer computed only for the first position of every sequence: the rows a
//! classification head reads (RoBERTa's head and BERT's pooler read `hidden[:, 0]`; with a
//! prompt the virtual tokens come first, and the head still reads position 0).
//!
//! Keys and values are needed for every position, but the query, the attention row, the
//! output projection, both layer norms and the feed-forward block only for position 0, so of
//! the layer's work about `2/3` of the Q/K/V projection remains and the rest shrinks by a
//! factor `L`. The dropout masks are the full layer's (each generator stream is entered at the
//! element's position, see `dropout::dropout_rows_in_place`), so the output equals row 0 of
//! [`super::layer::frozen_layer`]'s output up to float rounding, and so does the input gradient
//! (`tests/fused_layer.rs` checks both).

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::attention::AttnDropout;
use super::dropout::{dropout_rows_in_place, mask_in_place};
use super::layer::{
    bias_rows, mul_w, mul_wt, project_residual_norm, FrozenLayerParams, LayerDropout, Vectors,
    INTER, OUT, OUTPUT,
};
use super::norm::layer_norm_input_grad_rows;
use super::softmax::softmax_row;
use super::vmath::{gelu_grad_mul_in_place, gelu_into};
use super::{contiguous_slice, rows_per_task, SendPtr};

/// What the backward needs, freed as it goes.
struct Saved {
    /// Queries of position 0, `[B, H]`.
    q: Vec<f32>,
    /// Keys and values of every position, `[B·L, 2H]`.
    kv: Vec<f32>,
    /// Attention probabilities of position 0 (before dropout), `[B, heads, L]`.
    probs: Vec<f32>,
    s1: Vec<f32>,
    s2: Vec<f32>,
    u: Vec<f32>,
}

struct FirstRowLayerOp {
    p: FrozenLayerParams,
    v: Vectors,
    /// Additive key mask `[B·L]`.
    mask: Vec<f32>,
    drop: LayerDropout,
    save: bool,
    saved: Mutex<Option<Saved>>,
}

/// The dropout multipliers (`0` or `1/(1-p)`) of the first `l` probabilities of head block
/// `bh`: the first row of the `L×L` mask the full attention core draws for that block.
fn attn_row_mask(drop: &AttnDropout, bh: usize, l: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(drop.seed);
    rng.set_stream(bh as u64);
    let mut m = vec![1f32; l];
    mask_in_place(
        &mut rng,
        drop.keep_threshold(),
        1.0 / (1.0 - drop.p),
        &mut m,
    );
    m
}

/// Row 0 of every sequence of `x` (`[B·L, H]`) → `[B, H]`.
fn first_rows(x: &[f32], b: usize, l: usize, h: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * h);
    for bi in 0..b {
        out.extend_from_slice(&x[bi * l * h..bi * l * h + h]);
    }
    out
}

impl FirstRowLayerOp {
    fn dims(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
        let (b, l, h) = match dims {
            [b, l, h] => (*b, *l, *h),
            d => bail!("first-row-layer: expected [B, L, H], got {d:?}"),
        };
        let f = self.v.inter_b.len();
        let heads = self.p.heads;
        if heads == 0 || h % heads != 0 || self.v.qkv_b.len() != 3 * h || self.v.ln1_g.len() != h {
            bail!("first-row-layer: hidden {h}, heads {heads}, parameters of another width");
        }
        if l == 0 || self.mask.len() != b * l {
            bail!(
                "first-row-layer: {l} positions, a mask of {}",
                self.mask.len()
            );
        }
        Ok((b, l, h, f, h / heads))
    }

    /// Scale of the attention scores.
    fn scale(&self, d: usize) -> f32 {
        1.0 / (d as f32).sqrt()
    }

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
        let (t, heads, v) = (b * l, self.p.heads, &self.v);
        let x0 = first_rows(x, b, l, h);
        // Queries of position 0 only; keys and values of every position.
        let mut q = bias_rows(&v.qkv_b[..h], b);
        mul_wt(
            &x0,
            b,
            h,
            &self.p.qkv_w.narrow(0, 0, h)?,
            None,
            &mut q,
            true,
        )?;
        let mut kv = bias_rows(&v.qkv_b[h..], t);
        mul_wt(
            x,
            t,
            h,
            &self.p.qkv_w.narrow(0, h, 2 * h)?,
            None,
            &mut kv,
            true,
        )?;
        // The attention row of position 0, per (sequence, head).
        let scale = self.scale(d);
        let mut probs = vec![0f32; b * heads * l];
        let mut ctx = vec![0f32; b * h];
        let ctxp = SendPtr(ctx.as_mut_ptr());
        probs.par_chunks_mut(l).enumerate().for_each(|(bh, p)| {
            let (bi, hi) = (bh / heads, bh % heads);
            let qrow = &q[bi * h + hi * d..bi * h + (hi + 1) * d];
            let mask = &self.mask[bi * l..(bi + 1) * l];
            for (j, s) in p.iter_mut().enumerate() {
                let krow = &kv[(bi * l + j) * 2 * h + hi * d..][..d];
                let dot: f32 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum();
                *s = dot * scale + mask[j];
            }
            softmax_row(p);
            let keep = self.drop.attn.map(|dr| attn_row_mask(&dr, bh, l));
            // SAFETY: columns hi·d.. of row bi of ctx belong to this task only.
            let out = unsafe { std::slice::from_raw_parts_mut(ctxp.get().add(bi * h + hi * d), d) };
            for (j, &pj) in p.iter().enumerate() {
                let w = keep.as_ref().map_or(pj, |k| pj * k[j]);
                let vrow = &kv[(bi * l + j) * 2 * h + h + hi * d..][..d];
                out.iter_mut().zip(vrow).for_each(|(o, &vv)| *o += w * vv);
            }
        });
        let (s1, a) = project_residual_norm(
            ctx,
            b,
            h,
            &self.p.out_w,
            self.p.wt(OUT),
            &v.out_b,
            |s| {
                if let Some((p, seed)) = self.drop.hidden1 {
                    dropout_rows_in_place(s, h, l, p, seed);
                }
            },
            &x0,
            &v.ln1_g,
            &v.ln1_b,
            self.p.ln1_eps,
        )?;
        let mut u = bias_rows(&v.inter_b, b);
        mul_wt(&a, b, h, &self.p.inter_w, self.p.wt(INTER), &mut u, true)?;
        let chunk = f * rows_per_task(f);
        let mut g = vec![0f32; b * f];
        g.par_chunks_mut(chunk)
            .zip(u.par_chunks(chunk))
            .for_each(|(g, u)| gelu_into(u, g));
        let (s2, y) = project_residual_norm(
            g,
            b,
            f,
            &self.p.output_w,
            self.p.wt(OUTPUT),
            &v.output_b,
            |s| {
                if let Some((p, seed)) = self.drop.hidden2 {
                    dropout_rows_in_place(s, h, l, p, seed);
                }
            },
            &a,
            &v.ln2_g,
            &v.ln2_b,
            self.p.ln2_eps,
        )?;
        if self.save {
            *self.saved.lock().expect("first-row-layer: poisoned") = Some(Saved {
                q,
                kv,
                probs,
                s1,
                s2,
                u,
            });
        }
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_backward(
        &self,
        s: Saved,
        dy: &[f32],
        b: usize,
        l: usize,
        h: usize,
        f: usize,
        d: usize,
    ) -> Result<Vec<f32>> {
        let (t, heads, v) = (b * l, self.p.heads, &self.v);
        let Saved {
            q,
            kv,
            probs,
            s1,
            s2,
            u,
        } = s;
        // Output layer norm, dropout, feed-forward out projection and GELU.
        let mut ds2 = vec![0f32; b * h];
        layer_norm_input_grad_rows(&s2, dy, &v.ln2_g, self.p.ln2_eps as f32, &mut ds2);
        drop(s2);
        let mut do2 = ds2.clone();
        if let Some((p, seed)) = self.drop.hidden2 {
            dropout_rows_in_place(&mut do2, h, l, p, seed);
        }
        let mut dg = vec![0f32; b * f];
        mul_w(
            &do2,
            b,
            h,
            &self.p.output_w,
            self.p.w(OUTPUT),
            &mut dg,
            false,
        )?;
        drop(do2);
        let dg = {
            let mut u = u;
            gelu_grad_mul_in_place(&mut u, &dg);
            u
        };
        // da = ds2 (residual) + dg · W_in
        let mut da = ds2;
        mul_w(&dg, b, f, &self.p.inter_w, self.p.w(INTER), &mut da, true)?;
        drop(dg);
        // Attention layer norm, dropout and the output projection.
        let mut ds1 = vec![0f32; b * h];
        layer_norm_input_grad_rows(&s1, &da, &v.ln1_g, self.p.ln1_eps as f32, &mut ds1);
        drop((s1, da));
        let mut dctx = vec![0f32; b * h];
        {
            let mut x = ds1.clone();
            if let Some((p, seed)) = self.drop.hidden1 {
                dropout_rows_in_place(&mut x, h, l, p, seed);
            }
            mul_w(&x, b, h, &self.p.out_w, self.p.w(OUT), &mut dctx, false)?;
        }
        // The attention row: dq (position 0), dK and dV (every position).
        let scale = self.scale(d);
        let mut dq = vec![0f32; b * h];
        let mut dkv = vec![0f32; t * 2 * h];
        let (dqp, dkvp) = (SendPtr(dq.as_mut_ptr()), SendPtr(dkv.as_mut_ptr()));
        (0..b * heads).into_par_iter().for_each(|bh| {
            let (bi, hi) = (bh / heads, bh % heads);
            let p = &probs[bh * l..(bh + 1) * l];
            let g = &dctx[bi * h + hi * d..][..d];
            let qrow = &q[bi * h + hi * d..][..d];
            let keep = self.drop.attn.map(|dr| attn_row_mask(&dr, bh, l));
            // dP' = dO · Vᵀ, dV = P'ᵀ · dO (row j of dV: P'[j] · dO).
            let mut ds = vec![0f32; l];
            for (j, dsj) in ds.iter_mut().enumerate() {
                let row = (bi * l + j) * 2 * h;
                let vrow = &kv[row + h + hi * d..][..d];
                let k = keep.as_ref().map_or(1.0, |k| k[j]);
                *dsj = g.iter().zip(vrow).map(|(a, b)| a * b).sum::<f32>() * k;
                let pj = p[j] * k;
                // SAFETY: the head-hi columns of the rows of sequence bi in dkv belong to
                // this task only.
                let dv =
                    unsafe { std::slice::from_raw_parts_mut(dkvp.get().add(row + h + hi * d), d) };
                dv.iter_mut().zip(g).for_each(|(o, &gg)| *o = pj * gg);
            }
            // dS = P ⊙ (dP − Σ dP ⊙ P) · scale
            let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
            ds.iter_mut()
                .zip(p)
                .for_each(|(x, &pp)| *x = pp * (*x - dot) * scale);
            // SAFETY: columns hi·d.. of row bi of dq belong to this task only.
            let dqr = unsafe { std::slice::from_raw_parts_mut(dqp.get().add(bi * h + hi * d), d) };
            for (j, &dsj) in ds.iter().enumerate() {
                let row = (bi * l + j) * 2 * h;
                let krow = &kv[row + hi * d..][..d];
                dqr.iter_mut().zip(krow).for_each(|(o, &kk)| *o += dsj * kk);
                // SAFETY: as for dV above.
                let dk = unsafe { std::slice::from_raw_parts_mut(dkvp.get().add(row + hi * d), d) };
                dk.iter_mut().zip(qrow).for_each(|(o, &qq)| *o = dsj * qq);
            }
        });
        drop((q, kv, probs, dctx));
        // dx = dKV · W_kv for every position; position 0 adds the residual and dq · W_q.
        let mut dx = vec![0f32; t * h];
        mul_w(
            &dkv,
            t,
            2 * h,
            &self.p.qkv_w.narrow(0, h, 2 * h)?,
            None,
            &mut dx,
            false,
        )?;
        drop(dkv);
        let mut d0 = ds1;
        mul_w(
            &dq,
            b,
            h,
            &self.p.qkv_w.narrow(0, 0, h)?,
            None,
            &mut d0,
            true,
        )?;
        for bi in 0..b {
            dx[bi * l * h..bi * l * h + h]
                .iter_mut()
                .zip(&d0[bi * h..(bi + 1) * h])
                .for_each(|(o, &g)| *o += g);
        }
        Ok(dx)
    }
}

impl CustomOp1 for FirstRowLayerOp {
    fn name(&self) -> &'static str {
        "first-row-layer"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, l, h, f, d) = self.dims(layout.dims())?;
        let x = contiguous_slice(storage, layout)?;
        let y = self.run_forward(x, b, l, h, f, d)?;
        Ok((CpuStorage::F32(y), Shape::from((b, 1, h))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, l, h, f, d) = self.dims(arg.dims())?;
        let Some(saved) = self.saved.lock().expect("first-row-layer: poisoned").take() else {
            bail!("first-row-layer: the activations were not kept, or a second backward ran")
        };
        let dx = super::with_f32(grad, |dy| self.run_backward(saved, dy, b, l, h, f, d))??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// The frozen layer of [`super::layer::frozen_layer`] applied to `x [B, L, H]`, returning only
/// the first position's output `[B, 1, H]` (what a classification head reads); keys and values
/// still come from every position. Differentiable in `x`.
pub fn frozen_layer_first_row(
    x: &Tensor,
    params: &FrozenLayerParams,
    mask: Vec<f32>,
    dropout: LayerDropout,
) -> Result<Tensor> {
    let op = FirstRowLayerOp {
        v: Vectors::of(params)?,
        p: params.clone(),
        mask,
        drop: LayerDropout {
            attn: dropout.attn.filter(|a| a.p > 0.0),
            ..dropout
        },
        save: x.track_op(),
        saved: Mutex::new(None),
    };
    x.contiguous()?.apply_op1(op)
}
