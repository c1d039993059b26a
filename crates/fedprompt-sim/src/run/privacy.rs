//! Differential privacy and weight caps in a simulated federated run: the accounting
//! (`q = m / K`), the coordinator's caps on claimed example counts, the clients' local-DP
//! step, and the note the results carry.

use fedprompt_fl::dp::privatize_update;
use fedprompt_fl::privacy::{privacy_accounting, DpMode, PrivacyAccounting};
use fedprompt_fl::{derive_seed, ClientWeights, Params, RoundConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::plan::RunPlan;
use crate::error::{Result, SimError};

/// The run's accounting with `m` of `k` clients sampled each round, if it has DP noise.
pub(crate) fn accounting(
    plan: &RunPlan<'_>,
    m: usize,
    k: usize,
) -> Result<Option<PrivacyAccounting>> {
    let q = m as f64 / k.max(1) as f64;
    privacy_accounting(&plan.strategy, plan.privacy.as_ref(), q).map_err(|e| SimError::Run {
        run: plan.spec.label.clone(),
        msg: e.to_string(),
    })
}

/// The coordinator's caps: `max_examples_per_client`, and uniform weights under local DP
/// (each noisy update must weigh the same for the noise to be the same in the average).
pub(crate) fn client_weights(plan: &RunPlan<'_>) -> ClientWeights {
    ClientWeights {
        max_examples_per_client: plan.max_examples_per_client,
        uniform: plan.privacy.as_ref().is_some_and(|p| p.local.is_some()),
        ..ClientWeights::default()
    }
}

/// The client-side DP step the round asks for (`clipping_norm`, `dp_noise_multiplier`), with
/// noise from a stream derived from the client's round seed (reproducible: a simulation).
pub(crate) fn client_step(
    global: &Params,
    params: &mut Params,
    rc: &RoundConfig,
    client_seed: u64,
) -> fedprompt_fl::Result<()> {
    if let Some(dp) = rc.client_dp() {
        let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(client_seed, &["local-dp"]));
        privatize_update(global, params, &dp, &mut rng)?;
    }
    Ok(())
}

/// What the results say about the run's privacy after `rounds` rounds.
pub(crate) fn note(acc: &PrivacyAccounting, rounds: u64, budget_stop: Option<&str>) -> String {
    let unit = match acc.mode {
        DpMode::Central => "client-level, towards whoever sees the global models",
        DpMode::Local => "client-level, towards the server too (per client, every round)",
    };
    let mut s = format!(
        "epsilon {:.4} after {rounds} rounds ({}; {unit})",
        acc.epsilon(rounds),
        acc.describe()
    );
    if let Some(max) = acc.max_epsilon {
        s.push_str(&format!("; max_epsilon {max}"));
    }
    if let Some(why) = budget_stop {
        s.push_str(&format!("; {why}"));
    }
    s
}
