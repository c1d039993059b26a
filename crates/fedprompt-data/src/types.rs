//! Core types: examples, label maps, datasets, warnings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// One labelled input: a text (and for pair tasks such as XNLI a second text),
/// a label index into the dataset's [`LabelMap`], and a language code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    /// The input text (XNLI: the premise; XGLUE-NC: the title).
    pub text: String,
    /// The second text of a pair task (XNLI: the hypothesis; XGLUE-NC: the body).
    pub text_pair: Option<String>,
    /// Index into the dataset's [`LabelMap`].
    pub label: usize,
    /// Language code (ISO 639-1 where one exists, e.g. `en`, `zh_hant`, `pcm`).
    pub language: String,
}

impl Example {
    /// A single-text example.
    pub fn new(text: impl Into<String>, label: usize, language: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            text_pair: None,
            label,
            language: language.into(),
        }
    }

    /// A text-pair example.
    pub fn pair(
        text: impl Into<String>,
        text_pair: impl Into<String>,
        label: usize,
        language: impl Into<String>,
    ) -> Self {
        Self {
            text: text.into(),
            text_pair: Some(text_pair.into()),
            label,
            language: language.into(),
        }
    }
}

/// Ordered label names ↔ indices, shared by every client of a federation.
///
/// Serializes as the list of names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct LabelMap {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl LabelMap {
    /// A map from a fixed, ordered list of names. Errors on an empty list, an
    /// empty name or a duplicate.
    pub fn new<I, S>(names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            return Err(DataError::InvalidLabelMap("no labels".into()));
        }
        let mut index = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if n.trim().is_empty() {
                return Err(DataError::InvalidLabelMap(format!("label {i} is empty")));
            }
            if index.insert(n.clone(), i).is_some() {
                return Err(DataError::InvalidLabelMap(format!("duplicate label `{n}`")));
            }
        }
        Ok(Self { names, index })
    }

    /// A map from the labels seen in data: the distinct names, sorted.
    pub fn from_data<I, S>(labels: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set: Vec<String> = labels.into_iter().map(|s| s.as_ref().to_string()).collect();
        set.sort();
        set.dedup();
        Self::new(set)
    }

    /// XNLI: `entailment`, `neutral`, `contradiction` (the Hugging Face order).
    pub fn xnli() -> Self {
        Self::new(crate::xnli::XNLI_LABELS).expect("static labels")
    }

    /// XGLUE news classification: its ten categories (the Hugging Face order).
    pub fn xglue_nc() -> Self {
        Self::new(crate::xglue::XGLUE_NC_LABELS).expect("static labels")
    }

    /// MasakhaNEWS: its seven categories (the Hugging Face order).
    pub fn masakhanews() -> Self {
        Self::new(crate::masakhanews::MASAKHANEWS_LABELS).expect("static labels")
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false for a constructed map (kept for clippy's `len` convention).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name of label `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// The index of label `name` (exact match).
    pub fn index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// All names in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The names joined for error messages.
    pub(crate) fn known(&self) -> String {
        self.names.join(", ")
    }
}

impl TryFrom<Vec<String>> for LabelMap {
    type Error = DataError;
    fn try_from(v: Vec<String>) -> Result<Self> {
        Self::new(v)
    }
}

impl From<LabelMap> for Vec<String> {
    fn from(m: LabelMap) -> Self {
        m.names
    }
}

/// A non-fatal problem met while loading, returned to the caller (never
/// silently dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadWarning {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What was skipped or coerced, and why.
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Options shared by the file readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadOptions {
    /// Turn line-level errors (bad line, invalid UTF-8, unknown label) into
    /// counted warnings instead of failing. File-level errors (unreadable
    /// file, missing column, no examples) still fail.
    pub skip_bad_lines: bool,
}

/// What a reader returns: the examples and the warnings for skipped lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOutput {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// One warning per skipped or coerced line.
    pub warnings: Vec<LoadWarning>,
}

impl ReadOutput {
    /// Append another output.
    pub fn extend(&mut self, other: ReadOutput) {
        self.examples.extend(other.examples);
        self.warnings.extend(other.warnings);
    }
}

/// A named dataset with a shared label map and train / eval splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// A short name (e.g. `xnli`, `chatterbot`).
    pub name: String,
    /// The label map every example's `label` indexes.
    pub labels: LabelMap,
    /// Training examples.
    pub train: Vec<Example>,
    /// Evaluation examples.
    pub eval: Vec<Example>,
    /// Warnings collected while loading.
    pub warnings: Vec<LoadWarning>,
}

impl Dataset {
    /// The distinct languages of both splits, sorted.
    pub fn languages(&self) -> Vec<String> {
        let mut l: Vec<String> = language_counts(&self.train)
            .into_keys()
            .chain(language_counts(&self.eval).into_keys())
            .collect();
        l.sort();
        l.dedup();
        l
    }

    /// Checks that every label index is inside the label map.
    pub fn validate(&self) -> Result<()> {
        for e in self.train.iter().chain(&self.eval) {
            if e.label >= self.labels.len() {
                return Err(DataError::InvalidArgument(format!(
                    "example label {} outside the label map of {} labels",
                    e.label,
                    self.labels.len()
                )));
            }
        }
        Ok(())
    }
}

/// Number of examples per language, sorted by language.
pub fn language_counts(examples: &[Example]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in examples {
        *m.entry(e.language.clone()).or_insert(0) += 1;
    }
    m
}

/// Number of examples per label index (labels ≥ `num_labels` are ignored).
pub fn label_counts(examples: &[Example], num_labels: usize) -> Vec<usize> {
    let mut c = vec![0; num_labels];
    for e in examples {
        if let Some(x) = c.get_mut(e.label) {
            *x += 1;
        }
    }
    c
}

/// Indices of the examples of each language, sorted by language.
pub fn indices_by_language(examples: &[Example]) -> BTreeMap<String, Vec<usize>> {
    let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        m.entry(e.language.clone()).or_default().push(i);
    }
    m
}

/// The examples of the given languages, in input order. Errors if a
/// requested language has no examples.
pub fn select_languages<S: AsRef<str>>(
    examples: &[Example],
    languages: &[S],
) -> Result<Vec<Example>> {
    let counts = language_counts(examples);
    for l in languages {
        if !counts.contains_key(l.as_ref()) {
            return Err(DataError::EmptyLanguage {
                language: l.as_ref().to_string(),
            });
        }
    }
    Ok(examples
        .iter()
        .filter(|e| languages.iter().any(|l| l.as_ref() == e.language))
        .cloned()
        .collect())
}
