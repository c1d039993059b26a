//! Secure aggregation over gRPC: how the messages of `fedprompt_fl::secagg` travel.
//!
//! The server names the round's settings in the FIT task's configuration under
//! [`SECURE_AGGREGATION`] (JSON [`SecAggTask`]); every stage message is JSON of the core's
//! serde types, except the masked vector, which is sent as little-endian `u32` words (4
//! bytes a value, as the core's [`fedprompt_fl::secagg::WireLen`] counts them).

use fedprompt_fl::secagg::{MaskedInput, SecAggConfig};
use fedprompt_fl::{ClientConfig, ConfigValue, Params, ParamsError};
use serde::{Deserialize, Serialize};

use crate::error::{NetError, Result};

/// Round-configuration key of a securely aggregated training round: JSON
/// `{"config": <the [secure_aggregation] table>, "uniform_weights": bool}`.
pub const SECURE_AGGREGATION: &str = "secure_aggregation";

/// What a client needs to take part in a securely aggregated round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecAggTask {
    /// The settings, the same for every client and the server.
    pub(crate) config: SecAggConfig,
    /// Put weight 1 in the masked vector instead of the example count (local DP: the
    /// accounting assumes uniform weights).
    pub(crate) uniform_weights: bool,
}

/// The configuration entry announcing secure aggregation.
pub(crate) fn config_entry(task: &SecAggTask) -> Result<(String, ConfigValue)> {
    let json = serde_json::to_string(task)
        .map_err(|e| NetError::Config(format!("[secure_aggregation] cannot be described: {e}")))?;
    Ok((SECURE_AGGREGATION.to_string(), ConfigValue::Str(json)))
}

/// The secure aggregation a round asks for, if any.
pub(crate) fn requested(config: &ClientConfig) -> Result<Option<SecAggTask>> {
    let Some(v) = config.get(SECURE_AGGREGATION) else {
        return Ok(None);
    };
    let bad = |why: String| {
        NetError::Protocol(format!(
            "the server asks for secure aggregation with settings this client does not \
             understand ({why}); use the same fedprompt version as the server"
        ))
    };
    let ConfigValue::Str(json) = v else {
        return Err(bad("not a string".into()));
    };
    let t: SecAggTask = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    t.config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(Some(t))
}

/// JSON bytes of a stage message.
pub(crate) fn to_json<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(msg).map_err(|e| NetError::Protocol(format!("encoding a message: {e}")))
}

/// A stage message from JSON bytes; `what` names it in the error.
pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &str,
) -> std::result::Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the {what} message is malformed: {e}"))
}

/// The masked vector as little-endian `u32` words (the sender is the authenticated caller).
pub(crate) fn masked_to_bytes(m: &MaskedInput) -> Vec<u8> {
    m.vector.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The masked vector of `client_id` from little-endian `u32` words.
pub(crate) fn masked_from_bytes(
    client_id: &str,
    bytes: &[u8],
) -> std::result::Result<MaskedInput, String> {
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "the masked input has {} bytes, not a whole number of u32 words",
            bytes.len()
        ));
    }
    Ok(MaskedInput {
        client_id: client_id.to_string(),
        vector: bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

/// The values of `p`, tensor after tensor in name order (the order of [`unflatten`]).
pub(crate) fn flatten(p: &Params) -> Vec<f32> {
    p.iter()
        .flat_map(|(_, t)| t.data().iter().copied())
        .collect()
}

/// Values in [`flatten`]'s order back into `like`'s layout.
pub(crate) fn unflatten(like: &Params, values: &[f32]) -> std::result::Result<Params, ParamsError> {
    let expected = like.num_elements();
    if values.len() != expected {
        return Err(ParamsError::DataLength {
            name: "secure aggregate".into(),
            shape: vec![expected],
            expected,
            actual: values.len(),
        });
    }
    let mut out = like.zeros_like();
    let mut rest = values;
    for (_, t) in out.iter_mut() {
        let (head, tail) = rest.split_at(t.data().len());
        t.data_mut().copy_from_slice(head);
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_vectors_and_settings_survive_the_wire() {
        let m = MaskedInput {
            client_id: "c".into(),
            vector: vec![0, 1, u32::MAX, 123_456_789],
        };
        assert_eq!(masked_from_bytes("c", &masked_to_bytes(&m)).unwrap(), m);
        assert!(masked_from_bytes("c", &[1, 2, 3]).is_err());
        let task = SecAggTask {
            config: toml::from_str("threshold = 2\nclip_range = 1.0").unwrap(),
            uniform_weights: false,
        };
        let (k, v) = config_entry(&task).unwrap();
        assert_eq!(
            requested(&ClientConfig::from([(k, v)])).unwrap(),
            Some(task)
        );
        let mut p = Params::new();
        p.insert_vec("b", vec![2], vec![3.0, 4.0]).unwrap();
        p.insert_vec("a", vec![1], vec![1.0]).unwrap();
        let flat = flatten(&p);
        assert_eq!(unflatten(&p, &flat).unwrap(), p);
        assert!(unflatten(&p, &flat[1..]).is_err());
    }
}
