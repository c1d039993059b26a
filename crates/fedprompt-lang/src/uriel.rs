//! URIEL typological feature vectors from lang2vec's `.npz` files.
//!
//! Each lang2vec archive holds `langs` (`U3`, ISO 639-3 codes), `feats` (`U72`, names prefixed
//! `S_` syntax, `P_` phonology, `INV_` inventory), `sources` and `data` of shape
//! `[langs, feats, sources]` with `-1` for "unknown" (shown as `--` by lang2vec). Features of the
//! three groups are interleaved in `feats`; lang2vec selects a group by name prefix, in file order.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{LangError, Result};
use crate::npy::read_npz;

/// Which lang2vec archive supplies the feature values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSource {
    /// `feature_predictions.npz`, lang2vec's `syntax_knn`/`phonology_knn`/`inventory_knn`:
    /// known values plus k-NN predictions, so nothing is missing. Default; closest to the
    /// paper, whose cosine would be undefined with lang2vec's `--` placeholders.
    #[default]
    Predicted,
    /// `feature_averages.npz`, lang2vec's `*_average`: observed values averaged over sources.
    Average,
    /// `features.npz`, the element-wise union (maximum, as lang2vec's `|`) of all sources
    /// (WALS, SSWL, Ethnologue, PHOIBLE …): observed values only.
    Union,
}

impl FeatureSource {
    /// The archive's file name inside lang2vec's `data/` directory.
    pub fn file_name(self) -> &'static str {
        match self {
            FeatureSource::Predicted => "feature_predictions.npz",
            FeatureSource::Average => "feature_averages.npz",
            FeatureSource::Union => "features.npz",
        }
    }
}

/// A group of URIEL features, selected by name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureGroup {
    /// Word order and other syntax (`S_`, 103 features).
    Syntax,
    /// Phonology (`P_`, 28 features).
    Phonology,
    /// Phoneme inventory (`INV_`, 158 features).
    Inventory,
}

impl FeatureGroup {
    /// The feature-name prefix of the group.
    pub fn prefix(self) -> &'static str {
        match self {
            FeatureGroup::Syntax => "S_",
            FeatureGroup::Phonology => "P_",
            FeatureGroup::Inventory => "INV_",
        }
    }
}

/// How unknown values (`-1`, lang2vec's `--`) are treated. Irrelevant for
/// [`FeatureSource::Predicted`], which has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingValues {
    /// Leave them out: each entry of V_p averages only the pre-training languages that know
    /// the feature (weights renormalised per feature), and the cosine runs over the features
    /// known for the queried language. Default.
    #[default]
    Ignore,
    /// Treat an unknown feature as absent (0).
    Zero,
    /// Fill it with lang2vec's k-NN prediction from `feature_predictions.npz`.
    FillPredicted,
}

/// A language × feature matrix with `NaN` for unknown values.
#[derive(Debug, Clone)]
pub(crate) struct FeatureMatrix {
    pub langs: Vec<String>,
    pub index: HashMap<String, usize>,
    pub feats: Vec<String>,
    pub values: Vec<f64>,
}

impl FeatureMatrix {
    pub fn row(&self, lang: usize) -> &[f64] {
        let n = self.feats.len();
        &self.values[lang * n..(lang + 1) * n]
    }
}

/// Reads one archive, keeps the features of `groups` (group order, file order within a group),
/// reduces the source axis by maximum and maps negative values to `NaN`.
pub(crate) fn load_matrix(
    data_dir: &Path,
    source: FeatureSource,
    groups: &[FeatureGroup],
) -> Result<FeatureMatrix> {
    let path = data_dir.join(source.file_name());
    let layout = |reason: String| LangError::Layout {
        path: path.clone(),
        reason,
    };
    let mut arrays = read_npz(&path, Some(&["data", "feats", "langs"]))?;
    let mut take = |name: &str| {
        arrays
            .remove(name)
            .ok_or_else(|| layout(format!("no `{name}` array")))
    };
    let (data, feats, langs) = (take("data")?, take("feats")?, take("langs")?);
    let langs = langs
        .as_strings()
        .ok_or_else(|| layout("`langs` is not a string array".into()))?
        .to_vec();
    let all_feats = feats
        .as_strings()
        .ok_or_else(|| layout("`feats` is not a string array".into()))?;
    let [n_langs, n_feats, n_sources] = match data.shape.as_slice() {
        &[l, f, s] => [l, f, s],
        &[l, f] => [l, f, 1],
        other => return Err(layout(format!("`data` has shape {other:?}, expected 3-D"))),
    };
    if n_langs != langs.len() || n_feats != all_feats.len() || n_sources == 0 {
        return Err(layout(format!(
            "`data` shape {:?} disagrees with {} langs and {} feats",
            data.shape,
            langs.len(),
            all_feats.len()
        )));
    }
    let raw = data
        .to_f64()
        .ok_or_else(|| layout("`data` is not numeric".into()))?;

    let mut selected = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        if groups[..gi].contains(group) {
            continue;
        }
        let before = selected.len();
        selected.extend(
            all_feats
                .iter()
                .enumerate()
                .filter(|(_, f)| f.starts_with(group.prefix()))
                .map(|(i, _)| i),
        );
        if selected.len() == before {
            return Err(layout(format!("no `{}` features", group.prefix())));
        }
    }

    let mut values = Vec::with_capacity(n_langs * selected.len());
    for l in 0..n_langs {
        for &f in &selected {
            let base = (l * n_feats + f) * n_sources;
            let best = raw[base..base + n_sources]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            values.push(if best >= 0.0 { best } else { f64::NAN });
        }
    }
    let index = langs
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i))
        .collect();
    Ok(FeatureMatrix {
        langs,
        index,
        feats: selected.iter().map(|&i| all_feats[i].clone()).collect(),
        values,
    })
}
