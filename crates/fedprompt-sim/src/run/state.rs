//! What a run leaves on disk for `--resume`: a finished run's outcome, and a federated run's
//! state between rounds (server state and learning curve in one atomic file).

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use fedprompt_fl::{Annex, Params, Server, ServerState, Strategy};
use fedprompt_report::{CommRow, Curve, ParadigmRow, RoundPoint};
use fedprompt_train::EvalReport;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};

/// The outcome of a finished run, cached so a resumed experiment skips it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunOutcome {
    pub row: ParadigmRow,
    pub curve: Curve,
    pub comm: Option<CommRow>,
    pub best_avg: f64,
    pub seconds: f64,
    /// The DP note (epsilon spent, budget stop) of a federated run with DP.
    #[serde(default)]
    pub privacy: Option<String>,
}

/// A federated run's progress between rounds: its learning curve and best round so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FedProgress {
    pub curve: Vec<RoundPoint>,
    pub best_round: u64,
    pub best_avg: f64,
    pub best_report: Option<EvalReport>,
    pub seconds: f64,
}

impl FedProgress {
    /// Whether `patience` rounds have passed since the best round by `round`.
    pub fn patience_ran_out(&self, round: u64, patience: u64) -> bool {
        !self.curve.is_empty() && round.saturating_sub(self.best_round) >= patience
    }

    pub fn new() -> Self {
        FedProgress {
            curve: Vec::new(),
            best_round: 0,
            best_avg: -1.0,
            best_report: None,
            seconds: 0.0,
        }
    }
}

/// Where one run keeps its files inside the checkpoints folder.
#[derive(Clone, Debug)]
pub(crate) struct RunFiles {
    /// The run finished: its [`RunOutcome`].
    pub done: PathBuf,
    /// A federated run between rounds: [`ServerState`] with the [`FedProgress`] as its annex.
    pub state: PathBuf,
}

impl RunFiles {
    pub fn new(dir: &Path, key: &str) -> Self {
        RunFiles {
            done: dir.join(format!("{key}.done.json")),
            state: dir.join(format!("{key}.ckpt")),
        }
    }
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Run {
        run: path.display().to_string(),
        msg: format!("unreadable checkpoint file: {e}; delete it or run without --resume"),
    }
}

/// Writes `v` as pretty JSON, atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(v).expect("serialisable");
    fedprompt_io::write_atomic(path, &text).map_err(|cause| SimError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Reads what [`write_json`] wrote.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|cause| SimError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    serde_json::from_slice(&text).map_err(|e| unreadable(path, e))
}

/// Saves the server, the progress and each client's error-feedback residual after a round,
/// in one atomic write: a resumed run goes on with the residuals an uninterrupted one would
/// have. Residual tensors are named `<client>/<tensor>` (a `/` or `%` in a client id
/// percent-encoded).
pub(crate) fn save_round<'a>(
    path: &Path,
    server: &Server,
    progress: &FedProgress,
    residuals: impl Iterator<Item = (&'a str, &'a Params)>,
) -> Result<()> {
    let mut tensors = Params::new();
    for (client, r) in residuals {
        let id = client.replace('%', "%25").replace('/', "%2F");
        for (name, t) in r.iter() {
            tensors.insert(format!("{id}/{name}"), t.clone());
        }
    }
    let annex = Annex {
        text: Some(serde_json::to_string(progress).expect("serialisable")),
        tensors,
    };
    server.state().save_checkpoint_with_annex(path, &annex)?;
    Ok(())
}

/// Loads what [`save_round`] wrote and resumes the server with `strategy`: the server, the
/// run's progress and each client's error-feedback residual.
pub(crate) fn load_round(
    path: &Path,
    strategy: Box<dyn Strategy>,
) -> Result<(Server, FedProgress, BTreeMap<String, Params>)> {
    let (state, annex) =
        ServerState::load_checkpoint_with_annex(path).map_err(|e| unreadable(path, e))?;
    let text = annex
        .text
        .ok_or_else(|| unreadable(path, "it holds no simulator progress"))?;
    let progress = serde_json::from_str(&text).map_err(|e| unreadable(path, e))?;
    let mut residuals: BTreeMap<String, Params> = BTreeMap::new();
    for (full, t) in annex.tensors.iter() {
        let (id, name) = full.split_once('/').ok_or_else(|| {
            unreadable(
                path,
                format!("error-feedback tensor `{full}` names no client"),
            )
        })?;
        let client = id.replace("%2F", "/").replace("%25", "%");
        residuals.entry(client).or_default().insert(name, t.clone());
    }
    Ok((Server::from_state(state, strategy)?, progress, residuals))
}
