//! End-to-end tests of the `fedprompt` binary on the tiny XLM-R fixture model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fedprompt-model/tests/fixtures/tiny-xlmr")
}

/// The binary with an isolated, empty asset cache (nothing may be downloaded).
fn fedprompt(tmp: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fedprompt"));
    c.env("FEDPROMPT_CACHE", tmp.join("cache"))
        .env("FEDPROMPT_WHEELHOUSE", tmp.join("no-wheels"))
        .env_remove("RUST_LOG")
        .arg("--quiet");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Asserts failure with exit code `code` and a message containing `needle`.
fn assert_fails_with(o: &Output, code: i32, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit code {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stderr(o).contains(needle),
        "stderr does not mention {needle:?}:\n{}",
        stderr(o)
    );
}

const WORDS: [&str; 3] = ["good great fine", "bad awful poor", "table chair door"];
const LABELS: [&str; 3] = ["neg", "neu", "pos"];

/// A labelled JSONL file: `n` examples, labels cycling, languages en/de alternating.
fn write_data(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let k = i % 3;
        let label = ["pos", "neg", "neu"][k];
        let lang = if i % 2 == 0 { "en" } else { "de" };
        let v =
            serde_json::json!({"text": format!("{} {i}", WORDS[k]), "label": label, "lang": lang});
        s.push_str(&v.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// `predict --model MODEL --input INPUT --output OUTPUT`.
fn predict_args<'a>(
    c: &'a mut Command,
    model: &Path,
    input: &Path,
    output: &Path,
) -> &'a mut Command {
    c.arg("predict")
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
}

fn train_args(c: &mut Command, data: &Path, out: &Path) {
    c.arg("train")
        .arg("--model")
        .arg(fixture_model())
        .arg("--data")
        .arg(data)
        .args([
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--language-column",
            "lang",
        ])
        .arg("--output")
        .arg(out);
}

#[test]
fn train_eval_predict_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (train, eval) = (t.join("train.jsonl"), t.join("eval.jsonl"));
    write_data(&train, 24);
    write_data(&eval, 12);
    let adapter = t.join("adapter");

    let mut c = fedprompt(t);
    train_args(&mut c, &train, &adapter);
    c.arg("--eval").arg(&eval).args(["--virtual-tokens", "2"]);
    let o = run(&mut c);
    assert_ok(&o);
    assert!(stdout(&o).contains("Macro-F1"), "{}", stdout(&o));
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainable.safetensors",
        "fedprompt_adapter.json",
        "metrics.json",
    ] {
        assert!(adapter.join(f).is_file(), "{f} missing");
    }
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["report"]["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(m["report"]["steps"], 6);
    assert_eq!(m["final_split"], "eval");
    assert_eq!(m["final"]["overall"]["n"], 12);
    assert_eq!(m["labels"], serde_json::json!(LABELS));
    assert_eq!(m["method"]["type"], "prompt");
    let langs = m["final"]["per_language"].as_object().unwrap();
    assert_eq!(langs.keys().collect::<Vec<_>>(), ["de", "en"]);

    // eval: the same scores as the final evaluation of training.
    let scores = t.join("scores.json");
    let o = run(fedprompt(t)
        .arg("eval")
        .arg("--model")
        .arg(fixture_model())
        .arg("--adapter")
        .arg(&adapter)
        .arg("--data")
        .arg(&eval)
        .args(["--language-column", "lang", "--output"])
        .arg(&scores));
    assert_ok(&o);
    assert!(stdout(&o).contains("| en |") && stdout(&o).contains("| de |"));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    assert_eq!(s["eval"]["overall"]["n"], 12);
    assert_eq!(
        s["eval"]["overall"]["accuracy"],
        m["final"]["overall"]["accuracy"]
    );

    // predict: one output line per input line, in order, other fields kept.
    let input = t.join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": 1, \"text\": \"good great\", \"meta\": {\"k\": [1, 2]}}\n\
         \n\
         {\"text\": \"bad awful\", \"id\": 2}\n\
         {\"id\": 3, \"text\": \"table\", \"text_pair\": \"door\"}\n\
         {\"id\": 4, \"text\": \"x\", \"label\": \"old\"}\n",
    )
    .unwrap();
    let output = t.join("out/pred.jsonl");
    let o = run(
        predict_args(&mut fedprompt(t), &fixture_model(), &input, &output)
            .arg("--adapter")
            .arg(&adapter)
            .args(["--batch-size", "3"]),
    );
    assert_ok(&o);
    let text = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["id"], i + 1);
        assert!(LABELS.contains(&v["label"].as_str().unwrap()), "{v}");
        assert_eq!(v["logits"].as_array().unwrap().len(), 3);
    }
    assert_eq!(lines[0]["meta"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(lines[2]["text_pair"], "door");
    assert_ne!(lines[3]["label"], "old");
    // The original text of a line is kept as written (key order included).
    assert!(text
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("{\"text\": \"bad awful\", \"id\": 2,"));
}

#[test]
fn lora_trains_without_eval_and_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let train = t.join("train.jsonl");
    write_data(&train, 12);
    let adapter = t.join("lora");
    let mut c = fedprompt(t);
    train_args(&mut c, &train, &adapter);
    c.args([
        "--method",
        "lora",
        "--lora-r",
        "2",
        "--max-steps-per-epoch",
        "1",
    ]);
    let o = run(&mut c);
    assert_ok(&o);
    assert!(stdout(&o).contains("training data"), "{}", stdout(&o));
    let meta = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
    assert!(meta.contains("\"LORA\""));

    let input = t.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"fine\"}\n").unwrap();
    let o = run(fedprompt(t)
        .arg("predict")
        .arg("--model")
        .arg(fixture_model())
        .arg("--adapter")
        .arg(&adapter)
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(t.join("out.jsonl")));
    assert_ok(&o);
}

#[test]
fn predict_with_the_folders_own_head() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = t.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"a\"}\n{\"text\": \"b c\"}\n").unwrap();
    let output = t.join("out.jsonl");
    let o = run(predict_args(
        &mut fedprompt(t),
        &fixture_model(),
        &input,
        &output,
    ));
    assert_ok(&o);
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.lines().count(), 2);
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["label"].as_str().unwrap().starts_with("LABEL_"));
    }
}

#[test]
fn predict_without_a_head_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // The fixture with a config naming 5 labels: its 3-way head does not fit.
    let model = t.join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_model().join(f), model.join(f)).unwrap();
    }
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_model().join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["id2label"] = serde_json::json!({"0": "a", "1": "b", "2": "c", "3": "d", "4": "e"});
    cfg.as_object_mut().unwrap().remove("label2id");
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    let input = t.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"a\"}\n").unwrap();
    let o = run(predict_args(
        &mut fedprompt(t),
        &model,
        &input,
        &t.join("out.jsonl"),
    ));
    assert_fails_with(&o, 1, "has no classification head");
    assert!(stderr(&o).contains("--adapter"));
    assert!(!t.join("out.jsonl").exists());
}

#[test]
fn inspect_counts_each_method() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let o = run(fedprompt(t)
        .arg("inspect")
        .arg("--model")
        .arg(fixture_model())
        .args(["--labels", "3", "--json"]));
    assert_ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = v["methods"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    // Hidden 32, 3 labels: head = 32·32 + 32 + 3·32 + 3 = 1155; prompt adds one 32-vector;
    // LoRA r=1 on q and v in 2 layers adds 2·2·(32 + 32) = 256.
    let trainable: Vec<u64> = rows
        .iter()
        .map(|r| r["trainable"].as_u64().unwrap())
        .collect();
    assert_eq!(trainable[0], 1155 + 32);
    assert_eq!(trainable[2], 1155 + 256);
    assert_eq!(trainable[3], 1155 + 8 * 256);
    assert_eq!(trainable[4], 1155);
    for r in rows {
        let wire = r["wire_bytes_per_client_round"].as_u64().unwrap();
        assert!(wire > 4 * r["trainable"].as_u64().unwrap());
        assert_eq!(r["run_bytes_up_down"].as_u64().unwrap(), wire * 2 * 5 * 10);
    }
    assert_eq!(v["comparable_with_paper"], false);

    let o = run(fedprompt(t)
        .arg("inspect")
        .arg("--model")
        .arg(fixture_model())
        .args(["--labels", "3"]));
    assert_ok(&o);
    let s = stdout(&o);
    for needle in [
        "LoRA r=8 (query, value)",
        "1,202,708",
        "110,592",
        "counts each tensor once",
        "not XLM-R base",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in\n{s}");
    }
}

#[test]
fn missing_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let train = t.join("train.jsonl");
    write_data(&train, 6);
    let o = run(fedprompt(t)
        .arg("train")
        .args(["--model", "/nonexistent/model"])
        .arg("--data")
        .arg(&train)
        .arg("--output")
        .arg(t.join("o")));
    assert_fails_with(&o, 1, "model folder not found at /nonexistent/model");
}

#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let missing = t.join("missing.toml");
    let o = run(fedprompt(t).arg("experiment").arg(&missing));
    assert_fails_with(&o, 1, "missing.toml");
    let err = stderr(&o);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    // A reader's I/O error, wrapped by the simulator (it was printed three times).
    std::fs::create_dir(t.join("d.jsonl")).unwrap();
    let exp = t.join("exp.toml");
    let toml = format!(
        "name = \"t\"\n[model]\npath = {:?}\n[data]\n\
         source = {{ type = \"files\", train = \"d.jsonl\", eval = \"d.jsonl\" }}\n\
         languages = [\"en\"]\n[[run]]\nlabel = \"m\"\nparadigm = \"monolingual\"\n\
         method = {{ type = \"prompt\", num_virtual_tokens = 1 }}\n",
        fixture_model()
    );
    std::fs::write(&exp, toml).unwrap();
    let o = run(fedprompt(t)
        .current_dir(t)
        .arg("experiment")
        .arg(&exp)
        .arg("--output")
        .arg(t.join("out")));
    assert_fails_with(&o, 1, "d.jsonl");
    let err = stderr(&o);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

#[test]
fn missing_data_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut c = fedprompt(t);
    train_args(&mut c, &t.join("nope.jsonl"), &t.join("o"));
    assert_fails_with(&run(&mut c), 1, "data file not found");
}

#[test]
fn empty_data_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let train = t.join("train.jsonl");
    std::fs::write(&train, "\n  \n").unwrap();
    let mut c = fedprompt(t);
    train_args(&mut c, &train, &t.join("o"));
    assert_fails_with(&run(&mut c), 1, "is empty");

    let input = t.join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let o = run(predict_args(
        &mut fedprompt(t),
        &fixture_model(),
        &input,
        &t.join("out.jsonl"),
    ));
    assert_fails_with(&o, 1, "is empty");
}

#[test]
fn malformed_jsonl_line_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let train = t.join("train.jsonl");
    write_data(&train, 6);
    let mut text = std::fs::read_to_string(&train).unwrap();
    text = text.replacen("\n", "\n{\"text\": \"oops\", \n", 2);
    std::fs::write(&train, &text).unwrap();
    // Line 2 is now the broken one (the first replacement; the second follows it).
    let mut c = fedprompt(t);
    train_args(&mut c, &train, &t.join("o"));
    assert_fails_with(&run(&mut c), 1, "train.jsonl:2: invalid JSON");

    let input = t.join("in.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"txt\": \"c\"}\n",
    )
    .unwrap();
    let o = run(predict_args(
        &mut fedprompt(t),
        &fixture_model(),
        &input,
        &t.join("out.jsonl"),
    ));
    assert_fails_with(&o, 1, "in.jsonl:3: no `text` field");
    std::fs::write(&input, "{\"text\": \"a\"}\nnot json\n").unwrap();
    let o = run(predict_args(
        &mut fedprompt(t),
        &fixture_model(),
        &input,
        &t.join("out.jsonl"),
    ));
    assert_fails_with(&o, 1, "in.jsonl:2: invalid JSON");
}

#[test]
fn unknown_method_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let train = t.join("train.jsonl");
    write_data(&train, 6);
    let mut c = fedprompt(t);
    train_args(&mut c, &train, &t.join("o"));
    c.args(["--method", "magic"]);
    let o = run(&mut c);
    assert_fails_with(&o, 2, "invalid value 'magic' for '--method <METHOD>'");
    assert!(stderr(&o).contains("prompt-encoder"));
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let tmp = tempfile::tempdir().unwrap();
    for sub in [
        "train", "eval", "predict", "inspect", "distance", "report", "fetch",
    ] {
        let o = run(fedprompt(tmp.path()).args([sub, "--help"]));
        assert_ok(&o);
        assert!(
            stdout(&o).contains("Examples:"),
            "{sub} --help has no examples"
        );
    }
    let o = run(fedprompt(tmp.path()).arg("--help"));
    assert_ok(&o);
    assert!(stdout(&o).contains("Examples:"));
}

#[test]
fn report_rerenders_a_results_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let json = t.join("run.json");
    std::fs::write(
        &json,
        serde_json::json!({
            "experiment": "t", "task": "demo", "model": "tiny", "seed": 0,
            "languages": ["en", "de"],
            "rows": [{
                "paradigm": "PE_FL (IID)", "method": "prompt", "setting": "IID",
                "per_language": {
                    "en": {"accuracy": 0.8, "macro_f1": 0.7, "n": 10},
                    "de": {"accuracy": 0.6, "macro_f1": 0.5, "n": 10}
                },
                "average": 0.7
            }]
        })
        .to_string(),
    )
    .unwrap();
    let out = t.join("report");
    let o = run(fedprompt(t)
        .arg("report")
        .arg(&json)
        .arg("--output")
        .arg(&out));
    assert_ok(&o);
    assert!(
        stdout(&o).contains("| PE_FL (IID) | 80.0 | 60.0 | 70.0 |"),
        "{}",
        stdout(&o)
    );
    assert!(out.join("tables.md").is_file() && out.join("results.json").is_file());

    let o = run(fedprompt(t).arg("report").arg(t.join("missing")));
    assert_fails_with(&o, 1, "no results at");
}
