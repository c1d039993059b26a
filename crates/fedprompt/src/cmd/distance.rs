//! `fedprompt distance`: φ(v) = −log cos(v, V_p) for the given languages.

use anyhow::{Context, Result};
use clap::ValueEnum;
use fedprompt_lang::{markdown_table, DistanceOptions, FeatureSource, LanguageDistance};

use crate::common::{self, Globals};

const ATTRIBUTION: &str =
    "Typological data: URIEL (Littell et al. 2017, EACL) via lang2vec 1.1.2, CC BY-SA 4.0. \
CC-100 token counts: Conneau et al. 2020, Table 6.";

const AFTER_HELP: &str = "\
Examples:
  fedprompt distance en es fr de ru
  fedprompt distance eng fra hau swa yor --json
  fedprompt distance sw yo --source union --csv > distances.csv

Codes are ISO 639-1 or 639-3. φ(v) = −log cos(v, V_p), where v is the language's URIEL
vector (syntax + phonology + inventory) and V_p the CC-100-token-weighted blend of XLM-R's
pre-training languages (the paper's §5.3.1); rows are sorted closest first. The URIEL data
(lang2vec's data folder) is fetched and cached on first use (`fedprompt fetch lang2vec`).";

/// Which lang2vec feature archive supplies the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// k-NN-completed features (nothing missing); the default, closest to the paper.
    Predicted,
    /// Observed values averaged over sources (missing values ignored).
    Average,
    /// Union of all sources' observed values (missing values ignored).
    Union,
}

/// Arguments of `fedprompt distance`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Language codes (ISO 639-1 or 639-3).
    #[arg(value_name = "CODE", required = true, num_args = 1..)]
    pub codes: Vec<String>,

    /// Feature archive of lang2vec.
    #[arg(long, value_enum, default_value_t = Source::Predicted)]
    pub source: Source,

    /// Print JSON (rows with φ, cosine and pre-training tokens).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// Print CSV.
    #[arg(long)]
    pub csv: bool,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Runs `fedprompt distance`.
pub fn run(a: Args, g: &Globals) -> Result<()> {
    let sp = common::spinner("preparing the URIEL data (lang2vec)", g);
    let dir = fedprompt_hub::lang2vec_data_dir().context(
        "cannot obtain the URIEL data; run `fedprompt fetch lang2vec` on a machine with \
         internet access (or set FEDPROMPT_WHEELHOUSE)",
    )?;
    sp.set_message("loading the URIEL feature vectors");
    let opts = DistanceOptions {
        source: match a.source {
            Source::Predicted => FeatureSource::Predicted,
            Source::Average => FeatureSource::Average,
            Source::Union => FeatureSource::Union,
        },
        ..DistanceOptions::default()
    };
    let ld = LanguageDistance::load(&dir, &opts)
        .with_context(|| format!("loading URIEL data from {}", dir.display()))?;
    sp.finish_and_clear();
    let rows = ld.table(&a.codes)?;
    if a.json {
        let v = serde_json::json!({
            "source": format!("{:?}", a.source).to_lowercase(),
            "rows": rows,
            "attribution": ATTRIBUTION,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if a.csv {
        println!("language,iso1,iso3,phi,cosine,in_pretraining,cc100_tokens_m");
        for r in &rows {
            println!(
                "{},{},{},{},{},{},{}",
                csv_field(&r.name),
                r.iso1.as_deref().unwrap_or(""),
                r.iso3,
                r.phi,
                r.cosine,
                r.in_pretraining,
                r.pretraining_tokens_m
            );
        }
        eprintln!("{ATTRIBUTION}");
    } else {
        print!("{}", markdown_table(&rows));
        println!("\n{ATTRIBUTION}");
    }
    Ok(())
}
