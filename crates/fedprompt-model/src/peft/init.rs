//! Seeded initialisers matching PyTorch's defaults, so fresh parameters are reproducible.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// A seeded source of initial values.
pub struct Init {
    rng: ChaCha8Rng,
}

impl Init {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// N(mean, std²) values of `shape`.
    pub fn normal(&mut self, shape: &[usize], mean: f64, std: f64) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let d = Normal::new(mean, std).map_err(candle_core::Error::wrap)?;
        let v: Vec<f32> = (0..n).map(|_| d.sample(&mut self.rng) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// U(-bound, bound) values of `shape`.
    pub fn uniform(&mut self, shape: &[usize], bound: f64) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let d = Uniform::new_inclusive(-bound, bound).map_err(candle_core::Error::wrap)?;
        let v: Vec<f32> = (0..n).map(|_| d.sample(&mut self.rng) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// PyTorch's `nn.Linear` default (Kaiming-uniform with a = √5): U(±1/√fan_in).
    pub fn torch_linear(
        &mut self,
        out: usize,
        inp: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let bound = 1.0 / (inp as f64).sqrt();
        Ok((
            self.uniform(&[out, inp], bound)?,
            self.uniform(&[out], bound)?,
        ))
    }
}
