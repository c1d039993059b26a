//! The server's DP and weight rules: the accounting (`q = m / K` over the clients of the
//! tokens file), the round-configuration keys that ask clients for local DP, and the caps on
//! claimed example counts.

use fedprompt_fl::privacy::{privacy_accounting, PrivacyAccounting};
use fedprompt_fl::{ClientConfig, ClientWeights, Phase, RoundConfig};

use crate::config::ServeConfig;
use crate::error::{NetError, Result};

/// The run's accounting with `known` clients in the tokens file, if it has DP noise.
///
/// `q` is the share of the tokens file sampled each round; with fewer clients connected
/// the true rate is higher, so keep `min_available_clients` near the population.
pub(crate) fn accounting(cfg: &ServeConfig, known: usize) -> Result<Option<PrivacyAccounting>> {
    let m = cfg.policy.sampling(Phase::Fit).num_sampled(known)?;
    let q = m as f64 / known.max(1) as f64;
    Ok(privacy_accounting(&cfg.strategy, cfg.privacy.as_ref(), q)?)
}

/// The operator's `[client_config]` with the local-DP keys of `[privacy.local]`, the
/// settings of `[secure_aggregation]` and the upload encoding of `[compression]` over it.
pub(crate) fn client_config(cfg: &ServeConfig) -> Result<ClientConfig> {
    let mut c = cfg.client_config.clone();
    if let Some(l) = cfg.privacy.as_ref().and_then(|p| p.local) {
        let keys = RoundConfig {
            clipping_norm: Some(l.clip_norm),
            dp_noise_multiplier: Some(l.noise_multiplier),
            ..RoundConfig::default()
        }
        .to_config();
        c.extend(keys);
    }
    if let Some(sa) = &cfg.secure_aggregation {
        let task = crate::secagg_wire::SecAggTask {
            config: sa.clone(),
            uniform_weights: cfg.weights.uniform
                || cfg.privacy.as_ref().is_some_and(|p| p.local.is_some()),
        };
        let (k, v) = crate::secagg_wire::config_entry(&task)?;
        c.insert(k, v);
    }
    if let Some(comp) = &cfg.compression {
        let (k, v) = crate::upload::config_entry(comp)?;
        c.insert(k, v);
    }
    Ok(c)
}

/// `[weights]`, checked against the tokens file's clients; uniform under local DP.
pub(crate) fn client_weights(cfg: &ServeConfig, known: &[String]) -> Result<ClientWeights> {
    let mut w = cfg.weights.clone();
    if let Some(c) = w.declared.keys().find(|c| !known.contains(c)) {
        return Err(NetError::Config(format!(
            "[weights] declared names `{c}`, which is not a client of the tokens file `{}`",
            cfg.tokens.display()
        )));
    }
    if w.max_examples_per_client == Some(0) {
        return Err(NetError::Config(
            "[weights] max_examples_per_client must be at least 1".into(),
        ));
    }
    if cfg.privacy.as_ref().is_some_and(|p| p.local.is_some()) {
        w.uniform = true;
    }
    Ok(w)
}
