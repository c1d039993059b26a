//! Inverted dropout whose mask is never stored: it is drawn, in parallel, from ChaCha8 streams
//! of one seed (a fixed block of elements per stream, so the mask does not depend on the
//! number of threads) and drawn again in the backward.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{contiguous_slice, with_f32};

/// Elements per generator stream.
const BLOCK: usize = 8192;

#[derive(Clone, Copy)]
struct DropoutOp {
    p: f32,
    seed: u64,
}

impl DropoutOp {
    /// `out[i] = x[i] · mask[i]` for the elements of block `blk`.
    fn apply(&self, blk: usize, x: &[f32], out: &mut [f32]) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(blk as u64);
        let thr = ((1.0 - self.p as f64) * 4_294_967_296.0) as u64;
        let scale = 1.0 / (1.0 - self.p);
        for (o, &v) in out.iter_mut().zip(x) {
            *o = if (rng.next_u32() as u64) < thr {
                v * scale
            } else {
                0.0
            };
        }
    }

    fn run(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(BLOCK)
            .zip(x.par_chunks(BLOCK))
            .enumerate()
            .for_each(|(blk, (o, x))| self.apply(blk, x, o));
        out
    }
}

/// `buf ⊙ mask` in place, the mask of [`dropout`] with the same `p` and `seed` over a
/// contiguous tensor of `buf.len()` elements (its backward is the same product).
pub(crate) fn dropout_in_place(buf: &mut [f32], p: f32, seed: u64) {
    let op = DropoutOp { p, seed };
    buf.par_chunks_mut(BLOCK).enumerate().for_each(|(blk, x)| {
        let mut rng = ChaCha8Rng::seed_from_u64(op.seed);
        rng.set_stream(blk as u64);
        let thr = ((1.0 - op.p as f64) * 4_294_967_296.0) as u64;
        let scale = 1.0 / (1.0 - op.p);
        for v in x.iter_mut() {
            *v = if (rng.next_u32() as u64) < thr {
                *v * scale
            } else {
                0.0
            };
        }
    });
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "seeded-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(storage, layout)?;
        Ok((CpuStorage::F32(self.run(x)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = with_f32(grad, |g| self.run(g))?;
        Ok(Some(Tensor::from_vec(g, arg.shape(), arg.device())?))
    }
}

/// Inverted dropout of an f32 CPU tensor with probability `p` in `[0, 1)`, mask from `seed`.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(DropoutOp { p, seed })
}

/// The mask (`0` or `1/(1-p)`) [`dropout`] multiplies by, for tests and composed references.
pub fn dropout_mask(shape: &[usize], p: f32, seed: u64) -> Result<Tensor> {
    let n = shape.iter().product();
    let m = DropoutOp { p, seed }.run(&vec![1f32; n]);
    Tensor::from_vec(m, shape, &Device::Cpu)
}
