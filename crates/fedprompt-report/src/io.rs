//! Atomic file writers (JSON, CSV, Markdown), `write_all` and `load`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io_err, ReportError, Result};
use crate::model::RunResults;
use crate::{plots, tables};

/// File name of the full results inside a results folder.
pub const RESULTS_JSON: &str = "results.json";

/// Writes `bytes` to `path` atomically ([`fedprompt_io::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    fedprompt_io::write_atomic(path, bytes).map_err(io_err(path))
}

/// Writes `results.json` (pretty-printed) into `dir`.
pub fn write_json(r: &RunResults, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(RESULTS_JSON);
    let mut json = serde_json::to_vec_pretty(r).map_err(|cause| ReportError::Json {
        path: path.clone(),
        cause,
    })?;
    json.push(b'\n');
    write_atomic(&path, &json)?;
    Ok(path)
}

fn write_csv<T: Serialize>(path: PathBuf, records: &[T]) -> Result<Option<PathBuf>> {
    if records.is_empty() {
        return Ok(None);
    }
    let csv_err = |cause| ReportError::Csv {
        path: path.clone(),
        cause,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    for rec in records {
        w.serialize(rec).map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| csv_err(csv::Error::from(e.into_error())))?;
    write_atomic(&path, &bytes)?;
    Ok(Some(path))
}

/// One line of `accuracy.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AccuracyRecord {
    /// Paradigm label.
    pub paradigm: String,
    /// Trained parameters.
    pub method: String,
    /// Data setting.
    pub setting: String,
    /// Language code.
    pub language: String,
    /// Accuracy in `[0, 1]`.
    pub accuracy: f64,
    /// Macro-F1 in `[0, 1]`.
    pub macro_f1: f64,
    /// Evaluation examples.
    pub n: usize,
}

/// One line of `curves.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CurveRecord {
    /// Paradigm label.
    pub paradigm: String,
    /// Round or epoch.
    pub round: u32,
    /// Accuracy in `[0, 1]`.
    pub accuracy: f64,
    /// Evaluation loss (empty when not measured).
    pub loss: Option<f64>,
    /// Standard deviation of the accuracy over seeds (empty for a single seed).
    pub sd: Option<f64>,
    /// DP `ε` spent after this round (empty without DP accounting).
    pub epsilon: Option<f64>,
}

/// One line of `seeds.csv`: one seed's accuracy on one language (`language` = `avg` for the
/// average over languages).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SeedRecord {
    /// Paradigm label.
    pub paradigm: String,
    /// The experiment seed.
    pub seed: u64,
    /// Language code, or `avg`.
    pub language: String,
    /// Accuracy in `[0, 1]`.
    pub accuracy: f64,
    /// Round/epoch of the reported model (mean over languages for monolingual runs).
    pub best: Option<f64>,
    /// Last round/epoch run.
    pub stopped: Option<f64>,
}

/// Long-format per-seed records (empty for a single seed).
pub fn seed_records(r: &RunResults) -> Vec<SeedRecord> {
    let mut out = Vec::new();
    for row in &r.rows {
        for s in &row.per_seed {
            let conv = s.convergence.as_ref();
            let rec = |language: String, accuracy: f64| SeedRecord {
                paradigm: row.paradigm.clone(),
                seed: s.seed,
                language,
                accuracy,
                best: conv.map(|c| c.best),
                stopped: conv.map(|c| c.stopped),
            };
            for lang in &r.languages {
                if let Some(a) = s.per_language.get(lang) {
                    out.push(rec(lang.clone(), *a));
                }
            }
            out.push(rec("avg".into(), s.average));
        }
    }
    out
}

/// Long-format accuracy records, rows in order and languages in `languages` order.
pub fn accuracy_records(r: &RunResults) -> Vec<AccuracyRecord> {
    let mut out = Vec::new();
    for row in &r.rows {
        for lang in &r.languages {
            if let Some(m) = row.per_language.get(lang) {
                out.push(AccuracyRecord {
                    paradigm: row.paradigm.clone(),
                    method: row.method.clone(),
                    setting: row.setting.clone(),
                    language: lang.clone(),
                    accuracy: m.accuracy,
                    macro_f1: m.macro_f1,
                    n: m.n,
                });
            }
        }
    }
    out
}

/// Writes `accuracy.csv`, `comm.csv`, `curves.csv`, `data_efficiency.csv` and `seeds.csv`, skipping any
/// that would have no lines; returns the files written.
pub fn write_csvs(r: &RunResults, dir: &Path) -> Result<Vec<PathBuf>> {
    let curves: Vec<CurveRecord> = r
        .curves
        .iter()
        .flat_map(|c| {
            c.points.iter().enumerate().map(|(i, p)| CurveRecord {
                paradigm: c.paradigm.clone(),
                round: p.round,
                accuracy: p.accuracy,
                loss: p.loss,
                sd: c.sd.get(i).copied(),
                epsilon: p.epsilon,
            })
        })
        .collect();
    let written = [
        write_csv(dir.join("accuracy.csv"), &accuracy_records(r))?,
        write_csv(dir.join("comm.csv"), &r.comm)?,
        write_csv(dir.join("curves.csv"), &curves)?,
        write_csv(dir.join("data_efficiency.csv"), &r.data_efficiency)?,
        write_csv(dir.join("seeds.csv"), &seed_records(r))?,
    ];
    Ok(written.into_iter().flatten().collect())
}

/// Writes `tables.md` into `dir`.
pub fn write_tables(r: &RunResults, dir: &Path) -> Result<PathBuf> {
    let path = dir.join("tables.md");
    write_atomic(&path, tables::tables_markdown(r).as_bytes())?;
    Ok(path)
}

/// Validates `r`, creates `dir` if needed and writes everything: `results.json`, the CSV files,
/// `tables.md` and every plot with data (SVG and PNG). Returns the files written.
pub fn write_all(r: &RunResults, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    r.validate()?;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut out = vec![write_json(r, dir)?];
    out.extend(write_csvs(r, dir)?);
    out.push(write_tables(r, dir)?);
    out.extend(plots::write_plots(r, dir)?);
    Ok(out)
}

/// Loads and validates results from a results folder (its `results.json`) or a JSON file.
pub fn load(dir_or_json: impl AsRef<Path>) -> Result<RunResults> {
    let given = dir_or_json.as_ref();
    let path = if given.is_dir() {
        given.join(RESULTS_JSON)
    } else {
        given.to_path_buf()
    };
    if !path.is_file() {
        return Err(ReportError::NotFound {
            path: given.to_path_buf(),
        });
    }
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let r: RunResults =
        serde_json::from_str(&text).map_err(|cause| ReportError::Json { path, cause })?;
    r.validate()?;
    Ok(r)
}
