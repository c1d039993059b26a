//! XNLI-1.0 readers.
//!
//! Two layouts, both tab separated with a header row and **no quoting** (a
//! `"` is an ordinary character):
//! - `xnli.dev.tsv` / `xnli.test.tsv`: columns include `language`,
//!   `gold_label`, `sentence1`, `sentence2` (others ignored);
//! - machine-translated training files `multinli.train.<lang>.tsv`: columns
//!   `premise`, `hypo`, `label`; the language comes from the file name.
//!
//! Labels are `entailment`, `neutral`, `contradiction`; the training files'
//! `contradictory` is read as `contradiction`. Premise → [`Example::text`],
//! hypothesis → [`Example::text_pair`].

use std::path::Path;

use crate::error::{DataError, Result};
use crate::io::{decode, find_column, name_component, raw_lines, read_bytes, Policy};
use crate::types::{Example, LabelMap, ReadOptions, ReadOutput};

/// XNLI label names in index order.
pub const XNLI_LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// The 15 XNLI languages.
pub const XNLI_LANGUAGES: [&str; 15] = [
    "ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh",
];

/// Reads an XNLI file of either layout (detected from the header).
///
/// For `xnli.dev.tsv` / `xnli.test.tsv`, `language` (if given) keeps only that
/// language's rows (an error if it has none). For `multinli.train.<lang>.tsv`,
/// `language` overrides the language taken from the file name.
/// Labels index [`LabelMap::xnli`].
pub fn read_xnli(
    path: impl AsRef<Path>,
    language: Option<&str>,
    opts: &ReadOptions,
) -> Result<ReadOutput> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    let mut lines = raw_lines(&bytes);
    let Some((hline, hbytes)) = lines.next() else {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    };
    let header_str = decode(path, hline, hbytes)?;
    let header: Vec<&str> = header_str.split('\t').collect();
    let has = |c: &str| header.iter().any(|h| h.trim() == c);
    let eval_layout = has("gold_label");
    let (lang_col, label_col, s1_col, s2_col) = if eval_layout {
        (
            Some(find_column(path, &header, "language")?),
            find_column(path, &header, "gold_label")?,
            find_column(path, &header, "sentence1")?,
            find_column(path, &header, "sentence2")?,
        )
    } else {
        (
            None,
            find_column(path, &header, "label")?,
            find_column(path, &header, "premise")?,
            find_column(path, &header, "hypo")?,
        )
    };
    let fixed_language = if eval_layout {
        None
    } else {
        Some(match language {
            Some(l) => l.to_string(),
            None => name_component(path, 2).ok_or_else(|| {
                DataError::InvalidArgument(format!(
                    "{}: cannot tell the language from the file name (expected multinli.train.<lang>.tsv); pass it explicitly",
                    path.display()
                ))
            })?,
        })
    };
    let labels = LabelMap::xnli();
    let mut policy = Policy::new(path, opts);
    let mut out = Vec::new();
    for (ln, raw) in lines {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = (|| -> Result<Option<Example>> {
            let line = decode(path, ln, raw)?;
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != header.len() {
                return Err(policy.bad_line(
                    ln,
                    format!(
                        "expected {} tab-separated fields, found {}",
                        header.len(),
                        fields.len()
                    ),
                ));
            }
            let lang = match lang_col {
                Some(c) => fields[c].trim().to_string(),
                None => fixed_language.clone().unwrap_or_default(),
            };
            if lang.is_empty() {
                return Err(policy.bad_line(ln, "empty language"));
            }
            if eval_layout {
                if let Some(want) = language {
                    if lang != want {
                        return Ok(None);
                    }
                }
            }
            let raw_label = fields[label_col].trim();
            let name = if raw_label == "contradictory" {
                "contradiction"
            } else {
                raw_label
            };
            let label = policy.label(&labels, ln, name)?;
            let (s1, s2) = (fields[s1_col].trim(), fields[s2_col].trim());
            if s1.is_empty() || s2.is_empty() {
                return Err(policy.bad_line(ln, "empty premise or hypothesis"));
            }
            Ok(Some(Example::pair(s1, s2, label, lang)))
        })();
        match parsed {
            Ok(Some(e)) => out.push(e),
            Ok(None) => {}
            Err(e) => policy.bad(e)?,
        }
    }
    if out.is_empty() {
        if let (true, Some(l)) = (eval_layout, language) {
            return Err(DataError::EmptyLanguage {
                language: l.to_string(),
            });
        }
    }
    policy.require_nonempty(out.len())?;
    Ok(ReadOutput {
        examples: out,
        warnings: policy.warnings,
    })
}
