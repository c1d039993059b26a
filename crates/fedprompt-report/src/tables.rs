//! Markdown tables shaped like the paper's Tables 1–4, and the terminal summary.

use std::fmt::Write as _;

use crate::model::{CommRow, Convergence, ParadigmRow, RunResults};

/// Most languages the terminal summary shows one column each for; beyond, it shows min and max.
const SUMMARY_MAX_LANGS: usize = 8;

/// `1234567` → `"1,234,567"`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A non-negative number with `decimals` decimals and thousands separators: `111462.3` → `"111,462.30"`.
pub fn group_decimal(x: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, x.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let int: u64 = int.parse().unwrap_or(0);
    let sign = if x < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{}", group_thousands(int))
    } else {
        format!("{sign}{}.{frac}", group_thousands(int))
    }
}

/// A fraction as percent with one decimal: `0.8364` → `"83.6"`.
pub fn percent(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// Tenths of a percent, the resolution tables compare at (so displayed ties are both bold).
fn tenths(x: f64) -> i64 {
    (x * 1000.0).round() as i64
}

/// Bytes as MB (10⁶ bytes) with two decimals and separators.
pub fn megabytes(bytes: u64) -> String {
    group_decimal(bytes as f64 / 1e6, 2)
}

/// Share of total parameters: one decimal from 1 %, three below.
fn share(trainable: u64, total: u64) -> String {
    if total == 0 {
        return "–".into();
    }
    let pct = trainable as f64 / total as f64 * 100.0;
    if pct >= 1.0 {
        format!("{pct:.1}%")
    } else {
        format!("{pct:.3}%")
    }
}

/// `Seed: 0` or `Seeds: 0, 1, 2`.
fn seeds_label(r: &RunResults) -> String {
    if r.seeds.len() > 1 {
        let list: Vec<String> = r.seeds.iter().map(u64::to_string).collect();
        format!("Seeds: {}", list.join(", "))
    } else {
        format!("Seed: {}", r.seed)
    }
}

fn row_values(r: &RunResults, row: &ParadigmRow) -> Vec<Option<f64>> {
    r.languages
        .iter()
        .map(|l| row.per_language.get(l).map(|m| m.accuracy))
        .chain(std::iter::once(Some(row.average)))
        .collect()
}

fn md_row(out: &mut String, cells: &[String]) {
    out.push('|');
    for c in cells {
        let _ = write!(out, " {c} |");
    }
    out.push('\n');
}

fn md_rule(out: &mut String, left: usize, right: usize) {
    out.push('|');
    for _ in 0..left {
        out.push_str("---|");
    }
    for _ in 0..right {
        out.push_str("---:|");
    }
    out.push('\n');
}

/// The main accuracy table (paper Tables 1–3): one row per paradigm, one column per language
/// plus `Avg`, accuracy in percent with one decimal, the best of each column in bold.
/// Empty string when there are no rows.
pub fn accuracy_table(r: &RunResults) -> String {
    if r.rows.is_empty() {
        return String::new();
    }
    let values: Vec<Vec<Option<f64>>> = r.rows.iter().map(|row| row_values(r, row)).collect();
    let ncols = r.languages.len() + 1;
    let best: Vec<Option<i64>> = (0..ncols)
        .map(|c| values.iter().filter_map(|v| v[c].map(tenths)).max())
        .collect();
    let with_conv = r.rows.iter().any(|row| row.convergence.is_some());
    let mut out = String::new();
    let mut header = vec!["Paradigm".to_string(), "Method".to_string()];
    header.extend(r.languages.iter().cloned());
    header.push("Avg".into());
    if with_conv {
        header.push("Best / stopped (max)".into());
    }
    md_row(&mut out, &header);
    md_rule(&mut out, 2, ncols + usize::from(with_conv));
    for (row, vals) in r.rows.iter().zip(&values) {
        let mut cells = vec![row.paradigm.clone(), row.method.clone()];
        let sds = row_sds(r, row);
        for ((v, b), sd) in vals.iter().zip(&best).zip(&sds) {
            let pm = |x: f64| match sd {
                Some(s) => format!("{} ± {}", percent(x), percent(*s)),
                None => percent(x),
            };
            cells.push(match v {
                None => "–".into(),
                Some(x) if Some(tenths(*x)) == *b && r.rows.len() > 1 => {
                    format!("**{}**", pm(*x))
                }
                Some(x) => pm(*x),
            });
        }
        if with_conv {
            cells.push(
                row.convergence
                    .as_ref()
                    .map_or("–".into(), convergence_cell),
            );
        }
        md_row(&mut out, &cells);
    }
    out
}

/// Standard deviations over seeds aligned with [`row_values`] (`None` for a single seed).
fn row_sds(r: &RunResults, row: &ParadigmRow) -> Vec<Option<f64>> {
    r.languages
        .iter()
        .map(|l| {
            row.spread
                .as_ref()
                .and_then(|s| s.per_language_sd.get(l).copied())
        })
        .chain(std::iter::once(row.spread.as_ref().map(|s| s.average_sd)))
        .collect()
}

/// `round 7.3 / 12.3 (30)`, with how many models hit the maximum when some did.
fn convergence_cell(c: &Convergence) -> String {
    let mut s = format!("{} {:.1} / {:.1} ({})", c.unit, c.best, c.stopped, c.max);
    if c.hit_max > 0 {
        let _ = write!(s, ", {}/{} at max", c.hit_max, c.models);
    }
    s
}

/// Each seed's average accuracy per row (empty string for a single seed).
pub fn seeds_table(r: &RunResults) -> String {
    let seeds: Vec<u64> = match r.rows.iter().find(|row| !row.per_seed.is_empty()) {
        Some(row) => row.per_seed.iter().map(|s| s.seed).collect(),
        None => return String::new(),
    };
    let mut out = String::new();
    let mut header = vec!["Paradigm".to_string()];
    header.extend(seeds.iter().map(|s| format!("seed {s}")));
    header.push("Mean ± sd".into());
    md_row(&mut out, &header);
    md_rule(&mut out, 1, seeds.len() + 1);
    for row in &r.rows {
        let mut cells = vec![row.paradigm.clone()];
        for s in &seeds {
            cells.push(
                row.per_seed
                    .iter()
                    .find(|x| x.seed == *s)
                    .map_or("–".into(), |x| percent(x.average)),
            );
        }
        cells.push(match &row.spread {
            Some(sp) => format!("{} ± {}", percent(row.average), percent(sp.average_sd)),
            None => percent(row.average),
        });
        md_row(&mut out, &cells);
    }
    out
}

/// The parameter-efficiency and communication table (paper Table 4). Empty string when there are no rows.
///
/// Upload bytes are what was actually sent; an encoded upload names its encoding after them.
pub fn comm_table(rows: &[CommRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    md_row(
        &mut out,
        &[
            "Paradigm",
            "Method",
            "# Trainable params",
            "% of total",
            "Up MB / client / round",
            "Down MB / client / round",
            "Clients × rounds",
            "Total MB",
        ]
        .map(String::from),
    );
    md_rule(&mut out, 2, 6);
    for c in rows {
        md_row(
            &mut out,
            &[
                c.paradigm.clone(),
                c.method.clone(),
                group_thousands(c.trainable_params),
                share(c.trainable_params, c.total_params),
                match &c.upload_encoding {
                    None => megabytes(c.bytes_up_per_client_round),
                    Some(enc) => format!("{} ({enc})", megabytes(c.bytes_up_per_client_round)),
                },
                megabytes(c.bytes_down_per_client_round),
                format!("{} × {}", c.clients, c.rounds),
                megabytes(c.total_bytes),
            ],
        );
    }
    out
}

/// The whole `tables.md`: a header, the accuracy table and the communication table.
pub fn tables_markdown(r: &RunResults) -> String {
    let mut out = format!(
        "# {}\n\nTask: {} · Model: {} · {}\n",
        r.experiment,
        r.task,
        r.model,
        seeds_label(r)
    );
    if !r.meta.is_empty() {
        out.push('\n');
        for (k, v) in &r.meta {
            let _ = writeln!(out, "- {k}: {v}");
        }
    }
    let acc = accuracy_table(r);
    if !acc.is_empty() {
        out.push_str("\n## Accuracy (%)\n\nBold: best in column.");
        if r.seeds.len() > 1 {
            let _ = write!(
                out,
                " Mean ± sample standard deviation over {} seeds ({}).",
                r.seeds.len(),
                r.seeds
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if r.rows.iter().any(|row| row.convergence.is_some()) {
            out.push_str(
                " Best / stopped: the round (federated) or epoch (local) whose model is reported and the last one run, means over seeds and languages; the maximum in brackets.",
            );
        }
        out.push_str("\n\n");
        out.push_str(&acc);
        let per_seed = seeds_table(r);
        if !per_seed.is_empty() {
            out.push_str("\n## Average accuracy per seed (%)\n\n");
            out.push_str(&per_seed);
        }
    }
    let comm = comm_table(&r.comm);
    if !comm.is_empty() {
        out.push_str(
            "\n## Parameters and communication\n\nMB = 10⁶ bytes; total counts up and down for all clients and rounds.\n\n",
        );
        out.push_str(&comm);
    }
    if acc.is_empty() && comm.is_empty() {
        out.push_str("\n_No results._\n");
    }
    out
}

/// A compact Markdown summary for the terminal: accuracy per language (or min/max when there
/// are many languages) and average, plus trainable parameters and traffic.
pub fn render_summary(r: &RunResults) -> String {
    let mut out = format!(
        "{} — {} on {}, {}\n",
        r.experiment,
        r.task,
        r.model,
        seeds_label(r).to_lowercase().replace(':', "")
    );
    if !r.rows.is_empty() {
        out.push('\n');
        let wide = r.languages.len() > SUMMARY_MAX_LANGS;
        let mut header = vec!["Paradigm".to_string()];
        if wide {
            header.extend(["Min".to_string(), "Max".to_string()]);
        } else {
            header.extend(r.languages.iter().cloned());
        }
        header.push("Avg".into());
        let right = header.len() - 1;
        md_row(&mut out, &header);
        md_rule(&mut out, 1, right);
        for row in &r.rows {
            let mut cells = vec![row.paradigm.clone()];
            if wide {
                // Ties go to the first language in column order.
                let accs: Vec<(&String, f64)> = r
                    .languages
                    .iter()
                    .filter_map(|l| row.per_language.get(l).map(|m| (l, m.accuracy)))
                    .collect();
                let pick = |better: fn(f64, f64) -> bool| {
                    accs.iter()
                        .copied()
                        .reduce(|best, x| if better(x.1, best.1) { x } else { best })
                };
                for best in [pick(|a, b| a < b), pick(|a, b| a > b)] {
                    cells.push(match best {
                        Some((lang, acc)) => format!("{} ({lang})", percent(acc)),
                        None => "–".into(),
                    });
                }
            } else {
                for l in &r.languages {
                    cells.push(
                        row.per_language
                            .get(l)
                            .map_or_else(|| "–".into(), |m| percent(m.accuracy)),
                    );
                }
            }
            cells.push(match &row.spread {
                Some(sp) => format!("{} ± {}", percent(row.average), percent(sp.average_sd)),
                None => percent(row.average),
            });
            md_row(&mut out, &cells);
        }
    }
    if !r.comm.is_empty() {
        out.push('\n');
        md_row(
            &mut out,
            &["Paradigm", "Trainable", "% of total", "Total MB"].map(String::from),
        );
        md_rule(&mut out, 1, 3);
        for c in &r.comm {
            md_row(
                &mut out,
                &[
                    c.paradigm.clone(),
                    group_thousands(c.trainable_params),
                    share(c.trainable_params, c.total_params),
                    megabytes(c.total_bytes),
                ],
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(278_655_764), "278,655,764");
        assert_eq!(group_decimal(111_462.305_6, 2), "111,462.31");
        assert_eq!(group_decimal(999.999, 2), "1,000.00");
        assert_eq!(group_decimal(-1234.5, 1), "-1,234.5");
        assert_eq!(group_decimal(-0.001, 1), "0.0");
        assert_eq!(megabytes(4_810_832), "4.81");
    }

    #[test]
    fn percent_and_share() {
        assert_eq!(percent(0.8364), "83.6");
        assert_eq!(percent(1.0), "100.0");
        assert_eq!(share(1_202_708, 278_655_764), "0.432%");
        assert_eq!(share(5, 5), "100.0%");
        assert_eq!(share(1, 0), "–");
    }
}
