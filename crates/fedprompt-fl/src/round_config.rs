//! The round configuration: what the server tells each selected client with its task.
//!
//! On the wire it is a flat map of scalars ([`ClientConfig`]), as in Flower; every transport
//! (the simulator, gRPC, Flower messages) carries the same keys, named once in [`keys`].
//! [`RoundConfig`] is the typed view a client trains by, checked once when it is read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A scalar configuration value sent to clients with their instructions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// String.
    Str(String),
}

/// Per-round configuration sent to every selected client.
pub type ClientConfig = BTreeMap<String, ConfigValue>;

/// The keys of the round configuration that fedprompt's clients understand.
pub mod keys {
    /// The round being trained (fit) or the training rounds behind the global (evaluate).
    pub const ROUND: &str = "round";
    /// Local epochs this round.
    pub const EPOCHS: &str = "epochs";
    /// Local learning rate.
    pub const LEARNING_RATE: &str = "learning_rate";
    /// Local batch size.
    pub const BATCH_SIZE: &str = "batch_size";
    /// Cap on local steps per epoch.
    pub const MAX_STEPS_PER_EPOCH: &str = "max_steps_per_epoch";
    /// Base seed of local training (each client and round derives its own from it).
    pub const SEED: &str = "seed";
    /// FedProx's μ: weight of the proximal term anchoring local training to the global.
    pub const PROXIMAL_MU: &str = "proximal_mu";
    /// Client-side clipping: the client clips its update's delta `h_k − h_g` to this L2 norm
    /// before sending (Flower's `fixedclipping_mod` key).
    pub const CLIPPING_NORM: &str = "clipping_norm";
    /// Local DP: the client adds `N(0, (z·clipping_norm)²)` noise to its clipped delta.
    pub const DP_NOISE_MULTIPLIER: &str = "dp_noise_multiplier";

    /// Every key above.
    pub const ALL: [&str; 9] = [
        ROUND,
        EPOCHS,
        LEARNING_RATE,
        BATCH_SIZE,
        MAX_STEPS_PER_EPOCH,
        SEED,
        PROXIMAL_MU,
        CLIPPING_NORM,
        DP_NOISE_MULTIPLIER,
    ];
}

/// The typed round configuration. `None`: the client keeps its own setting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundConfig {
    /// See [`keys::ROUND`].
    pub round: Option<u64>,
    /// See [`keys::EPOCHS`] (at least 1).
    pub epochs: Option<usize>,
    /// See [`keys::LEARNING_RATE`] (finite, > 0).
    pub learning_rate: Option<f64>,
    /// See [`keys::BATCH_SIZE`] (at least 1).
    pub batch_size: Option<usize>,
    /// See [`keys::MAX_STEPS_PER_EPOCH`] (at least 1).
    pub max_steps_per_epoch: Option<usize>,
    /// See [`keys::SEED`].
    pub seed: Option<u64>,
    /// See [`keys::PROXIMAL_MU`] (finite, >= 0; 0 = plain FedAvg).
    pub proximal_mu: Option<f64>,
    /// See [`keys::CLIPPING_NORM`] (finite, > 0).
    pub clipping_norm: Option<f64>,
    /// See [`keys::DP_NOISE_MULTIPLIER`] (finite, >= 0; needs `clipping_norm`).
    pub dp_noise_multiplier: Option<f64>,
}

fn as_int(key: &str, v: &ConfigValue) -> Result<i64, String> {
    match v {
        ConfigValue::Int(i) => Ok(*i),
        ConfigValue::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Ok(*f as i64)
        }
        other => Err(format!("`{key}` must be an integer, got {}", show(other))),
    }
}

fn as_float(key: &str, v: &ConfigValue) -> Result<f64, String> {
    match v {
        ConfigValue::Float(f) => Ok(*f),
        ConfigValue::Int(i) => Ok(*i as f64),
        other => Err(format!("`{key}` must be a number, got {}", show(other))),
    }
}

fn show(v: &ConfigValue) -> String {
    match v {
        ConfigValue::Bool(b) => format!("the boolean {b}"),
        ConfigValue::Int(i) => i.to_string(),
        ConfigValue::Float(f) => f.to_string(),
        ConfigValue::Str(s) => format!("the string {s:?}"),
    }
}

fn positive(key: &str, v: &ConfigValue) -> Result<usize, String> {
    let i = as_int(key, v)?;
    if i < 1 {
        return Err(format!("`{key}` must be at least 1, got {i}"));
    }
    usize::try_from(i).map_err(|_| format!("`{key}` is too large: {i}"))
}

impl RoundConfig {
    /// Reads the keys fedprompt knows from `config`, checking types and ranges. Other keys are
    /// left alone (a Flower ServerApp may send its own).
    pub fn parse(config: &ClientConfig) -> Result<Self, String> {
        let mut out = RoundConfig::default();
        for (k, v) in config {
            match k.as_str() {
                keys::ROUND => {
                    let r = as_int(k, v)?;
                    out.round =
                        Some(u64::try_from(r).map_err(|_| format!("`{k}` must be >= 0, got {r}"))?);
                }
                keys::EPOCHS => out.epochs = Some(positive(k, v)?),
                keys::BATCH_SIZE => out.batch_size = Some(positive(k, v)?),
                keys::MAX_STEPS_PER_EPOCH => out.max_steps_per_epoch = Some(positive(k, v)?),
                keys::LEARNING_RATE => {
                    let x = as_float(k, v)?;
                    if !(x.is_finite() && x > 0.0) {
                        return Err(format!("`{k}` must be a finite number > 0, got {x}"));
                    }
                    out.learning_rate = Some(x);
                }
                keys::PROXIMAL_MU => {
                    let x = as_float(k, v)?;
                    if !(x.is_finite() && x >= 0.0) {
                        return Err(format!("`{k}` must be a finite number >= 0, got {x}"));
                    }
                    out.proximal_mu = Some(x);
                }
                keys::SEED => {
                    let s = as_int(k, v)?;
                    out.seed =
                        Some(u64::try_from(s).map_err(|_| format!("`{k}` must be >= 0, got {s}"))?);
                }
                keys::CLIPPING_NORM => {
                    let x = as_float(k, v)?;
                    if !(x.is_finite() && x > 0.0) {
                        return Err(format!("`{k}` must be a finite number > 0, got {x}"));
                    }
                    out.clipping_norm = Some(x);
                }
                keys::DP_NOISE_MULTIPLIER => {
                    let x = as_float(k, v)?;
                    if !(x.is_finite() && x >= 0.0) {
                        return Err(format!("`{k}` must be a finite number >= 0, got {x}"));
                    }
                    out.dp_noise_multiplier = Some(x);
                }
                _ => {}
            }
        }
        if out.dp_noise_multiplier.is_some() && out.clipping_norm.is_none() {
            return Err(format!(
                "`{}` needs `{}`: the noise is scaled to the clipping norm",
                keys::DP_NOISE_MULTIPLIER,
                keys::CLIPPING_NORM
            ));
        }
        Ok(out)
    }

    /// The client-side DP step this round asks for: clip to `clipping_norm`, then add noise
    /// with `dp_noise_multiplier` (0 when only clipping is asked).
    pub fn client_dp(&self) -> Option<crate::dp::GaussianDp> {
        self.clipping_norm.map(|clip_norm| crate::dp::GaussianDp {
            clip_norm,
            noise_multiplier: self.dp_noise_multiplier.unwrap_or(0.0),
        })
    }

    /// Like [`RoundConfig::parse`], but a key fedprompt does not know is an error too (for
    /// configuration files, where an unknown key is a typo).
    pub fn parse_strict(config: &ClientConfig) -> Result<Self, String> {
        if let Some(k) = config.keys().find(|k| !keys::ALL.contains(&k.as_str())) {
            return Err(format!(
                "unknown round-configuration key `{k}`; known keys: {}",
                keys::ALL.join(", ")
            ));
        }
        Self::parse(config)
    }

    /// The set values as a [`ClientConfig`].
    pub fn to_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        let int = |x: u64| ConfigValue::Int(i64::try_from(x).unwrap_or(i64::MAX));
        if let Some(v) = self.round {
            c.insert(keys::ROUND.into(), int(v));
        }
        if let Some(v) = self.epochs {
            c.insert(keys::EPOCHS.into(), int(v as u64));
        }
        if let Some(v) = self.learning_rate {
            c.insert(keys::LEARNING_RATE.into(), ConfigValue::Float(v));
        }
        if let Some(v) = self.batch_size {
            c.insert(keys::BATCH_SIZE.into(), int(v as u64));
        }
        if let Some(v) = self.max_steps_per_epoch {
            c.insert(keys::MAX_STEPS_PER_EPOCH.into(), int(v as u64));
        }
        if let Some(v) = self.seed {
            c.insert(keys::SEED.into(), int(v));
        }
        if let Some(v) = self.proximal_mu {
            c.insert(keys::PROXIMAL_MU.into(), ConfigValue::Float(v));
        }
        if let Some(v) = self.clipping_norm {
            c.insert(keys::CLIPPING_NORM.into(), ConfigValue::Float(v));
        }
        if let Some(v) = self.dp_noise_multiplier {
            c.insert(keys::DP_NOISE_MULTIPLIER.into(), ConfigValue::Float(v));
        }
        c
    }
}

/// The configuration a client receives: the operator's `base` settings, then the strategy's
/// round keys over them (the strategy decides `round` and `proximal_mu`).
pub fn merge_config(base: &ClientConfig, strategy: &ClientConfig) -> ClientConfig {
    let mut c = base.clone();
    c.extend(strategy.iter().map(|(k, v)| (k.clone(), v.clone())));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(items: &[(&str, ConfigValue)]) -> ClientConfig {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn parses_and_round_trips() {
        let c = cfg(&[
            (keys::ROUND, ConfigValue::Int(3)),
            (keys::EPOCHS, ConfigValue::Float(2.0)),
            (keys::LEARNING_RATE, ConfigValue::Int(1)),
            (keys::PROXIMAL_MU, ConfigValue::Float(0.01)),
            ("other", ConfigValue::Str("kept out".into())),
        ]);
        let r = RoundConfig::parse(&c).unwrap();
        assert_eq!(r.round, Some(3));
        assert_eq!(r.epochs, Some(2));
        assert_eq!(r.learning_rate, Some(1.0));
        assert_eq!(r.proximal_mu, Some(0.01));
        assert_eq!(RoundConfig::parse(&r.to_config()).unwrap(), r);
        assert!(RoundConfig::parse_strict(&c)
            .unwrap_err()
            .contains("unknown round-configuration key `other`"));
    }

    #[test]
    fn refuses_bad_values() {
        for (k, v, want) in [
            (keys::BATCH_SIZE, ConfigValue::Int(0), "at least 1"),
            (keys::EPOCHS, ConfigValue::Int(-1), "at least 1"),
            (keys::LEARNING_RATE, ConfigValue::Float(f64::NAN), "finite"),
            (
                keys::LEARNING_RATE,
                ConfigValue::Str("fast".into()),
                "a number",
            ),
            (keys::EPOCHS, ConfigValue::Float(1.5), "an integer"),
            (keys::PROXIMAL_MU, ConfigValue::Float(-0.1), ">= 0"),
            (keys::SEED, ConfigValue::Bool(true), "an integer"),
        ] {
            let e = RoundConfig::parse(&cfg(&[(k, v)])).unwrap_err();
            assert!(e.contains(k) && e.contains(want), "{k}: {e}");
        }
    }

    #[test]
    fn strategy_keys_win_over_base() {
        let base = cfg(&[
            (keys::EPOCHS, ConfigValue::Int(2)),
            (keys::ROUND, ConfigValue::Int(99)),
        ]);
        let strat = cfg(&[(keys::ROUND, ConfigValue::Int(4))]);
        let m = merge_config(&base, &strat);
        assert_eq!(m[keys::ROUND], ConfigValue::Int(4));
        assert_eq!(m[keys::EPOCHS], ConfigValue::Int(2));
    }
}
