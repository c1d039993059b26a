//! Inverted dropout whose mask is never stored: it is drawn, in parallel, from ChaCha8 streams
//! of one seed (a fixed block of elements per stream, so the mask does not depend on the
//! number of threads) and drawn again in the backward.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{contiguous_slice, with_f32};

/// Elements per generator stream.
const BLOCK: usize = 8192;

/// `x[i] = x[i] · (1/(1−p) if the stream's next u32 is below `thr`, else 0)`, the words
/// drawn in bulk (the same words, in the same order, as one `next_u32` per element; a bulk
/// draw lets the select loop vectorise).
pub(crate) fn mask_in_place(rng: &mut ChaCha8Rng, thr: u64, scale: f32, x: &mut [f32]) {
    let mut words = [0u32; 256];
    for chunk in x.chunks_mut(256) {
        let w = &mut words[..chunk.len()];
        rng.fill(w);
        for (v, &u) in chunk.iter_mut().zip(w.iter()) {
            *v = if (u as u64) < thr { *v * scale } else { 0.0 };
        }
    }
}

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
        out.copy_from_slice(x);
        mask_in_place(&mut rng, thr, 1.0 / (1.0 - self.p), out);
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

/// `x ⊙ mask` in place where `x` is elements `e..e + x.len()` of a contiguous tensor that
/// [`dropout`] would mask whole (with the same `p` and `seed`): each generator stream is
/// entered at the element's word position, in segments that lie inside one block each.
fn mask_at(x: &mut [f32], e: usize, p: f32, seed: u64) {
    let thr = ((1.0 - p as f64) * 4_294_967_296.0) as u64;
    let scale = 1.0 / (1.0 - p);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut c = 0;
    while c < x.len() {
        let at = e + c;
        let len = (BLOCK - at % BLOCK).min(x.len() - c);
        rng.set_stream((at / BLOCK) as u64);
        rng.set_word_pos((at % BLOCK) as u128);
        mask_in_place(&mut rng, thr, scale, &mut x[c..c + len]);
        c += len;
    }
}

/// `buf ⊙ mask` in place where `buf` is elements `offset..offset + buf.len()` of a contiguous
/// tensor that [`dropout`] would mask whole (its backward is the same product): a part of a
/// batch computed on its own drops exactly what the whole batch drops.
pub(crate) fn dropout_range_in_place(buf: &mut [f32], offset: usize, p: f32, seed: u64) {
    // Up to the next generator block boundary, then whole blocks in parallel.
    let head = ((BLOCK - offset % BLOCK) % BLOCK).min(buf.len());
    let (first, rest) = buf.split_at_mut(head);
    mask_at(first, offset, p, seed);
    rest.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(i, x)| mask_at(x, offset + head + i * BLOCK, p, seed));
}

/// `buf ⊙ mask` in place for some rows of a larger tensor: `buf` holds rows of `width`
/// elements, its row `i` being row `i · every` of a contiguous tensor that [`dropout`] would
/// mask whole. The mask values are those of that tensor, so a layer that computes only these
/// rows drops exactly what the full layer drops.
pub(crate) fn dropout_rows_in_place(
    buf: &mut [f32],
    width: usize,
    every: usize,
    p: f32,
    seed: u64,
) {
    buf.par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(i, row)| mask_at(row, i * every * width, p, seed));
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    /// The bulk draw gives the masks of one `next_u32` per element (the masks before it).
    #[test]
    fn bulk_mask_equals_word_by_word_mask() {
        let (p, seed) = (0.1f32, 77u64);
        let thr = ((1.0 - p as f64) * 4_294_967_296.0) as u64;
        let scale = 1.0 / (1.0 - p);
        for n in [1usize, 255, 256, 257, 1000] {
            let mut a = ChaCha8Rng::seed_from_u64(seed);
            a.set_stream(3);
            let mut x = vec![1f32; n];
            mask_in_place(&mut a, thr, scale, &mut x);
            let mut b = ChaCha8Rng::seed_from_u64(seed);
            b.set_stream(3);
            let y: Vec<f32> = (0..n)
                .map(|_| {
                    if (b.next_u32() as u64) < thr {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(x, y, "n = {n}");
            assert_eq!(
                a.next_u32(),
                b.next_u32(),
                "n = {n}: the streams moved alike"
            );
        }
    }

    /// Rows cut out of a tensor get the tensor's mask values, across block boundaries.
    #[test]
    fn row_mask_equals_whole_tensor_mask() {
        let (w, rows, every) = (700usize, 9usize, 5usize);
        let whole = DropoutOp { p: 0.2, seed: 9 }.run(&vec![1f32; w * rows * every]);
        let mut some = vec![1f32; w * rows];
        dropout_rows_in_place(&mut some, w, every, 0.2, 9);
        for i in 0..rows {
            assert_eq!(
                &some[i * w..(i + 1) * w],
                &whole[i * every * w..][..w],
                "row {i}"
            );
        }
    }

    /// A tensor cut into consecutive parts, each masked on its own at its offset, gets the
    /// whole tensor's mask (parts inside one block, across boundaries, on boundaries).
    #[test]
    fn parts_masked_at_their_offsets_equal_the_whole() {
        let n = 3 * BLOCK + 1234;
        let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let whole = DropoutOp { p: 0.3, seed: 17 }.run(&x);
        for cuts in [
            vec![0, n],
            vec![0, 100, n],
            vec![0, BLOCK, 2 * BLOCK + 5, n],
            vec![0, 77, BLOCK - 1, BLOCK + 1, n - 3, n],
        ] {
            let mut parts = x.clone();
            for w in cuts.windows(2) {
                dropout_range_in_place(&mut parts[w[0]..w[1]], w[0], 0.3, 17);
            }
            assert_eq!(parts, whole, "cuts {cuts:?}");
        }
    }
}
