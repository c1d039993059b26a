//! The client's part in a securely aggregated round: after training it advertises keys
//! and keeps its update; each later stage task gets the answer of its state machine
//! ([`fedprompt_fl::secagg::SecAggClient`]). Only the masked vector leaves the machine.

use fedprompt_fl::secagg::{ForwardedShares, Roster, SecAggClient, UnmaskRequest};
use fedprompt_fl::{FlError, Params};

use crate::error::{NetError, Result};
use crate::proto::SecAggStage;
use crate::secagg_wire::{flatten, from_json, masked_to_bytes, to_json, SecAggTask};

/// One round in progress: the state machine, the update it masks and its weight.
pub(super) struct Pending {
    pub(super) round: u64,
    client: SecAggClient,
    update: Vec<f32>,
    weight: u64,
}

/// Stage 1 after training `local` from `global`: fresh keys (from the operating system's
/// generator, via `rand::rng()`); returns the state and the `AdvertiseKeys` message.
pub(super) fn start(
    id: &str,
    task: &SecAggTask,
    round: u64,
    local: &Params,
    global: &Params,
    num_examples: u64,
) -> Result<(Pending, Vec<u8>)> {
    let update = flatten(&local.sub(global)?);
    let (client, msg) = SecAggClient::new(id, &task.config, &mut rand::rng())
        .map_err(|e| NetError::Fl(FlError::SecAgg(e)))?;
    let weight = if task.uniform_weights {
        1
    } else {
        num_examples
    };
    let pending = Pending {
        round,
        client,
        update,
        weight,
    };
    Ok((pending, to_json(&msg)?))
}

/// The answer to the server's message of `stage`: the bytes to upload.
pub(super) fn answer(
    p: &mut Pending,
    stage: SecAggStage,
    msg: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let mut rng = rand::rng();
    let json = |r: Result<Vec<u8>>| r.map_err(|e| e.to_string());
    match stage {
        SecAggStage::ShareKeys => {
            let roster: Roster = from_json(msg, "roster")?;
            let m = p
                .client
                .share_keys(&roster, &mut rng)
                .map_err(|e| e.to_string())?;
            json(to_json(&m))
        }
        SecAggStage::MaskedInput => {
            let fwd: ForwardedShares = from_json(msg, "forwarded shares")?;
            let m = p
                .client
                .masked_input(&fwd, &p.update, p.weight, &mut rng)
                .map_err(|e| e.to_string())?;
            Ok(masked_to_bytes(&m))
        }
        SecAggStage::Unmask => {
            let req: UnmaskRequest = from_json(msg, "unmask request")?;
            let m = p.client.unmask(&req).map_err(|e| e.to_string())?;
            json(to_json(&m))
        }
        SecAggStage::AdvertiseKeys | SecAggStage::Unspecified => Err(format!(
            "no task of stage {stage:?} is expected from the server"
        )),
    }
}
