//! Several seeds of one experiment combined into one result: means, sample standard
//! deviations, and every seed's own numbers kept beside them.

use std::collections::BTreeMap;

use crate::error::{ReportError, Result};
use crate::model::{
    CommRow, Convergence, Curve, DataEffPoint, LangMetrics, ParadigmRow, RunResults, SeedRow,
    Spread,
};

/// Mean and sample standard deviation (n − 1; 0 for a single value).
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

/// Combines the results of the same experiment run with different seeds (`runs[i]` made
/// with `seeds[i]`): each row becomes the mean over seeds with its standard deviations and
/// per-seed numbers; curves the mean per round over the seeds that reached it; data-efficiency
/// points the mean per (paradigm, size); communication rows the mean rounds and bytes (runs
/// stop at different rounds). Metadata comes from the first seed. One seed returns its results unchanged (with `seeds` filled in).
pub fn combine_seeds(runs: Vec<RunResults>, seeds: &[u64]) -> Result<RunResults> {
    if runs.is_empty() || runs.len() != seeds.len() {
        return Err(ReportError::Invalid(format!(
            "{} results for {} seeds",
            runs.len(),
            seeds.len()
        )));
    }
    let mut runs = runs;
    if runs.len() == 1 {
        let mut r = runs.pop().expect("one");
        r.seeds = seeds.to_vec();
        return Ok(r);
    }
    let first = &runs[0];
    for (r, s) in runs.iter().zip(seeds) {
        let labels = |r: &RunResults| {
            r.rows
                .iter()
                .map(|x| x.paradigm.clone())
                .collect::<Vec<_>>()
        };
        if labels(r) != labels(first) || r.languages != first.languages {
            return Err(ReportError::Invalid(format!(
                "seed {s}: the rows or languages differ from seed {}'s",
                seeds[0]
            )));
        }
    }
    let rows = (0..first.rows.len())
        .map(|i| combine_row(runs.iter().map(|r| &r.rows[i]).collect(), seeds))
        .collect();
    let curves = first
        .curves
        .iter()
        .map(|c| {
            let same: Vec<&Curve> = runs
                .iter()
                .filter_map(|r| r.curves.iter().find(|x| x.paradigm == c.paradigm))
                .collect();
            combine_curve(&same)
        })
        .collect();
    let mut data_efficiency: Vec<DataEffPoint> = Vec::new();
    for p in &first.data_efficiency {
        let vals: Vec<f64> = runs
            .iter()
            .flat_map(|r| &r.data_efficiency)
            .filter(|q| q.paradigm == p.paradigm && q.train_size == p.train_size)
            .map(|q| q.accuracy)
            .collect();
        let (mean, sd) = mean_sd(&vals);
        data_efficiency.push(DataEffPoint {
            paradigm: p.paradigm.clone(),
            train_size: p.train_size,
            accuracy: mean,
            sd: Some(sd),
        });
    }
    // Runs stop early at different rounds per seed: the rounds and total bytes of a
    // communication row are the means over the seeds (rounded), not the first seed's.
    let comm = first
        .comm
        .iter()
        .map(|c| {
            let same: Vec<&CommRow> = runs
                .iter()
                .filter_map(|r| r.comm.iter().find(|x| x.paradigm == c.paradigm))
                .collect();
            let mean = |f: &dyn Fn(&CommRow) -> f64| {
                same.iter().map(|x| f(x)).sum::<f64>() / same.len() as f64
            };
            CommRow {
                rounds: mean(&|x| f64::from(x.rounds)).round() as u32,
                total_bytes: mean(&|x| x.total_bytes as f64).round() as u64,
                bytes_up_per_client_round: mean(&|x| x.bytes_up_per_client_round as f64).round()
                    as u64,
                ..c.clone()
            }
        })
        .collect();
    let mut out = runs[0].clone();
    out.comm = comm;
    out.seed = seeds[0];
    out.seeds = seeds.to_vec();
    out.rows = rows;
    out.curves = curves;
    out.data_efficiency = data_efficiency;
    Ok(out)
}

fn combine_row(rows: Vec<&ParadigmRow>, seeds: &[u64]) -> ParadigmRow {
    let first = rows[0];
    let mut per_language = BTreeMap::new();
    let mut per_language_sd = BTreeMap::new();
    for lang in first.per_language.keys() {
        let ms: Vec<&LangMetrics> = rows
            .iter()
            .filter_map(|r| r.per_language.get(lang))
            .collect();
        let (acc, sd) = mean_sd(&ms.iter().map(|m| m.accuracy).collect::<Vec<_>>());
        let (f1, _) = mean_sd(&ms.iter().map(|m| m.macro_f1).collect::<Vec<_>>());
        per_language.insert(
            lang.clone(),
            LangMetrics {
                accuracy: acc,
                macro_f1: f1,
                n: ms.first().map_or(0, |m| m.n),
            },
        );
        per_language_sd.insert(lang.clone(), sd);
    }
    let (average, average_sd) = mean_sd(&rows.iter().map(|r| r.average).collect::<Vec<_>>());
    let per_seed = rows
        .iter()
        .zip(seeds)
        .map(|(r, &seed)| SeedRow {
            seed,
            average: r.average,
            per_language: r
                .per_language
                .iter()
                .map(|(k, m)| (k.clone(), m.accuracy))
                .collect(),
            convergence: r.convergence.clone(),
        })
        .collect();
    let conv: Vec<Convergence> = rows.iter().filter_map(|r| r.convergence.clone()).collect();
    ParadigmRow {
        paradigm: first.paradigm.clone(),
        method: first.method.clone(),
        setting: first.setting.clone(),
        per_language,
        average,
        spread: Some(Spread {
            seeds: rows.len(),
            average_sd,
            per_language_sd,
        }),
        per_seed,
        convergence: Convergence::mean(&conv),
    }
}

/// Mean and standard deviation per round over the curves that have that round (an
/// early-stopped seed stops contributing after its last round).
fn combine_curve(curves: &[&Curve]) -> Curve {
    // (accuracy, loss, ε) of every seed that reached the round.
    type Seen = Vec<(f64, Option<f64>, Option<f64>)>;
    let mut by_round: BTreeMap<u32, Seen> = BTreeMap::new();
    for c in curves {
        for p in &c.points {
            by_round
                .entry(p.round)
                .or_default()
                .push((p.accuracy, p.loss, p.epsilon));
        }
    }
    let mut points = Vec::new();
    let mut sd = Vec::new();
    for (round, vals) in by_round {
        let (acc, s) = mean_sd(&vals.iter().map(|v| v.0).collect::<Vec<_>>());
        let losses: Vec<f64> = vals.iter().filter_map(|v| v.1).collect();
        points.push(crate::model::RoundPoint {
            round,
            accuracy: acc,
            loss: (losses.len() == vals.len()).then(|| mean_sd(&losses).0),
            // The same accounting in every seed; the largest, should they ever differ.
            epsilon: vals.iter().filter_map(|v| v.2).reduce(f64::max),
        });
        sd.push(s);
    }
    Curve {
        paradigm: curves[0].paradigm.clone(),
        points,
        sd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd_are_exact() {
        let (m, s) = mean_sd(&[0.5, 0.6, 0.7]);
        assert!((m - 0.6).abs() < 1e-15);
        // Σ(x − m)² = 0.02, / (n − 1) = 0.01, √ = 0.1
        assert!((s - 0.1).abs() < 1e-12, "{s}");
        assert_eq!(mean_sd(&[0.3]), (0.3, 0.0));
        assert!(mean_sd(&[]).0.is_nan());
    }
}
