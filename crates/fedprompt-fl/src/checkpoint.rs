//! Checkpoints: a [`ServerState`] as one safetensors file, written atomically.
//!
//! Tensors: `global/<name>` (F32), `opt.m/<name>` and `opt.v/<name>` (F64), and the caller's
//! [`Annex`] tensors `annex/<name>` (F32). Everything else is JSON under the
//! `fedprompt.checkpoint` metadata key (the annex's JSON under `fedprompt.annex`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::comm::CommLedger;
use crate::error::{FlError, Result};
use crate::params::{
    dtype_name, f32s_to_le, f64s_to_le, le_to_f32s, le_to_f64s, BytesView, Params,
};
use crate::server::ServerState;
use crate::strategy::{FedOptState, StrategyState};

const META_KEY: &str = "fedprompt.checkpoint";
/// Metadata key of the caller's annex (see [`ServerState::to_bytes_with_annex`]).
const ANNEX_KEY: &str = "fedprompt.annex";
const FORMAT_VERSION: u32 = 1;
const GLOBAL: &str = "global/";
const OPT_M: &str = "opt.m/";
const OPT_V: &str = "opt.v/";
const ANNEX: &str = "annex/";

/// What a caller keeps beside the server's state in the same checkpoint file, so that one
/// atomic write saves both and a kill can never leave one without the other: its own progress
/// as text (e.g. JSON) and its own f32 tensors (e.g. the simulator's error-feedback residuals).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annex {
    /// The caller's text.
    pub text: Option<String>,
    /// The caller's tensors.
    pub tensors: Params,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format_version: u32,
    round: u64,
    strategy: String,
    seed: u64,
    /// `None` for stateless strategies, else the optimiser step count.
    opt_t: Option<u64>,
    ledger: CommLedger,
}

fn bad(msg: impl Into<String>) -> FlError {
    FlError::Checkpoint(msg.into())
}

impl ServerState {
    /// Serialises to checkpoint bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_with_annex(&Annex::default())
    }

    /// Like [`ServerState::to_bytes`], with the caller's [`Annex`] in the same file.
    pub fn to_bytes_with_annex(&self, annex: &Annex) -> Result<Vec<u8>> {
        let opt = match &self.strategy_state {
            StrategyState::Stateless => None,
            StrategyState::FedOpt(s) => Some(s),
        };
        let header = Header {
            format_version: FORMAT_VERSION,
            round: self.round,
            strategy: self.strategy.clone(),
            seed: self.seed,
            opt_t: opt.map(|s| s.t),
            ledger: self.ledger.clone(),
        };
        let json = serde_json::to_string(&header).map_err(|e| bad(e.to_string()))?;
        let mut views: Vec<(String, BytesView<'static>)> = Vec::new();
        for (prefix, params) in [(GLOBAL, &self.global), (ANNEX, &annex.tensors)] {
            for (name, t) in params.iter() {
                views.push((
                    format!("{prefix}{name}"),
                    BytesView::new(
                        Dtype::F32,
                        t.shape().to_vec(),
                        Cow::Owned(f32s_to_le(t.data())),
                    ),
                ));
            }
        }
        if let Some(s) = opt {
            for (prefix, moments) in [(OPT_M, &s.m), (OPT_V, &s.v)] {
                for (name, x) in moments {
                    views.push((
                        format!("{prefix}{name}"),
                        BytesView::new(Dtype::F64, vec![x.len()], Cow::Owned(f64s_to_le(x))),
                    ));
                }
            }
        }
        let mut meta = HashMap::from([(META_KEY.to_string(), json)]);
        if let Some(a) = &annex.text {
            meta.insert(ANNEX_KEY.to_string(), a.clone());
        }
        Ok(safetensors::serialize(views, Some(meta)).map_err(crate::ParamsError::from)?)
    }

    /// Parses checkpoint bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with_annex(bytes).map(|(s, _)| s)
    }

    /// Reads what [`ServerState::to_bytes_with_annex`] wrote: the state and the annex.
    pub fn from_bytes_with_annex(bytes: &[u8]) -> Result<(Self, Annex)> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                bad(format!(
                    "no `{META_KEY}` metadata: not a fedprompt checkpoint"
                ))
            })?;
        let header: Header =
            serde_json::from_str(json).map_err(|e| bad(format!("metadata: {e}")))?;
        let mut annex = Annex {
            text: metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get(ANNEX_KEY))
                .cloned(),
            tensors: Params::new(),
        };
        if header.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                header.format_version
            )));
        }
        let mut global = Params::new();
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (full, view) in st.tensors() {
            let expect = |d: Dtype| -> Result<()> {
                if view.dtype() == d {
                    Ok(())
                } else {
                    Err(bad(format!(
                        "tensor `{full}` has dtype {}, expected {}",
                        dtype_name(view.dtype()),
                        dtype_name(d)
                    )))
                }
            };
            if let Some(name) = full.strip_prefix(GLOBAL) {
                expect(Dtype::F32)?;
                global.insert_vec(name, view.shape().to_vec(), le_to_f32s(view.data()))?;
            } else if let Some(name) = full.strip_prefix(OPT_M) {
                expect(Dtype::F64)?;
                m.insert(name.to_string(), le_to_f64s(view.data()));
            } else if let Some(name) = full.strip_prefix(OPT_V) {
                expect(Dtype::F64)?;
                v.insert(name.to_string(), le_to_f64s(view.data()));
            } else if let Some(name) = full.strip_prefix(ANNEX) {
                expect(Dtype::F32)?;
                annex
                    .tensors
                    .insert_vec(name, view.shape().to_vec(), le_to_f32s(view.data()))?;
            } else {
                return Err(bad(format!("unexpected tensor `{full}`")));
            }
        }
        global.check_finite()?;
        annex.tensors.check_finite()?;
        let strategy_state = match header.opt_t {
            None if m.is_empty() && v.is_empty() => StrategyState::Stateless,
            None => return Err(bad("optimiser moments without optimiser state")),
            Some(t) => {
                for (name, x) in m.iter().chain(v.iter()) {
                    let expected = global.get(name).map(|t| t.len());
                    if expected != Some(x.len()) {
                        return Err(bad(format!(
                            "moment of `{name}` does not match any global tensor"
                        )));
                    }
                }
                StrategyState::FedOpt(FedOptState { t, m, v })
            }
        };
        let state = ServerState {
            round: header.round,
            strategy: header.strategy,
            seed: header.seed,
            global,
            strategy_state,
            ledger: header.ledger,
        };
        Ok((state, annex))
    }

    /// Writes the checkpoint atomically ([`fedprompt_io::write_atomic`]).
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_checkpoint_with_annex(path, &Annex::default())
    }

    /// Writes the checkpoint and the caller's annex in one atomic write.
    pub fn save_checkpoint_with_annex(&self, path: impl AsRef<Path>, annex: &Annex) -> Result<()> {
        let path = path.as_ref();
        if path.file_name().is_none() {
            return Err(bad(format!("`{}` is not a file path", path.display())));
        }
        let bytes = self.to_bytes_with_annex(annex)?;
        fedprompt_io::write_atomic(path, &bytes).map_err(|cause| FlError::Io {
            path: path.to_path_buf(),
            cause,
        })
    }

    /// Reads a checkpoint written by [`ServerState::save_checkpoint`].
    pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_checkpoint_with_annex(path).map(|(s, _)| s)
    }

    /// Reads a checkpoint and its annex.
    pub fn load_checkpoint_with_annex(path: impl AsRef<Path>) -> Result<(Self, Annex)> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|cause| FlError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::from_bytes_with_annex(&bytes).map_err(|e| match e {
            FlError::Checkpoint(msg) => bad(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}
