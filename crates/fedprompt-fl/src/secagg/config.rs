//! The public parameters of a secure-aggregation round and the fixed-point quantiser they
//! define.
//!
//! Masks cancel only in exact arithmetic, so every client maps its update to integers
//! modulo `2^bits` first. A value `x` is clipped to `[−clip_range, clip_range]` and mapped
//! to a level `q ∈ {0, …, L−1}` with step `Δ = 2·clip_range / (L−1)` (deterministic or
//! stochastic rounding). For weighted averaging the client sends `w·q` for every coordinate
//! and its weight `w` itself as one extra coordinate, where `w = min(num_examples,
//! max_weight)`. The server unmasks `Σ w·q` and `Σ w` and divides: the weighted mean level,
//! mapped back by `x = level·Δ − clip_range`. `L` is chosen so that no sum can wrap:
//! `(L−1) · n · max_weight ≤ 2^bits − 1` for the `n` clients of the round.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::{DropStage, SecAggError};
use crate::update::ClientId;

/// How a clipped value is rounded to its quantisation level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// To the nearest level: error at most `Δ/2` per value, biased.
    #[default]
    Nearest,
    /// Up with probability equal to the fractional part: unbiased, error below `Δ`.
    Stochastic,
}

/// Secure aggregation (SecAgg+) settings, the same for the server and every client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAggConfig {
    /// Shamir threshold `t`: shares from `t` of a client's neighbours recover its secrets.
    /// At least `⌊k/2⌋ + 1` for neighbourhood size `k` (so no two disjoint groups of
    /// neighbours can each recover a secret) and at most `k`.
    pub threshold: usize,
    /// Neighbours `k` of each client in the masking graph (even, ≥ 2). Absent: every
    /// client is every other's neighbour (the original SecAgg). Bell et al. (2020) show
    /// that `k = O(log n)` suffices; [`suggested_neighbours`] gives a value of that order.
    #[serde(default)]
    pub neighbours: Option<usize>,
    /// Values of the update (the delta from the global) are clipped to `[−clip_range,
    /// clip_range]` before quantisation.
    pub clip_range: f32,
    /// The masks and sums live modulo `2^bits`, `bits` in 8..=32 (default 32).
    #[serde(default = "default_bits")]
    pub bits: u32,
    /// A client's weight (its example count) is capped at this value so the weighted sum
    /// cannot overflow (default 10 000).
    #[serde(default = "default_max_weight")]
    pub max_weight: u64,
    /// Rounding of values to levels (`"nearest"` or `"stochastic"`, default nearest).
    #[serde(default)]
    pub rounding: Rounding,
    /// Simulation only (the in-process simulator; `fedprompt serve` refuses it): clients
    /// made to drop out of every round after each stage.
    #[serde(default, skip_serializing_if = "SimulatedDropouts::is_none")]
    pub simulate_dropouts: SimulatedDropouts,
}

/// How many of a round's clients a simulation makes drop after each stage, picked at random
/// (seeded) each round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedDropouts {
    /// Clients that advertise keys and then fall silent.
    #[serde(default)]
    pub after_advertising: usize,
    /// Clients that share keys and send no masked input.
    #[serde(default)]
    pub after_sharing: usize,
    /// Clients that send a masked input and do not answer the unmask request.
    #[serde(default)]
    pub after_masking: usize,
}

impl SimulatedDropouts {
    /// Whether no client drops.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// The clients of `ids` that drop and when, drawn with `seed`.
    pub fn pick(
        &self,
        ids: &[ClientId],
        seed: u64,
    ) -> Result<BTreeMap<ClientId, DropStage>, SecAggError> {
        let total = self.after_advertising + self.after_sharing + self.after_masking;
        if total > ids.len() {
            return Err(SecAggError::Config(format!(
                "simulate_dropouts asks for {total} dropouts among {} clients",
                ids.len()
            )));
        }
        let mut order = ids.to_vec();
        order.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
        let stages = std::iter::repeat_n(DropStage::AfterAdvertising, self.after_advertising)
            .chain(std::iter::repeat_n(
                DropStage::AfterSharing,
                self.after_sharing,
            ))
            .chain(std::iter::repeat_n(
                DropStage::AfterMasking,
                self.after_masking,
            ));
        Ok(order.into_iter().zip(stages).collect())
    }
}

fn default_bits() -> u32 {
    32
}
fn default_max_weight() -> u64 {
    10_000
}

/// A neighbourhood size of order `log n` following Bell et al. (2020): the smallest even
/// `k ≥ 3·log₂ n`, at most `n − 1`. A heuristic of the right order, not their proven
/// constant; raise it when many clients may drop or collude.
pub fn suggested_neighbours(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let k = (3.0 * (n as f64).log2()).ceil() as usize;
    let k = k + k % 2;
    k.clamp(2, n - 1)
}

impl SecAggConfig {
    /// Checks the settings that do not depend on the number of clients.
    pub fn validate(&self) -> Result<(), SecAggError> {
        let bad = |m: String| Err(SecAggError::Config(m));
        if self.threshold < 1 {
            return bad("threshold must be at least 1".into());
        }
        if let Some(k) = self.neighbours {
            if k < 2 || k % 2 != 0 {
                return bad(format!(
                    "neighbours = {k}: the masking graph needs an even number of neighbours, at least 2"
                ));
            }
        }
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            return bad(format!(
                "clip_range = {} must be a positive number",
                self.clip_range
            ));
        }
        if !(8..=32).contains(&self.bits) {
            return bad(format!("bits = {} must be between 8 and 32", self.bits));
        }
        if self.max_weight < 1 {
            return bad("max_weight must be at least 1".into());
        }
        Ok(())
    }

    /// Neighbourhood size among `n` clients: `min(neighbours, n − 1)`.
    pub fn degree(&self, n: usize) -> usize {
        let all = n.saturating_sub(1);
        self.neighbours.map_or(all, |k| k.min(all))
    }

    /// Checks the settings against a round of `n` clients.
    pub fn validate_for(&self, n: usize) -> Result<(), SecAggError> {
        self.validate()?;
        let k = self.degree(n);
        if self.threshold > k {
            return Err(SecAggError::TooFewClients {
                stage: "advertise keys",
                have: n,
                need: self.threshold + 1,
                why: format!(
                    "each client's secrets are shared among its {k} neighbour(s), fewer than the threshold {}",
                    self.threshold
                ),
            });
        }
        if 2 * self.threshold <= k {
            return Err(SecAggError::Config(format!(
                "threshold {} is at most half the {k} neighbours: two disjoint groups could each \
                 recover a client's secrets; use at least {}",
                self.threshold,
                k / 2 + 1
            )));
        }
        Quantiser::new(self, n).map(|_| ())
    }
}

/// The fixed-point map of a round with `n` clients (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Quantiser {
    clip: f64,
    /// `L − 1`: the highest level.
    top: u64,
    max_weight: u64,
    mask: u32,
    rounding: Rounding,
}

impl Quantiser {
    /// The quantiser for `n` clients; errors when `2^bits` cannot hold `n · max_weight`.
    pub fn new(cfg: &SecAggConfig, n: usize) -> Result<Self, SecAggError> {
        let modulus_max = if cfg.bits == 32 {
            u64::from(u32::MAX)
        } else {
            (1u64 << cfg.bits) - 1
        };
        let per_level = (n.max(1) as u64).saturating_mul(cfg.max_weight);
        let top = modulus_max / per_level;
        if top < 1 {
            return Err(SecAggError::Config(format!(
                "bits = {} cannot hold {n} clients × max_weight {}: raise bits or lower max_weight",
                cfg.bits, cfg.max_weight
            )));
        }
        Ok(Self {
            clip: f64::from(cfg.clip_range),
            top,
            max_weight: cfg.max_weight,
            mask: modulus_max as u32,
            rounding: cfg.rounding,
        })
    }

    /// Quantisation step `Δ = 2·clip_range / (L−1)`.
    pub fn step(&self) -> f64 {
        2.0 * self.clip / self.top as f64
    }

    /// Largest error of the unmasked weighted mean against the weighted mean of the
    /// clipped values, per coordinate: `Δ/2` (nearest) or `Δ` (stochastic), plus the f32
    /// rounding of the result.
    pub fn error_bound(&self) -> f64 {
        let q = match self.rounding {
            Rounding::Nearest => self.step() / 2.0,
            Rounding::Stochastic => self.step(),
        };
        q + self.clip * f64::from(f32::EPSILON)
    }

    /// `2^bits − 1`: reduces a `u32` modulo `2^bits`.
    pub fn modulus_mask(&self) -> u32 {
        self.mask
    }

    /// The weight a client with `num_examples` sends: `min(num_examples, max_weight)`.
    pub fn weight(&self, num_examples: u64) -> u64 {
        num_examples.min(self.max_weight)
    }

    /// `[w·q(x₁), …, w·q(x_d), w]` for `w = weight(num_examples)`.
    pub fn encode<R: RngCore + CryptoRng + ?Sized>(
        &self,
        values: &[f32],
        num_examples: u64,
        rng: &mut R,
    ) -> Result<Vec<u32>, SecAggError> {
        let w = self.weight(num_examples);
        let mut out = Vec::with_capacity(values.len() + 1);
        for (i, &x) in values.iter().enumerate() {
            if !x.is_finite() {
                return Err(SecAggError::Malformed(format!(
                    "update value {x} at index {i} is not finite"
                )));
            }
            let scaled = (f64::from(x).clamp(-self.clip, self.clip) + self.clip) / self.step();
            let level = match self.rounding {
                Rounding::Nearest => scaled.round(),
                Rounding::Stochastic => {
                    let floor = scaled.floor();
                    // 53 random bits: a uniform draw in [0, 1).
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    floor + f64::from(u8::from(u < scaled - floor))
                }
            };
            let level = (level as u64).min(self.top);
            // w·level ≤ max_weight·top < 2^bits: fits u32 and needs no reduction.
            out.push((w * level) as u32);
        }
        out.push(w as u32);
        Ok(out)
    }

    /// The weighted mean of the clipped values from the unmasked sum (`d + 1` values, the
    /// last being the total weight).
    pub fn decode(&self, sum: &[u32]) -> Result<(Vec<f32>, u64), SecAggError> {
        let (&total, coords) = sum
            .split_last()
            .ok_or_else(|| SecAggError::Malformed("empty aggregate".into()))?;
        let total = u64::from(total);
        if total == 0 {
            return Err(SecAggError::Malformed(
                "the surviving clients' total weight is 0".into(),
            ));
        }
        let step = self.step();
        let values = coords
            .iter()
            .map(|&s| (f64::from(s) / total as f64 * step - self.clip) as f32)
            .collect();
        Ok((values, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn cfg(bits: u32, rounding: Rounding) -> SecAggConfig {
        SecAggConfig {
            threshold: 2,
            neighbours: None,
            clip_range: 0.5,
            bits,
            max_weight: 100,
            rounding,
            simulate_dropouts: SimulatedDropouts::default(),
        }
    }

    #[test]
    fn sums_of_n_clients_cannot_wrap() {
        for bits in [8, 16, 24, 32] {
            for n in [1, 2, 5, 10] {
                let c = cfg(bits, Rounding::Nearest);
                let Ok(q) = Quantiser::new(&c, n) else {
                    // Only when 2^bits − 1 < n · max_weight.
                    assert!((1u64 << bits) - 1 < n as u64 * 100);
                    continue;
                };
                let mut rng = ChaCha20Rng::seed_from_u64(1);
                let top = q.encode(&[0.5], 1_000, &mut rng).unwrap();
                // The largest possible per-client value, n times, stays below 2^bits.
                let sum: u64 = (0..n).map(|_| u64::from(top[0])).sum();
                assert!(sum <= u64::from(q.modulus_mask()), "bits {bits} n {n}");
                assert_eq!(top[1], 100, "weight capped at max_weight");
            }
        }
    }

    #[test]
    fn decode_inverts_encode_within_the_bound() {
        for rounding in [Rounding::Nearest, Rounding::Stochastic] {
            let q = Quantiser::new(&cfg(24, rounding), 3).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(2);
            let xs: Vec<f32> = (0..200).map(|i| (i as f32 / 199.0 - 0.5) * 0.999).collect();
            let enc = q.encode(&xs, 7, &mut rng).unwrap();
            let (dec, w) = q.decode(&enc).unwrap();
            assert_eq!(w, 7);
            for (a, b) in xs.iter().zip(&dec) {
                assert!(
                    f64::from((a - b).abs()) <= q.error_bound(),
                    "{rounding:?}: {a} vs {b}, bound {}",
                    q.error_bound()
                );
            }
        }
    }

    #[test]
    fn values_beyond_the_range_are_clipped() {
        let q = Quantiser::new(&cfg(32, Rounding::Nearest), 2).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (dec, _) = q
            .decode(&q.encode(&[7.0, -7.0], 1, &mut rng).unwrap())
            .unwrap();
        assert!((dec[0] - 0.5).abs() < 1e-6 && (dec[1] + 0.5).abs() < 1e-6);
        assert!(q.encode(&[f32::NAN], 1, &mut rng).is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = cfg(32, Rounding::Nearest);
        c.bits = 40;
        assert!(c.validate().unwrap_err().to_string().contains("bits"));
        let mut c = cfg(8, Rounding::Nearest);
        c.max_weight = 1000;
        let e = Quantiser::new(&c, 3).unwrap_err().to_string();
        assert!(e.contains("raise bits"), "{e}");
        let mut c = cfg(32, Rounding::Nearest);
        c.neighbours = Some(3);
        assert!(c.validate().unwrap_err().to_string().contains("even"));
        let mut c = cfg(32, Rounding::Nearest);
        c.threshold = 1;
        assert!(c.validate_for(4).unwrap_err().to_string().contains("half"));
        c.threshold = 4;
        assert!(c.validate_for(4).is_err());
        c.threshold = 2;
        assert!(c.validate_for(4).is_ok());
    }

    #[test]
    fn simulated_dropouts_pick_the_requested_numbers() {
        let ids: Vec<ClientId> = (0..10).map(|i| format!("c{i}")).collect();
        let d = SimulatedDropouts {
            after_advertising: 1,
            after_sharing: 2,
            after_masking: 3,
        };
        let picked = d.pick(&ids, 5).unwrap();
        let count = |s: DropStage| picked.values().filter(|v| **v == s).count();
        assert_eq!(count(DropStage::AfterAdvertising), 1);
        assert_eq!(count(DropStage::AfterSharing), 2);
        assert_eq!(count(DropStage::AfterMasking), 3);
        assert_eq!(picked, d.pick(&ids, 5).unwrap());
        assert_ne!(picked, d.pick(&ids, 6).unwrap());
        assert!(SimulatedDropouts::default()
            .pick(&ids, 1)
            .unwrap()
            .is_empty());
        let e = d.pick(&ids[..5], 1).unwrap_err().to_string();
        assert!(e.contains("6 dropouts among 5"), "{e}");
    }

    #[test]
    fn suggested_neighbours_grow_like_log_n() {
        assert_eq!(suggested_neighbours(1), 0);
        assert_eq!(suggested_neighbours(3), 2);
        assert_eq!(suggested_neighbours(100), 20); // 3·log2(100) = 19.9 → 20
        assert_eq!(suggested_neighbours(10_000), 40); // 39.9 → 40
        assert!(suggested_neighbours(1_000_000) < 100);
    }
}
