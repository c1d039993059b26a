//! Loading an experiment's examples: the embedded demo data or a benchmark's own files,
//! sampled per language with the seed.

use std::path::Path;

use fedprompt_data::{
    load_chatterbot, read_generic, read_masakhanews, read_xglue_nc, read_xnli, sample_per_language,
    scan_labels, select_languages, split_per_language, ChatterbotOptions, Example, GenericFormat,
    LabelMap, MasakhaInput, ReadOptions, SampleOptions, SampleSizes, Stratify,
};

use crate::config::{DataSection, DataSource};
use crate::error::{Result, SimError};

/// The examples of an experiment.
pub struct ExperimentData {
    /// The label names of the data set, in index order.
    pub labels: LabelMap,
    /// Training examples of the chosen languages, sampled per language if asked.
    pub train: Vec<Example>,
    /// Evaluation examples of the chosen languages, sampled per language if asked.
    pub eval: Vec<Example>,
    /// Lines skipped as bad (with `skip_bad_lines`).
    pub warnings: usize,
}

fn need(path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(SimError::DataMsg(format!(
            "data file {} does not exist",
            path.display()
        )))
    }
}

fn need_split(path: &Path, split: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    Err(SimError::DataMsg(format!(
        "data file {} does not exist; check `dir`, the language codes and the split `{split}` (`train_split` / `eval_split` choose which files are read)",
        path.display()
    )))
}

/// Loads and samples the data an experiment names.
pub fn load(section: &DataSection, seed: u64) -> Result<ExperimentData> {
    let ro = ReadOptions {
        skip_bad_lines: section.skip_bad_lines,
    };
    let mut warnings = 0;
    // Training and evaluation examples come from one file, to be split disjointly.
    let mut same_pool = false;
    let (labels, mut train, mut eval) = match &section.source {
        DataSource::Chatterbot {
            eval_fraction,
            allow_missing_topics,
        } => {
            let dir = fedprompt_hub::chatterbot_corpus_dir()?;
            let mut opts = ChatterbotOptions {
                languages: section.languages.clone(),
                eval_fraction: *eval_fraction,
                allow_missing_topics: *allow_missing_topics,
                seed,
                ..Default::default()
            };
            if let Some(t) = &section.topics {
                opts.topics = t.clone();
            }
            let ds = load_chatterbot(&dir, &opts)?;
            warnings += ds.warnings.len();
            (ds.labels, ds.train, ds.eval)
        }
        DataSource::Xnli {
            dir,
            train_dir,
            eval_file,
        } => {
            let ev_path = dir.join(eval_file.as_deref().unwrap_or("xnli.dev.tsv"));
            need(&ev_path)?;
            let (mut tr, mut ev) = (Vec::new(), Vec::new());
            for lang in &section.languages {
                let out = read_xnli(&ev_path, Some(lang), &ro)?;
                warnings += out.warnings.len();
                ev.extend(out.examples);
                let tp = train_dir.join(format!("multinli.train.{lang}.tsv"));
                need(&tp)?;
                let out = read_xnli(&tp, Some(lang), &ro)?;
                warnings += out.warnings.len();
                tr.extend(out.examples);
            }
            (LabelMap::xnli(), tr, ev)
        }
        DataSource::XglueNc {
            dir,
            train_split,
            eval_split,
        } => {
            let labels = LabelMap::xglue_nc();
            same_pool = train_split == eval_split;
            let (mut tr, mut ev) = (Vec::new(), Vec::new());
            for lang in &section.languages {
                for (split, is_train) in [(train_split, true), (eval_split, false)] {
                    if same_pool && !is_train {
                        continue;
                    }
                    let out = if is_train { &mut tr } else { &mut ev };
                    let p = dir.join(format!("xglue.nc.{lang}.{split}"));
                    need_split(&p, split)?;
                    let r = read_xglue_nc(&p, Some(lang.as_str()), &labels, &ro)?;
                    warnings += r.warnings.len();
                    out.extend(r.examples);
                }
            }
            (labels, tr, ev)
        }
        DataSource::Masakhanews {
            dir,
            train_split,
            eval_split,
        } => {
            let labels = LabelMap::masakhanews();
            same_pool = train_split == eval_split;
            let (mut tr, mut ev) = (Vec::new(), Vec::new());
            for lang in &section.languages {
                for (split, is_train) in [(train_split, true), (eval_split, false)] {
                    if same_pool && !is_train {
                        continue;
                    }
                    let out = if is_train { &mut tr } else { &mut ev };
                    let p = dir.join(lang).join(format!("{split}.tsv"));
                    need_split(&p, split)?;
                    let r = read_masakhanews(
                        &p,
                        Some(lang.as_str()),
                        MasakhaInput::HeadlineText,
                        &labels,
                        &ro,
                    )?;
                    warnings += r.warnings.len();
                    out.extend(r.examples);
                }
            }
            (labels, tr, ev)
        }
        DataSource::Files {
            train,
            eval,
            format,
        } => {
            need(train)?;
            need(eval)?;
            let fmt = format.clone().unwrap_or_else(|| GenericFormat {
                language_column: Some("language".into()),
                ..GenericFormat::default()
            });
            // The classes are the training file's: a label seen only in the evaluation file
            // is an error (it could never be predicted), not a new class.
            let labels = scan_labels(&[train.as_path()], &fmt)?;
            let tr = read_generic(train, &fmt, &labels, &ro)?;
            let ev = read_generic(eval, &fmt, &labels, &ro)?;
            warnings += tr.warnings.len() + ev.warnings.len();
            (labels, tr.examples, ev.examples)
        }
    };
    // Keep the requested languages (an absent one is an error naming it).
    train = select_languages(&train, &section.languages)?;
    let opts = SampleOptions {
        seed,
        stratify: Stratify::Label,
        allow_fewer: true,
    };
    if same_pool {
        let (Some(n_train), Some(n_eval)) = (section.train_per_language, section.eval_per_language)
        else {
            return Err(SimError::DataMsg(
                "train_split and eval_split name the same file: give `train_per_language` and `eval_per_language`, the sizes of the two disjoint samples drawn from it".into(),
            ));
        };
        let sizes = SampleSizes {
            train: n_train,
            eval: n_eval,
        };
        let (tr, ev) = split_per_language(&train, sizes, &opts)?;
        return Ok(ExperimentData {
            labels,
            train: tr,
            eval: ev,
            warnings,
        });
    }
    eval = select_languages(&eval, &section.languages)?;
    if section.train_per_language.is_some() || !section.train_sizes.is_empty() {
        // Each language sampled on its own, to its own size where one is given.
        let mut sampled = Vec::with_capacity(train.len());
        for lang in &section.languages {
            let own: Vec<Example> = train
                .iter()
                .filter(|e| &e.language == lang)
                .cloned()
                .collect();
            match section
                .train_sizes
                .get(lang)
                .or(section.train_per_language.as_ref())
            {
                Some(&n) => sampled.extend(sample_per_language(&own, n, &opts)?),
                None => sampled.extend(own),
            }
        }
        train = sampled;
    }
    if let Some(n) = section.eval_per_language {
        eval = sample_per_language(
            &eval,
            n,
            &SampleOptions {
                seed: seed ^ 0x5eed,
                ..opts
            },
        )?;
    }
    Ok(ExperimentData {
        labels,
        train,
        eval,
        warnings,
    })
}
