//! The chatterbot reader and its split, on fixture YAMLs written for these
//! tests (no corpus text), plus an optional run on the real data directory.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use fedprompt_data::chatterbot::{chatterbot_topic, read_chatterbot_file};
use fedprompt_data::{
    chatterbot_language_code, language_counts, load_chatterbot, read_chatterbot,
    split_conversations, survey_chatterbot, ChatterbotOptions, DataError,
    CHATTERBOT_DEMO_LANGUAGES, CHATTERBOT_TOPICS,
};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chatterbot")
}

fn opts(languages: &[&str], eval_fraction: f64, seed: u64) -> ChatterbotOptions {
    ChatterbotOptions {
        languages: languages.iter().map(|s| s.to_string()).collect(),
        topics: vec!["ai".into(), "food".into(), "greetings".into()],
        eval_fraction,
        seed,
        ..ChatterbotOptions::default()
    }
}

#[test]
fn odd_yaml_is_counted_not_silently_dropped() {
    let f = read_chatterbot_file(dir().join("english/greetings.yml")).unwrap();
    // 6 regular conversations + the odd one + the scalar one.
    assert_eq!(f.conversations.len(), 8);
    let (idx, odd) = &f.conversations[6];
    assert_eq!(*idx, 6);
    assert_eq!(
        odd,
        &["en-greet odd question", "42", "true", "en-greet odd answer"]
    );
    assert_eq!(
        f.conversations[7].1,
        ["en-greet scalar conversation - written without a dash"]
    );
    let msgs: Vec<&str> = f.warnings.iter().map(|w| w.message.as_str()).collect();
    // 42 and true coerced; null, blank, nested dropped; scalar conversation;
    // null conversation; empty conversation.
    assert_eq!(msgs.len(), 8, "{msgs:#?}");
    assert_eq!(
        msgs.iter().filter(|m| m.contains("read as text")).count(),
        2
    );
    assert_eq!(msgs.iter().filter(|m| m.contains("dropped")).count(), 5);
    assert_eq!(
        msgs.iter()
            .filter(|m| m.contains("one-line conversation"))
            .count(),
        1
    );
}

#[test]
fn loads_labels_languages_and_codes() {
    let ds = load_chatterbot(dir(), &opts(&["english", "zh_hant"], 0.25, 7)).unwrap();
    assert_eq!(ds.labels.names(), ["ai", "food", "greetings"]);
    assert_eq!(ds.languages(), ["en", "zh_hant"]);
    ds.validate().unwrap();
    // Every line is kept: en ai 12×2, food 8×3, greetings 6×2 + 4 + 1;
    // zh_hant ai 7×2, food 6×2, greetings 5×3. trivia.yml is not a topic asked for.
    let all: usize = ds.train.len() + ds.eval.len();
    assert_eq!(all, 24 + 24 + 17 + 14 + 12 + 15);
    // Labels come from the file name.
    for e in ds.train.iter().chain(&ds.eval) {
        let topic = ds.labels.name(e.label).unwrap();
        let prefix = format!(
            "{}-{}",
            e.language,
            if topic == "greetings" { "greet" } else { topic }
        );
        assert!(
            e.text.starts_with(&prefix) || e.text == "42" || e.text == "true",
            "{e:?}"
        );
    }
    assert!(!ds.warnings.is_empty());
}

#[test]
fn spanish_file_names_map_to_topics() {
    assert_eq!(chatterbot_topic("spanish", "IA"), "ai");
    assert_eq!(chatterbot_topic("spanish", "dinero"), "money");
    assert_eq!(chatterbot_topic("spanish", "emociones"), "emotion");
    assert_eq!(chatterbot_topic("spanish", "psicologia"), "psychology");
    assert_eq!(chatterbot_topic("english", "ai"), "ai");
    assert_eq!(
        chatterbot_language_code("traditionalchinese"),
        Some("zh_hant")
    );
    let mut o = opts(&["es"], 0.2, 1);
    o.topics = vec!["ai".into(), "money".into(), "greetings".into()];
    let ds = load_chatterbot(dir(), &o).unwrap();
    let ai: Vec<_> = ds
        .train
        .iter()
        .chain(&ds.eval)
        .filter(|e| e.label == 0)
        .collect();
    assert_eq!(ai.len(), 12);
    assert!(ai
        .iter()
        .all(|e| e.text.starts_with("es-ai") && e.language == "es"));
}

#[test]
fn missing_topic_is_an_error_unless_allowed() {
    let err = load_chatterbot(dir(), &opts(&["spanish"], 0.2, 0)).unwrap_err();
    assert!(err.to_string().contains("no topic `food`"), "{err}");
    let mut o = opts(&["spanish"], 0.2, 0);
    o.allow_missing_topics = true;
    let ds = load_chatterbot(dir(), &o).unwrap();
    assert!(ds
        .warnings
        .iter()
        .any(|w| w.message.contains("no topic `food`")));
    assert_eq!(ds.labels.len(), 3, "the label map stays shared");
    // A language with none of the topics is empty.
    let mut o = opts(&["spanish"], 0.2, 0);
    o.topics = vec!["food".into()];
    o.allow_missing_topics = true;
    assert!(matches!(
        load_chatterbot(dir(), &o),
        Err(DataError::EmptyLanguage { .. })
    ));
    assert!(load_chatterbot(dir(), &opts(&["klingon"], 0.2, 0)).is_err());
    // A language the package has but the directory lacks: an I/O error naming it.
    let err = load_chatterbot(dir(), &opts(&["korean"], 0.2, 0)).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("korean"),
        "{err}"
    );
}

#[test]
fn no_conversation_crosses_the_split() {
    for group in [true, false] {
        for seed in 0..20 {
            let mut o = opts(&["english", "traditionalchinese"], 0.3, seed);
            o.group_by_first_line = group;
            let corpus = read_chatterbot(dir(), &o).unwrap();
            let (train, eval) = split_conversations(&corpus, &o).unwrap();
            // Conversation level: a partition of all conversations.
            let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..corpus.conversations.len()).collect::<Vec<_>>());
            assert!(train.iter().all(|i| !eval.contains(i)));
            // Example level: every line of a conversation lands on one side.
            let ds = load_chatterbot(dir(), &o).unwrap();
            let tr: HashSet<&str> = ds.train.iter().map(|e| e.text.as_str()).collect();
            let ev: HashSet<&str> = ds.eval.iter().map(|e| e.text.as_str()).collect();
            for c in &corpus.conversations {
                let in_tr = c.lines.iter().filter(|l| tr.contains(l.as_str())).count();
                let in_ev = c.lines.iter().filter(|l| ev.contains(l.as_str())).count();
                // Shared first lines ("en-ai question 0") may sit on both
                // sides only when grouping is off.
                let shared = !group && c.lines[0] == "en-ai question 0";
                if !shared {
                    assert!(
                        (in_tr == c.lines.len() && in_ev == 0)
                            || (in_ev == c.lines.len() && in_tr == 0),
                        "conversation {c:?} crosses the split (seed {seed})"
                    );
                }
            }
            if group {
                // The three conversations opening with the same question stay together.
                let q0: Vec<usize> = corpus
                    .conversations
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.lines[0] == "en-ai question 0")
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(q0.len(), 3);
                let sides: HashSet<bool> = q0.iter().map(|i| eval.contains(i)).collect();
                assert_eq!(sides.len(), 1, "seed {seed}");
            }
        }
    }
}

#[test]
fn split_is_seeded_and_every_file_has_eval() {
    let a = load_chatterbot(dir(), &opts(&["english"], 0.25, 3)).unwrap();
    let b = load_chatterbot(dir(), &opts(&["english"], 0.25, 3)).unwrap();
    assert_eq!(a, b);
    let differs = (0..10u64).any(|s| {
        load_chatterbot(dir(), &opts(&["english"], 0.25, s))
            .unwrap()
            .eval
            != a.eval
    });
    assert!(differs, "the seed changes the split");
    // Each (language, topic) with ≥ 2 groups has eval examples.
    let mut per_label = BTreeMap::new();
    for e in &a.eval {
        *per_label.entry(e.label).or_insert(0) += 1;
    }
    assert_eq!(per_label.len(), 3, "{per_label:?}");
    // Adding a language leaves the other language's split unchanged.
    let both = load_chatterbot(dir(), &opts(&["english", "zh_hant"], 0.25, 3)).unwrap();
    let en_eval: Vec<_> = both
        .eval
        .iter()
        .filter(|e| e.language == "en")
        .cloned()
        .collect();
    assert_eq!(en_eval, a.eval);
    // eval_fraction 0: everything trains.
    let z = load_chatterbot(dir(), &opts(&["english"], 0.0, 3)).unwrap();
    assert!(z.eval.is_empty());
    assert!(load_chatterbot(dir(), &opts(&["english"], 1.0, 3)).is_err());
    assert!(load_chatterbot(dir(), &opts(&["english"], f64::NAN, 3)).is_err());
}

#[test]
fn survey_of_fixture_dir() {
    let s = survey_chatterbot(dir()).unwrap();
    let en_ai = s
        .iter()
        .find(|r| r.language_dir == "english" && r.topic == "ai")
        .unwrap();
    assert_eq!((en_ai.conversations, en_ai.lines), (12, 24));
    assert!(s
        .iter()
        .any(|r| r.language_dir == "spanish" && r.topic == "money"));
}

/// Runs on the real unpacked `chatterbot_corpus/data` when
/// `FEDPROMPT_CHATTERBOT_DIR` is set; prints the survey table.
#[test]
fn real_corpus_if_available() {
    let Ok(real) = std::env::var("FEDPROMPT_CHATTERBOT_DIR") else {
        eprintln!("FEDPROMPT_CHATTERBOT_DIR not set; skipping");
        return;
    };
    let survey = survey_chatterbot(&real).unwrap();
    let mut table: BTreeMap<&str, BTreeMap<&str, (usize, usize)>> = BTreeMap::new();
    for r in &survey {
        if CHATTERBOT_TOPICS.contains(&r.topic.as_str()) {
            table
                .entry(r.language_dir.as_str())
                .or_default()
                .insert(r.topic.as_str(), (r.conversations, r.lines));
        }
    }
    for (lang, topics) in &table {
        let cells: Vec<String> = CHATTERBOT_TOPICS
            .iter()
            .map(|t| {
                topics
                    .get(t)
                    .map_or("-".into(), |(c, l)| format!("{l}/{c}"))
            })
            .collect();
        eprintln!("{lang:20} {}", cells.join(" "));
    }
    let warned: usize = survey.iter().map(|r| r.warnings).sum();
    eprintln!("survey warnings: {warned}");
    for r in survey.iter().filter(|r| r.warnings > 0) {
        eprintln!("  {}/{}: {} warnings", r.language_dir, r.topic, r.warnings);
    }
    for lang in CHATTERBOT_DEMO_LANGUAGES {
        assert_eq!(table[lang].len(), 10, "{lang} has all ten topics");
    }
    let ds = load_chatterbot(&real, &ChatterbotOptions::default()).unwrap();
    ds.validate().unwrap();
    assert_eq!(
        ds.languages(),
        ["en", "it", "ja", "ko", "uk", "zh", "zh_hant"]
    );
    eprintln!(
        "default load: train {} eval {} warnings {}; train per language {:?}",
        ds.train.len(),
        ds.eval.len(),
        ds.warnings.len(),
        language_counts(&ds.train)
    );
    for w in &ds.warnings {
        eprintln!("  {w}");
    }
    let eval_texts: HashSet<&str> = ds.eval.iter().map(|e| e.text.as_str()).collect();
    let leaked = ds
        .train
        .iter()
        .filter(|e| eval_texts.contains(e.text.as_str()))
        .count();
    eprintln!("train lines whose exact text also occurs in eval: {leaked}");
    let es = ChatterbotOptions {
        languages: vec!["spanish".into()],
        allow_missing_topics: true,
        ..ChatterbotOptions::default()
    };
    let ds = load_chatterbot(&real, &es).unwrap();
    assert_eq!(ds.languages(), ["es"]);
    let labels: HashSet<usize> = ds.train.iter().map(|e| e.label).collect();
    assert_eq!(labels.len(), 5, "Spanish has five of the ten topics");
}
