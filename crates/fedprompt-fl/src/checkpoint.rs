//! Checkpoints: a [`ServerState`] as one safetensors file, written atomically.
//!
//! Tensors: `global/<name>` (F32), `opt.m/<name>` and `opt.v/<name>` (F64).
//! Everything else is JSON under the `fedprompt.checkpoint` metadata key.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

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
const FORMAT_VERSION: u32 = 1;
const GLOBAL: &str = "global/";
const OPT_M: &str = "opt.m/";
const OPT_V: &str = "opt.v/";

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
        for (name, t) in self.global.iter() {
            views.push((
                format!("{GLOBAL}{name}"),
                BytesView::new(
                    Dtype::F32,
                    t.shape().to_vec(),
                    Cow::Owned(f32s_to_le(t.data())),
                ),
            ));
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
        let meta = HashMap::from([(META_KEY.to_string(), json)]);
        Ok(safetensors::serialize(views, Some(meta)).map_err(crate::ParamsError::from)?)
    }

    /// Parses checkpoint bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
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
            } else {
                return Err(bad(format!("unexpected tensor `{full}`")));
            }
        }
        global.check_finite()?;
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
        Ok(ServerState {
            round: header.round,
            strategy: header.strategy,
            seed: header.seed,
            global,
            strategy_state,
            ledger: header.ledger,
        })
    }

    /// Writes the checkpoint atomically: a temporary file in the same folder, synced, then renamed.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| FlError::Io { path: p, source }
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| bad(format!("`{}` is not a file path", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp: PathBuf = path.with_file_name(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(path)(e));
        }
        // Make the rename durable where the platform allows syncing a directory.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Reads a checkpoint written by [`ServerState::save_checkpoint`].
    pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| FlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            FlError::Checkpoint(msg) => bad(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}
