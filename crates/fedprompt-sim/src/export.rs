//! Exports one federated run of an experiment as what a real federation needs: the initial
//! global trainable set, each client's data file, the clients' training settings and the
//! round configuration; and, on request, the simulator's own final global for the same seed,
//! so that a networked run (Flower or `fedprompt serve`) can be checked against it.
//!
//! Folder layout:
//! - `initial.safetensors`: the initial global trainable set (F32, fedprompt's names);
//! - `clients/<name>.jsonl`: one `{"text", ["text_pair"], "label"}` per line, in the
//!   simulator's order; `clients.txt`: the client names, one per line;
//! - `train.toml`: the clients' local training settings (`fedprompt flower-node --train`);
//! - `train-config.json`: the per-round configuration a server sends (`fedprompt-spec`,
//!   `seed`, `local-epochs`, `learning-rate`);
//! - `run.json`: rounds, fraction, clients and the server strategy (the Flower App's run config);
//! - `expected.safetensors` (with `simulate`): the simulator's global after the last round.

use std::path::Path;

use fedprompt_fl::{Params, ServerState, StrategyConfig};
use fedprompt_model::Classifier;
use fedprompt_train::to_params;
use serde_json::json;

use crate::config::{ExperimentConfig, Paradigm};
use crate::error::{Result, SimError};
use crate::run::{load_backbone, run_experiment, slug, RunOptions, RunPlan};

/// What [`export_federation`] wrote.
#[derive(Clone, Debug)]
pub struct FederationExport {
    /// Client names, in the simulator's order.
    pub clients: Vec<String>,
    /// Communication rounds.
    pub rounds: u64,
    /// The run's seed (clients derive their per-round seeds from it).
    pub seed: u64,
    /// Whether `expected.safetensors` was written.
    pub simulated: bool,
}

fn run_err(run: &str, msg: impl Into<String>) -> SimError {
    SimError::Run {
        run: run.to_string(),
        msg: msg.into(),
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fedprompt_io::write_atomic(path, bytes).map_err(|cause| SimError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Writes the federated run `label` of `cfg` into `out` (see the module docs).
pub fn export_federation(
    cfg: &ExperimentConfig,
    label: &str,
    out: &Path,
    simulate: bool,
) -> Result<FederationExport> {
    let spec = cfg.runs.iter().find(|r| r.label == label).ok_or_else(|| {
        let labels: Vec<&str> = cfg.runs.iter().map(|r| r.label.as_str()).collect();
        run_err(
            label,
            format!("no run with this label; the file has {labels:?}"),
        )
    })?;
    if spec.paradigm != Paradigm::Federated {
        return Err(run_err(label, "only a federated run can be exported"));
    }
    if spec.fraction.unwrap_or(cfg.federation.fraction) < 1.0 {
        return Err(run_err(
            label,
            "export needs fraction = 1.0 (every client every round): which clients a networked \
             server samples cannot match the simulator's sampling",
        ));
    }
    // The single-run experiment the simulator runs for `expected.safetensors`.
    let mut single = cfg.clone();
    single.runs = vec![spec.clone()];
    single.data_efficiency = None;
    single.language_distance = false;
    single.validate().map_err(|msg| SimError::Config {
        path: cfg.name.clone().into(),
        msg,
    })?;

    let plan = RunPlan::resolve(&single, &single.runs[0])?;
    // The server side as the Flower App's run config names it; only strategies whose server
    // arithmetic is FedAvg's can be reproduced exactly by Flower's own strategy classes.
    // Checked before the model and data are loaded.
    let why_not = |kind: &str| {
        run_err(
            label,
            format!(
                "export reproduces FedAvg and FedProx runs only; `{}` {kind}",
                plan.strategy.name()
            ),
        )
    };
    let strategy = match &plan.strategy {
        StrategyConfig::FedAvg => json!({"strategy": "fedavg"}),
        StrategyConfig::FedProx { proximal_mu } => {
            json!({"strategy": "fedprox", "proximal-mu": proximal_mu})
        }
        StrategyConfig::FedAdam { .. }
        | StrategyConfig::FedYogi { .. }
        | StrategyConfig::FedAdagrad { .. } => {
            return Err(why_not(
                "steps a server optimiser (the Flower App can run Flower's \
                 FedAdam/FedYogi/FedAdagrad, but not to the bit)",
            ))
        }
        StrategyConfig::DpFedAvg { .. } => {
            return Err(why_not(
                "adds server-side Gaussian noise drawn from the simulator's seeded generator, \
                 which a Flower server cannot draw the same",
            ))
        }
        StrategyConfig::Median | StrategyConfig::TrimmedMean { .. } => {
            return Err(why_not(
                "aggregates coordinate by coordinate (robust aggregation), which Flower's \
                 FedAvg-family strategies do not; run it with `fedprompt serve` instead",
            ))
        }
    };
    let backbone = load_backbone(&single.model.path, single.model.dtype)?;
    let data = crate::data::load(&single.data, single.seed)?;
    // `plan` resolves this single run as `run_experiment` does; the clients apply the same
    // `fedprompt_train::text_max_len` to `max_len` (virtual tokens included).
    let max_len = single.model.max_len;
    let labels = data.labels.names().to_vec();
    let seed = plan.seed;
    let partition = plan.partition(&data.train)?;

    std::fs::create_dir_all(out.join("clients")).map_err(|e| SimError::Io {
        path: out.join("clients"),
        cause: e,
    })?;
    let mut names = Vec::new();
    for c in &partition.clients {
        let file = c.name.clone();
        let safe = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-';
        if file.is_empty() || !file.chars().all(safe) || names.contains(&file) {
            return Err(run_err(
                label,
                format!("client name `{}` is not a distinct plain file name", c.name),
            ));
        }
        let mut lines = String::new();
        for &i in &c.indices {
            let ex = &data.train[i];
            let mut v = json!({"text": ex.text, "label": labels[ex.label]});
            if let Some(p) = &ex.text_pair {
                v["text_pair"] = json!(p);
            }
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
        write(
            &out.join("clients").join(format!("{file}.jsonl")),
            lines.as_bytes(),
        )?;
        names.push(file);
    }
    // Client names are used as given by the partition: they seed the clients' training.
    let clients = names;
    write(
        &out.join("clients.txt"),
        (clients.join("\n") + "\n").as_bytes(),
    )?;

    let clf = Classifier::new(&backbone, &spec.method, &labels, seed)?;
    let initial = to_params(clf.trainable())?;
    write(&out.join("initial.safetensors"), &initial.to_safetensors()?)?;

    let local_epochs = plan.local_epochs;
    // The nodes' own seed is replaced each round by the one the server sends.
    let mut train = plan.client_train();
    train.seed = single.train.seed;
    train.restore_best = false;
    let lr = train.learning_rate;
    let toml = toml::to_string(&train).map_err(|e| run_err(label, e.to_string()))?;
    write(
        &out.join("train.toml"),
        format!(
            "# Local training settings of every client (fedprompt flower-node --train).\n{toml}"
        )
        .as_bytes(),
    )?;
    let model_spec = json!({"method": spec.method, "labels": labels, "max_len": max_len});
    let round_cfg = json!({
        "fedprompt-spec": model_spec.to_string(),
        // ConfigRecord integers are signed 64-bit: the seed travels as its bit pattern.
        "seed": seed as i64,
        "local-epochs": local_epochs,
        "learning-rate": lr,
    });
    write(
        &out.join("train-config.json"),
        serde_json::to_vec_pretty(&round_cfg)
            .expect("json")
            .as_slice(),
    )?;
    let rounds = plan.rounds;
    write(
        &out.join("run.json"),
        serde_json::to_vec_pretty(&json!({
            "experiment": cfg.name, "run": spec.label, "rounds": rounds,
            "fraction": 1.0, "clients": clients, "seed": seed.to_string(),
            "server": strategy,
        }))
        .expect("json")
        .as_slice(),
    )?;

    if simulate {
        let sim_dir = out.join("simulator");
        run_experiment(
            &single,
            &RunOptions {
                output: Some(sim_dir.clone()),
                ..Default::default()
            },
        )?;
        let ckpt = sim_dir
            .join("checkpoints")
            .join(format!("{}.ckpt", slug(&spec.label)));
        let state = ServerState::load_checkpoint(&ckpt)?;
        if state.round != rounds {
            return Err(run_err(
                label,
                format!("the simulator stopped at round {}", state.round),
            ));
        }
        let global: &Params = &state.global;
        write(&out.join("expected.safetensors"), &global.to_safetensors()?)?;
    }
    Ok(FederationExport {
        clients,
        rounds,
        seed,
        simulated: simulate,
    })
}
