//! Prints φ tables for the paper's XNLI and MasakhaNEWS languages.
//!
//! `cargo run -p fedprompt-lang --example distance_table -- /path/to/lang2vec/data [predicted|average|union]`

use fedprompt_lang::{markdown_table, DistanceOptions, FeatureSource, LanguageDistance};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: distance_table DATA_DIR [predicted|average|union]")?;
    let source = match args.next().as_deref() {
        None | Some("predicted") => FeatureSource::Predicted,
        Some("average") => FeatureSource::Average,
        Some("union") => FeatureSource::Union,
        Some(other) => return Err(format!("unknown source {other:?}").into()),
    };
    let options = DistanceOptions {
        source,
        ..DistanceOptions::default()
    };
    let ld = LanguageDistance::load(&dir, &options)?;
    println!(
        "{} features, {} pre-training languages, {} rows skipped\n",
        ld.feature_names().len(),
        ld.pretraining_languages().len(),
        ld.skipped().len()
    );
    let xnli = [
        "en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur",
    ];
    println!("XNLI\n\n{}", markdown_table(&ld.table(&xnli)?));
    let masakha = ["eng", "fra", "hau", "swa", "yor"];
    println!("MasakhaNEWS\n\n{}", markdown_table(&ld.table(&masakha)?));
    Ok(())
}
