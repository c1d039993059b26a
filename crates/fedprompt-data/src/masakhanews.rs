//! MasakhaNEWS reader.
//!
//! Files `<lang>/{train,dev,test}.tsv`: tab separated, header
//! `category<TAB>headline<TAB>text<TAB>url` (column order free), `"` quoting
//! as pandas writes it. The input is chosen by [`MasakhaInput`]; by default
//! the headline and the text joined by a single space
//! (`"{headline} {text}"`, either one alone when the other is empty).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::generic::read_delimited;
use crate::io::Policy;
use crate::types::{Example, LabelMap, ReadOptions, ReadOutput};

/// The seven MasakhaNEWS categories in index order.
pub const MASAKHANEWS_LABELS: [&str; 7] = [
    "business",
    "entertainment",
    "health",
    "politics",
    "religion",
    "sports",
    "technology",
];

/// The paper's five MasakhaNEWS languages (directory names).
pub const MASAKHANEWS_PAPER_LANGUAGES: [&str; 5] = ["eng", "fra", "hau", "swa", "yor"];

/// What the model reads from a MasakhaNEWS row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasakhaInput {
    /// `"{headline} {text}"` as one text.
    #[default]
    HeadlineText,
    /// Headline as `text`, body as `text_pair`.
    Pair,
    /// The headline only.
    Headline,
    /// The body text only.
    Text,
}

/// The code this crate gives a MasakhaNEWS directory: ISO 639-1 where one
/// exists (`eng`→`en`, `hau`→`ha`, ...), else the directory name (`pcm`).
pub fn masakhanews_language_code(dir: &str) -> String {
    let code = match dir {
        "amh" => "am",
        "eng" => "en",
        "fra" => "fr",
        "hau" => "ha",
        "ibo" => "ig",
        "lin" => "ln",
        "lug" => "lg",
        "orm" => "om",
        "run" => "rn",
        "sna" => "sn",
        "som" => "so",
        "swa" => "sw",
        "tir" => "ti",
        "xho" => "xh",
        "yor" => "yo",
        other => other,
    };
    code.to_string()
}

/// Reads one MasakhaNEWS TSV. The language is `language`, or else the
/// parent directory's name through [`masakhanews_language_code`].
pub fn read_masakhanews(
    path: impl AsRef<Path>,
    language: Option<&str>,
    input: MasakhaInput,
    labels: &LabelMap,
    opts: &ReadOptions,
) -> Result<ReadOutput> {
    let path = path.as_ref();
    let lang = match language {
        Some(l) => l.to_string(),
        None => path
            .parent()
            .and_then(Path::file_name)
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .map(masakhanews_language_code)
            .ok_or_else(|| {
                DataError::InvalidArgument(format!(
                    "{}: cannot tell the language from the directory (expected <lang>/<split>.tsv); pass it explicitly",
                    path.display()
                ))
            })?,
    };
    let mut policy = Policy::new(path, opts);
    let mut out = Vec::new();
    read_delimited(
        path,
        b'\t',
        true,
        &["category", "headline", "text"],
        &mut policy,
        |policy, line, cells| {
            let label = policy.label(labels, line, cells[0].trim())?;
            let (head, body) = (cells[1].trim(), cells[2].trim());
            let ex = match input {
                MasakhaInput::HeadlineText => {
                    let joined = match (head.is_empty(), body.is_empty()) {
                        (false, false) => format!("{head} {body}"),
                        (false, true) => head.to_string(),
                        (true, _) => body.to_string(),
                    };
                    Example::new(joined, label, lang.clone())
                }
                MasakhaInput::Pair if head.is_empty() => Example::new(body, label, lang.clone()),
                MasakhaInput::Pair if body.is_empty() => Example::new(head, label, lang.clone()),
                MasakhaInput::Pair => Example::pair(head, body, label, lang.clone()),
                MasakhaInput::Headline => Example::new(head, label, lang.clone()),
                MasakhaInput::Text => Example::new(body, label, lang.clone()),
            };
            if ex.text.is_empty() {
                return Err(policy.bad_line(line, "empty input text"));
            }
            out.push(ex);
            Ok(())
        },
    )?;
    policy.require_nonempty(out.len())?;
    Ok(ReadOutput {
        examples: out,
        warnings: policy.warnings,
    })
}
