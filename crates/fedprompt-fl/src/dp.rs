//! Central Gaussian differential privacy with fixed clipping: the mechanism.
//!
//! Each client's delta `Δ_k = h_k − h_g` is clipped to L2 norm `S`; the server
//! adds `N(0, σ²S²)` noise to the *sum* of clipped deltas and divides by the
//! number of clients: `h_g' = h_g + (Σ_k clip(Δ_k) + N(0, σ²S²I)) / m`.
//! Weights are uniform so that one client changes the sum by at most `S`.
//! The strategy built on it is [`crate::DpFedAvg`] (`strategy/dp_fedavg.rs`); this module
//! depends on no strategy.
//!
//! Local DP ([`privatize_update`]) is the same mechanism run by each client on its own
//! delta before sending: `h_k' = h_g + clip(Δ_k) + N(0, σ²S²I)`. The accounting of both
//! is [`crate::privacy`].

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::error::{FlError, Result};
use crate::params::Params;

/// Gaussian mechanism parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianDp {
    /// Clipping norm `S > 0`.
    pub clip_norm: f64,
    /// Noise multiplier `σ ≥ 0` (noise std is `σ·S` on the sum).
    pub noise_multiplier: f64,
}

impl GaussianDp {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(FlError::Config(format!(
                "clip_norm must be positive, got {}",
                self.clip_norm
            )));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(FlError::Config(format!(
                "noise_multiplier must be finite and >= 0, got {}",
                self.noise_multiplier
            )));
        }
        Ok(())
    }
}

/// Scales `delta` to L2 norm at most `clip_norm`; returns the norm before clipping.
pub fn clip_to_norm(delta: &mut Params, clip_norm: f64) -> f64 {
    let norm = delta.l2_norm();
    if norm > clip_norm && norm > 0.0 {
        delta.scale((clip_norm / norm) as f32);
    }
    norm
}

/// Adds i.i.d. `N(0, std²)` noise to every value.
pub fn add_gaussian_noise<R: Rng + ?Sized>(
    params: &mut Params,
    std: f64,
    rng: &mut R,
) -> Result<()> {
    if std == 0.0 {
        return Ok(());
    }
    let normal =
        Normal::new(0.0, std).map_err(|e| FlError::Config(format!("noise std {std}: {e}")))?;
    for (_, t) in params.iter_mut() {
        for v in t.data_mut() {
            *v = (f64::from(*v) + normal.sample(rng)) as f32;
        }
    }
    Ok(())
}

/// The client side of DP: clips `params − global` to `dp.clip_norm` and, when
/// `dp.noise_multiplier > 0`, adds `N(0, (σ·S)²)` to every value of the clipped delta
/// (local DP); `params` becomes `global + clip(Δ) (+ noise)`. Returns the delta's norm
/// before clipping.
///
/// Outside a simulation `rng` must be unpredictable to the server (seeded from the OS):
/// noise the server can regenerate protects nothing.
pub fn privatize_update<R: Rng + ?Sized>(
    global: &Params,
    params: &mut Params,
    dp: &GaussianDp,
    rng: &mut R,
) -> Result<f64> {
    dp.validate()?;
    let mut delta = params.sub(global)?;
    let norm = clip_to_norm(&mut delta, dp.clip_norm);
    add_gaussian_noise(&mut delta, dp.noise_multiplier * dp.clip_norm, rng)?;
    let mut out = global.clone();
    out.add_scaled(&delta, 1.0)?;
    *params = out;
    Ok(norm)
}
