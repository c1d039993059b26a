//! Compressed uploads: a client encodes its delta from the global model with a [`Codec`],
//! optionally with error feedback (Seide et al. 2014; Stich et al. 2018): what a lossy
//! codec did not send is kept and added to the next round's delta, so nothing is lost for
//! good, only delayed.

use serde::{Deserialize, Serialize};

use super::Codec;
use crate::error::Result;
use crate::params::Params;

/// How clients compress their uploads (`[federation.compression]` in an experiment file).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// The codec (`{ type = "f16" }`, `"int8"`, `"int8-rows"`, `"int4-rows"`, `{ type = "topk",
    /// fraction = 0.1 }`).
    pub codec: Codec,
    /// Keep the residual and add it to the next delta (default: on for top-k, off otherwise).
    #[serde(default)]
    pub error_feedback: Option<bool>,
}

impl Compression {
    /// Whether error feedback is on.
    pub fn feedback(&self) -> bool {
        self.error_feedback
            .unwrap_or(matches!(self.codec, Codec::TopK { .. }))
    }

    /// A short label for tables: the codec, its fraction, `+ef` with error feedback.
    pub fn label(&self) -> String {
        let base = match self.codec {
            Codec::TopK { fraction } => format!("topk {}%", fraction * 100.0),
            c => c.name().to_string(),
        };
        if self.feedback() {
            format!("{base}+ef")
        } else {
            base
        }
    }
}

/// One client's error-feedback state: the part of its past deltas not yet sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorFeedback {
    residual: Option<Params>,
}

/// What [`ErrorFeedback::encode`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The bytes to upload.
    pub bytes: Vec<u8>,
    /// What the server decodes from them.
    pub sent: Params,
}

impl ErrorFeedback {
    /// A client with nothing held back.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client holding back `residual` (as saved from [`ErrorFeedback::residual`]).
    pub fn from_residual(residual: Params) -> Self {
        Self {
            residual: Some(residual),
        }
    }

    /// What is held back (zero before the first round).
    pub fn residual(&self) -> Option<&Params> {
        self.residual.as_ref()
    }

    /// Encodes `delta` plus the residual with `codec`; the new residual is what the decoder
    /// will not see: `(delta + residual) − decode(encode(delta + residual))`. With top-k the
    /// sent values are copied exactly, so `sent + residual' = delta + residual` holds
    /// exactly; with the quantising codecs it holds up to f32 rounding.
    pub fn encode(&mut self, codec: &Codec, delta: &Params) -> Result<Encoded> {
        let mut corrected = delta.clone();
        if let Some(r) = &self.residual {
            corrected.add_scaled(r, 1.0)?;
        }
        let bytes = codec.encode(&corrected)?;
        let sent = codec.decode(&bytes, &corrected.layout())?;
        self.residual = Some(corrected.sub(&sent)?);
        Ok(Encoded { bytes, sent })
    }
}

/// Encodes `delta` without feedback: the bytes and what the server decodes.
pub fn encode_once(codec: &Codec, delta: &Params) -> Result<Encoded> {
    let bytes = codec.encode(delta)?;
    let sent = codec.decode(&bytes, &delta.layout())?;
    Ok(Encoded { bytes, sent })
}
