//! The simulator end to end on the tiny fixture model: resume equals an uninterrupted run,
//! bad experiment files fail early with the field or file named, and (on the default model
//! with the real demo data) a short federated run learns.

use std::path::Path;

use fedprompt_sim::{run_experiment, ExperimentConfig, RunOptions};

mod common;

fn experiment(dir: &Path, extra_runs: &str) -> String {
    let first = r#"
[[run]]
label = "PE_FL (non-IID)"
paradigm = "federated"
method = { type = "prompt", num_virtual_tokens = 2 }
"#;
    common::experiment_text(dir, "tiny", &format!("{first}{extra_runs}"))
}

fn parse(text: &str) -> Result<ExperimentConfig, String> {
    let cfg: ExperimentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    cfg.validate()?;
    Ok(cfg)
}

#[test]
fn resume_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[run]]
label = "LoRA_FL (IID)"
paradigm = "federated"
method = { type = "lora", r = 2, alpha = 4.0 }
partition = { type = "iid", clients = 3 }
"#;
    let cfg = parse(&experiment(dir.path(), extra)).unwrap();
    let a_out = dir.path().join("a");
    let (a, _) = run_experiment(
        &cfg,
        &RunOptions {
            output: Some(a_out),
            ..Default::default()
        },
    )
    .unwrap();

    let b_out = dir.path().join("b");
    // Killed after 4 rounds in total: the first run done, the second one round in.
    let err = run_experiment(
        &cfg,
        &RunOptions {
            output: Some(b_out.clone()),
            stop_after_rounds: Some(4),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("stopped after round 1"), "{err}");
    let (b, _) = run_experiment(
        &cfg,
        &RunOptions {
            output: Some(b_out.clone()),
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.curves, b.curves);
    assert_eq!(a.comm, b.comm);
    assert!(b_out.join("tables.md").is_file());
    assert!(b_out.join("results.json").is_file());
    // Each curve starts at round 0 and has one point per round.
    for c in &a.curves {
        assert_eq!(c.points.len(), 4);
        assert_eq!(c.points[0].round, 0);
    }
    // Bytes on the wire are the serialised trainable set, up and down, for every client.
    for c in &a.comm {
        assert!(c.bytes_up_per_client_round > 4 * c.trainable_params);
        assert_eq!(
            c.total_bytes,
            (c.bytes_up_per_client_round + c.bytes_down_per_client_round)
                * c.clients as u64
                * c.rounds as u64
        );
    }
}

/// `--resume` refuses checkpoints made by another experiment (here: the same file run with
/// `--dtype bf16`, then resumed in f32), naming what differs; the same experiment resumes.
#[test]
fn resume_refuses_checkpoints_of_another_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(&experiment(dir.path(), "")).unwrap();
    let mut bf16 = cfg.clone();
    bf16.model.dtype = fedprompt_model::WeightDtype::Bf16;
    let out = dir.path().join("out");
    let opts = |resume: bool, stop: Option<u64>| RunOptions {
        output: Some(out.clone()),
        resume,
        stop_after_rounds: stop,
        ..Default::default()
    };
    let err = run_experiment(&bf16, &opts(false, Some(1))).unwrap_err();
    assert!(err.to_string().contains("stopped after round 1"), "{err}");
    let err = run_experiment(&cfg, &opts(true, None)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("another experiment") && msg.contains("model.dtype"),
        "{msg}"
    );
    assert!(!msg.contains("train."), "only the dtype differs: {msg}");
    // Nothing was deleted: the experiment that made the checkpoints resumes and finishes.
    let (resumed, _) = run_experiment(&bf16, &opts(true, None)).unwrap();
    let (fresh, _) = run_experiment(&bf16, &opts(false, None)).unwrap();
    assert_eq!(resumed.rows, fresh.rows);
}

/// With error feedback each client holds back what its codec did not send; the checkpoint
/// keeps those residuals, so a run killed mid-way and resumed sends the same updates as an
/// uninterrupted one (before, a resumed run restarted the residuals at zero).
#[test]
fn resume_with_error_feedback_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let run = r#"
[[run]]
label = "PE_FL top-k"
paradigm = "federated"
method = { type = "prompt", num_virtual_tokens = 2 }
partition = { type = "iid", clients = 3 }
compression = { codec = { type = "topk", fraction = 0.05 } }
"#;
    let cfg = parse(&common::experiment_text(dir.path(), "tiny-ef", run)).unwrap();
    let opts = |out: &str, stop: Option<u64>, resume: bool| RunOptions {
        output: Some(dir.path().join(out)),
        stop_after_rounds: stop,
        resume,
        ..Default::default()
    };
    let (a, _) = run_experiment(&cfg, &opts("a", None, false)).unwrap();
    let err = run_experiment(&cfg, &opts("b", Some(2), false)).unwrap_err();
    assert!(err.to_string().contains("stopped after round 2"), "{err}");
    let (b, _) = run_experiment(&cfg, &opts("b", None, true)).unwrap();
    assert_eq!(a.comm[0].upload_encoding.as_deref(), Some("topk 5%+ef"));
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.curves, b.curves);

    // A damaged checkpoint is refused with the file named and what to do; it is left as it was.
    run_experiment(&cfg, &opts("c", Some(1), false)).unwrap_err();
    let ckpt = std::fs::read_dir(dir.path().join("c/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .unwrap();
    let cut = std::fs::read(&ckpt).unwrap()[..40].to_vec();
    std::fs::write(&ckpt, &cut).unwrap();
    let err = run_experiment(&cfg, &opts("c", None, true))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&ckpt.display().to_string()), "{err}");
    assert!(err.contains("delete it or run without --resume"), "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), cut);
}

#[test]
fn local_paradigms_run() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[run]]
label = "PE_Monolingual"
paradigm = "monolingual"
method = { type = "prompt", num_virtual_tokens = 2 }
[[run]]
label = "PE_Centralized"
paradigm = "centralized"
method = { type = "head" }
"#;
    let cfg = parse(&experiment(dir.path(), extra)).unwrap();
    let (r, out) = run_experiment(
        &cfg,
        &RunOptions {
            output: Some(dir.path().join("out")),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.rows.len(), 3);
    for row in &r.rows {
        assert_eq!(row.per_language.len(), 3, "{}", row.paradigm);
        for m in row.per_language.values() {
            assert_eq!(m.n, 8);
        }
    }
    let tables = std::fs::read_to_string(out.join("tables.md")).unwrap();
    assert!(tables.contains("PE_Monolingual") && tables.contains("PE_Centralized"));
}

/// Every run of every seed is independent, so several go side by side, each on its own
/// compute threads: the numbers must be those of one run at a time on all threads, bit for
/// bit, in the file's order.
#[test]
fn runs_side_by_side_give_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[run]]
label = "LoRA_FL (IID)"
paradigm = "federated"
method = { type = "lora", r = 2, alpha = 4.0 }
partition = { type = "iid", clients = 3 }
[[run]]
label = "PE_Monolingual"
paradigm = "monolingual"
method = { type = "prompt", num_virtual_tokens = 2 }
[[run]]
label = "Head_Centralized"
paradigm = "centralized"
method = { type = "head" }
[data_efficiency]
runs = ["PE_FL (non-IID)"]
sizes = [2]
"#;
    let text = experiment(dir.path(), extra).replace("seed = 3", "seeds = [3, 4]");
    let cfg = parse(&text).unwrap();
    // Two compute threads whatever the machine: one run at a time on both, or two runs at
    // once on one each.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let run = |jobs: usize, name: &str| {
        let out = dir.path().join(name);
        let opts = RunOptions {
            output: Some(out.clone()),
            jobs: std::num::NonZeroUsize::new(jobs),
            ..Default::default()
        };
        let (r, _) = pool.install(|| run_experiment(&cfg, &opts)).unwrap();
        (r, out)
    };
    let (one, one_out) = run(1, "one");
    let (two, two_out) = run(2, "two");
    assert_eq!(one.rows, two.rows);
    assert_eq!(one.curves, two.curves);
    assert_eq!(one.comm, two.comm);
    assert_eq!(one.data_efficiency, two.data_efficiency);
    let labels: Vec<&str> = two.rows.iter().map(|r| r.paradigm.as_str()).collect();
    assert_eq!(
        labels,
        [
            "PE_FL (non-IID)",
            "LoRA_FL (IID)",
            "PE_Monolingual",
            "Head_Centralized"
        ]
    );
    assert_eq!(two.rows[0].per_seed.len(), 2);
    assert!(one.meta["wall time"].contains("one run at once, 2 compute threads each"));
    assert!(two.meta["wall time"].contains("2 runs at once, 1 compute thread each"));
    for out in [&one_out, &two_out] {
        let curves = std::fs::read_to_string(out.join("curves.csv")).unwrap();
        assert!(curves.lines().count() > 8, "{curves}");
    }
    assert_eq!(
        std::fs::read_to_string(one_out.join("curves.csv")).unwrap(),
        std::fs::read_to_string(two_out.join("curves.csv")).unwrap()
    );
}

#[test]
fn bad_experiment_files_fail_early() {
    let dir = tempfile::tempdir().unwrap();
    // Runs a file that must fail; returns its error.
    let run_err = |cfg: &ExperimentConfig| {
        run_experiment(
            cfg,
            &RunOptions {
                output: Some(dir.path().join("o")),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string()
    };
    let good = experiment(dir.path(), "");
    // Unknown key.
    let e = parse(&good.replace("seed = 3", "seed = 3\nsede = 4")).unwrap_err();
    assert!(e.contains("sede"), "{e}");
    // C outside (0, 1].
    let e = parse(&good.replace("rounds = 3", "rounds = 3\nfraction = 1.5")).unwrap_err();
    assert!(e.contains("fraction C = 1.5"), "{e}");
    // Unknown method type.
    let e = parse(&good.replace("type = \"prompt\"", "type = \"adapter\"")).unwrap_err();
    assert!(e.contains("adapter"), "{e}");
    // Missing data file: error names it, before any training.
    let cfg = parse(&good.replace("train.jsonl", "nope.jsonl")).unwrap();
    let e = run_err(&cfg);
    assert!(
        e.contains("nope.jsonl") && e.contains("does not exist"),
        "{e}"
    );
    // A language with no examples.
    let cfg = parse(&good.replace("[\"en\", \"fr\", \"de\"]", "[\"en\", \"sw\"]")).unwrap();
    let e = run_err(&cfg);
    assert!(e.contains("sw"), "{e}");
    // More clients than examples.
    let extra = r#"
[[run]]
label = "many"
paradigm = "federated"
method = { type = "head" }
partition = { type = "iid", clients = 1000 }
"#;
    let cfg = parse(&experiment(dir.path(), extra)).unwrap();
    let e = run_err(&cfg);
    assert!(e.contains("1000"), "{e}");
    // A diverging loss stops the run with a clear message.
    let cfg = parse(&good.replace("learning_rate = 0.01", "learning_rate = 1e30")).unwrap();
    let e = run_err(&cfg);
    assert!(e.contains("diverged"), "{e}");
}

/// Runs `cfg` into a fresh folder under `dir`.
fn run_in(cfg: &ExperimentConfig, dir: &Path, name: &str) -> fedprompt_report::RunResults {
    run_experiment(
        cfg,
        &RunOptions {
            output: Some(dir.join(name)),
            ..Default::default()
        },
    )
    .unwrap()
    .0
}

#[test]
fn early_stopping_stops_federated_and_local_runs_by_the_patience_rule() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[run]]
label = "PE_Monolingual"
paradigm = "monolingual"
method = { type = "prompt", num_virtual_tokens = 2 }
[[run]]
label = "patient"
paradigm = "federated"
method = { type = "prompt", num_virtual_tokens = 2 }
patience = 50
"#;
    // A learning rate too small to change a single prediction: no round/epoch is ever better
    // than the first evaluation, so the patience rule alone decides where training ends.
    let text = experiment(dir.path(), extra)
        .replace(
            "learning_rate = 0.01",
            "learning_rate = 1e-12\npatience = 2",
        )
        .replace("epochs = 2", "epochs = 9")
        .replace("rounds = 3", "rounds = 9");
    let cfg = parse(&text).unwrap();
    let r = run_in(&cfg, dir.path(), "es");
    let conv = |label: &str| {
        r.rows
            .iter()
            .find(|x| x.paradigm == label)
            .unwrap()
            .convergence
            .clone()
            .unwrap()
    };
    // Federated: round 0 (the initial global) is the best; rounds 1 and 2 are no better,
    // so the run stops after round 2 of at most 9.
    let fl = conv("PE_FL (non-IID)");
    assert_eq!(
        (fl.unit.as_str(), fl.best, fl.stopped, fl.max),
        ("round", 0.0, 2.0, 9)
    );
    assert_eq!(fl.hit_max, 0);
    let curve = r
        .curves
        .iter()
        .find(|c| c.paradigm == "PE_FL (non-IID)")
        .unwrap();
    assert_eq!(curve.points.len(), 3, "rounds 0, 1, 2");
    let comm = r
        .comm
        .iter()
        .find(|c| c.paradigm == "PE_FL (non-IID)")
        .unwrap();
    assert_eq!(comm.rounds, 2, "traffic counts the rounds actually run");
    // Monolingual: epoch 1 is the best of each language, epochs 2 and 3 are no better.
    let mono = conv("PE_Monolingual");
    assert_eq!(
        (mono.unit.as_str(), mono.best, mono.stopped),
        ("epoch", 1.0, 3.0)
    );
    assert_eq!((mono.models, mono.hit_max), (3, 0));
    // A patience longer than the budget runs to the maximum and says so.
    let patient = conv("patient");
    assert_eq!((patient.stopped, patient.hit_max), (9.0, 1));
    let tables = std::fs::read_to_string(dir.path().join("es/tables.md")).unwrap();
    assert!(tables.contains("round 0.0 / 2.0 (9)"), "{tables}");
    assert!(tables.contains("1/1 at max"), "{tables}");
}

#[test]
fn several_seeds_report_mean_and_sample_sd_of_the_single_seed_runs() {
    let dir = tempfile::tempdir().unwrap();
    let base = experiment(dir.path(), "").replace("rounds = 3", "rounds = 2");
    let single = |seed: u64| {
        let cfg = parse(&base.replace("seed = 3", &format!("seed = {seed}"))).unwrap();
        run_in(&cfg, dir.path(), &format!("s{seed}"))
    };
    let (a, b) = (single(5), single(6));
    let cfg = parse(&base.replace("seed = 3", "seeds = [5, 6]")).unwrap();
    let r = run_in(&cfg, dir.path(), "both");
    assert_eq!(r.seeds, vec![5, 6]);
    let row = &r.rows[0];
    // Each seed's numbers are exactly those of that seed run alone.
    assert_eq!(row.per_seed.len(), 2);
    assert_eq!(row.per_seed[0].average, a.rows[0].average);
    assert_eq!(row.per_seed[1].average, b.rows[0].average);
    // Mean and sample standard deviation (n − 1) of the two.
    let (x, y) = (a.rows[0].average, b.rows[0].average);
    assert!((row.average - (x + y) / 2.0).abs() < 1e-12);
    let sd = ((x - y).abs()) / 2f64.sqrt();
    let spread = row.spread.as_ref().unwrap();
    assert!(
        (spread.average_sd - sd).abs() < 1e-12,
        "{} vs {sd}",
        spread.average_sd
    );
    for lang in ["en", "fr", "de"] {
        let (p, q) = (
            a.rows[0].per_language[lang].accuracy,
            b.rows[0].per_language[lang].accuracy,
        );
        assert!((row.per_language[lang].accuracy - (p + q) / 2.0).abs() < 1e-12);
        assert!((spread.per_language_sd[lang] - (p - q).abs() / 2f64.sqrt()).abs() < 1e-12);
    }
    // Curves: the mean per round, with its sd beside it.
    assert_eq!(r.curves[0].sd.len(), r.curves[0].points.len());
    let out = dir.path().join("both");
    let tables = std::fs::read_to_string(out.join("tables.md")).unwrap();
    assert!(tables.contains(" ± ") && tables.contains("seed 5") && tables.contains("Seeds: 5, 6"));
    let csv = std::fs::read_to_string(out.join("seeds.csv")).unwrap();
    assert_eq!(
        csv.lines().filter(|l| l.contains(",avg,")).count(),
        2,
        "{csv}"
    );
    // Each seed has its own checkpoints.
    assert!(out.join("checkpoints/seed-5").is_dir() && out.join("checkpoints/seed-6").is_dir());
}

/// Writes `lines` XGLUE-NC lines for `lang` into `dir/xglue.nc.<lang>.<split>`, labels
/// cycling over the ten classes.
fn write_nc(dir: &Path, lang: &str, split: &str, lines: usize) {
    let labels = fedprompt_data::LabelMap::xglue_nc();
    let text: Vec<String> = (0..lines)
        .map(|i| {
            format!(
                "title {i} {lang}\tbody {i}\t{}",
                labels.names()[i % labels.len()]
            )
        })
        .collect();
    std::fs::write(
        dir.join(format!("xglue.nc.{lang}.{split}")),
        text.join("\n"),
    )
    .unwrap();
}

#[test]
fn benchmark_readers_choose_their_splits() {
    use fedprompt_sim::data::load;
    let dir = tempfile::tempdir().unwrap();
    // The real XGLUE-NC layout: English alone has a train file; every language has dev.
    write_nc(dir.path(), "en", "train", 50);
    for l in ["en", "de"] {
        write_nc(dir.path(), l, "dev", 40);
    }
    let section = |extra: &str, sizes: &str| -> fedprompt_sim::DataSection {
        let text = format!(
            "[data]\nsource = {{ type = \"xglue-nc\", dir = \"{}\"{extra} }}\nlanguages = [\"en\", \"de\"]\n{sizes}",
            dir.path().display()
        );
        #[derive(serde::Deserialize)]
        struct W {
            data: fedprompt_sim::DataSection,
        }
        toml::from_str::<W>(&text).unwrap().data
    };
    // Default splits: train/dev, and German has no train file: the error says how to choose.
    let e = load(&section("", ""), 0).err().unwrap().to_string();
    assert!(
        e.contains("xglue.nc.de.train") && e.contains("train_split"),
        "{e}"
    );
    // Both sides from dev: disjoint, label-stratified samples of the asked sizes.
    let s = section(
        ", train_split = \"dev\", eval_split = \"dev\"",
        "train_per_language = 30\neval_per_language = 10",
    );
    let d = load(&s, 0).unwrap();
    for l in ["en", "de"] {
        let tr: Vec<_> = d.train.iter().filter(|e| e.language == l).collect();
        let ev: Vec<_> = d.eval.iter().filter(|e| e.language == l).collect();
        assert_eq!((tr.len(), ev.len()), (30, 10), "{l}");
        assert!(
            ev.iter().all(|e| !tr.contains(e)),
            "{l}: eval overlaps train"
        );
        // Stratified: 10 eval lines over 10 equally frequent labels, one each.
        let mut labels: Vec<usize> = ev.iter().map(|e| e.label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), 10);
    }
    // Splitting one file needs both sizes.
    let e = load(
        &section(", train_split = \"dev\", eval_split = \"dev\"", ""),
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("eval_per_language"), "{e}");
}

#[test]
fn check_loads_the_data_and_fails_on_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = parse(&experiment(dir.path(), "")).unwrap();
    let report = fedprompt_sim::check_experiment(&good).unwrap();
    // Examples per label and language, for both splits, and each federated run's clients.
    assert!(report.contains("| sport | 8 | 8 | 8 | 24 |"), "{report}");
    assert!(report.contains("| money | 4 | 4 | 4 | 12 |"), "{report}");
    assert!(report.contains("clients of sizes [16, 16, 16]"), "{report}");
    // The backbone's float type, and so which numbers the runs will compute.
    assert!(report.contains("f32 weights (exact mode)"), "{report}");
    let bad = parse(&experiment(dir.path(), "").replace("eval.jsonl", "missing.jsonl")).unwrap();
    let e = fedprompt_sim::check_experiment(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.jsonl") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn a_label_only_in_the_eval_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = experiment(dir.path(), "");
    let ev = dir.path().join("eval.jsonl");
    let mut lines = std::fs::read_to_string(&ev).unwrap();
    lines.push_str("\n{\"text\": \"weather rain\", \"label\": \"weather\", \"language\": \"en\"}");
    std::fs::write(&ev, lines).unwrap();
    let cfg = parse(&text).unwrap();
    let e = fedprompt_sim::check_experiment(&cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weather"), "{e}");
}

#[test]
fn dp_runs_report_epsilon_per_round_and_stop_at_the_budget() {
    use fedprompt_fl::privacy::RdpAccountant;
    let dir = tempfile::tempdir().unwrap();
    // Three clients, all sampled each round: q = 1. Budget between rounds 2 and 3.
    let central = RdpAccountant::new(1.0, 1.0).unwrap();
    let budget = (central.epsilon(2, 1e-5) + central.epsilon(3, 1e-5)) / 2.0;
    let extra = format!(
        r#"
[[run]]
label = "PE_FL central DP"
paradigm = "federated"
method = {{ type = "prompt", num_virtual_tokens = 2 }}
rounds = 5
strategy = {{ type = "dpfedavg", clip_norm = 1.0, noise_multiplier = 1.0 }}
privacy = {{ max_epsilon = {budget} }}

[[run]]
label = "PE_FL local DP"
paradigm = "federated"
method = {{ type = "prompt", num_virtual_tokens = 2 }}
rounds = 2
privacy = {{ target_delta = 1e-3, local = {{ clip_norm = 0.5, noise_multiplier = 0.8 }} }}
"#
    );
    let cfg = parse(&experiment(dir.path(), &extra)).unwrap();
    let out = dir.path().join("o");
    let (r, _) = run_experiment(
        &cfg,
        &RunOptions {
            output: Some(out.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let curve = |label: &str| r.curves.iter().find(|c| c.paradigm == label).unwrap();
    // The plain run has no epsilon anywhere.
    assert!(curve("PE_FL (non-IID)")
        .points
        .iter()
        .all(|p| p.epsilon.is_none()));
    // Central: stopped before round 3 (the one that would exceed the budget); round 0 plus two.
    let c = curve("PE_FL central DP");
    assert_eq!(c.points.len(), 3, "{:?}", c.points);
    for p in &c.points[1..] {
        let want = central.epsilon(u64::from(p.round), 1e-5);
        assert!((p.epsilon.unwrap() - want).abs() < 1e-12);
        assert!(p.epsilon.unwrap() <= budget);
    }
    let note = &r.meta["privacy: PE_FL central DP"];
    assert!(note.contains("privacy budget reached"), "{note}");
    assert!(note.contains("central DP"), "{note}");
    let comm = r
        .comm
        .iter()
        .find(|c| c.paradigm == "PE_FL central DP")
        .unwrap();
    assert_eq!(comm.rounds, 2);
    // Local: q = 1 towards the server, its own noise multiplier and delta.
    let local = RdpAccountant::new(1.0, 0.8).unwrap();
    let c = curve("PE_FL local DP");
    assert_eq!(c.points.len(), 3);
    let last = c.points.last().unwrap();
    assert!((last.epsilon.unwrap() - local.epsilon(2, 1e-3)).abs() < 1e-12);
    assert!(r.meta["privacy: PE_FL local DP"].contains("local DP"));
    // The files carry it too.
    let json = std::fs::read_to_string(out.join("results.json")).unwrap();
    assert!(json.contains("\"epsilon\""));
    let tables = std::fs::read_to_string(out.join("tables.md")).unwrap();
    assert!(tables.contains("privacy: PE_FL central DP"), "{tables}");
    let csv = std::fs::read_to_string(out.join("curves.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("epsilon"));
}

#[test]
fn privacy_and_robustness_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let run_err = |extra: &str| {
        let cfg = parse(&experiment(dir.path(), extra)).unwrap();
        run_experiment(
            &cfg,
            &RunOptions {
                output: Some(dir.path().join("o")),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string()
    };
    let run = |more: &str| {
        format!(
            "[[run]]\nlabel = \"x\"\nparadigm = \"federated\"\nmethod = {{ type = \"head\" }}\n{more}\n"
        )
    };
    let e = run_err(&run("privacy = { max_epsilon = 5.0 }"));
    assert!(e.contains("no DP mechanism is on"), "{e}");
    let e = run_err(&run(
        "strategy = { type = \"dpfedavg\", clip_norm = 1.0, noise_multiplier = 1.0 }\n\
         privacy = { local = { clip_norm = 1.0, noise_multiplier = 1.0 } }",
    ));
    assert!(e.contains("choose one"), "{e}");
    // A budget below one round's epsilon: known when the run starts (it needs q = m / K).
    let e = run_err(&run(
        "strategy = { type = \"dpfedavg\", clip_norm = 1.0, noise_multiplier = 0.3 }\n\
         privacy = { max_epsilon = 0.5 }",
    ));
    assert!(e.contains("below the epsilon of a single round"), "{e}");
    let e = run_err(&run(
        "strategy = { type = \"trimmed-mean\", trim_fraction = 0.7 }",
    ));
    assert!(e.contains("trim_fraction"), "{e}");
}

#[test]
fn runs_sharing_a_seed_key_share_their_randomness() {
    // Two runs with the same settings and the same `seed_key` are the same run under two
    // labels; the file's first run (its own label as key) starts elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[run]]
label = "A"
paradigm = "federated"
method = { type = "prompt", num_virtual_tokens = 2 }
seed_key = "shared"
[[run]]
label = "B"
paradigm = "federated"
method = { type = "prompt", num_virtual_tokens = 2 }
seed_key = "shared"
"#;
    let cfg = parse(&experiment(dir.path(), extra)).unwrap();
    let r = run_in(&cfg, dir.path(), "out");
    let losses = |label: &str| -> Vec<f64> {
        let c = r.curves.iter().find(|c| c.paradigm == label).unwrap();
        c.points.iter().map(|p| p.loss.unwrap()).collect()
    };
    let (a, b, own) = (losses("A"), losses("B"), losses("PE_FL (non-IID)"));
    assert_eq!(a.len(), 4, "round 0 and three rounds");
    assert_eq!(a, b);
    assert_ne!(a, own);
    let row = |label: &str| r.rows.iter().find(|x| x.paradigm == label).unwrap();
    assert_eq!(row("A").per_language, row("B").per_language);
}

#[test]
fn data_efficiency_reruns_each_named_paradigm_at_each_size_and_plots_it() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[run]]
label = "PE_Monolingual"
paradigm = "monolingual"
method = { type = "prompt", num_virtual_tokens = 2 }
[data_efficiency]
runs = ["PE_Monolingual", "PE_FL (non-IID)"]
sizes = [2, 4]
"#;
    let cfg = parse(&experiment(dir.path(), extra)).unwrap();
    let r = run_in(&cfg, dir.path(), "out");
    let out = dir.path().join("out");
    let points: Vec<(&str, usize)> = r
        .data_efficiency
        .iter()
        .map(|p| (p.paradigm.as_str(), p.train_size))
        .collect();
    assert_eq!(
        points,
        [
            ("PE_Monolingual", 2),
            ("PE_Monolingual", 4),
            ("PE_FL (non-IID)", 2),
            ("PE_FL (non-IID)", 4)
        ]
    );
    assert!(r
        .data_efficiency
        .iter()
        .all(|p| (0.0..=1.0).contains(&p.accuracy)));
    // Each cut is a run of its own (resumable), and the ablation is written and plotted.
    for key in ["pe-monolingual-cap-2", "pe-fl-non-iid-cap-4"] {
        assert!(
            out.join(format!("checkpoints/{key}.done.json")).exists(),
            "{key}"
        );
    }
    assert!(out.join("data_efficiency.csv").exists());
    assert!(out.join("data_efficiency.svg").exists());
}

#[test]
fn export_refuses_what_flower_cannot_reproduce_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let run = |label: &str, strategy: &str| {
        format!(
            "[[run]]\nlabel = \"{label}\"\nparadigm = \"federated\"\nmethod = {{ type = \"head\" }}\nstrategy = {strategy}\n"
        )
    };
    let extra = [
        run("med", "{ type = \"median\" }"),
        run(
            "dp",
            "{ type = \"dpfedavg\", clip_norm = 1.0, noise_multiplier = 1.0 }",
        ),
        run("adam", "{ type = \"fedadam\" }"),
    ]
    .concat();
    let mut cfg = parse(&experiment(dir.path(), &extra)).unwrap();
    // A model folder that does not exist: the strategy is refused before it would be read.
    cfg.model.path = dir.path().join("no-such-model").display().to_string();
    let err = |label: &str| {
        fedprompt_sim::export_federation(&cfg, label, &dir.path().join("out"), false)
            .unwrap_err()
            .to_string()
    };
    let e = err("med");
    assert!(
        e.contains("coordinate by coordinate") && e.contains("median"),
        "{e}"
    );
    let e = err("dp");
    assert!(e.contains("Gaussian noise"), "{e}");
    let e = err("adam");
    assert!(e.contains("server optimiser"), "{e}");
    assert!(
        !dir.path().join("out").exists(),
        "nothing is written for a refused run"
    );
}
