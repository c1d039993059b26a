//! Shared by the simulator's integration tests: the tiny fixture model and a three-language
//! data set its tokenizer knows, wrapped in an experiment file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The tiny random XLM-R folder of the model crate's fixtures.
fn tiny_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fedprompt-model/tests/fixtures/tiny-xlmr")
        .display()
        .to_string()
}

/// A small three-language topic set whose words the tiny tokenizer knows: 8 training and 4
/// evaluation lines per language and topic, as JSONL files in `dir`.
fn write_data(dir: &Path) -> (PathBuf, PathBuf) {
    let topics = [
        ("sport", ["football", "team", "match", "final"]),
        ("money", ["marchés", "Börse", "price", "bank"]),
    ];
    let langs = ["en", "fr", "de"];
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (li, l) in langs.iter().enumerate() {
        for (ti, (label, words)) in topics.iter().enumerate() {
            for i in 0..12 {
                let text = format!(
                    "{} {} {}",
                    words[i % 4],
                    words[(i + li + ti) % 4],
                    ["the", "la", "die"][li]
                );
                let line = serde_json::json!({"text": text, "label": label, "language": l});
                if i < 8 { &mut train } else { &mut eval }.push(line.to_string());
            }
        }
    }
    let tr = dir.join("train.jsonl");
    let ev = dir.join("eval.jsonl");
    for (path, lines) in [(&tr, &train), (&ev, &eval)] {
        std::fs::File::create(path)
            .unwrap()
            .write_all(lines.join("\n").as_bytes())
            .unwrap();
    }
    (tr, ev)
}

/// An experiment file named `name` over the tiny model and the data above (written to `dir`):
/// seed 3, learning rate 0.01, batch 4, 2 epochs, 3 rounds, then `runs` (its `[[run]]` tables).
pub fn experiment_text(dir: &Path, name: &str, runs: &str) -> String {
    let (tr, ev) = write_data(dir);
    format!(
        r#"
name = "{name}"
seed = 3
[model]
path = "{model}"
max_len = 32
[data]
source = {{ type = "files", train = "{tr}", eval = "{ev}" }}
languages = ["en", "fr", "de"]
[train]
learning_rate = 0.01
batch_size = 4
epochs = 2
[federation]
rounds = 3
{runs}
"#,
        model = tiny_model(),
        tr = tr.display(),
        ev = ev.display()
    )
}
