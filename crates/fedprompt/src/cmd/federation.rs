//! `fedprompt serve`, `fedprompt join` and `fedprompt devcerts`: a real federation over gRPC
//! (see docs/deploy.md).

use std::path::{Path, PathBuf};

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
    let output = cfg.output.clone();
    let summary = fedprompt_net::serve(cfg).context("federation server")?;
    println!("{summary}");
    match output {
        // A run ended by its privacy budget writes its output as a completed one does.
        Some(out) if !summary.stopped_early || summary.budget_stop.is_some() => {
            println!("final global parameters: {}", out.display())
        }
        _ => {}
    }
    Ok(())
}

const JOIN_HELP: &str = "\
Examples:
  fedprompt join --server https://coordinator.example.org:50051 \\
      --token-file client-sw.token --data my.jsonl --model models/xlm-roberta-base --ca-cert ca.pem

The token: --token-file (keep the file mode 0600), or the FEDPROMPT_TOKEN environment variable;
--token TOKEN works too, but other users of this machine can read a command line.
The client trains the round's trainable set on --data with the local model folder and sends
back only that set, its example count and metrics. It reconnects with backoff; a refused token
or a TLS failure (certificate, scheme, key) ends it at once. Ctrl-C or SIGTERM: it abandons
the task at hand, tells the server it leaves, and exits 0 (a second one exits at once).";

/// Arguments of `fedprompt join`.
#[derive(Debug, clap::Args)]
#[command(after_help = JOIN_HELP)]
pub struct JoinArgs {
    /// The coordinator, `https://host:port`.
    #[arg(long)]
    pub server: String,
    /// File holding this client's token (e.g. `client-sw.token` from `fedprompt devcerts`).
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// This client's token. Visible to other users of this machine (process list,
    /// /proc/PID/cmdline): prefer --token-file or FEDPROMPT_TOKEN.
    #[arg(long, value_name = "TOKEN")]
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
    /// Give up after this many seconds without reaching the server (connection refused,
    /// server down); permanent errors (refused token, TLS) end the client at once.
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub give_up_after: f64,
}

/// Environment variable holding the token when neither --token-file nor --token is given.
pub const TOKEN_ENV: &str = "FEDPROMPT_TOKEN";

/// Reads a token file: the first line, trimmed; an empty file is an error.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        anyhow::bail!(
            "the token file {} is empty: it must hold the client's token on its first line",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "the token file {} can be read by other users: chmod 600 it",
                    path.display()
                );
            }
        }
    }
    Ok(token.to_string())
}

/// The token from --token-file, --token or FEDPROMPT_TOKEN, in that order.
fn token(args: &JoinArgs) -> anyhow::Result<String> {
    if let Some(p) = &args.token_file {
        return read_token_file(p);
    }
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => Ok(t),
        Ok(_) => anyhow::bail!("{TOKEN_ENV} is set but empty"),
        Err(_) => anyhow::bail!(
            "no token: pass --token-file PATH (or set {TOKEN_ENV}; --token works but is visible to other users)"
        ),
    }
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
    /// Float type of the frozen backbone's matrices on this client: f32 (exact, the default)
    /// or bf16 (fast mode: half the weight memory, bf16 products with f32 sums on CPUs with
    /// AMX). Clients of one federation may differ; the trainable set stays f32 either way.
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: fedprompt_model::WeightDtype,
}

impl LocalArgs {
    /// The trainer's settings for these files (the model resolved, the data checked).
    pub fn trainer_config(self) -> anyhow::Result<ModelTrainerConfig> {
        // The user's own file first: it is cheap to check and the likelier mistake.
        if !self.data.is_file() {
            anyhow::bail!("data file {} does not exist", self.data.display());
        }
        let model = match self.model {
            Some(m) => m,
            None => fedprompt_hub::default_model_dir()?,
        };
        let mut t = ModelTrainerConfig::new(model, self.data);
        t.eval_data = self.eval;
        t.dtype = self.dtype;
        Ok(t)
    }
}

/// Joins a federation and trains until the server ends the run.
pub fn join(args: JoinArgs, _g: &Globals) -> anyhow::Result<()> {
    let token = token(&args)?;
    let mut cfg = fedprompt_net::JoinConfig::new(args.server, token);
    cfg.tls.ca_cert = args.ca_cert;
    cfg.tls.cert = args.cert;
    cfg.tls.key = args.key;
    cfg.give_up_after_s = args.give_up_after;
    let mut trainer = ModelTrainer::new(args.local.trainer_config()?);
    // The model folder and the data files, before the server sees us.
    trainer
        .check_local()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("checking the local setup before joining")?;
    let summary = fedprompt_net::join(cfg, &mut trainer).context("joining the federation")?;
    println!("{summary:#?}");
    Ok(())
}

/// Arguments of `fedprompt devcerts`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  fedprompt devcerts certs/ --clients en,sw,yo\n\nWrites a development CA, a server certificate for localhost, per-client certificates and\ntokens, and the hashed tokens file the server reads. Private keys and token files are\nreadable by their owner only (mode 0600). The folder must be new or empty (--force replaces\nthe files in it). For testing only: use your own CA in production."
)]
pub struct DevcertsArgs {
    /// Output folder (new or empty).
    pub dir: PathBuf,
    /// Client ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub clients: Vec<String>,
    /// Write into a folder that is not empty, replacing the credentials of the same names.
    #[arg(long)]
    pub force: bool,
}

/// Writes development certificates and tokens.
pub fn devcerts(args: DevcertsArgs, _g: &Globals) -> anyhow::Result<()> {
    let ids: Vec<&str> = args.clients.iter().map(|s| s.as_str()).collect();
    let out = fedprompt_net::devcerts::generate_into(&args.dir, &ids, &[], args.force)?;
    println!("CA certificate:   {}", out.ca_cert.display());
    println!(
        "server cert/key:  {} {}",
        out.server_cert.display(),
        out.server_key.display()
    );
    println!("tokens (hashed):  {}", out.tokens_file.display());
    for (c, d) in &out.clients {
        println!(
            "client {c}: {} {}, token in {} (for join --token-file)",
            d.cert.display(),
            d.key.display(),
            d.token_file.display()
        );
    }
    Ok(())
}
