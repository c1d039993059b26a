//! `fedprompt serve`, `fedprompt join` and `fedprompt devcerts`: a real federation over gRPC
//! (see docs/deploy.md).

use std::path::PathBuf;

use anyhow::Context;
use fedprompt_net::{ModelTrainer, ModelTrainerConfig, ServeConfig};

use crate::common::Globals;

const SERVE_HELP: &str = "\
Examples:
  fedprompt serve federation.toml
  fedprompt serve federation.toml --resume     # continue after a stop, from the last checkpoint

The file (see docs/deploy.md) names the address, TLS certificate and key, the hashed client
tokens, rounds, strategy, quorum and deadline, the PEFT method and labels, checkpoint and events
paths. Only the trainable set crosses the network; clients keep their text.";

/// Arguments of `fedprompt serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = SERVE_HELP)]
pub struct ServeArgs {
    /// The federation file (TOML).
    pub file: PathBuf,
    /// Continue from the last checkpoint.
    #[arg(long)]
    pub resume: bool,
}

/// Runs the coordinator until the last round.
pub fn serve(args: ServeArgs, _g: &Globals) -> anyhow::Result<()> {
    let mut cfg = ServeConfig::from_file(&args.file)?;
    if args.resume {
        cfg.resume = true;
    }
    let summary = fedprompt_net::serve(cfg).context("federation server")?;
    println!("{summary:#?}");
    Ok(())
}

const JOIN_HELP: &str = "\
Examples:
  fedprompt join --server https://coordinator.example.org:50051 \\
      --token \"$(cat client-sw.token)\" --data my.jsonl --model models/xlm-roberta-base --ca-cert ca.pem

The client trains the round's trainable set on --data with the local model folder and sends
back only that set, its example count and metrics. It reconnects with backoff.";

/// Arguments of `fedprompt join`.
#[derive(Debug, clap::Args)]
#[command(after_help = JOIN_HELP)]
pub struct JoinArgs {
    /// The coordinator, `https://host:port`.
    #[arg(long)]
    pub server: String,
    /// This client's token (or set FEDPROMPT_TOKEN).
    #[arg(long, env = "FEDPROMPT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub local: LocalArgs,
    /// PEM CA certificate to trust (a private CA).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM key of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

/// What a federation client keeps on its own machine: data and model.
#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Local training data (JSONL/CSV/TSV with `text` and `label` columns).
    #[arg(long)]
    pub data: PathBuf,
    /// Local evaluation data (default: the training data).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// The model folder (the same model as the federation's; default: the built-in model).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl LocalArgs {
    /// The trainer's settings for these files (the model resolved, the data checked).
    pub fn trainer_config(self) -> anyhow::Result<ModelTrainerConfig> {
        let model = match self.model {
            Some(m) => m,
            None => fedprompt_hub::default_model_dir()?,
        };
        if !self.data.is_file() {
            anyhow::bail!("data file {} does not exist", self.data.display());
        }
        let mut t = ModelTrainerConfig::new(model, self.data);
        t.eval_data = self.eval;
        Ok(t)
    }
}

/// Joins a federation and trains until the server ends the run.
pub fn join(args: JoinArgs, _g: &Globals) -> anyhow::Result<()> {
    let token = args
        .token
        .context("no token: pass --token or set FEDPROMPT_TOKEN")?;
    let mut cfg = fedprompt_net::JoinConfig::new(args.server, token);
    cfg.tls.ca_cert = args.ca_cert;
    cfg.tls.cert = args.cert;
    cfg.tls.key = args.key;
    let mut trainer = ModelTrainer::new(args.local.trainer_config()?);
    let summary = fedprompt_net::join(cfg, &mut trainer).context("joining the federation")?;
    println!("{summary:#?}");
    Ok(())
}

/// Arguments of `fedprompt devcerts`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  fedprompt devcerts certs/ --clients en,sw,yo\n\nWrites a development CA, a server certificate for localhost, per-client certificates and\ntokens, and the hashed tokens file the server reads. For testing only: use your own CA in\nproduction."
)]
pub struct DevcertsArgs {
    /// Output folder.
    pub dir: PathBuf,
    /// Client ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub clients: Vec<String>,
}

/// Writes development certificates and tokens.
pub fn devcerts(args: DevcertsArgs, _g: &Globals) -> anyhow::Result<()> {
    let ids: Vec<&str> = args.clients.iter().map(|s| s.as_str()).collect();
    let out = fedprompt_net::devcerts::generate(&args.dir, &ids)?;
    println!("CA certificate:   {}", out.ca_cert.display());
    println!(
        "server cert/key:  {} {}",
        out.server_cert.display(),
        out.server_key.display()
    );
    println!("tokens (hashed):  {}", out.tokens_file.display());
    for c in out.clients.keys() {
        println!("client {c}: see {}", args.dir.display());
    }
    Ok(())
}
