//! The chatterbot-corpus demo data (PyPI `chatterbot-corpus==1.3.3`).
//!
//! Layout: `<data dir>/<language>/<topic>.yml`, each a YAML mapping with
//! `categories:` (translated names, ignored here) and `conversations:`, a
//! list of conversations, each a list of lines. The label of a line is its
//! file's topic, normalised through [`chatterbot_topic`] (Spanish `IA.yml` →
//! `ai`, ...). Each line of a conversation becomes one [`Example`].
//!
//! Odd YAML is handled and counted, never dropped silently: a number or
//! boolean line is kept as its text, a conversation written as a single
//! string is read as a one-line conversation, and empty, null or nested
//! items are dropped; each case adds a [`LoadWarning`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::error::{DataError, Result};
use crate::io::read_utf8;
use crate::sample::derived_rng;
use crate::types::{Dataset, Example, LabelMap, LoadWarning};

/// The ten topics shared by the demo languages, in label order.
pub const CHATTERBOT_TOPICS: [&str; 10] = [
    "ai",
    "emotion",
    "food",
    "greetings",
    "literature",
    "money",
    "movies",
    "psychology",
    "science",
    "sports",
];

/// The seven languages that have all ten topics and that the demo uses
/// (directory names). Persian has nine (no `ai`), Spanish five.
pub const CHATTERBOT_DEMO_LANGUAGES: [&str; 7] = [
    "english",
    "italian",
    "japanese",
    "korean",
    "ukrainian",
    "chinese",
    "traditionalchinese",
];

/// Directory name → language code: ISO 639-1, `zh_hant` for Traditional
/// Chinese and `hi_rom` for Hinglish (the codes of the CC-100 table).
const LANGUAGE_CODES: [(&str, &str); 28] = [
    ("bengali", "bn"),
    ("chinese", "zh"),
    ("dutch", "nl"),
    ("english", "en"),
    ("french", "fr"),
    ("german", "de"),
    ("hebrew", "he"),
    ("hindi", "hi"),
    ("hinglish", "hi_rom"),
    ("indonesian", "id"),
    ("italian", "it"),
    ("japanese", "ja"),
    ("korean", "ko"),
    ("marathi", "mr"),
    ("oriya", "or"),
    ("persian", "fa"),
    ("portuguese", "pt"),
    ("russian", "ru"),
    ("spanish", "es"),
    ("swedish", "sv"),
    ("tamil", "ta"),
    ("telugu", "te"),
    ("thai", "th"),
    ("traditionalchinese", "zh_hant"),
    ("turkish", "tr"),
    ("ukrainian", "uk"),
    ("urdu", "ur"),
    ("yoruba", "yo"),
];

/// The code of a chatterbot language directory (`english` → `en`,
/// `traditionalchinese` → `zh_hant`).
pub fn chatterbot_language_code(dir_name: &str) -> Option<&'static str> {
    LANGUAGE_CODES
        .iter()
        .find(|(d, _)| *d == dir_name)
        .map(|(_, c)| *c)
}

/// The directory of a language given by directory name or by code.
pub fn chatterbot_language_dir(name_or_code: &str) -> Option<&'static str> {
    LANGUAGE_CODES
        .iter()
        .find(|(d, c)| *d == name_or_code || *c == name_or_code)
        .map(|(d, _)| *d)
}

/// The canonical topic of a file stem in a language directory: Spanish
/// `IA`/`dinero`/`emociones`/`psicologia`/`perfilbot` → `ai`/`money`/
/// `emotion`/`psychology`/`botprofile`, Dutch `sport` → `sports`, Thai
/// `greeting` → `greetings`, Persian `profile` → `botprofile`, Hindi
/// `coversations` → `conversations`, Bengali `emotions`/`computer` →
/// `emotion`/`computers`; otherwise the stem itself.
pub fn chatterbot_topic(language_dir: &str, stem: &str) -> String {
    let t = match (language_dir, stem) {
        ("spanish", "IA") => "ai",
        ("spanish", "dinero") => "money",
        ("spanish", "emociones") => "emotion",
        ("spanish", "psicologia") => "psychology",
        ("spanish", "perfilbot") => "botprofile",
        ("dutch", "sport") => "sports",
        ("thai", "greeting") => "greetings",
        ("persian", "profile") => "botprofile",
        ("hindi", "coversations") => "conversations",
        ("bengali", "emotions") => "emotion",
        ("bengali", "computer") => "computers",
        (_, s) => s,
    };
    t.to_string()
}

/// What [`load_chatterbot`] loads and how it splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatterbotOptions {
    /// Languages, by directory name (`english`) or code (`en`).
    pub languages: Vec<String>,
    /// Topics, canonical names; their order is the label order.
    pub topics: Vec<String>,
    /// Fraction of each (language, topic) file's conversations held out
    /// for evaluation, in [0, 1).
    pub eval_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
    /// A topic missing from a language is a warning instead of an error.
    pub allow_missing_topics: bool,
    /// Keep conversations that open with the same line on the same side of
    /// the split (the corpus repeats a question with several answers; this
    /// stops the question itself leaking into eval). Default true.
    pub group_by_first_line: bool,
}

impl Default for ChatterbotOptions {
    /// The seven demo languages, the ten topics, 20% eval, seed 0.
    fn default() -> Self {
        Self {
            languages: CHATTERBOT_DEMO_LANGUAGES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            topics: CHATTERBOT_TOPICS.iter().map(|s| s.to_string()).collect(),
            eval_fraction: 0.2,
            seed: 0,
            allow_missing_topics: false,
            group_by_first_line: true,
        }
    }
}

/// One conversation of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Language code.
    pub language: String,
    /// Canonical topic.
    pub topic: String,
    /// The topic's index in [`ChatterbotCorpus::topics`].
    pub label: usize,
    /// The file.
    pub path: PathBuf,
    /// 0-based position in the file's `conversations` list.
    pub index: usize,
    /// Its lines, trimmed and non-empty.
    pub lines: Vec<String>,
}

/// The conversations of the chosen languages and topics.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatterbotCorpus {
    /// The topics as labels.
    pub topics: LabelMap,
    /// Conversations in language, topic, file order.
    pub conversations: Vec<Conversation>,
    /// Everything coerced or dropped.
    pub warnings: Vec<LoadWarning>,
}

/// Conversations of one file (each a list of lines) and its warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatterbotFile {
    /// `(index in the file, lines)` of every kept conversation.
    pub conversations: Vec<(usize, Vec<String>)>,
    /// What was coerced or dropped.
    pub warnings: Vec<LoadWarning>,
}

impl ChatterbotFile {
    /// Total kept lines.
    pub fn num_lines(&self) -> usize {
        self.conversations.iter().map(|(_, l)| l.len()).sum()
    }
}

fn yaml_err(path: &Path, e: &serde_yaml::Error) -> DataError {
    DataError::Yaml {
        path: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    }
}

fn scalar_text(v: &Value) -> Option<(String, bool)> {
    match v {
        Value::String(s) => Some((s.trim().to_string(), false)),
        Value::Number(n) => Some((n.to_string(), true)),
        Value::Bool(b) => Some((b.to_string(), true)),
        Value::Tagged(t) => scalar_text(&t.value).map(|(s, _)| (s, true)),
        _ => None,
    }
}

/// Reads one chatterbot YAML file.
pub fn read_chatterbot_file(path: impl AsRef<Path>) -> Result<ChatterbotFile> {
    let path = path.as_ref();
    let text = read_utf8(path)?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| yaml_err(path, &e))?;
    let convs = match doc.get("conversations") {
        Some(Value::Sequence(s)) => s,
        Some(Value::Null) | None => {
            return Err(DataError::Yaml {
                path: path.to_path_buf(),
                line: None,
                message: "no `conversations:` list".into(),
            })
        }
        Some(_) => {
            return Err(DataError::Yaml {
                path: path.to_path_buf(),
                line: None,
                message: "`conversations:` is not a list".into(),
            })
        }
    };
    let mut out = ChatterbotFile::default();
    let mut warn = |msg: String| {
        out.warnings.push(LoadWarning {
            path: path.to_path_buf(),
            line: None,
            message: msg,
        })
    };
    let mut kept = Vec::new();
    for (ci, conv) in convs.iter().enumerate() {
        let conv = match conv {
            Value::Tagged(t) => &t.value,
            v => v,
        };
        let mut lines = Vec::new();
        match conv {
            Value::Sequence(items) => {
                for (li, item) in items.iter().enumerate() {
                    match scalar_text(item) {
                        Some((s, _)) if s.is_empty() => {
                            warn(format!("conversation {ci} item {li}: empty line dropped"))
                        }
                        Some((s, coerced)) => {
                            if coerced {
                                warn(format!(
                                    "conversation {ci} item {li}: non-string `{s}` read as text"
                                ));
                            }
                            lines.push(s);
                        }
                        None => warn(format!(
                            "conversation {ci} item {li}: {} dropped",
                            kind(item)
                        )),
                    }
                }
            }
            other => match scalar_text(other) {
                Some((s, _)) if !s.is_empty() => {
                    warn(format!(
                        "conversation {ci}: a single {} instead of a list, read as a one-line conversation",
                        kind(other)
                    ));
                    lines.push(s);
                }
                _ => warn(format!("conversation {ci}: {} dropped", kind(other))),
            },
        }
        if lines.is_empty() {
            if matches!(conv, Value::Sequence(_)) {
                warn(format!("conversation {ci}: no lines left, dropped"));
            }
        } else {
            kept.push((ci, lines));
        }
    }
    out.conversations = kept;
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "nested list",
        Value::Mapping(_) => "mapping",
        Value::Tagged(_) => "tagged value",
    }
}

/// The YAML files of a language directory by canonical topic.
fn topic_files(dir: &Path, language_dir: &str) -> Result<HashMap<String, PathBuf>> {
    let ldir = dir.join(language_dir);
    let rd = std::fs::read_dir(&ldir).map_err(|cause| DataError::Io {
        path: ldir.clone(),
        cause,
    })?;
    let mut m = HashMap::new();
    for entry in rd {
        let p = entry
            .map_err(|cause| DataError::Io {
                path: ldir.clone(),
                cause,
            })?
            .path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "yml" && ext != "yaml" {
            continue;
        }
        if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
            m.insert(chatterbot_topic(language_dir, stem), p);
        }
    }
    Ok(m)
}

/// Reads the chosen languages and topics of an unpacked
/// `chatterbot_corpus/data` directory.
pub fn read_chatterbot(
    dir: impl AsRef<Path>,
    opts: &ChatterbotOptions,
) -> Result<ChatterbotCorpus> {
    let dir = dir.as_ref();
    if opts.languages.is_empty() {
        return Err(DataError::InvalidArgument(
            "chatterbot: no languages chosen".into(),
        ));
    }
    let topics = LabelMap::new(opts.topics.iter().cloned())?;
    let mut conversations = Vec::new();
    let mut warnings = Vec::new();
    for lang in &opts.languages {
        let ldir = chatterbot_language_dir(lang).ok_or_else(|| {
            DataError::InvalidArgument(format!("chatterbot: unknown language `{lang}`"))
        })?;
        let code = chatterbot_language_code(ldir).unwrap_or(ldir);
        let files = topic_files(dir, ldir)?;
        let before = conversations.len();
        for (label, topic) in topics.names().iter().enumerate() {
            let Some(path) = files.get(topic) else {
                let mut have: Vec<&String> = files.keys().collect();
                have.sort();
                let msg = format!(
                    "language `{ldir}` has no topic `{topic}` (has: {})",
                    have.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if opts.allow_missing_topics {
                    warnings.push(LoadWarning {
                        path: dir.join(ldir),
                        line: None,
                        message: msg,
                    });
                    continue;
                }
                return Err(DataError::InvalidArgument(format!("chatterbot: {msg}")));
            };
            let f = read_chatterbot_file(path)?;
            warnings.extend(f.warnings);
            conversations.extend(
                f.conversations
                    .into_iter()
                    .map(|(index, lines)| Conversation {
                        language: code.to_string(),
                        topic: topic.clone(),
                        label,
                        path: path.clone(),
                        index,
                        lines,
                    }),
            );
        }
        if conversations.len() == before {
            return Err(DataError::EmptyLanguage {
                language: code.to_string(),
            });
        }
    }
    Ok(ChatterbotCorpus {
        topics,
        conversations,
        warnings,
    })
}

/// `((language, topic), groups of conversation indices)`.
type FileGroups = ((String, String), Vec<Vec<usize>>);

/// Splits a corpus by conversation: within each (language, topic), the
/// conversations (grouped by first line when `group_by_first_line`) are
/// shuffled with a generator seeded by `(seed, language, topic)` and the
/// first `round(eval_fraction × groups)` groups go to eval — at least one and
/// at most all but one when the file has two or more groups and the
/// fraction is positive. Returns conversation indices `(train, eval)`.
pub fn split_conversations(
    corpus: &ChatterbotCorpus,
    opts: &ChatterbotOptions,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(opts.eval_fraction.is_finite() && (0.0..1.0).contains(&opts.eval_fraction)) {
        return Err(DataError::InvalidArgument(format!(
            "eval_fraction {} not in [0, 1)",
            opts.eval_fraction
        )));
    }
    // (language, topic) → groups of conversation indices, in first-seen order.
    let mut files: Vec<FileGroups> = Vec::new();
    let mut file_pos: HashMap<(String, String), usize> = HashMap::new();
    let mut group_pos: HashMap<(usize, String), usize> = HashMap::new();
    for (i, c) in corpus.conversations.iter().enumerate() {
        let key = (c.language.clone(), c.topic.clone());
        let f = *file_pos.entry(key.clone()).or_insert_with(|| {
            files.push((key, Vec::new()));
            files.len() - 1
        });
        let gkey = if opts.group_by_first_line {
            c.lines[0].clone()
        } else {
            format!("\u{0}{i}")
        };
        let groups = &mut files[f].1;
        let g = *group_pos.entry((f, gkey)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for ((lang, topic), mut groups) in files {
        let g = groups.len();
        let mut n_eval = (opts.eval_fraction * g as f64).round() as usize;
        if opts.eval_fraction > 0.0 && g >= 2 {
            n_eval = n_eval.clamp(1, g - 1);
        } else if g < 2 {
            n_eval = 0;
        }
        groups.shuffle(&mut derived_rng(
            opts.seed,
            &format!("chatterbot/{lang}/{topic}"),
        ));
        for (j, grp) in groups.into_iter().enumerate() {
            if j < n_eval {
                eval.extend(grp);
            } else {
                train.extend(grp);
            }
        }
    }
    train.sort_unstable();
    eval.sort_unstable();
    Ok((train, eval))
}

/// Loads the demo dataset: one example per conversation line, labelled by
/// topic, with a seeded train / eval split by conversation
/// ([`split_conversations`]). Languages get the codes of
/// [`chatterbot_language_code`].
pub fn load_chatterbot(dir: impl AsRef<Path>, opts: &ChatterbotOptions) -> Result<Dataset> {
    let corpus = read_chatterbot(dir, opts)?;
    let (train_idx, eval_idx) = split_conversations(&corpus, opts)?;
    let flatten = |idx: &[usize]| -> Vec<Example> {
        idx.iter()
            .flat_map(|&i| {
                let c = &corpus.conversations[i];
                c.lines
                    .iter()
                    .map(move |l| Example::new(l.clone(), c.label, c.language.clone()))
            })
            .collect()
    };
    Ok(Dataset {
        name: "chatterbot".into(),
        labels: corpus.topics.clone(),
        train: flatten(&train_idx),
        eval: flatten(&eval_idx),
        warnings: corpus.warnings.clone(),
    })
}

/// One row of a corpus survey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyEntry {
    /// Language directory.
    pub language_dir: String,
    /// Its code, if known.
    pub code: Option<String>,
    /// Canonical topic.
    pub topic: String,
    /// Conversations kept.
    pub conversations: usize,
    /// Lines kept.
    pub lines: usize,
    /// Warnings (coerced or dropped items).
    pub warnings: usize,
}

/// Reads every `<language>/<topic>.yml` under `dir` and counts it; a file
/// that fails to parse is an error.
pub fn survey_chatterbot(dir: impl AsRef<Path>) -> Result<Vec<SurveyEntry>> {
    let dir = dir.as_ref();
    let rd = std::fs::read_dir(dir).map_err(|cause| DataError::Io {
        path: dir.to_path_buf(),
        cause,
    })?;
    let mut langs: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    langs.sort();
    let mut out = Vec::new();
    for l in langs {
        let mut files: Vec<(String, PathBuf)> = topic_files(dir, &l)?.into_iter().collect();
        files.sort();
        for (topic, path) in files {
            let f = read_chatterbot_file(&path)?;
            out.push(SurveyEntry {
                language_dir: l.clone(),
                code: chatterbot_language_code(&l).map(str::to_string),
                topic,
                conversations: f.conversations.len(),
                lines: f.num_lines(),
                warnings: f.warnings.len(),
            });
        }
    }
    Ok(out)
}
