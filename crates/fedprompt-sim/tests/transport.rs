//! Uploads in the simulator on the tiny fixture model: compressed uploads send fewer bytes
//! than plain ones, secure aggregation reproduces the plain run within its quantisation
//! error, survives simulated dropouts, and fails clearly when too many clients drop.

use std::path::Path;

use fedprompt_report::{CommRow, Curve};
use fedprompt_sim::{run_experiment, ExperimentConfig, RunOptions};

mod common;

fn experiment(dir: &Path, runs: &str) -> ExperimentConfig {
    let cfg: ExperimentConfig =
        toml::from_str(&common::experiment_text(dir, "tiny-transport", runs)).unwrap();
    cfg.validate().unwrap();
    cfg
}

fn run(dir: &Path, cfg: &ExperimentConfig) -> Result<(Vec<CommRow>, Vec<Curve>), String> {
    run_experiment(
        cfg,
        &RunOptions {
            output: Some(dir.join("out")),
            ..Default::default()
        },
    )
    .map(|(r, _)| (r.comm, r.curves))
    .map_err(|e| e.to_string())
}

fn fed_run(label: &str, extra: &str) -> String {
    format!(
        "[[run]]\nlabel = \"{label}\"\nparadigm = \"federated\"\n\
         method = {{ type = \"prompt\", num_virtual_tokens = 2 }}\n{extra}\n"
    )
}

#[test]
fn every_codec_uploads_fewer_bytes_than_plain_f32() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        fed_run("plain", ""),
        fed_run("f16", "compression = { codec = { type = \"f16\" } }"),
        fed_run("int8", "compression = { codec = { type = \"int8\" } }"),
        fed_run(
            "int8-rows",
            "compression = { codec = { type = \"int8-rows\" } }",
        ),
        fed_run(
            "topk",
            "compression = { codec = { type = \"topk\", fraction = 0.1 } }",
        ),
    ]
    .concat();
    let cfg = experiment(dir.path(), &runs);
    let (comm, curves) = run(dir.path(), &cfg).unwrap();
    let by = |label: &str| comm.iter().find(|c| c.paradigm == label).unwrap();
    let plain = by("plain");
    assert_eq!(plain.upload_encoding, None);
    for c in &comm {
        let curve = curves.iter().find(|k| k.paradigm == c.paradigm).unwrap();
        eprintln!(
            "{:10} up {:6} B/client/round ({:5.1}% of plain), total {:7} B, final accuracy {:.3}",
            c.paradigm,
            c.bytes_up_per_client_round,
            100.0 * c.bytes_up_per_client_round as f64 / plain.bytes_up_per_client_round as f64,
            c.total_bytes,
            curve.points.last().unwrap().accuracy
        );
        assert_eq!(curve.points.len(), 4, "{}", c.paradigm);
    }
    let up = |l: &str| by(l).bytes_up_per_client_round as f64;
    let p = up("plain");
    // The tiny model's trainable set is small, so the safetensors header (a few hundred
    // bytes) weighs: the ratios sit above the payload ratios (1/2, 1/4, 1/4, 1/5).
    assert!(up("f16") < 0.6 * p, "f16 {}", up("f16"));
    assert!(up("int8") < 0.45 * p, "int8 {}", up("int8"));
    assert!(up("int8-rows") < 0.45 * p, "int8-rows {}", up("int8-rows"));
    assert!(up("topk") < 0.4 * p, "topk {}", up("topk"));
    for l in ["f16", "int8", "int8-rows", "topk"] {
        assert!(by(l).total_bytes < plain.total_bytes, "{l}");
    }
    assert_eq!(by("topk").upload_encoding.as_deref(), Some("topk 10%+ef"));
    assert_eq!(by("int8").upload_encoding.as_deref(), Some("int8"));
    let tables = std::fs::read_to_string(dir.path().join("out/tables.md")).unwrap();
    assert!(tables.contains("(topk 10%+ef)"), "{tables}");
}

#[test]
fn secure_aggregation_matches_plain_fedavg_and_survives_dropouts() {
    // The same run (same label, so the same seed) with and without secure aggregation.
    let six = "partition = { type = \"iid\", clients = 6 }";
    let plain_dir = tempfile::tempdir().unwrap();
    let cfg = experiment(plain_dir.path(), &fed_run("PE_FL", six));
    let (plain_comm, plain_curves) = run(plain_dir.path(), &cfg).unwrap();
    let sec_dir = tempfile::tempdir().unwrap();
    let runs = [
        fed_run(
            "PE_FL",
            &format!("{six}\nsecure_aggregation = {{ threshold = 3, clip_range = 1.0 }}"),
        ),
        fed_run(
            "secagg-dropouts",
            &format!(
                "{six}\nsecure_aggregation = {{ threshold = 3, clip_range = 1.0, \
                 simulate_dropouts = {{ after_sharing = 1, after_masking = 1 }} }}"
            ),
        ),
    ]
    .concat();
    let cfg = experiment(sec_dir.path(), &runs);
    let (comm, curves) = run(sec_dir.path(), &cfg).unwrap();
    let curve = |l: &str| curves.iter().find(|c| c.paradigm == l).unwrap();
    let (plain, sec) = (&plain_curves[0], curve("PE_FL"));
    assert_eq!(plain.points.len(), sec.points.len());
    for (a, b) in plain.points.iter().zip(&sec.points) {
        let (la, lb) = (a.loss.unwrap(), b.loss.unwrap());
        eprintln!(
            "round {}: eval loss plain {la:.7} secagg {lb:.7} (|Δ| {:.2e}), accuracy {:.3} / {:.3}",
            a.round,
            (la - lb).abs(),
            a.accuracy,
            b.accuracy
        );
        // Quantisation moves each value of the aggregate by at most ~1e-5 here.
        assert!((la - lb).abs() < 1e-4, "round {}: {la} vs {lb}", a.round);
    }
    // The rounds moved the model: the comparison above is not between two idle runs.
    assert!((plain.points[0].loss.unwrap() - plain.points[3].loss.unwrap()).abs() > 1e-4);
    // With one client dropping after sharing keys each round (its update left out) and
    // one after masking (its update in), every round still aggregates.
    let drop = curve("secagg-dropouts");
    assert_eq!(drop.points.len(), 4);
    assert_ne!(drop.points[3].loss, drop.points[0].loss);
    let row = comm.iter().find(|c| c.paradigm == "PE_FL").unwrap();
    assert_eq!(row.upload_encoding.as_deref(), Some("secagg 32 bits"));
    // A masked vector is 4 bytes per value plus the weight, and the keys and shares come
    // on top: more than the plain upload's payload.
    assert!(row.bytes_up_per_client_round > 4 * plain_comm[0].trainable_params);
    eprintln!(
        "up bytes per client and round: plain {}, secagg {}",
        plain_comm[0].bytes_up_per_client_round, row.bytes_up_per_client_round
    );
}

#[test]
fn secure_aggregation_fails_clearly_when_too_many_clients_drop() {
    let dir = tempfile::tempdir().unwrap();
    // 3 clients, 2 neighbours each, threshold 2: a client dropping after sharing keys
    // leaves its neighbours one holder short every round.
    let runs = fed_run(
        "secagg",
        "secure_aggregation = { threshold = 2, clip_range = 1.0, \
         simulate_dropouts = { after_sharing = 1 } }",
    );
    let cfg = experiment(dir.path(), &runs);
    let e = run(dir.path(), &cfg).unwrap_err();
    assert!(
        e.contains("none was aggregated") && e.contains("too many clients dropped"),
        "{e}"
    );
}

#[test]
fn transport_settings_are_checked_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let both = fed_run(
        "both",
        "compression = { codec = { type = \"f16\" } }\n\
         secure_aggregation = { threshold = 2, clip_range = 1.0 }",
    );
    let cfg = experiment(dir.path(), &both);
    let e = run(dir.path(), &cfg).unwrap_err();
    assert!(e.contains("cannot be combined"), "{e}");
    let bad = fed_run(
        "bad",
        "secure_aggregation = { threshold = 2, clip_range = -1.0 }",
    );
    let e = run(dir.path(), &experiment(dir.path(), &bad)).unwrap_err();
    assert!(e.contains("clip_range"), "{e}");
    let bad = fed_run(
        "bad",
        "compression = { codec = { type = \"topk\", fraction = 0.0 } }",
    );
    let e = run(dir.path(), &experiment(dir.path(), &bad)).unwrap_err();
    assert!(e.contains("fraction"), "{e}");
    // Unknown keys are named.
    let text = fed_run("x", "secure_aggregation = { threshold = 2, clip = 1.0 }");
    let e = toml::from_str::<ExperimentConfig>(&format!(
        "name = \"x\"\n[model]\n[data]\nsource = {{ type = \"chatterbot\" }}\nlanguages = [\"en\"]\n{text}"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("clip"), "{e}");
}

/// The demo with each upload (`experiments/demo-transport.toml`: the default model and the
/// real demo data, minutes of CPU per run), so ignored by default:
/// `cargo test -p fedprompt-sim --test transport -- --ignored --nocapture` (an interrupted
/// run resumes where it stopped).
#[test]
#[ignore]
fn demo_transport() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/demo-transport.toml");
    let cfg = ExperimentConfig::from_file(&path).unwrap();
    let out = std::env::temp_dir().join("fedprompt-demo-transport");
    let (r, _) = run_experiment(
        &cfg,
        &RunOptions {
            output: Some(out.clone()),
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    let plain = r.comm.iter().find(|c| c.upload_encoding.is_none()).unwrap();
    eprintln!("| run | up bytes / client / round | % of f32 | best avg accuracy |");
    for row in &r.rows {
        let c = r.comm.iter().find(|c| c.paradigm == row.paradigm).unwrap();
        eprintln!(
            "| {} | {} | {:.1} | {:.1} |",
            row.paradigm,
            c.bytes_up_per_client_round,
            100.0 * c.bytes_up_per_client_round as f64 / plain.bytes_up_per_client_round as f64,
            100.0 * row.average
        );
    }
    eprintln!("results in {}", out.display());
    let topk = r
        .comm
        .iter()
        .find(|c| c.paradigm.contains("top-k"))
        .unwrap();
    assert!(
        (topk.bytes_up_per_client_round as f64) < 0.13 * plain.bytes_up_per_client_round as f64
    );
}
