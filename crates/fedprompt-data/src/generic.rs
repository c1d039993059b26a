//! Generic CSV / TSV / JSON-lines reader with a column mapping.
//!
//! Covers Hugging Face `datasets` exports: `Dataset.to_json(path)` writes JSON
//! lines (one object per line) and `to_csv` writes quoted CSV. A JSON label
//! may be an integer (a label index, as a `ClassLabel` exports) or a string (a
//! label name); a CSV/TSV label is a name unless
//! [`GenericFormat::label_is_index`] is set.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::io::{decode, raw_lines, read_bytes, Policy};
use crate::types::{Example, LabelMap, ReadOptions, ReadOutput};

/// The language given to examples when neither a language column nor a fixed
/// language is configured (ISO 639-2 "undetermined").
pub const UNDETERMINED_LANGUAGE: &str = "und";

/// File syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Comma separated, header row, `"` quoting (RFC 4180).
    Csv,
    /// Tab separated, header row, `"` quoting unless [`GenericFormat::quoting`] is false.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

impl FileFormat {
    /// From the extension: `.csv`, `.tsv`/`.tab`, `.jsonl`/`.json`/`.ndjson`.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            "jsonl" | "json" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// Which columns (or JSON keys) hold what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericFormat {
    /// Syntax; `None` means from the file extension.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Column of the input text (required).
    #[serde(default = "default_text")]
    pub text: String,
    /// Column of the second text of a pair task.
    #[serde(default)]
    pub text_pair: Option<String>,
    /// Column of the label (required).
    #[serde(default = "default_label")]
    pub label: String,
    /// Column of the language code.
    #[serde(default)]
    pub language_column: Option<String>,
    /// Language of every row, or of rows whose language cell is empty.
    /// With neither, rows get [`UNDETERMINED_LANGUAGE`].
    #[serde(default)]
    pub fixed_language: Option<String>,
    /// CSV/TSV: a label cell is an integer index, not a name.
    #[serde(default)]
    pub label_is_index: bool,
    /// CSV/TSV: honour `"` quoting (default true). Turn off for TSV files
    /// whose fields contain bare quotes.
    #[serde(default = "default_true")]
    pub quoting: bool,
}

fn default_text() -> String {
    "text".into()
}
fn default_label() -> String {
    "label".into()
}
fn default_true() -> bool {
    true
}

impl Default for GenericFormat {
    /// `text` and `label` columns, format from the extension, quoting on.
    fn default() -> Self {
        Self {
            format: None,
            text: default_text(),
            text_pair: None,
            label: default_label(),
            language_column: None,
            fixed_language: None,
            label_is_index: false,
            quoting: true,
        }
    }
}

/// A label as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RawLabel {
    Index(usize),
    Name(String),
}

struct RawRow {
    line: usize,
    text: String,
    text_pair: Option<String>,
    label: RawLabel,
    language: String,
}

/// Reads one file. Labels are resolved against `labels` (see
/// [`scan_labels`] to build a map from the files themselves).
pub fn read_generic(
    path: impl AsRef<Path>,
    format: &GenericFormat,
    labels: &LabelMap,
    opts: &ReadOptions,
) -> Result<ReadOutput> {
    let path = path.as_ref();
    let mut policy = Policy::new(path, opts);
    let rows = read_raw(path, format, &mut policy)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let label = match &r.label {
            RawLabel::Name(n) => policy.label(labels, r.line, n),
            RawLabel::Index(i) if *i < labels.len() => Ok(*i),
            RawLabel::Index(i) => Err(DataError::UnknownLabel {
                path: path.to_path_buf(),
                line: r.line,
                label: i.to_string(),
                known: format!("indices 0..{}", labels.len()),
            }),
        };
        match label {
            Ok(label) => out.push(Example {
                text: r.text,
                text_pair: r.text_pair,
                label,
                language: r.language,
            }),
            Err(e) => policy.bad(e)?,
        }
    }
    policy.require_nonempty(out.len())?;
    Ok(ReadOutput {
        examples: out,
        warnings: policy.warnings,
    })
}

/// Builds a label map from the labels found in `paths` (so train and eval
/// files share one map). Integer labels give names `"0"..="max"`; names give
/// the distinct names sorted. Mixing the two is an error. Bad lines are
/// ignored here (the read itself reports them).
pub fn scan_labels<P: AsRef<Path>>(paths: &[P], format: &GenericFormat) -> Result<LabelMap> {
    let mut names = Vec::new();
    let mut max_index: Option<usize> = None;
    let mut first_bad = None;
    for p in paths {
        let mut policy = Policy::new(
            p.as_ref(),
            &ReadOptions {
                skip_bad_lines: true,
            },
        );
        for r in read_raw(p.as_ref(), format, &mut policy)? {
            match r.label {
                RawLabel::Index(i) => max_index = Some(max_index.map_or(i, |m| m.max(i))),
                RawLabel::Name(n) => names.push(n),
            }
        }
        first_bad = first_bad.or(policy.warnings.into_iter().next());
    }
    // Every line was bad (e.g. an unclosed quote swallowed the file): say why, not just
    // "no labels".
    if let (None, true, Some(w)) = (max_index, names.is_empty(), first_bad) {
        return Err(DataError::InvalidLabelMap(format!(
            "no label could be read, every row was rejected; the first: {w}"
        )));
    }
    match (max_index, names.is_empty()) {
        (Some(_), false) => Err(DataError::InvalidLabelMap(
            "labels mix integers and names; give the label map explicitly".into(),
        )),
        (Some(m), true) => LabelMap::new((0..=m).map(|i| i.to_string())),
        (None, _) => LabelMap::from_data(names),
    }
}

fn read_raw(path: &Path, format: &GenericFormat, policy: &mut Policy) -> Result<Vec<RawRow>> {
    let ff = match format.format.or_else(|| FileFormat::from_path(path)) {
        Some(f) => f,
        None => {
            return Err(DataError::InvalidArgument(format!(
                "{}: unknown file format; name it .csv, .tsv or .jsonl or set `format`",
                path.display()
            )))
        }
    };
    match ff {
        FileFormat::Csv => read_delimited_raw(path, b',', format.quoting, format, policy),
        FileFormat::Tsv => read_delimited_raw(path, b'\t', format.quoting, format, policy),
        FileFormat::Jsonl => read_jsonl_raw(path, format, policy),
    }
}

fn row_language(format: &GenericFormat, cell: Option<&str>) -> Option<String> {
    match cell.map(str::trim).filter(|s| !s.is_empty()) {
        Some(l) => Some(l.to_string()),
        None => match (&format.language_column, &format.fixed_language) {
            (_, Some(f)) => Some(f.clone()),
            (None, None) => Some(UNDETERMINED_LANGUAGE.to_string()),
            (Some(_), None) => None,
        },
    }
}

fn read_delimited_raw(
    path: &Path,
    delimiter: u8,
    quoting: bool,
    format: &GenericFormat,
    policy: &mut Policy,
) -> Result<Vec<RawRow>> {
    let text_col = format.text.clone();
    let pair_col = format.text_pair.clone();
    let label_col = format.label.clone();
    let lang_col = format.language_column.clone();
    let mut required = vec![text_col.as_str(), label_col.as_str()];
    required.extend(pair_col.as_deref());
    required.extend(lang_col.as_deref());
    let mut rows = Vec::new();
    read_delimited(
        path,
        delimiter,
        quoting,
        &required,
        policy,
        |policy, line, cells| {
            let text = cells[0].trim();
            if text.is_empty() {
                return Err(policy.bad_line(line, format!("empty `{text_col}`")));
            }
            let raw_label = cells[1].trim();
            if raw_label.is_empty() {
                return Err(policy.bad_line(line, format!("empty `{label_col}`")));
            }
            let label = if format.label_is_index {
                RawLabel::Index(raw_label.parse().map_err(|_| {
                    policy.bad_line(line, format!("label `{raw_label}` is not an index"))
                })?)
            } else {
                RawLabel::Name(raw_label.to_string())
            };
            let mut next = 2;
            let text_pair = if pair_col.is_some() {
                next += 1;
                Some(cells[2].trim())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            } else {
                None
            };
            let lang_cell = lang_col.as_ref().map(|_| cells[next]);
            let language = row_language(format, lang_cell)
                .ok_or_else(|| policy.bad_line(line, "empty language and no fixed_language"))?;
            rows.push(RawRow {
                line,
                text: text.to_string(),
                text_pair,
                label,
                language,
            });
            Ok(())
        },
    )?;
    Ok(rows)
}

/// A quoted field that runs over several lines, one of which holds as many delimiters as a
/// whole row, is, in practice, an unclosed `"` that swallowed the rows after it (the csv
/// crate, like Python's, reads on to the next quote). Returns what to tell the user, or
/// `None` for an ordinary record. A two-column CSV file cannot be told apart from a text
/// with commas and line breaks, so it is never flagged.
fn merged_rows(rec: &csv::ByteRecord, delimiter: u8, columns: usize) -> Option<String> {
    let need = columns.saturating_sub(1).max(1);
    if delimiter != b'\t' && columns < 3 {
        return None;
    }
    rec.iter().find_map(|field| {
        let mut lines = field.split(|&b| b == b'\n');
        lines.next();
        let rows = lines
            .filter(|l| l.iter().filter(|&&b| b == delimiter).count() >= need)
            .count();
        (rows > 0).then(|| {
            format!(
                "a quoted field runs over {} lines, {rows} of which look like rows of their own: an unclosed `\"` probably merged the rows after this line into one field; if this file's texts contain bare quotes, read it with quoting off (`quoting = false` in the format, `--no-quoting` on the command line)",
                field.iter().filter(|&&b| b == b'\n').count() + 1
            )
        })
    })
}

/// Streams a delimited file with a header, calling `row(policy, line, cells)`
/// with the cells of `columns` in that order. Field-count errors, invalid
/// UTF-8 and errors returned by `row` go through the policy.
pub(crate) fn read_delimited<F>(
    path: &Path,
    delimiter: u8,
    quoting: bool,
    columns: &[&str],
    policy: &mut Policy,
    mut row: F,
) -> Result<()>
where
    F: FnMut(&Policy, usize, &[&str]) -> Result<()>,
{
    let file = std::fs::File::open(path).map_err(|cause| DataError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(true)
        // Field counts are checked below, after the merged-rows check: a quote that swallowed
        // the rest of the file leaves a record with too few fields, and the quote is the news.
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let header = rdr.byte_headers().map_err(|e| csv_error(path, e))?.clone();
    if header.is_empty() {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let header_strs: Vec<&str> = header
        .iter()
        .map(|h| decode(path, 1, h))
        .collect::<Result<_>>()?;
    let idx: Vec<usize> = columns
        .iter()
        .map(|c| crate::io::find_column(path, &header_strs, c))
        .collect::<Result<_>>()?;
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                let line = rec.position().map_or(0, |p| p.line() as usize);
                if rec.len() == 1 && rec[0].iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if quoting {
                    if let Some(msg) = merged_rows(&rec, delimiter, header.len()) {
                        policy.bad(policy.bad_line(line, msg))?;
                        continue;
                    }
                }
                if rec.len() != header.len() {
                    let msg = format!("expected {} fields, found {}", header.len(), rec.len());
                    policy.bad(policy.bad_line(line, msg))?;
                    continue;
                }
                let cells: Result<Vec<&str>> =
                    idx.iter().map(|&i| decode(path, line, &rec[i])).collect();
                match cells.and_then(|c| row(policy, line, &c)) {
                    Ok(()) => {}
                    Err(e) => policy.bad(e)?,
                }
            }
            Err(e) => {
                let err = csv_error(path, e);
                policy.bad(err)?;
            }
        }
    }
    Ok(())
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line() as usize);
    match e.into_kind() {
        csv::ErrorKind::Io(cause) => DataError::Io {
            path: path.to_path_buf(),
            cause,
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => DataError::BadLine {
            path: path.to_path_buf(),
            line: line.unwrap_or(0),
            message: format!("expected {expected_len} fields, found {len}"),
        },
        csv::ErrorKind::Utf8 { .. } => DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            line: line.unwrap_or(0),
        },
        other => DataError::BadLine {
            path: path.to_path_buf(),
            line: line.unwrap_or(0),
            message: format!("{other:?}"),
        },
    }
}

fn read_jsonl_raw(path: &Path, format: &GenericFormat, policy: &mut Policy) -> Result<Vec<RawRow>> {
    let bytes = read_bytes(path)?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(DataError::InvalidArgument(format!(
            "{}: a JSON array, not JSON lines; export with `to_json(path, lines=True)` (the default)",
            path.display()
        )));
    }
    let mut rows = Vec::new();
    let mut first = true;
    for (ln, raw) in raw_lines(&bytes) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if std::mem::take(&mut first) {
            check_keys(path, raw, format)?;
        }
        let parsed = (|| -> Result<RawRow> {
            let line = decode(path, ln, raw)?;
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| policy.bad_line(ln, format!("invalid JSON: {e}")))?;
            let obj = v
                .as_object()
                .ok_or_else(|| policy.bad_line(ln, "not a JSON object"))?;
            let get_str = |key: &str, required: bool| -> Result<Option<String>> {
                match obj.get(key) {
                    None | Some(serde_json::Value::Null) if !required => Ok(None),
                    None => Err(policy.bad_line(ln, format!("no key `{key}`"))),
                    Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
                    Some(serde_json::Value::Null) => {
                        Err(policy.bad_line(ln, format!("`{key}` is null")))
                    }
                    Some(other) => {
                        Err(policy.bad_line(ln, format!("`{key}` is not a string: {other}")))
                    }
                }
            };
            let text = get_str(&format.text, true)?.unwrap_or_default();
            if text.is_empty() {
                return Err(policy.bad_line(ln, format!("empty `{}`", format.text)));
            }
            let text_pair = match &format.text_pair {
                Some(k) => get_str(k, false)?.filter(|s| !s.is_empty()),
                None => None,
            };
            let label = match obj.get(&format.label) {
                Some(serde_json::Value::Number(n)) => match n.as_u64() {
                    Some(i) => RawLabel::Index(i as usize),
                    None => {
                        return Err(
                            policy.bad_line(ln, format!("label {n} is not a non-negative integer"))
                        )
                    }
                },
                Some(serde_json::Value::String(s)) if format.label_is_index => RawLabel::Index(
                    s.trim()
                        .parse()
                        .map_err(|_| policy.bad_line(ln, format!("label `{s}` is not an index")))?,
                ),
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    RawLabel::Name(s.trim().to_string())
                }
                Some(other) => return Err(policy.bad_line(ln, format!("bad label {other}"))),
                None => return Err(policy.bad_line(ln, format!("no key `{}`", format.label))),
            };
            let lang_cell = match &format.language_column {
                Some(k) => get_str(k, false)?,
                None => None,
            };
            let language = row_language(format, lang_cell.as_deref())
                .ok_or_else(|| policy.bad_line(ln, "empty language and no fixed_language"))?;
            Ok(RawRow {
                line: ln,
                text,
                text_pair,
                label,
                language,
            })
        })();
        match parsed {
            Ok(r) => rows.push(r),
            Err(e) => policy.bad(e)?,
        }
    }
    Ok(rows)
}

/// The first record must hold every configured key (the JSON analogue of a
/// header): a key absent there is a missing column, never a skipped line.
fn check_keys(path: &Path, raw: &[u8], format: &GenericFormat) -> Result<()> {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(raw)
    else {
        return Ok(()); // reported as a bad line by the caller
    };
    let wanted = [
        Some(&format.text),
        Some(&format.label),
        format.text_pair.as_ref(),
        format.language_column.as_ref(),
    ];
    for key in wanted.into_iter().flatten() {
        if !obj.contains_key(key) {
            return Err(DataError::MissingColumn {
                path: path.to_path_buf(),
                column: key.clone(),
                found: obj.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(())
}
