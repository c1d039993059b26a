//! Compressed uploads over gRPC (`[compression]` of `federation.toml`).
//!
//! The server names the codec in each training round's configuration, under the key
//! [`UPDATE_ENCODING`] (the [`Compression`] as JSON); the client uploads its delta from the
//! global it received, encoded with that codec ([`Encoder`]); the server decodes it with
//! [`fedprompt_fl::FitRound::submit_encoded`]. The encoding carries its codec's tag, so an
//! upload in another codec (or plain parameters) is refused with a message naming both.

use fedprompt_fl::codec::{encode_once, Compression, ErrorFeedback};
use fedprompt_fl::{ClientConfig, ConfigValue, Params};

use crate::error::{NetError, Result};

/// Round-configuration key naming the upload codec: a JSON [`Compression`], e.g.
/// `{"codec":{"type":"int8"},"error_feedback":null}`. Absent: plain f32 parameters.
pub const UPDATE_ENCODING: &str = "update_encoding";

/// The configuration entry that asks clients to encode their uploads with `c`.
pub(crate) fn config_entry(c: &Compression) -> Result<(String, ConfigValue)> {
    let json = serde_json::to_string(c)
        .map_err(|e| NetError::Config(format!("[compression] cannot be described: {e}")))?;
    Ok((UPDATE_ENCODING.to_string(), ConfigValue::Str(json)))
}

/// The encoding a round asks for, if any.
pub(crate) fn requested(config: &ClientConfig) -> Result<Option<Compression>> {
    let Some(v) = config.get(UPDATE_ENCODING) else {
        return Ok(None);
    };
    let unknown = |why: String| {
        NetError::Protocol(format!(
            "the server asks for the update encoding {v:?}, which this client does not \
             understand ({why}); use the same fedprompt version as the server"
        ))
    };
    let ConfigValue::Str(json) = v else {
        return Err(unknown("not a string".into()));
    };
    let c: Compression = serde_json::from_str(json).map_err(|e| unknown(e.to_string()))?;
    c.codec.validate().map_err(|e| unknown(e.to_string()))?;
    Ok(Some(c))
}

/// A client's encoder: with error feedback, the residual of past rounds is kept in memory
/// (a restarted `fedprompt join` starts again from zero).
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    feedback: ErrorFeedback,
}

impl Encoder {
    /// Encodes `local − global` as `c` says; the bytes to upload.
    pub(crate) fn encode(
        &mut self,
        c: &Compression,
        local: &Params,
        global: &Params,
    ) -> Result<Vec<u8>> {
        let delta = local.sub(global)?;
        let enc = if c.feedback() {
            self.feedback.encode(&c.codec, &delta)?
        } else {
            encode_once(&c.codec, &delta)?
        };
        Ok(enc.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedprompt_fl::codec::Codec;

    #[test]
    fn the_requested_encoding_survives_the_round_configuration() {
        for codec in [
            Codec::F16,
            Codec::Int8,
            Codec::Int8Rows,
            Codec::TopK { fraction: 0.25 },
        ] {
            let c = Compression {
                codec,
                error_feedback: Some(true),
            };
            let (k, v) = config_entry(&c).unwrap();
            let cfg = ClientConfig::from([(k, v)]);
            assert_eq!(requested(&cfg).unwrap(), Some(c));
        }
        assert_eq!(requested(&ClientConfig::new()).unwrap(), None);
    }

    #[test]
    fn an_unknown_encoding_is_a_clear_error() {
        let cfg = ClientConfig::from([(
            UPDATE_ENCODING.to_string(),
            ConfigValue::Str(r#"{"codec":{"type":"int4"}}"#.into()),
        )]);
        let e = requested(&cfg).unwrap_err().to_string();
        assert!(e.contains("does not understand"), "{e}");
        let cfg = ClientConfig::from([(UPDATE_ENCODING.to_string(), ConfigValue::Int(3))]);
        assert!(requested(&cfg).is_err());
    }
}
