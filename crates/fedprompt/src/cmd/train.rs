//! `fedprompt train`: one local training run, writing an adapter folder and metrics.json.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use fedprompt_data::{language_counts, Example, LabelMap};
use fedprompt_model::peft::PAPER_INIT_TEXT;
use fedprompt_model::{adapter, Classifier, MethodConfig};
use fedprompt_train::{encode_examples, evaluate, train, TrainConfig};
use serde_json::json;

use crate::common::{self, DataFormatArgs, Globals, ModelArg};

const AFTER_HELP: &str = "\
Examples:
  # The paper's prompt tuning (1 virtual token, text init) on the multilingual demo data
  fedprompt train --data demo --output runs/demo-prompt
  # Eight randomly initialised virtual tokens, English and Italian only
  fedprompt train --data demo --languages en,it --virtual-tokens 8 --random-init --output runs/en-it
  # LoRA r=1 on your own files with a language column
  fedprompt train --data train.jsonl --eval dev.jsonl --language-column lang \\
      --method lora --lora-r 1 --model xlm-roberta-base/ --output runs/lora

Data files are JSON lines, CSV or TSV (by extension) with `text` and `label` columns by default;
train and eval share one label map (the sorted label names, or 0..max for integer labels).
The output folder gets the adapter in PEFT's layout (adapter_config.json +
adapter_model.safetensors), fedprompt's own trainable.safetensors and fedprompt_adapter.json,
and metrics.json (per-epoch losses and scores, the final evaluation per language).";

/// The parameter-efficient method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Soft prompt tuning: virtual tokens before the text (the paper's method).
    Prompt,
    /// P-tuning: virtual tokens produced by a small MLP.
    PromptEncoder,
    /// LoRA on the chosen attention projections.
    Lora,
    /// Only the classification head.
    Head,
    /// Every weight (full fine-tuning).
    Full,
}

/// Arguments of `fedprompt train`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Training data: a .jsonl/.csv/.tsv file, or `demo` for the embedded multilingual
    /// chatterbot corpus (with its own train/eval split by conversation).
    #[arg(long, value_name = "FILE|demo")]
    pub data: PathBuf,

    /// Evaluation file, scored after every epoch for early stopping and at the end
    /// (without it, the final scores are on the training data).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,

    #[command(flatten)]
    pub model: ModelArg,

    /// Which parameters are trained; the classification head is trained by every method.
    #[arg(long, value_enum, default_value_t = Method::Prompt)]
    pub method: Method,

    /// prompt, prompt-encoder: number of virtual tokens (the paper: 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub virtual_tokens: usize,

    /// prompt: initialise the virtual tokens from the embeddings of this text's tokens
    /// (PEFT's TEXT init). Default: the paper's "Predict the category given the following
    /// news article".
    #[arg(long, value_name = "TEXT", conflicts_with = "random_init")]
    pub init_text: Option<String>,

    /// prompt: initialise the virtual tokens randomly (N(0, 1), as PEFT's RANDOM init).
    #[arg(long)]
    pub random_init: bool,

    /// prompt-encoder: hidden width of the MLP prompt encoder.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub encoder_hidden: usize,

    /// lora: rank r (the paper: 1 and 8).
    #[arg(long, value_name = "R", default_value_t = 8)]
    pub lora_r: usize,

    /// lora: scaling alpha (the update is scaled by alpha / r).
    #[arg(long, value_name = "A", default_value_t = 16.0)]
    pub lora_alpha: f64,

    /// lora: dropout on the LoRA input, in [0, 1).
    #[arg(long, value_name = "P", default_value_t = 0.1)]
    pub lora_dropout: f64,

    /// lora: target projections, comma-separated (query, key, value, dense,
    /// attention.output.dense, intermediate.dense, output.dense).
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        default_value = "query,value"
    )]
    pub lora_targets: Vec<String>,

    /// AdamW learning rate.
    #[arg(long, value_name = "LR", default_value_t = 1e-3)]
    pub lr: f64,

    /// AdamW weight decay.
    #[arg(long, value_name = "WD", default_value_t = 0.01)]
    pub weight_decay: f64,

    /// Examples per optimiser step.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub batch_size: usize,

    /// Maximum tokens per sequence, special tokens and the soft prompt's virtual tokens
    /// included (the text gets N minus the virtual tokens); longer texts are truncated. Capped
    /// at the model's position table.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_len: usize,

    /// Maximum number of epochs.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub epochs: usize,

    /// Early stopping: stop after this many epochs without a better eval accuracy
    /// (needs an eval set; the best epoch's values are kept).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub patience: usize,

    /// Cap on optimiser steps per epoch (default: a full pass over the data).
    #[arg(long, value_name = "N")]
    pub max_steps_per_epoch: Option<usize>,

    /// Seed of the initialisation, batch order and dropout.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,

    #[command(flatten)]
    pub data_format: DataFormatArgs,

    /// Output folder for the adapter and metrics.json (created; files in it are replaced).
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
}

impl Args {
    /// The method configuration the flags describe.
    pub fn method_config(&self) -> MethodConfig {
        match self.method {
            Method::Prompt => MethodConfig::Prompt {
                num_virtual_tokens: self.virtual_tokens,
                init_text: if self.random_init {
                    None
                } else {
                    Some(
                        self.init_text
                            .clone()
                            .unwrap_or_else(|| PAPER_INIT_TEXT.to_string()),
                    )
                },
            },
            Method::PromptEncoder => MethodConfig::PromptEncoder {
                num_virtual_tokens: self.virtual_tokens,
                encoder_hidden_size: self.encoder_hidden,
            },
            Method::Lora => MethodConfig::Lora {
                r: self.lora_r,
                alpha: self.lora_alpha,
                dropout: self.lora_dropout,
                target_modules: self.lora_targets.clone(),
            },
            Method::Head => MethodConfig::Head,
            Method::Full => MethodConfig::Full,
        }
    }
}

struct Data {
    name: String,
    labels: LabelMap,
    train: Vec<Example>,
    eval: Option<Vec<Example>>,
}

fn load_data(a: &Args, g: &Globals) -> Result<Data> {
    if common::is_demo(&a.data) {
        if a.eval.is_some() {
            bail!("--eval cannot be combined with --data demo: the demo data has its own train/eval split (see --split-seed, --eval-fraction)");
        }
        let ds = common::load_demo(&a.data_format, g)?;
        let eval = (!ds.eval.is_empty()).then_some(ds.eval);
        return Ok(Data {
            name: "demo (chatterbot corpus)".into(),
            labels: ds.labels,
            train: ds.train,
            eval,
        });
    }
    let mut paths = vec![a.data.as_path()];
    paths.extend(a.eval.as_deref());
    let labels = common::scan_file_labels(&paths, &a.data_format)?;
    let train = common::read_file(&a.data, &a.data_format, &labels)?;
    let eval = match &a.eval {
        Some(p) => Some(common::read_file(p, &a.data_format, &labels)?),
        None => None,
    };
    Ok(Data {
        name: a.data.display().to_string(),
        labels,
        train,
        eval,
    })
}

/// Runs `fedprompt train`.
pub fn run(a: Args, g: &Globals) -> Result<()> {
    if a.output.is_file() {
        bail!("--output {} is a file; give a folder", a.output.display());
    }
    let method = a.method_config();
    method.validate()?;
    let cfg = TrainConfig {
        learning_rate: a.lr,
        batch_size: a.batch_size,
        epochs: a.epochs,
        patience: a.patience,
        weight_decay: a.weight_decay,
        max_steps_per_epoch: a.max_steps_per_epoch,
        restore_best: true,
        seed: a.seed,
    };
    cfg.validate()?;
    if a.max_steps_per_epoch == Some(0) {
        bail!("--max-steps-per-epoch must be at least 1");
    }

    let data = load_data(&a, g)?;
    if data.labels.len() < 2 {
        bail!(
            "the training data has only one label ({}); a classifier needs at least 2",
            data.labels.names().join(", ")
        );
    }
    let backbone = common::load_backbone(a.model.model.as_deref(), a.model.dtype, g)?;
    let clf = Classifier::new(&backbone, &method, data.labels.names(), a.seed)?;
    let enc = common::text_encoder(&backbone, a.max_len, method.virtual_tokens())?;

    let sp = common::spinner("tokenising", g);
    let train_enc = encode_examples(&enc, &data.train)?;
    let eval_enc = match &data.eval {
        Some(e) => Some(encode_examples(&enc, e)?),
        None => None,
    };
    sp.finish_and_clear();

    let pad = backbone.config().pad_token_id;
    let types = common::use_token_types(&backbone);
    let trainable = clf.trainable().num_params();
    let total = clf.total_params();
    eprintln!(
        "training {} on {}: {} train / {} eval examples, {} labels, {} trainable of {} parameters ({:.3}%)",
        method.name(),
        data.name,
        train_enc.len(),
        eval_enc.as_ref().map_or(0, Vec::len),
        data.labels.len(),
        trainable,
        total,
        100.0 * trainable as f64 / total.max(1) as f64
    );

    let per_epoch = train_enc.len().div_ceil(a.batch_size);
    let per_epoch = a
        .max_steps_per_epoch
        .map_or(per_epoch, |m| per_epoch.min(m));
    let pb = common::progress_bar((per_epoch * a.epochs) as u64, "steps", g);
    let start = Instant::now();
    let report = train(
        &clf,
        &train_enc,
        eval_enc.as_deref(),
        &cfg,
        pad,
        types,
        None,
        Some(&pb),
    )?;
    pb.finish_and_clear();
    let train_secs = start.elapsed().as_secs_f64();

    let (final_split, final_set) = match &eval_enc {
        Some(e) if !e.is_empty() => ("eval", e.as_slice()),
        _ => ("train", train_enc.as_slice()),
    };
    // With an eval set the best epoch's values are restored, so its evaluation is the final one.
    let best_eval = report
        .best_epoch
        .and_then(|e| report.epochs.get(e - 1))
        .and_then(|s| s.eval.clone())
        .filter(|_| final_split == "eval");
    let final_eval = match best_eval {
        Some(r) => r,
        None => {
            let sp = common::spinner(&format!("evaluating on the {final_split} set"), g);
            let r = evaluate(&clf, final_set, 64, pad, types)?;
            sp.finish_and_clear();
            r
        }
    };

    adapter::save(&clf, &backbone, &a.output)
        .with_context(|| format!("saving the adapter to {}", a.output.display()))?;
    let metrics = json!({
        "method": method,
        "model": backbone.folder().display().to_string(),
        "data": data.name,
        "eval_data": a.eval.as_ref().map(|p| p.display().to_string()),
        "labels": data.labels.names(),
        "train_examples": train_enc.len(),
        "eval_examples": eval_enc.as_ref().map_or(0, Vec::len),
        "train_languages": language_counts(&data.train),
        "trainable_params": trainable,
        "total_params": total,
        "max_len": enc.max_len(),
        "config": cfg,
        "train_seconds": train_secs,
        "report": report,
        "final_split": final_split,
        "final": final_eval,
    });
    let metrics_path = a.output.join("metrics.json");
    common::write_json(&metrics_path, &metrics)?;

    println!(
        "{} steps in {:.1} s{}{}",
        report.steps,
        train_secs,
        report
            .best_epoch
            .map(|e| format!(", best epoch {e}"))
            .unwrap_or_default(),
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    if final_split == "train" {
        println!("\nScores on the training data (no eval set):\n");
    } else {
        println!("\nScores on the eval set:\n");
    }
    print!("{}", common::scores_table(&final_eval));
    println!(
        "\nadapter and metrics.json written to {}",
        a.output.display()
    );
    Ok(())
}
