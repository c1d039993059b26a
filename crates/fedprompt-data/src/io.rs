//! Shared file helpers: raw lines with UTF-8 checks, the skip-or-fail policy.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::types::{LabelMap, LoadWarning, ReadOptions};

/// Reads a whole file.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|cause| DataError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Reads a whole file as UTF-8 (BOM stripped); an invalid byte is reported
/// with its line.
pub(crate) fn read_utf8(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(s)),
        Err(e) => {
            let upto = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..upto].iter().filter(|&&b| b == b'\n').count();
            Err(DataError::InvalidUtf8 {
                path: path.to_path_buf(),
                line,
            })
        }
    }
}

/// Splits raw bytes into `(1-based line number, line)` with `\r\n` or `\n`
/// endings removed and a leading UTF-8 BOM stripped; a final empty line
/// (after the last newline) is not yielded.
pub(crate) fn raw_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let trailing = bytes.ends_with(b"\n");
    let mut parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if trailing || bytes.is_empty() {
        parts.pop();
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}

/// Decodes one line, reporting invalid UTF-8 with its line.
pub(crate) fn decode<'a>(path: &Path, line: usize, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| DataError::InvalidUtf8 {
        path: path.to_path_buf(),
        line,
    })
}

/// Applies the skip-or-fail policy to line-level errors.
pub(crate) struct Policy {
    path: PathBuf,
    skip: bool,
    pub warnings: Vec<LoadWarning>,
}

impl Policy {
    pub fn new(path: &Path, opts: &ReadOptions) -> Self {
        Self {
            path: path.to_path_buf(),
            skip: opts.skip_bad_lines,
            warnings: Vec::new(),
        }
    }

    /// Records a skippable error as a warning, or returns it.
    pub fn bad(&mut self, err: DataError) -> Result<()> {
        if self.skip && err.is_line_error() {
            let line = match &err {
                DataError::InvalidUtf8 { line, .. }
                | DataError::BadLine { line, .. }
                | DataError::UnknownLabel { line, .. } => Some(*line),
                _ => None,
            };
            // The warning prints its own `path:line: `; keep only the error's detail.
            let full = err.to_string();
            let detail = match line {
                Some(l) => full
                    .strip_prefix(&format!("{}:{l}: ", self.path.display()))
                    .unwrap_or(&full),
                None => &full,
            };
            self.warnings.push(LoadWarning {
                path: self.path.clone(),
                line,
                message: format!("skipped: {detail}"),
            });
            Ok(())
        } else {
            Err(err)
        }
    }

    /// A `BadLine` error for this file.
    pub fn bad_line(&self, line: usize, message: impl Into<String>) -> DataError {
        DataError::BadLine {
            path: self.path.clone(),
            line,
            message: message.into(),
        }
    }

    /// Looks a label up, mapping a miss to `UnknownLabel`.
    pub fn label(&self, labels: &LabelMap, line: usize, name: &str) -> Result<usize> {
        labels.index(name).ok_or_else(|| DataError::UnknownLabel {
            path: self.path.clone(),
            line,
            label: name.to_string(),
            known: labels.known(),
        })
    }

    /// Errors with `EmptyFile` when nothing was read.
    pub fn require_nonempty(&self, n: usize) -> Result<()> {
        if n == 0 {
            Err(DataError::EmptyFile {
                path: self.path.clone(),
            })
        } else {
            Ok(())
        }
    }
}

/// The `i`-th dot-separated component of a file name, e.g. the `<lang>` of
/// `multinli.train.<lang>.tsv` (index 2) or `xglue.nc.<lang>.<split>`.
pub(crate) fn name_component(path: &Path, i: usize) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.split('.')
        .nth(i)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Finds a column by exact name (BOM and surrounding spaces ignored).
pub(crate) fn find_column(path: &Path, header: &[&str], name: &str) -> Result<usize> {
    header
        .iter()
        .position(|h| h.trim_start_matches('\u{feff}').trim() == name)
        .ok_or_else(|| DataError::MissingColumn {
            path: path.to_path_buf(),
            column: name.to_string(),
            found: header.join(", "),
        })
}
