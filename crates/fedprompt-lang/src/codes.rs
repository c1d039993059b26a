//! ISO 639-1 / 639-3 language codes, from the embedded `data/iso639.csv`.
//!
//! The table maps the 28 downstream-task languages (XNLI, XGLUE-NC, MasakhaNEWS) and every
//! CC-100 language to the ISO 639-3 code URIEL uses (macrolanguage codes kept: `ar` → `ara`,
//! `zh` → `zho`, `sw` → `swa`).

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::error::{LangError, Result};

/// The embedded ISO 639 table (with its source comment).
pub const ISO639_CSV: &str = include_str!("../data/iso639.csv");

/// A language of the embedded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code, if the language has one (`pcm` has none).
    pub iso1: Option<String>,
    /// ISO 639-3 code as used by URIEL.
    pub iso3: String,
    /// English name.
    pub name: String,
}

struct Table {
    langs: Vec<Language>,
    by_code: HashMap<String, usize>,
}

fn table() -> Result<&'static Table> {
    static TABLE: OnceLock<std::result::Result<Table, String>> = OnceLock::new();
    TABLE
        .get_or_init(parse_table)
        .as_ref()
        .map_err(|reason| LangError::EmbeddedTable {
            table: "iso639.csv",
            reason: reason.clone(),
        })
}

fn parse_table() -> std::result::Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .from_reader(ISO639_CSV.as_bytes());
    let mut langs = Vec::new();
    let mut by_code = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        let (Some(iso1), Some(iso3), Some(name)) = (record.get(0), record.get(1), record.get(2))
        else {
            return Err(format!("row {} has fewer than 3 fields", i + 1));
        };
        let lang = Language {
            iso1: (!iso1.trim().is_empty()).then(|| iso1.trim().to_ascii_lowercase()),
            iso3: iso3.trim().to_ascii_lowercase(),
            name: name.trim().to_string(),
        };
        if let Some(c) = &lang.iso1 {
            by_code.entry(c.clone()).or_insert(langs.len());
        }
        by_code.entry(lang.iso3.clone()).or_insert(langs.len());
        langs.push(lang);
    }
    Ok(Table { langs, by_code })
}

/// All languages of the embedded table, in file order.
pub fn languages() -> Result<&'static [Language]> {
    Ok(&table()?.langs)
}

/// Looks up an ISO 639-1 or 639-3 code (case-insensitive, surrounding spaces ignored).
///
/// Returns `Ok(None)` when the code is not in the table; see [`unknown_code`] for the error.
pub fn lookup(code: &str) -> Result<Option<&'static Language>> {
    let t = table()?;
    let key = code.trim().to_ascii_lowercase();
    Ok(t.by_code.get(&key).map(|&i| &t.langs[i]))
}

/// Builds the "unknown code" error with up to five close matches from the table:
/// codes one edit away, and languages whose name contains the input.
pub fn unknown_code(code: &str) -> LangError {
    let key = code.trim().to_ascii_lowercase();
    let mut suggestions = Vec::new();
    if let Ok(t) = table() {
        for lang in &t.langs {
            let near_code = lang
                .iso1
                .iter()
                .chain(std::iter::once(&lang.iso3))
                .any(|c| edit_distance(c, &key) <= 1);
            let name = lang.name.to_ascii_lowercase();
            let near_name = key.len() >= 3 && (name.contains(&key) || name == key);
            if (near_code || near_name) && suggestions.len() < 5 {
                let shown = lang.iso1.as_deref().unwrap_or(&lang.iso3);
                suggestions.push(format!("{shown} ({})", lang.name));
            }
        }
    }
    LangError::UnknownLanguage {
        code: code.to_string(),
        suggestions,
    }
}

/// Levenshtein distance over chars (inputs are short codes).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("eng", "eng"), 0);
        assert_eq!(edit_distance("eng", "enx"), 1);
        assert_eq!(edit_distance("en", "eng"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn table_parses_with_expected_rows() {
        let langs = languages().unwrap();
        assert_eq!(langs.len(), 101);
        assert_eq!(langs[0].iso3, "eng");
        let pcm = lookup("pcm").unwrap().unwrap();
        assert_eq!(pcm.iso1, None);
        assert_eq!(pcm.name, "Nigerian Pidgin");
    }
}
