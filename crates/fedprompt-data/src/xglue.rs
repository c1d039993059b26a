//! XGLUE news classification (NC) reader.
//!
//! Files `xglue.nc.<lang>.<split>` (e.g. `xglue.nc.de.dev`): one example per
//! line, three tab-separated fields `title<TAB>body<TAB>category`, no header,
//! no quoting. Title → [`Example::text`], body → [`Example::text_pair`].

use std::path::Path;

use crate::error::{DataError, Result};
use crate::io::{decode, name_component, raw_lines, read_bytes, Policy};
use crate::types::{Example, LabelMap, ReadOptions, ReadOutput};

/// The ten NC categories in index order (the Hugging Face `xglue` order).
pub const XGLUE_NC_LABELS: [&str; 10] = [
    "foodanddrink",
    "sports",
    "travel",
    "finance",
    "lifestyle",
    "news",
    "entertainment",
    "health",
    "video",
    "autos",
];

/// The five NC languages used in the paper.
pub const XGLUE_NC_LANGUAGES: [&str; 5] = ["en", "es", "fr", "de", "ru"];

/// Reads one XGLUE-NC file. The language is `language`, or else the third
/// dot-separated part of the file name (`xglue.nc.<lang>.<split>`).
/// Labels are looked up in `labels` (normally [`LabelMap::xglue_nc`]).
pub fn read_xglue_nc(
    path: impl AsRef<Path>,
    language: Option<&str>,
    labels: &LabelMap,
    opts: &ReadOptions,
) -> Result<ReadOutput> {
    let path = path.as_ref();
    let lang = match language {
        Some(l) => l.to_string(),
        None => name_component(path, 2).ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "{}: cannot tell the language from the file name (expected xglue.nc.<lang>.<split>); pass it explicitly",
                path.display()
            ))
        })?,
    };
    let bytes = read_bytes(path)?;
    let mut policy = Policy::new(path, opts);
    let mut out = Vec::new();
    for (ln, raw) in raw_lines(&bytes) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = (|| -> Result<Example> {
            let line = decode(path, ln, raw)?;
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != 3 {
                return Err(policy.bad_line(
                    ln,
                    format!(
                        "expected 3 tab-separated fields (title, body, category), found {}",
                        fields.len()
                    ),
                ));
            }
            let label = policy.label(labels, ln, fields[2].trim())?;
            let (title, body) = (fields[0].trim(), fields[1].trim());
            if title.is_empty() && body.is_empty() {
                return Err(policy.bad_line(ln, "empty title and body"));
            }
            // An empty title leaves the body as the only text.
            Ok(if title.is_empty() {
                Example::new(body, label, lang.clone())
            } else if body.is_empty() {
                Example::new(title, label, lang.clone())
            } else {
                Example::pair(title, body, label, lang.clone())
            })
        })();
        match parsed {
            Ok(e) => out.push(e),
            Err(e) => policy.bad(e)?,
        }
    }
    policy.require_nonempty(out.len())?;
    Ok(ReadOutput {
        examples: out,
        warnings: policy.warnings,
    })
}
