//! `fedprompt predict`: JSON lines in, the same lines plus `label` and `logits` out.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fedprompt_model::{Backbone, Classifier, ForwardCtx, HeadKind, MethodConfig, TextInput};
use serde_json::{Map, Value};

use crate::common::{self, Globals, ModelArg};

const AFTER_HELP: &str = "\
Examples:
  fedprompt predict --adapter runs/demo-prompt --input questions.jsonl --output labelled.jsonl
  # A fine-tuned classification model folder, no adapter: its own head and id2label
  fedprompt predict --model my-xlmr-classifier/ --input in.jsonl --output out.jsonl

Each input line is a JSON object with a string `text` (and for pair tasks `text_pair`);
other fields are kept as they are. Each output line is the input object with `label` (the
predicted label name) and `logits` (one number per label, in the adapter's label order)
appended; existing `label`/`logits` fields are replaced. Output lines follow input order;
blank input lines are skipped. The output is written to a temporary file and renamed, so
a failed run leaves no partial output.";

/// Arguments of `fedprompt predict`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,

    /// Adapter folder written by `fedprompt train` (or PEFT's save_pretrained). Without it
    /// the model folder's own classification head and config.json id2label are used.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// Input JSON lines file.
    #[arg(long, short, value_name = "FILE")]
    pub input: PathBuf,

    /// Output JSON lines file (replaced if it exists).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,

    /// Examples per forward pass.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub batch_size: usize,

    /// Maximum tokens per sequence, special tokens and the soft prompt's virtual tokens
    /// included (the text gets N minus the virtual tokens); longer texts are truncated. Capped
    /// at the model's position table.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_len: usize,

    /// JSON key of the input text.
    #[arg(long, value_name = "KEY", default_value = "text")]
    pub text_field: String,

    /// JSON key of the optional second text of a pair task.
    #[arg(long, value_name = "KEY", default_value = "text_pair")]
    pub pair_field: String,
}

struct Record {
    /// The line as read (BOM and trailing whitespace removed).
    raw: String,
    obj: Map<String, Value>,
    input: TextInput,
}

fn parse_input(path: &Path, text_key: &str, pair_key: &str) -> Result<Vec<Record>> {
    if !path.exists() {
        bail!("input file not found: {}", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let line = std::str::from_utf8(line)
            .map_err(|_| anyhow::anyhow!("{}:{n}: invalid UTF-8", path.display()))?;
        let line = if n == 1 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |msg: String| anyhow::anyhow!("{}:{n}: {msg}", path.display());
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(bad("not a JSON object".into()));
        };
        let text = match obj.get(text_key) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(bad(format!("`{text_key}` is not a string: {other}"))),
            None => return Err(bad(format!("no `{text_key}` field"))),
        };
        let text_pair = match obj.get(pair_key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(bad(format!("`{pair_key}` is not a string: {other}"))),
        };
        out.push(Record {
            raw: line.to_string(),
            obj,
            input: TextInput { text, text_pair },
        });
    }
    if out.is_empty() {
        bail!(
            "input file {} is empty: no JSON lines to classify",
            path.display()
        );
    }
    Ok(out)
}

/// A classifier from the model folder's own classification head.
fn folder_head(b: &Backbone) -> Result<Classifier> {
    let cfg = b.config();
    let labels = &cfg.id2label;
    let h = cfg.hidden_size;
    let w = b.weights();
    let (key, extra) = match b.head_kind() {
        HeadKind::Roberta => (
            "classifier.out_proj.weight",
            Some("classifier.dense.weight"),
        ),
        HeadKind::BertPooler => ("classifier.weight", None),
    };
    let head_ok = labels.len() >= 2
        && w.shapes()
            .get(key)
            .is_some_and(|s| s.as_slice() == [labels.len(), h])
        && extra.is_none_or(|k| w.contains(k));
    if !head_ok {
        bail!(
            "model folder {} has no classification head (`{key}` with id2label in config.json); \
             pass --adapter DIR with an adapter from `fedprompt train`",
            b.folder().display()
        );
    }
    Ok(Classifier::new(b, &MethodConfig::Head, labels, 0)?)
}

/// Appends `label` and `logits` to the line, keeping its text (and so its key order) as is;
/// existing `label`/`logits` fields are replaced.
fn output_line(rec: &Record, label: &str, logits: &[f32]) -> Result<String> {
    let label = serde_json::to_string(label)?;
    // Serialised as f32: the shortest decimal that reads back to the same f32.
    let logits = serde_json::to_string(logits)?;
    let base = if rec.obj.contains_key("label") || rec.obj.contains_key("logits") {
        let mut obj = rec.obj.clone();
        obj.remove("label");
        obj.remove("logits");
        serde_json::to_string(&Value::Object(obj))?
    } else {
        rec.raw.clone()
    };
    // A JSON object ends with `}`.
    let body = base.strip_suffix('}').unwrap_or(&base).trim_end();
    let sep = if body == "{" { "" } else { "," };
    Ok(format!(
        "{body}{sep}\"label\":{label},\"logits\":{logits}}}"
    ))
}

/// Runs `fedprompt predict`.
pub fn run(a: Args, g: &Globals) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let records = parse_input(&a.input, &a.text_field, &a.pair_field)?;
    let backbone = common::load_backbone(a.model.model.as_deref(), a.model.dtype, g)?;
    let clf = match &a.adapter {
        Some(dir) => common::load_adapter(&backbone, dir)?,
        None => folder_head(&backbone)?,
    };
    let enc = common::text_encoder(&backbone, a.max_len, clf.method().virtual_tokens())?;

    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp_path = dir.join(format!(
        ".{}.tmp-{}",
        a.output
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "predictions".into()),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp_path)
            .with_context(|| format!("cannot create {}", tmp_path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let ctx = ForwardCtx::eval();
        let pb = common::progress_bar(records.len() as u64, "lines", g);
        for chunk in records.chunks(a.batch_size) {
            let inputs: Vec<TextInput> = chunk.iter().map(|r| r.input.clone()).collect();
            let batch = enc.batch(&inputs)?;
            let logits: Vec<Vec<f32>> = clf.forward(&batch, &ctx)?.to_vec2()?;
            for (rec, row) in chunk.iter().zip(&logits) {
                let best = row
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map_or(0, |(i, _)| i);
                let label = clf.labels().get(best).map_or("", String::as_str);
                writeln!(w, "{}", output_line(rec, label, row)?)?;
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        w.flush()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp_path);
        return Err(e);
    }
    std::fs::rename(&tmp_path, &a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "{} predictions written to {}",
        records.len(),
        a.output.display()
    );
    Ok(())
}
