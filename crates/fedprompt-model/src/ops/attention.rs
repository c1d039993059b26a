//! The attention core in one op: for every (sequence, head), `P = softmax(Q·Kᵀ·scale + mask)`,
//! inverted dropout on `P`, and `P·V`, read straight from the packed `[B, L, 3·H]` projection
//! and written straight into `[B, L, H]`: no head split, transpose or contiguous copy.
//!
//! The backward recomputes nothing but the dropout mask (regenerated from its seed) and uses the
//! kept probabilities; it returns the gradient of the packed projection.

use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::dropout::mask_in_place;
use super::softmax::softmax_row;
use super::{contiguous_slice, sgemm, with_f32, Mat, SendConstPtr, SendPtr};

/// Dropout settings of the attention probabilities.
#[derive(Clone, Copy, Debug)]
pub struct AttnDropout {
    /// Drop probability, in `[0, 1)`.
    pub p: f32,
    /// Seed of the masks; each (sequence, head) draws from its own ChaCha8 stream.
    pub seed: u64,
}

impl AttnDropout {
    pub(crate) fn keep_threshold(&self) -> u64 {
        // Keep when a uniform u32 is below (1 - p)·2³².
        ((1.0 - self.p as f64) * 4_294_967_296.0) as u64
    }

    /// Multiplies `p` (one head's `L×L` block `bh`) by the mask / keep, into `out`.
    fn apply(&self, bh: usize, p: &[f32], out: &mut [f32]) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(bh as u64);
        out.copy_from_slice(p);
        mask_in_place(&mut rng, self.keep_threshold(), 1.0 / (1.0 - self.p), out);
    }
}

/// The dropout mask (values `0` or `1/(1-p)`) the op draws, `[B, heads, L, L]`: a reference for
/// tests and for composed implementations.
pub fn attention_dropout_mask(
    drop: AttnDropout,
    b: usize,
    heads: usize,
    l: usize,
) -> Result<Tensor> {
    let ones = vec![1f32; l * l];
    let mut m = vec![0f32; b * heads * l * l];
    for (bh, c) in m.chunks_mut(l * l).enumerate() {
        drop.apply(bh, &ones, c);
    }
    Tensor::from_vec(m, (b, heads, l, l), &Device::Cpu)
}

pub(crate) struct AttentionOp {
    heads: usize,
    /// Additive mask `[B, L]` on the keys.
    mask: Vec<f32>,
    scale: f32,
    dropout: Option<AttnDropout>,
    save: bool,
    /// Softmax probabilities `[B, heads, L, L]` (before dropout) for the backward.
    probs: OnceLock<Vec<f32>>,
}

impl AttentionOp {
    fn dims(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize)> {
        let (b, l, h3) = match dims {
            [b, l, h3] => (*b, *l, *h3),
            d => bail!("fused-attention: expected [B, L, 3H], got {d:?}"),
        };
        if h3 % (3 * self.heads) != 0 || self.mask.len() != b * l {
            bail!(
                "fused-attention: [B, L, 3H] = {dims:?}, heads {}, mask {}",
                self.heads,
                self.mask.len()
            );
        }
        Ok((b, l, h3 / 3, h3 / (3 * self.heads)))
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, l, h, d) = self.dims(layout.dims())?;
        let qkv = contiguous_slice(storage, layout)?;
        let (out, saved) = self.run_forward(qkv, 0, b, l, h, d);
        if self.save {
            let _ = self.probs.set(saved);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, l, h))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, l, h, d) = self.dims(arg.dims())?;
        let Some(probs) = self.probs.get() else {
            bail!("fused-attention: the probabilities were not kept")
        };
        let dqkv = with_f32(arg, |qkv| {
            with_f32(grad, |go| self.run_backward(qkv, probs, go, 0, b, l, h, d))
        })??;
        Ok(Some(Tensor::from_vec(dqkv, (b, l, 3 * h), arg.device())?))
    }
}

impl AttentionOp {
    /// An attention core over `heads` heads of width `d` with the additive key mask `mask`
    /// (`[B·L]`), keeping the probabilities when `save`.
    pub(crate) fn new(
        heads: usize,
        mask: Vec<f32>,
        d: usize,
        dropout: Option<AttnDropout>,
        save: bool,
    ) -> Self {
        AttentionOp {
            heads,
            mask,
            scale: 1.0 / (d as f32).sqrt(),
            dropout: dropout.filter(|x| x.p > 0.0),
            save,
            probs: OnceLock::new(),
        }
    }

    /// The forward on the packed `qkv` (`[B, L, 3H]` contiguous): the output `[B, L, H]` and,
    /// when `save`, the probabilities `[B, heads, L, L]` (else empty). `qkv` holds sequences
    /// `first..first + B` of the op's batch (their mask rows and dropout streams).
    pub(crate) fn run_forward(
        &self,
        qkv: &[f32],
        first: usize,
        b: usize,
        l: usize,
        h: usize,
        d: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let heads = self.heads;
        let (h3, ll) = (3 * h, l * l);
        let mut out = vec![0f32; b * l * h];
        let mut saved = if self.save {
            vec![0f32; b * heads * ll]
        } else {
            Vec::new()
        };
        let outp = SendPtr(out.as_mut_ptr());
        let savedp = SendPtr(saved.as_mut_ptr());
        let qkvp = SendConstPtr(qkv.as_ptr());
        (0..b * heads).into_par_iter().for_each_init(
            || vec![0f32; 2 * ll],
            |scratch, bh| {
                let (bi, hi) = (bh / heads, bh % heads);
                let (pbuf, dbuf) = scratch.split_at_mut(ll);
                let p: &mut [f32] = if self.save {
                    // SAFETY: block bh of the saved buffer belongs to this task only.
                    unsafe { std::slice::from_raw_parts_mut(savedp.get().add(bh * ll), ll) }
                } else {
                    pbuf
                };
                // SAFETY: the operands lie inside qkv ([b, l, 3h]); this task writes rows
                // bi·l.. of columns hi·d.. of `out` only.
                unsafe {
                    let q = qkvp.get().add(bi * l * h3 + hi * d);
                    let k = q.add(h);
                    let v = q.add(2 * h);
                    sgemm(
                        l,
                        l,
                        d,
                        p.as_mut_ptr(),
                        l,
                        false,
                        Mat {
                            ptr: q,
                            rs: h3 as isize,
                            cs: 1,
                        },
                        Mat {
                            ptr: k,
                            rs: 1,
                            cs: h3 as isize,
                        },
                        1,
                    );
                    let mask = &self.mask[(first + bi) * l..(first + bi + 1) * l];
                    for row in p.chunks_mut(l) {
                        for (s, &m) in row.iter_mut().zip(mask) {
                            *s = *s * self.scale + m;
                        }
                        softmax_row(row);
                    }
                    let pv: &[f32] = match &self.dropout {
                        Some(drop) => {
                            drop.apply(first * heads + bh, p, dbuf);
                            dbuf
                        }
                        None => p,
                    };
                    sgemm(
                        l,
                        d,
                        l,
                        outp.get().add(bi * l * h + hi * d),
                        h,
                        false,
                        Mat {
                            ptr: pv.as_ptr(),
                            rs: l as isize,
                            cs: 1,
                        },
                        Mat {
                            ptr: v,
                            rs: h3 as isize,
                            cs: 1,
                        },
                        1,
                    );
                }
            },
        );
        (out, saved)
    }

    /// The gradient of the packed `qkv` from the kept probabilities and the output gradient
    /// `go` (`[B, L, H]`), for sequences `first..first + B` as in [`Self::run_forward`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_backward(
        &self,
        qkv: &[f32],
        probs: &[f32],
        go: &[f32],
        first: usize,
        b: usize,
        l: usize,
        h: usize,
        d: usize,
    ) -> Vec<f32> {
        let heads = self.heads;
        let (h3, ll) = (3 * h, l * l);
        let mut dqkv = vec![0f32; b * l * h3];
        let dp = SendPtr(dqkv.as_mut_ptr());
        let qkvp = SendConstPtr(qkv.as_ptr());
        let gop = SendConstPtr(go.as_ptr());
        (0..b * heads).into_par_iter().for_each_init(
            || vec![0f32; 2 * ll],
            |scratch, bh| {
                let (bi, hi) = (bh / heads, bh % heads);
                let p = &probs[bh * ll..(bh + 1) * ll];
                let (pdrop, ds) = scratch.split_at_mut(ll);
                let pv: &[f32] = match &self.dropout {
                    Some(drop) => {
                        drop.apply(first * heads + bh, p, pdrop);
                        pdrop
                    }
                    None => p,
                };
                // SAFETY: reads inside qkv and go; writes rows bi·l.. of the columns
                // of head hi in the q, k and v parts of dqkv, owned by this task.
                unsafe {
                    let q = qkvp.get().add(bi * l * h3 + hi * d);
                    let k = q.add(h);
                    let v = q.add(2 * h);
                    let g = gop.get().add(bi * l * h + hi * d);
                    let dq = dp.get().add(bi * l * h3 + hi * d);
                    let dk = dq.add(h);
                    let dv = dq.add(2 * h);
                    // dP' = dO · Vᵀ
                    sgemm(
                        l,
                        l,
                        d,
                        ds.as_mut_ptr(),
                        l,
                        false,
                        Mat {
                            ptr: g,
                            rs: h as isize,
                            cs: 1,
                        },
                        Mat {
                            ptr: v,
                            rs: 1,
                            cs: h3 as isize,
                        },
                        1,
                    );
                    // dV = P'ᵀ · dO
                    sgemm(
                        l,
                        d,
                        l,
                        dv,
                        h3,
                        false,
                        Mat {
                            ptr: pv.as_ptr(),
                            rs: 1,
                            cs: l as isize,
                        },
                        Mat {
                            ptr: g,
                            rs: h as isize,
                            cs: 1,
                        },
                        1,
                    );
                    // dP = dP' ⊙ mask / keep; dS = P ⊙ (dP − Σ dP ⊙ P) · scale
                    if let Some(drop) = &self.dropout {
                        let mut rng = ChaCha8Rng::seed_from_u64(drop.seed);
                        rng.set_stream((first * heads + bh) as u64);
                        mask_in_place(&mut rng, drop.keep_threshold(), 1.0 / (1.0 - drop.p), ds);
                    }
                    for (row, prow) in ds.chunks_mut(l).zip(p.chunks(l)) {
                        let dot: f32 = row.iter().zip(prow).map(|(a, b)| a * b).sum();
                        for (x, &pp) in row.iter_mut().zip(prow) {
                            *x = pp * (*x - dot) * self.scale;
                        }
                    }
                    // dQ = dS · K
                    sgemm(
                        l,
                        d,
                        l,
                        dq,
                        h3,
                        false,
                        Mat {
                            ptr: ds.as_ptr(),
                            rs: l as isize,
                            cs: 1,
                        },
                        Mat {
                            ptr: k,
                            rs: h3 as isize,
                            cs: 1,
                        },
                        1,
                    );
                    // dK = dSᵀ · Q
                    sgemm(
                        l,
                        d,
                        l,
                        dk,
                        h3,
                        false,
                        Mat {
                            ptr: ds.as_ptr(),
                            rs: 1,
                            cs: l as isize,
                        },
                        Mat {
                            ptr: q,
                            rs: h3 as isize,
                            cs: 1,
                        },
                        1,
                    );
                }
            },
        );
        dqkv
    }
}

/// Multi-head attention core on the packed projection `qkv [B, L, 3·H]` (query, key, value
/// side by side, each `heads × d`), with an additive key mask `mask [B, L]` and optional
/// dropout on the probabilities. Returns the per-head weighted values `[B, L, H]`;
/// differentiable in `qkv`.
pub fn attention(
    qkv: &Tensor,
    mask: &[f32],
    heads: usize,
    dropout: Option<AttnDropout>,
) -> Result<Tensor> {
    let (_, _, h3) = qkv.dims3()?;
    let d = h3 / (3 * heads.max(1));
    let op = AttentionOp::new(heads, mask.to_vec(), d, dropout, qkv.track_op());
    qkv.contiguous()?.apply_op1(op)
}
