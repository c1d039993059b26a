// `federation.toml`: the documented example parses, mistakes are refused, devcerts work.

use fedprompt_net::{InitialParams, ServeConfig};

fn documented_example() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy.md"))
        .expect("docs/deploy.md");
    let start = doc.find("## 2.").expect("section 2");
    let block = &doc[start..];
    let open = block.find("```toml\n").expect("toml block") + "```toml\n".len();
    let len = block[open..].find("```").expect("end of block");
    block[open..open + len].to_string()
}

#[test]
fn the_documented_federation_toml_parses_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("federation.toml");
    std::fs::write(&path, documented_example()).unwrap();
    let cfg = ServeConfig::from_file(&path).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.rounds, 10);
    assert_eq!(cfg.policy.min_available_clients, 3);
    assert_eq!(cfg.strategy.name(), "fedavg");
    assert_eq!(cfg.model.as_ref().unwrap().labels.len(), 7);
    // Relative paths are taken relative to the file.
    assert_eq!(cfg.tokens, dir.path().join("certs/tokens.toml"));
    match &cfg.initial {
        InitialParams::Model { dir: d, seed } => {
            assert_eq!(d, &dir.path().join("models/xlm-roberta-base"));
            assert_eq!(*seed, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mistakes_in_federation_toml_are_refused() {
    let base = documented_example();
    let typo = base.replace("rounds = 10", "roundz = 10");
    assert!(ServeConfig::from_toml(&typo).is_err());
    let zero = base.replace("rounds = 10", "rounds = 0");
    assert!(ServeConfig::from_toml(&zero).unwrap().validate().is_err());
    let no_tls = base.replace(
        "[tls]\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\n",
        "",
    );
    let cfg = ServeConfig::from_toml(&no_tls).unwrap();
    assert!(cfg.tls.is_none());
    assert!(
        cfg.validate().is_err(),
        "plaintext must be asked for explicitly"
    );
    let deadline = base.replace("round_deadline_s = 900", "round_deadline_s = -1");
    assert!(ServeConfig::from_toml(&deadline)
        .unwrap()
        .validate()
        .is_err());
    let one_label = base.replace(
        "labels = [\"business\", \"entertainment\", \"health\", \"politics\", \"religion\", \"sports\", \"technology\"]",
        "labels = [\"only\"]",
    );
    assert!(ServeConfig::from_toml(&one_label)
        .unwrap()
        .validate()
        .is_err());
}

#[test]
fn bad_client_config_values_are_refused_at_start() {
    let base = documented_example();
    for (bad, why) in [
        ("batch_size = 0", "at least 1"),
        ("learning_rate = nan", "finite"),
        ("epochs = -1", "at least 1"),
        ("learning_rate = \"fast\"", "a number"),
        ("epoch = 1", "unknown round-configuration key `epoch`"),
    ] {
        let text = base.replace("epochs = 1\nlearning_rate = 1e-3\nbatch_size = 16", bad);
        assert_ne!(text, base);
        let e = ServeConfig::from_toml(&text)
            .unwrap()
            .validate()
            .expect_err(bad)
            .to_string();
        assert!(
            e.contains("[client_config]") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

#[test]
fn devcerts_write_usable_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let certs = fedprompt_net::devcerts::generate(dir.path(), &["sw", "yo"]).unwrap();
    assert_eq!(certs.clients.len(), 2);
    let store = fedprompt_net::auth::TokenStore::load(&certs.tokens_file).unwrap();
    assert_eq!(store.verify(&certs.clients["sw"].token), Some("sw"));
    assert_eq!(store.verify(&certs.clients["yo"].token), Some("yo"));
    let tokens = std::fs::read_to_string(&certs.tokens_file).unwrap();
    assert!(
        !tokens.contains(&certs.clients["sw"].token),
        "tokens are stored hashed"
    );
    let written = std::fs::read_to_string(&certs.clients["sw"].token_file).unwrap();
    assert_eq!(written.trim(), certs.clients["sw"].token);
    // The server configuration accepts them.
    let tls = fedprompt_net::ServerTlsConfig {
        cert: certs.server_cert.clone(),
        key: certs.server_key.clone(),
        client_ca: Some(certs.ca_cert.clone()),
    };
    fedprompt_net::tls::server_config(&tls).unwrap();
    let client = fedprompt_net::ClientTlsConfig {
        ca_cert: Some(certs.ca_cert.clone()),
        cert: Some(certs.clients["sw"].cert.clone()),
        key: Some(certs.clients["sw"].key.clone()),
        domain: None,
    };
    fedprompt_net::tls::client_config(&client).unwrap();
    assert!(fedprompt_net::devcerts::generate(dir.path(), &["bad id"]).is_err());
}

#[test]
fn compression_and_secure_aggregation_sections_parse_and_bad_combinations_are_refused() {
    let base = documented_example();
    let with = |extra: &str| ServeConfig::from_toml(&format!("{base}\n{extra}"));
    let c = with("[compression]\ncodec = { type = \"topk\", fraction = 0.1 }\n").unwrap();
    c.validate().unwrap();
    assert!(c.compression.unwrap().feedback(), "on by default for top-k");
    let e = with("[compression]\ncodec = { type = \"topk\", fraction = 0.0 }\n")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("[compression]") && e.contains("fraction"), "{e}");
    assert!(with("[compression]\ncodec = { type = \"int4\" }\n").is_err());

    let secagg = "[secure_aggregation]\nthreshold = 2\nclip_range = 1.0\n";
    let s = with(secagg).unwrap();
    s.validate().unwrap();
    assert_eq!(s.secure_aggregation.unwrap().bits, 32);
    let refused = |cfg: &str, needle: &str| {
        let e = with(cfg).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e}");
    };
    refused(
        &format!("{secagg}[compression]\ncodec = {{ type = \"int8\" }}\n"),
        "cannot be combined: masked vectors",
    );
    for (strategy, needle) in [
        ("type = \"median\"", "median or trimmed-mean"),
        (
            "type = \"trimmed-mean\"\ntrim_fraction = 0.1",
            "median or trimmed-mean",
        ),
        (
            "type = \"dpfedavg\"\nclip_norm = 1.0\nnoise_multiplier = 1.0",
            "central DP",
        ),
    ] {
        let cfg = base.replace("type = \"fedavg\"", strategy);
        let e = ServeConfig::from_toml(&format!("{cfg}\n{secagg}"));
        match e {
            Ok(c) => {
                let e = c.validate().unwrap_err().to_string();
                assert!(e.contains(needle), "{needle:?} not in {e}");
            }
            Err(e) => panic!("{strategy}: {e}"),
        }
    }
    refused(
        &format!("{secagg}simulate_dropouts = {{ after_sharing = 1 }}\n"),
        "simulator only",
    );
    refused(
        &format!("{secagg}\n[weights]\nmax_examples_per_client = 100\n"),
        "max_weight",
    );
    let zero = ServeConfig::from_toml(&format!("secagg_stage_deadline_s = 0\n{base}\n{secagg}"));
    let e = zero.unwrap().validate().unwrap_err().to_string();
    assert!(
        e.contains("secagg_stage_deadline_s must be positive"),
        "{e}"
    );
}

#[test]
fn the_documented_secure_aggregation_serve_file_parses_and_validates() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/secure-aggregation.md"
    ))
    .expect("docs/secure-aggregation.md");
    let start = doc.find("## Over gRPC").expect("the gRPC section");
    let block = &doc[start..];
    let open = block.find("```toml\n").expect("toml block") + "```toml\n".len();
    let len = block[open..].find("```").expect("end of block");
    let cfg = ServeConfig::from_toml(&block[open..open + len]).unwrap();
    cfg.validate().unwrap();
    let sa = cfg.secure_aggregation.as_ref().unwrap();
    assert_eq!((sa.threshold, sa.bits, sa.max_weight), (3, 32, 10_000));
    assert_eq!(cfg.secagg_stage_deadline_s, 60.0);
    assert!(cfg.compression.is_none());
}
