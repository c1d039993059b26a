//! Results of a fedprompt run and their reports.
//!
//! [`RunResults`] is the serde model the simulator fills; [`write_all`] turns it into a results
//! folder (`results.json`, CSV files, `tables.md` shaped like the paper's Tables 1–4, and SVG + PNG
//! plots) and [`load`] reads it back. All accuracies are fractions in `[0, 1]`.
#![warn(missing_docs)]

mod error;
mod io;
mod model;
mod plots;
mod seeds;
mod tables;

pub use error::{ReportError, Result};
pub use io::{
    accuracy_records, load, seed_records, write_all, write_atomic, write_csvs, write_json,
    write_tables, AccuracyRecord, CurveRecord, SeedRecord, RESULTS_JSON,
};
pub use model::{
    CommRow, Convergence, Curve, DataEffPoint, LangMetrics, ParadigmRow, RoundPoint, RunResults,
    SeedRow, Spread,
};
pub use plots::{ensure_font, write_plot, write_plots, PlotKind, PLOT_SIZE};
pub use seeds::{combine_seeds, mean_sd};
pub use tables::{
    accuracy_table, comm_table, group_decimal, group_thousands, megabytes, percent, render_summary,
    seeds_table, tables_markdown,
};
