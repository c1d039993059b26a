//! Language distance from a model's pre-training languages (Zhao et al., ICLR 2024, §5.3.1).
//!
//! Each language is a URIEL typological vector V_i (syntax, phonology and inventory features).
//! The *pre-training language* is the token-weighted blend of XLM-R's CC-100 languages,
//! V_p = Σ w_i V_i with w_i = T_i / Σ T, and the distance of a downstream language v is
//! φ(v) = −log cos(v, V_p).
//!
//! ```no_run
//! use fedprompt_lang::{markdown_table, DistanceOptions, LanguageDistance};
//! # fn main() -> Result<(), fedprompt_lang::LangError> {
//! let ld = LanguageDistance::load("lang2vec/data", &DistanceOptions::default())?;
//! println!("φ(sw) = {:.4}", ld.phi("sw")?);
//! println!("{}", markdown_table(&ld.table(&["en", "yor", "hau"])?));
//! # Ok(()) }
//! ```
//!
//! # Choices
//! - **Features** ([`FeatureSource`], [`FeatureGroup`]): by default lang2vec's
//!   `syntax_knn + phonology_knn + inventory_knn` (289 features, none missing), the paper's three
//!   aspects; the observed-only sets are available with a [`MissingValues`] policy.
//! - **Pre-training mix** ([`PretrainingMix`]): by default CC-100 as used by XLM-R (Conneau et al.
//!   2020, Table 6) with the authors' errata for `sv` and `uk` applied. Script-variant rows
//!   (`hi_rom`, `ur_rom`, `bn_rom`, `ta_rom`, `te_rom`, `zh_hant`, `my_zaw`) are folded into their
//!   base language by default ([`ScriptVariants`]); rows whose language has no URIEL vector are
//!   skipped and listed by [`LanguageDistance::skipped`] (none with the lang2vec 1.1.2 data).
//! - **Codes**: ISO 639-1 or 639-3, case-insensitive; any ISO 639-3 code present in URIEL works
//!   even if it is not in the embedded `iso639.csv`.
//!
//! # Data and attribution
//! The feature data are URIEL (Littell et al. 2017, "URIEL and lang2vec: Representing languages
//! as typological, geographical, and phylogenetic vectors", EACL), distributed in the PyPI
//! package `lang2vec` 1.1.2 under CC BY-SA 4.0; this crate reads them at run time from the
//! package's `data/` directory and does not redistribute them. The embedded CC-100 token counts
//! are transcribed from Conneau et al. 2020, Appendix A, Table 6.
#![warn(missing_docs)]

pub mod codes;
mod error;
pub mod npy;
pub mod pretraining;
mod uriel;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use codes::Language;
pub use error::{LangError, Result};
pub use pretraining::{Cc100Row, ScriptVariants};
pub use uriel::{FeatureGroup, FeatureSource, MissingValues};

use uriel::{load_matrix, FeatureMatrix};

/// The pre-training corpus whose languages form V_p.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PretrainingMix {
    /// XLM-R's CC-100 token counts (embedded). Default.
    #[default]
    Cc100XlmR,
    /// Any other mix: `(code, tokens)` pairs; codes must resolve, tokens must be positive.
    Custom(Vec<(String, f64)>),
}

/// Options of [`LanguageDistance::load`]. The default follows the paper as closely as the text
/// allows: k-NN-completed syntax + phonology + inventory features, CC-100 weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistanceOptions {
    /// Which lang2vec archive supplies the values.
    pub source: FeatureSource,
    /// Feature groups, concatenated in this order.
    pub groups: Vec<FeatureGroup>,
    /// Treatment of unknown values (only matters for `average` and `union`).
    pub missing: MissingValues,
    /// The pre-training languages and their token counts.
    pub mix: PretrainingMix,
    /// Treatment of CC-100 script-variant rows.
    pub script_variants: ScriptVariants,
    /// Apply the authors' corrections to the misprinted `sv` and `uk` token counts.
    pub apply_errata: bool,
}

impl Default for DistanceOptions {
    fn default() -> Self {
        DistanceOptions {
            source: FeatureSource::Predicted,
            groups: vec![
                FeatureGroup::Syntax,
                FeatureGroup::Phonology,
                FeatureGroup::Inventory,
            ],
            missing: MissingValues::Ignore,
            mix: PretrainingMix::Cc100XlmR,
            script_variants: ScriptVariants::Fold,
            apply_errata: true,
        }
    }
}

/// A language that contributes to V_p.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainingLanguage {
    /// ISO 639-3 code.
    pub iso3: String,
    /// Name.
    pub name: String,
    /// Tokens in millions (after folding script variants).
    pub tokens_m: f64,
    /// w_i = T_i / Σ T over the contributing languages.
    pub weight: f64,
}

/// A pre-training row left out of V_p, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedRow {
    /// The code as given in the mix.
    pub code: String,
    /// Tokens in millions.
    pub tokens_m: f64,
    /// Why it was skipped.
    pub reason: String,
}

/// One language's distance from the pre-training language.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistanceRow {
    /// ISO 639-1 code, if any.
    pub iso1: Option<String>,
    /// ISO 639-3 code.
    pub iso3: String,
    /// Name (the ISO 639-3 code for URIEL languages outside the embedded table).
    pub name: String,
    /// φ = −log cos(v, V_p); `+∞` when the vectors are orthogonal.
    pub phi: f64,
    /// cos(v, V_p).
    pub cosine: f64,
    /// Whether the language is part of the pre-training mix.
    pub in_pretraining: bool,
    /// Its pre-training tokens in millions (0 when not in the mix).
    pub pretraining_tokens_m: f64,
}

/// URIEL vectors of every language plus the pre-training vector V_p.
#[derive(Debug, Clone)]
pub struct LanguageDistance {
    options: DistanceOptions,
    matrix: FeatureMatrix,
    pretraining: Vec<PretrainingLanguage>,
    skipped: Vec<SkippedRow>,
    vp: Vec<f64>,
}

impl LanguageDistance {
    /// Loads lang2vec's data directory (the one holding `feature_predictions.npz` etc.) and
    /// builds V_p from the options' pre-training mix.
    pub fn load(data_dir: impl AsRef<Path>, options: &DistanceOptions) -> Result<Self> {
        let dir = data_dir.as_ref();
        if options.groups.is_empty() {
            return Err(LangError::InvalidOptions(
                "at least one feature group is needed".into(),
            ));
        }
        let mut matrix = load_matrix(dir, options.source, &options.groups)?;
        match options.missing {
            MissingValues::Ignore => {}
            MissingValues::Zero => matrix
                .values
                .iter_mut()
                .filter(|v| v.is_nan())
                .for_each(|v| *v = 0.0),
            MissingValues::FillPredicted => {
                if options.source != FeatureSource::Predicted {
                    let pred = load_matrix(dir, FeatureSource::Predicted, &options.groups)?;
                    if pred.langs != matrix.langs || pred.feats != matrix.feats {
                        return Err(LangError::Layout {
                            path: dir.join(FeatureSource::Predicted.file_name()),
                            reason: format!(
                                "languages or features differ from {}",
                                options.source.file_name()
                            ),
                        });
                    }
                    for (v, p) in matrix.values.iter_mut().zip(&pred.values) {
                        if v.is_nan() {
                            *v = *p;
                        }
                    }
                }
            }
        }

        let (pretraining, skipped) = build_mix(options, &matrix)?;
        let vp = pretraining_vector(&matrix, &pretraining);
        if !vp.iter().any(|&x| x.is_finite() && x != 0.0) {
            return Err(LangError::EmptyPretraining);
        }
        Ok(LanguageDistance {
            options: options.clone(),
            matrix,
            pretraining,
            skipped,
            vp,
        })
    }

    /// The options this was loaded with.
    pub fn options(&self) -> &DistanceOptions {
        &self.options
    }

    /// Names of the features, in vector order.
    pub fn feature_names(&self) -> &[String] {
        &self.matrix.feats
    }

    /// V_p, one entry per feature (`NaN` where no pre-training language knows the feature).
    pub fn pretraining_vector(&self) -> &[f64] {
        &self.vp
    }

    /// The languages forming V_p with their weights, largest first.
    pub fn pretraining_languages(&self) -> &[PretrainingLanguage] {
        &self.pretraining
    }

    /// Pre-training rows left out of V_p.
    pub fn skipped(&self) -> &[SkippedRow] {
        &self.skipped
    }

    /// Resolves an ISO 639-1 or 639-3 code to a language present in URIEL.
    pub fn resolve(&self, code: &str) -> Result<Language> {
        resolve_in(&self.matrix, code)
    }

    /// The language's URIEL vector (`NaN` for unknown values under [`MissingValues::Ignore`]).
    pub fn vector(&self, code: &str) -> Result<Vec<f64>> {
        let lang = self.resolve(code)?;
        Ok(self.matrix.row(self.matrix.index[&lang.iso3]).to_vec())
    }

    /// cos(v, V_p) over the features known for both.
    pub fn cosine(&self, code: &str) -> Result<f64> {
        let lang = self.resolve(code)?;
        let row = self.matrix.row(self.matrix.index[&lang.iso3]);
        cosine(row, &self.vp).ok_or(LangError::NoFeatures { iso3: lang.iso3 })
    }

    /// φ(v) = −log cos(v, V_p); 0 means typologically identical to the pre-training blend.
    pub fn phi(&self, code: &str) -> Result<f64> {
        self.cosine(code).map(phi_of_cosine)
    }

    /// Distance rows for `codes`, sorted by φ (closest first). A language named twice (say
    /// `en` and `eng`) appears once.
    pub fn table<S: AsRef<str>>(&self, codes: &[S]) -> Result<Vec<DistanceRow>> {
        let mut rows: Vec<DistanceRow> = Vec::with_capacity(codes.len());
        for code in codes {
            let lang = self.resolve(code.as_ref())?;
            if rows.iter().any(|r| r.iso3 == lang.iso3) {
                continue;
            }
            let cos = self.cosine(&lang.iso3)?;
            let tokens = self
                .pretraining
                .iter()
                .find(|p| p.iso3 == lang.iso3)
                .map(|p| p.tokens_m);
            rows.push(DistanceRow {
                iso1: lang.iso1,
                iso3: lang.iso3,
                name: lang.name,
                phi: phi_of_cosine(cos),
                cosine: cos,
                in_pretraining: tokens.is_some(),
                pretraining_tokens_m: tokens.unwrap_or(0.0),
            });
        }
        rows.sort_by(|a, b| a.phi.total_cmp(&b.phi).then_with(|| a.iso3.cmp(&b.iso3)));
        Ok(rows)
    }
}

/// Renders rows as a Markdown table (φ and cosine to 4 decimals; tokens in millions).
pub fn markdown_table(rows: &[DistanceRow]) -> String {
    let mut out = String::from(
        "| Language | ISO 639-1 | ISO 639-3 | φ | cos(v, V_p) | CC-100 tokens (M) |\n\
         |---|---|---|---:|---:|---:|\n",
    );
    for r in rows {
        let tokens = if r.in_pretraining {
            format_tokens(r.pretraining_tokens_m)
        } else {
            "—".to_string()
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.4} | {:.4} | {} |",
            r.name.replace('|', "\\|"),
            r.iso1.as_deref().unwrap_or("—"),
            r.iso3,
            r.phi,
            r.cosine,
            tokens
        );
    }
    out
}

fn format_tokens(t: f64) -> String {
    if t.fract() == 0.0 {
        format!("{t:.0}")
    } else {
        format!("{t}")
    }
}

fn phi_of_cosine(cos: f64) -> f64 {
    // Rounding can push a cosine a hair above 1; φ is never negative.
    -(cos.min(1.0)).ln()
}

/// Cosine over the entries finite in both vectors; `None` if either is zero there.
fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_finite() && y.is_finite() {
            dot += x * y;
            na += x * x;
            nb += y * y;
        }
    }
    (na > 0.0 && nb > 0.0).then(|| dot / (na.sqrt() * nb.sqrt()))
}

fn resolve_in(matrix: &FeatureMatrix, code: &str) -> Result<Language> {
    let key = code.trim().to_ascii_lowercase();
    let lang = match codes::lookup(&key)? {
        Some(l) => l.clone(),
        None if key.len() == 3 && matrix.index.contains_key(&key) => Language {
            iso1: None,
            iso3: key.clone(),
            name: key.clone(),
        },
        None => return Err(codes::unknown_code(code)),
    };
    if !matrix.index.contains_key(&lang.iso3) {
        return Err(LangError::NotInUriel {
            code: code.to_string(),
            iso3: lang.iso3,
        });
    }
    Ok(lang)
}

/// Resolves the options' mix to URIEL languages with weights, and the rows left out.
fn build_mix(
    options: &DistanceOptions,
    matrix: &FeatureMatrix,
) -> Result<(Vec<PretrainingLanguage>, Vec<SkippedRow>)> {
    let mut skipped = Vec::new();
    // (code, tokens) pairs after variant handling, in input order.
    let mut entries: Vec<(String, f64)> = Vec::new();
    match &options.mix {
        PretrainingMix::Cc100XlmR => {
            for row in pretraining::cc100_rows(options.apply_errata)? {
                if row.is_variant() && options.script_variants == ScriptVariants::Skip {
                    skipped.push(SkippedRow {
                        code: row.iso.clone(),
                        tokens_m: row.tokens_millions,
                        reason: "script variant (script_variants = skip)".into(),
                    });
                    continue;
                }
                entries.push((row.base_iso().to_string(), row.tokens_millions));
            }
        }
        PretrainingMix::Custom(list) => {
            for (code, tokens) in list {
                if !(tokens.is_finite() && *tokens > 0.0) {
                    return Err(LangError::InvalidOptions(format!(
                        "pre-training tokens for {code:?} must be positive, got {tokens}"
                    )));
                }
                // A custom mix is user input: unknown codes are errors, not skips.
                resolve_in(matrix, code)?;
                entries.push((code.clone(), *tokens));
            }
        }
    }

    let mut totals: HashMap<String, (Language, f64)> = HashMap::new();
    let mut order = Vec::new();
    for (code, tokens) in entries {
        match resolve_in(matrix, &code) {
            Ok(lang) => {
                let slot = totals.entry(lang.iso3.clone()).or_insert_with(|| {
                    order.push(lang.iso3.clone());
                    (lang, 0.0)
                });
                slot.1 += tokens;
            }
            Err(e) => skipped.push(SkippedRow {
                code,
                tokens_m: tokens,
                reason: e.to_string(),
            }),
        }
    }
    let total: f64 = totals.values().map(|(_, t)| t).sum();
    let mut langs: Vec<PretrainingLanguage> = order
        .into_iter()
        .filter_map(|iso3| totals.remove(&iso3))
        .map(|(lang, tokens)| PretrainingLanguage {
            iso3: lang.iso3,
            name: lang.name,
            tokens_m: tokens,
            weight: tokens / total,
        })
        .collect();
    langs.sort_by(|a, b| {
        b.tokens_m
            .total_cmp(&a.tokens_m)
            .then_with(|| a.iso3.cmp(&b.iso3))
    });
    Ok((langs, skipped))
}

/// V_p[j] = Σ w_i V_ij over the languages knowing feature j, divided by the sum of their
/// weights (1 when nothing is missing).
fn pretraining_vector(matrix: &FeatureMatrix, langs: &[PretrainingLanguage]) -> Vec<f64> {
    let n = matrix.feats.len();
    let mut num = vec![0.0; n];
    let mut den = vec![0.0; n];
    for lang in langs {
        let row = matrix.row(matrix.index[&lang.iso3]);
        for (j, &v) in row.iter().enumerate() {
            if v.is_finite() {
                num[j] += lang.weight * v;
                den[j] += lang.weight;
            }
        }
    }
    num.iter()
        .zip(&den)
        .map(|(&s, &w)| if w > 0.0 { s / w } else { f64::NAN })
        .collect()
}
