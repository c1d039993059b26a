//! `fedprompt eval`: accuracy and macro-F1 per language of a trained adapter.

use std::path::PathBuf;

use anyhow::{bail, Result};
use fedprompt_data::{Example, LabelMap};
use fedprompt_train::{encode_examples, evaluate};
use serde_json::json;

use crate::common::{self, DataFormatArgs, Globals, ModelArg};

const AFTER_HELP: &str = "\
Examples:
  fedprompt eval --adapter runs/demo-prompt --data demo
  fedprompt eval --model xlm-roberta-base/ --adapter runs/lora --data test.jsonl \\
      --language-column lang --output runs/lora/test-metrics.json

The adapter's method and labels come from its folder (fedprompt_adapter.json, or PEFT's
adapter_config.json with the labels from the model's config.json). With `--data demo` the
demo's eval split is scored: use the same --split-seed and --eval-fraction as in training.";

/// Arguments of `fedprompt eval`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,

    /// Adapter folder written by `fedprompt train` (or PEFT's save_pretrained).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,

    /// Data to score: a .jsonl/.csv/.tsv file with labels, or `demo` (the demo's eval split).
    #[arg(long, value_name = "FILE|demo")]
    pub data: PathBuf,

    /// Examples per forward pass.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub batch_size: usize,

    /// Maximum tokens per sequence, special tokens and the soft prompt's virtual tokens
    /// included (the text gets N minus the virtual tokens); longer texts are truncated. Capped
    /// at the model's position table.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_len: usize,

    /// Also write the scores as JSON to this file.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub data_format: DataFormatArgs,
}

/// Runs `fedprompt eval`.
pub fn run(a: Args, g: &Globals) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let demo = common::is_demo(&a.data);
    if !demo {
        common::check_data_file(&a.data, "data file")?;
    }
    let backbone = common::load_backbone(a.model.model.as_deref(), a.model.dtype, g)?;
    let clf = common::load_adapter(&backbone, &a.adapter)?;
    let labels = LabelMap::new(clf.labels().iter().cloned())?;

    let examples: Vec<Example> = if demo {
        let ds = common::load_demo(&a.data_format, g)?;
        if ds.labels.names() != labels.names() {
            bail!(
                "the adapter's labels ({}) are not the demo data's topics ({})",
                labels.names().join(", "),
                ds.labels.names().join(", ")
            );
        }
        if ds.eval.is_empty() {
            bail!("the demo's eval split is empty; raise --eval-fraction");
        }
        ds.eval
    } else {
        common::read_file(&a.data, &a.data_format, &labels)?
    };

    let enc = common::text_encoder(&backbone, a.max_len, clf.method().virtual_tokens())?;
    let encoded = encode_examples(&enc, &examples)?;
    let pad = backbone.config().pad_token_id;
    let sp = common::spinner(&format!("evaluating {} examples", encoded.len()), g);
    let report = evaluate(
        &clf,
        &encoded,
        a.batch_size,
        pad,
        common::use_token_types(&backbone),
    )?;
    sp.finish_and_clear();

    println!(
        "{} adapter {} on {} ({} examples, loss {:.4}):\n",
        clf.method().name(),
        a.adapter.display(),
        a.data.display(),
        report.overall.n,
        report.loss
    );
    print!("{}", common::scores_table(&report));
    if let Some(out) = &a.output {
        let v = json!({
            "adapter": a.adapter.display().to_string(),
            "model": backbone.folder().display().to_string(),
            "data": a.data.display().to_string(),
            "method": clf.method(),
            "labels": clf.labels(),
            "eval": report,
        });
        common::write_json(out, &v)?;
        println!("\nscores written to {}", out.display());
    }
    Ok(())
}
