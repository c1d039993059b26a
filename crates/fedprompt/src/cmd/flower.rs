//! `fedprompt flower-node`, `flower-keygen` and `flower-export`: fedprompt as a native node
//! of a Flower (flwr 1.42) federation (see docs/flower.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fedprompt_flower::app::FedpromptApp;
use fedprompt_flower::auth::NodeKey;
use fedprompt_flower::fleet::Transport;
use fedprompt_flower::node::{run_blocking, NodeConfig};
use fedprompt_net::{ModelSpec, ModelTrainer};

use crate::cmd::federation::LocalArgs;
use fedprompt_train::TrainConfig;

use crate::common::Globals;

const NODE_HELP: &str = "\
Examples:
  # A development SuperLink (flower-superlink --insecure), this node registering itself:
  fedprompt flower-node --superlink 127.0.0.1:9092 --insecure \\
      --data sw.jsonl --model models/xlm-roberta-base --client-name sw
  # TLS, and SuperNode authentication with a key registered by `flwr supernode register`:
  fedprompt flower-node --superlink link.example.org:9092 --root-certificates ca.pem \\
      --auth-key keys/sw.key --data sw.jsonl --model models/xlm-roberta-base --client-name sw

The node answers a Flower ServerApp's `train` and `evaluate` messages (Flower's stock FedAvg,
FedProx, FedAdam, ... aggregate them): the ArrayRecord is the trainable set under fedprompt's
names; the reply carries the trained arrays and a MetricRecord with `num-examples`. The model
description (PEFT method, labels, max_len) comes from the messages' `fedprompt-spec` config
entry or from --spec. See docs/flower.md and interop/flower/.";

/// Arguments of `fedprompt flower-node`.
#[derive(Debug, clap::Args)]
#[command(after_help = NODE_HELP)]
pub struct NodeArgs {
    /// The SuperLink's Fleet API, `HOST:PORT` (flwr 1.42 serves it on the SuperLink's one port).
    #[arg(long)]
    pub superlink: String,
    /// Plain HTTP, no TLS (only against `flower-superlink --insecure`, for development).
    #[arg(long)]
    pub insecure: bool,
    /// PEM CA certificate(s) that signed the SuperLink's certificate (default: the web PKI).
    #[arg(long)]
    pub root_certificates: Option<PathBuf>,
    /// Private key whose public key is registered with the SuperLink (`flwr supernode
    /// register`): OpenSSH, PKCS#8 or SEC1 PEM, ECDSA P-384. Without it the node makes a key
    /// and registers itself (SuperLinks without --enable-supernode-auth).
    #[arg(long)]
    pub auth_key: Option<PathBuf>,
    #[command(flatten)]
    pub local: LocalArgs,
    /// This client's name: seeds its local training each round exactly as fedprompt's
    /// simulator seeds the client of that name (default: the data file's stem).
    #[arg(long)]
    pub client_name: Option<String>,
    /// Model description (JSON or TOML: `method`, `labels`, `max_len`), used when messages
    /// carry no `fedprompt-spec`.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Local training settings (TOML, the `[train]` keys of an experiment file); the
    /// messages' config overrides epochs, learning rate, batch size and seed.
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Column of the text in the data files.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Column of the second text of a pair task (XNLI's hypothesis).
    #[arg(long)]
    pub text_pair_column: Option<String>,
    /// Column of the label in the data files.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Seconds between polls while idle (Flower's node: 3).
    #[arg(long, default_value_t = 3.0)]
    pub poll_interval: f64,
    /// Keep retrying an unreachable SuperLink this many seconds (backoff 0.5 s doubling to
    /// 30 s) before giving up.
    #[arg(long, default_value_t = 300.0)]
    pub reconnect_for: f64,
    /// Leave after answering this many messages.
    #[arg(long)]
    pub max_messages: Option<usize>,
}

fn read_spec(path: &PathBuf) -> anyhow::Result<ModelSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the model description {}", path.display()))?;
    let spec = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
    };
    spec.with_context(|| {
        format!(
            "{}: not a model description (`method = {{ type = \"prompt\", ... }}`, `labels = [...]`, optional `max_len`)",
            path.display()
        )
    })
}

/// Runs the node until the SuperLink's runs are over and Ctrl-C.
pub fn node(args: NodeArgs, _g: &Globals) -> anyhow::Result<()> {
    if !(args.poll_interval > 0.0 && args.poll_interval < 3600.0) {
        anyhow::bail!("--poll-interval must be between 0 and 3600 seconds");
    }
    let spec = args.spec.as_ref().map(read_spec).transpose()?;
    let mut tcfg = args.local.trainer_config()?;
    tcfg.format.text = args.text_column;
    tcfg.format.text_pair = args.text_pair_column;
    tcfg.format.label = args.label_column;
    if let Some(p) = &args.train {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("reading the training settings {}", p.display()))?;
        let t: TrainConfig = toml::from_str(&text)
            .with_context(|| format!("{}: not valid training settings", p.display()))?;
        t.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        tcfg.train = t;
    }
    tcfg.client_name = Some(match args.client_name {
        Some(n) => n,
        None => tcfg
            .data
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("cannot name the client from the data file; pass --client-name")?,
    });
    let mut transport = Transport::insecure(args.superlink);
    transport.insecure = args.insecure;
    transport.root_certificates = args.root_certificates;
    let mut cfg = NodeConfig::new(transport);
    cfg.auth_key = args.auth_key;
    cfg.poll_interval = Duration::from_secs_f64(args.poll_interval);
    cfg.max_messages = args.max_messages;
    if !(args.reconnect_for >= 0.0 && args.reconnect_for < 1e7) {
        anyhow::bail!("--reconnect-for must be a number of seconds");
    }
    cfg.reconnect_for = Duration::from_secs_f64(args.reconnect_for);
    let mut app = FedpromptApp::new(ModelTrainer::new(tcfg), spec);
    let summary = run_blocking(&cfg, &mut app).context("Flower node")?;
    let mut kinds: Vec<_> = summary.handled.iter().collect();
    kinds.sort();
    println!(
        "node {}: answered {}; {} error replies",
        summary.node_id,
        kinds
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        summary.error_replies
    );
    Ok(())
}

/// Arguments of `fedprompt flower-keygen`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  fedprompt flower-keygen keys/ --name sw\n  flwr supernode register keys/sw.pub <federation>   # on the SuperLink operator's side\n  fedprompt flower-node ... --auth-key keys/sw.key\n\nWrites <name>.key (PKCS#8 PEM private key; keep it on this machine), <name>.pub.pem and\n<name>.pub (OpenSSH public key, what `flwr supernode register` takes)."
)]
pub struct KeygenArgs {
    /// Output folder.
    pub dir: PathBuf,
    /// File stem of the key files.
    #[arg(long, default_value = "node")]
    pub name: String,
}

/// Writes a node key set.
pub fn keygen(args: KeygenArgs, _g: &Globals) -> anyhow::Result<()> {
    let key = NodeKey::generate()?;
    let [sk, pem, ssh] = key.write_key_set(&args.dir, &args.name)?;
    println!(
        "private key {}\npublic key {} (PEM) and {} (OpenSSH: register this one)",
        sk.display(),
        pem.display(),
        ssh.display()
    );
    Ok(())
}

/// Arguments of `fedprompt flower-export`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  fedprompt flower-export experiments/flower-tiny.toml --run \"PE_FL (non-IID)\" --out export/ --simulate\n\nWrites what a Flower federation of the same run needs: initial.safetensors (the ServerApp's\ninitial arrays), clients/<name>.jsonl (each node's data), train.toml (the nodes' --train),\ntrain-config.json (the ServerApp's round config), run.json; with --simulate also\nexpected.safetensors, fedprompt's own simulator's final global for the same seed."
)]
pub struct ExportArgs {
    /// The experiment file.
    pub file: PathBuf,
    /// Label of the federated run to export.
    #[arg(long)]
    pub run: String,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also run the simulator and write its final global (expected.safetensors).
    #[arg(long)]
    pub simulate: bool,
}

/// Exports one federated run.
pub fn export(args: ExportArgs, _g: &Globals) -> anyhow::Result<()> {
    let cfg = fedprompt_sim::ExperimentConfig::from_file(&args.file)?;
    let e = fedprompt_sim::export_federation(&cfg, &args.run, &args.out, args.simulate)?;
    println!(
        "exported `{}` to {}: {} clients ({}), {} rounds{}",
        args.run,
        args.out.display(),
        e.clients.len(),
        e.clients.join(", "),
        e.rounds,
        if e.simulated {
            "; simulator's final global in expected.safetensors"
        } else {
            ""
        }
    );
    Ok(())
}
