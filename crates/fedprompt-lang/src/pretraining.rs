//! XLM-R's pre-training mix: CC-100 token counts per language, from the embedded
//! `data/cc100-xlmr-tokens.csv` (Conneau et al. 2020, Appendix A, Table 6).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{LangError, Result};

/// The embedded CC-100 table (with its source and errata comment).
pub const CC100_CSV: &str = include_str!("../data/cc100-xlmr-tokens.csv");

/// Corrections to misprinted rows of Table 6, confirmed by the authors (see the CSV's header):
/// `(iso, printed millions of tokens, corrected millions of tokens)`.
pub const ERRATA: [(&str, f64, f64); 2] = [("sv", 77.8, 12950.0), ("uk", 6.5, 6960.0)];

/// One row of the CC-100 table, as printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Cc100Row {
    /// The ISO code as printed, with a suffix for script variants (`hi_rom`, `zh_hant`, `my_zaw`).
    pub iso: String,
    /// Language name.
    pub language: String,
    /// Tokens in millions.
    pub tokens_millions: f64,
    /// Size in GiB.
    pub size_gib: f64,
}

impl Cc100Row {
    /// The base ISO 639-1 code (`hi` for `hi_rom`).
    pub fn base_iso(&self) -> &str {
        self.iso.split('_').next().unwrap_or(&self.iso)
    }

    /// Whether this row is a script or encoding variant (romanised, Traditional, Zawgyi).
    pub fn is_variant(&self) -> bool {
        self.iso.contains('_')
    }
}

/// What to do with CC-100 rows that are a script variant of another language
/// (`hi_rom`, `ur_rom`, `bn_rom`, `ta_rom`, `te_rom`, `zh_hant`, `my_zaw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptVariants {
    /// Add their tokens to the base language: typology does not depend on the script. Default.
    #[default]
    Fold,
    /// Leave them out of the pre-training mix.
    Skip,
}

/// The CC-100 table as printed, optionally with [`ERRATA`] applied.
pub fn cc100_rows(apply_errata: bool) -> Result<Vec<Cc100Row>> {
    static ROWS: OnceLock<std::result::Result<Vec<Cc100Row>, String>> = OnceLock::new();
    let rows =
        ROWS.get_or_init(parse_cc100)
            .as_ref()
            .map_err(|reason| LangError::EmbeddedTable {
                table: "cc100-xlmr-tokens.csv",
                reason: reason.clone(),
            })?;
    let mut rows = rows.clone();
    if apply_errata {
        for row in &mut rows {
            for (iso, printed, corrected) in ERRATA {
                if row.iso == iso && row.tokens_millions == printed {
                    row.tokens_millions = corrected;
                }
            }
        }
    }
    Ok(rows)
}

fn parse_cc100() -> std::result::Result<Vec<Cc100Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .from_reader(CC100_CSV.as_bytes());
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        let field = |k: usize| record.get(k).map(str::trim).unwrap_or("");
        let num = |k: usize| {
            field(k)
                .parse::<f64>()
                .map_err(|_| format!("row {}: bad number {:?}", i + 1, field(k)))
        };
        rows.push(Cc100Row {
            iso: field(0).to_ascii_lowercase(),
            language: field(1).to_string(),
            tokens_millions: num(2)?,
            size_gib: num(3)?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_100_rows_and_errata_apply() {
        let printed = cc100_rows(false).unwrap();
        assert_eq!(printed.len(), 100);
        let sv = |rows: &[Cc100Row]| rows.iter().find(|r| r.iso == "sv").unwrap().tokens_millions;
        assert_eq!(sv(&printed), 77.8);
        let fixed = cc100_rows(true).unwrap();
        assert_eq!(sv(&fixed), 12950.0);
        let uk = fixed.iter().find(|r| r.iso == "uk").unwrap();
        assert_eq!(uk.tokens_millions, 6960.0);
        let en = fixed.iter().find(|r| r.iso == "en").unwrap();
        assert_eq!(en.tokens_millions, 55608.0);
        assert_eq!(fixed.iter().filter(|r| r.is_variant()).count(), 7);
        let hi_rom = fixed.iter().find(|r| r.iso == "hi_rom").unwrap();
        assert_eq!(hi_rom.base_iso(), "hi");
    }
}
