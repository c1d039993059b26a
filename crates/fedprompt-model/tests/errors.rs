//! Bad input gives a clear error that names the file and says what is wrong; never a panic.

use std::path::{Path, PathBuf};

use fedprompt_model::{adapter, Backbone, Classifier, MethodConfig, ModelError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A writable copy of the tiny XLM-R folder.
fn copy_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-xlmr").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn err(folder: &Path) -> String {
    match Backbone::load(folder) {
        Ok(_) => panic!("loading {} should fail", folder.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_folder() {
    let e = err(Path::new("/nonexistent/model"));
    assert!(e.contains("model folder not found"), "{e}");
}

#[test]
fn missing_config() {
    let d = copy_model();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = err(d.path());
    assert!(e.contains("config.json not found"), "{e}");
}

#[test]
fn malformed_config() {
    let d = copy_model();
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 32,").unwrap();
    let e = err(d.path());
    assert!(e.contains("invalid") && e.contains("config.json"), "{e}");
}

#[test]
fn unknown_architecture() {
    let d = copy_model();
    let text = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    let text = text.replace("\"xlm-roberta\"", "\"gpt2\"");
    std::fs::write(d.path().join("config.json"), text).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("unsupported architecture") && e.contains("gpt2"),
        "{e}"
    );
}

#[test]
fn config_that_does_not_match_the_weights() {
    let d = copy_model();
    let text = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    let text = text.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65");
    std::fs::write(d.path().join("config.json"), text).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("has shape") && e.contains("intermediate.dense.weight"),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let d = copy_model();
    let text = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    let text = text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    std::fs::write(d.path().join("config.json"), text).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("missing") && e.contains("encoder.layer.2"),
        "{e}"
    );
}

#[test]
fn missing_weights() {
    let d = copy_model();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = err(d.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let d = copy_model();
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("truncated or corrupt") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn garbage_safetensors() {
    let d = copy_model();
    std::fs::write(
        d.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let e = err(d.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_tokenizer() {
    let d = copy_model();
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = err(d.path());
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn malformed_tokenizer() {
    let d = copy_model();
    std::fs::write(d.path().join("tokenizer.json"), "{}").unwrap();
    let e = err(d.path());
    assert!(
        e.contains("tokenizer") && e.contains("tokenizer.json"),
        "{e}"
    );
}

#[test]
fn adapter_for_another_model() {
    // A BERT-head adapter (classifier.weight) into an XLM-R classifier, and a prompt of the
    // wrong width.
    let backbone = Backbone::load(&fixtures().join("tiny-xlmr")).unwrap();
    let labels: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
    let clf = Classifier::new(&backbone, &MethodConfig::Head, &labels, 0).unwrap();
    let e = clf
        .trainable()
        .load(&fixtures().join("adapters/bert-head/head.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not fit") && e.contains("classifier"),
        "{e}"
    );

    let m = MethodConfig::Prompt {
        num_virtual_tokens: 4,
        init_text: None,
    };
    let clf = Classifier::new(&backbone, &m, &labels[..2], 0).unwrap();
    let err = adapter::load(&clf, &fixtures().join("adapters/xlmr-prompt")).unwrap_err();
    assert!(matches!(err, ModelError::Adapter { .. }), "{err}");
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn adapter_folder_without_config() {
    let d = tempfile::tempdir().unwrap();
    let e = adapter::read_meta(d.path()).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}

#[test]
fn invalid_method() {
    let backbone = Backbone::load(&fixtures().join("tiny-xlmr")).unwrap();
    let labels: Vec<String> = vec!["a".into(), "b".into()];
    let m = MethodConfig::Lora {
        r: 0,
        alpha: 16.0,
        dropout: 0.1,
        target_modules: vec!["query".into()],
    };
    let e = Classifier::new(&backbone, &m, &labels, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("r must be at least 1"), "{e}");
    let m = MethodConfig::Lora {
        r: 2,
        alpha: 16.0,
        dropout: 0.1,
        target_modules: vec!["qkv".into()],
    };
    let e = Classifier::new(&backbone, &m, &labels, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown target module `qkv`"), "{e}");
}
