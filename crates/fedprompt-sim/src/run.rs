//! Running an experiment: every paradigm against one shared frozen backbone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fedprompt_data::{cap_clients, Example, PartitionSpec, Stratify};
use fedprompt_fl::{
    client_round_seed, derive_seed, ClientUpdate, RoundPolicy, Server, ServerState, StrategyConfig,
};
use fedprompt_model::{Backbone, Classifier, MethodConfig};
use fedprompt_report::{
    CommRow, Curve, DataEffPoint, LangMetrics, ParadigmRow, RoundPoint, RunResults,
};
use fedprompt_train::{
    assign_params, encode_examples, evaluate, params_to_tensors, to_params, train, EncodedExample,
    EvalReport, Proximal, TrainConfig,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config::{ExperimentConfig, Paradigm, RunSpec};
use crate::error::{Result, SimError};

/// How to run an experiment.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the checkpoints of an earlier, interrupted run of the same file.
    pub resume: bool,
    /// Show progress bars.
    pub progress: bool,
    /// Results folder (overrides the file's `output`).
    pub output: Option<PathBuf>,
    /// Stop (as if killed) after this many federated rounds in total; for tests of resume.
    pub stop_after_rounds: Option<u64>,
}

/// The outcome of a finished run, cached so a resumed experiment skips it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunOutcome {
    row: ParadigmRow,
    curve: Curve,
    comm: Option<CommRow>,
    best_avg: f64,
    seconds: f64,
}

/// Progress of a federated run between rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FedProgress {
    curve: Vec<RoundPoint>,
    best_round: u64,
    best_avg: f64,
    best_report: Option<EvalReport>,
    seconds: f64,
}

pub(crate) fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

fn io_err(path: &Path, e: std::io::Error) -> SimError {
    SimError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(v).expect("serialisable");
    fedprompt_model::trainable::write_atomic(path, &text)?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| io_err(path, e))?;
    serde_json::from_slice(&text).map_err(|e| SimError::Run {
        run: path.display().to_string(),
        msg: format!("unreadable checkpoint file: {e}; delete it or run without --resume"),
    })
}

fn metrics(report: &EvalReport) -> BTreeMap<String, LangMetrics> {
    report
        .per_language
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                LangMetrics {
                    accuracy: s.accuracy,
                    macro_f1: s.macro_f1,
                    n: s.n,
                },
            )
        })
        .collect()
}

fn avg_accuracy(report: &EvalReport) -> f64 {
    let v: Vec<f64> = report.per_language.values().map(|s| s.accuracy).collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

struct Ctx<'a> {
    cfg: &'a ExperimentConfig,
    backbone: &'a Backbone,
    labels: Vec<String>,
    train_raw: Vec<Example>,
    train: Vec<EncodedExample>,
    eval: Vec<EncodedExample>,
    pad_id: u32,
    use_types: bool,
    ckpt_dir: PathBuf,
    opts: &'a RunOptions,
    mp: MultiProgress,
    rounds_done: u64,
}

impl Ctx<'_> {
    fn bar(&self, len: u64, prefix: String) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>22} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(prefix);
        pb
    }

    fn train_cfg(&self, spec: &RunSpec, epochs: usize, seed: u64) -> TrainConfig {
        train_config(self.cfg, spec, epochs, seed)
    }

    fn steps_per_epoch(&self, n: usize) -> u64 {
        let per = n.div_ceil(self.cfg.train.batch_size);
        self.cfg
            .train
            .max_steps_per_epoch
            .map_or(per, |m| per.min(m)) as u64
    }

    fn by_language(&self, examples: &[EncodedExample]) -> BTreeMap<String, Vec<EncodedExample>> {
        let mut m: BTreeMap<String, Vec<EncodedExample>> = BTreeMap::new();
        for e in examples {
            m.entry(e.language.clone()).or_default().push(e.clone());
        }
        m
    }

    fn run_local(&mut self, spec: &RunSpec) -> Result<RunOutcome> {
        let start = Instant::now();
        let epochs = spec.epochs.unwrap_or(self.cfg.train.epochs);
        let groups: Vec<(String, Vec<EncodedExample>, Vec<EncodedExample>)> = match spec.paradigm {
            Paradigm::Centralized => vec![("all".into(), self.train.clone(), self.eval.clone())],
            _ => {
                let tr = self.by_language(&self.train);
                let ev = self.by_language(&self.eval);
                self.cfg
                    .data
                    .languages
                    .iter()
                    .filter_map(|l| {
                        let code = tr.keys().find(|k| *k == l).cloned()?;
                        Some((
                            code.clone(),
                            tr[&code].clone(),
                            ev.get(&code).cloned().unwrap_or_default(),
                        ))
                    })
                    .collect()
            }
        };
        let total: u64 = groups
            .iter()
            .map(|g| self.steps_per_epoch(g.1.len()) * epochs as u64)
            .sum();
        let pb = self.bar(total, spec.label.clone());
        let mut per_language = BTreeMap::new();
        let mut curves: Vec<Vec<f64>> = Vec::new();
        for (name, tr, ev) in &groups {
            if ev.is_empty() {
                return Err(SimError::Run {
                    run: spec.label.clone(),
                    msg: format!("language `{name}` has no evaluation examples"),
                });
            }
            let seed = derive_seed(self.cfg.seed, &[&spec.label, name]);
            let clf = Classifier::new(self.backbone, &spec.method, &self.labels, seed)?;
            let tcfg = self.train_cfg(spec, epochs, seed);
            let rep = train(
                &clf,
                tr,
                Some(ev),
                &tcfg,
                self.pad_id,
                self.use_types,
                None,
                Some(&pb),
            )?;
            curves.push(
                rep.epochs
                    .iter()
                    .filter_map(|e| e.eval.as_ref().map(|r| r.overall.accuracy))
                    .collect(),
            );
            let final_eval = evaluate(&clf, ev, 64, self.pad_id, self.use_types)?;
            per_language.extend(metrics(&final_eval));
        }
        pb.finish_and_clear();
        // Mean over groups per epoch; an early-stopped group keeps its last value.
        let longest = curves.iter().map(|c| c.len()).max().unwrap_or(0);
        let points = (0..longest)
            .map(|e| {
                let vals: Vec<f64> = curves
                    .iter()
                    .filter_map(|c| c.get(e).or(c.last()).copied())
                    .collect();
                RoundPoint {
                    round: e as u32 + 1,
                    accuracy: vals.iter().sum::<f64>() / vals.len().max(1) as f64,
                    loss: None,
                }
            })
            .collect();
        let setting = match spec.paradigm {
            Paradigm::Centralized => "centralized".to_string(),
            _ => "monolingual".to_string(),
        };
        let row = ParadigmRow::new(
            &spec.label,
            method_label(&spec.method),
            setting,
            per_language,
        );
        Ok(RunOutcome {
            best_avg: row.average,
            row,
            curve: Curve {
                paradigm: spec.label.clone(),
                points,
            },
            comm: None,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn run_federated(
        &mut self,
        spec: &RunSpec,
        cap: Option<usize>,
        key: &str,
    ) -> Result<RunOutcome> {
        let start = Instant::now();
        let (seed, partition) = federated_partition(self.cfg, spec, &self.train_raw)?;
        let partition = match cap {
            Some(n) => {
                let all: Vec<usize> = (0..partition.clients.len()).collect();
                cap_clients(&partition, &self.train_raw, &all, n, Stratify::Label, seed)?
            }
            None => partition,
        };
        let client_ids: Vec<String> = partition.clients.iter().map(|c| c.name.clone()).collect();
        let client_data: BTreeMap<String, Vec<EncodedExample>> = partition
            .clients
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.indices.iter().map(|&i| self.train[i].clone()).collect(),
                )
            })
            .collect();
        for (c, d) in &client_data {
            if d.is_empty() {
                return Err(SimError::Run {
                    run: spec.label.clone(),
                    msg: format!("client `{c}` has no training examples"),
                });
            }
        }
        let rounds = spec.rounds.unwrap_or(self.cfg.federation.rounds);
        let local_epochs = spec
            .local_epochs
            .unwrap_or(self.cfg.federation.local_epochs);
        let strategy_cfg: StrategyConfig = spec
            .strategy
            .clone()
            .unwrap_or_else(|| self.cfg.federation.strategy.clone());
        let policy = RoundPolicy {
            fraction_fit: spec.fraction.unwrap_or(self.cfg.federation.fraction),
            seed,
            ..RoundPolicy::default()
        };

        let clf = Classifier::new(self.backbone, &spec.method, &self.labels, seed)?;
        let initial = to_params(clf.trainable())?;
        let ckpt = self.ckpt_dir.join(format!("{key}.ckpt"));
        let prog_path = self.ckpt_dir.join(format!("{key}.progress.json"));
        let (mut server, mut progress) =
            if self.opts.resume && ckpt.is_file() && prog_path.is_file() {
                let state = ServerState::load_checkpoint(&ckpt)?;
                let server = Server::from_state(state, strategy_cfg.build(policy.clone())?)?;
                (server, read_json::<FedProgress>(&prog_path)?)
            } else {
                (
                    Server::new(initial, strategy_cfg.build(policy.clone())?)?,
                    FedProgress {
                        curve: Vec::new(),
                        best_round: 0,
                        best_avg: -1.0,
                        best_report: None,
                        seconds: 0.0,
                    },
                )
            };
        let m = policy
            .sampling(fedprompt_fl::Phase::Fit)
            .num_sampled(client_ids.len())?;
        let mean_client = client_data.values().map(|d| d.len()).sum::<usize>() / client_ids.len();
        let per_round = m as u64 * self.steps_per_epoch(mean_client) * local_epochs as u64;
        let pb = self.bar(per_round * rounds, spec.label.clone());
        pb.set_position(per_round * server.round());
        if progress.curve.is_empty() {
            // Round 0: the initial global model, so the curve shows where learning starts.
            assign_params(clf.trainable(), server.global())?;
            let ev = evaluate(&clf, &self.eval, 64, self.pad_id, self.use_types)?;
            progress.curve.push(RoundPoint {
                round: 0,
                accuracy: avg_accuracy(&ev),
                loss: Some(ev.loss),
            });
            progress.best_avg = avg_accuracy(&ev);
            progress.best_report = Some(ev);
        }
        let mut last_up = 0u64;
        let mut last_down = 0u64;
        while server.round() < rounds {
            let round = server.round() + 1;
            let mut fit = server.begin_fit(&client_ids)?;
            let down = server.global().wire_len()? as u64;
            last_down = down;
            let plan = fit.plan().clone();
            let mu = match plan.config.get("proximal_mu") {
                Some(fedprompt_fl::ConfigValue::Float(x)) if *x > 0.0 => Some(*x),
                _ => None,
            };
            // FedProx's anchor is the round's global model, the same for every client.
            let prox = match mu {
                Some(mu) => Some(Proximal {
                    mu,
                    global: params_to_tensors(server.global())?,
                }),
                None => None,
            };
            for c in &plan.clients {
                fit.record_sent(c, down)?;
                assign_params(clf.trainable(), server.global())?;
                let cseed = client_round_seed(seed, c, round);
                let mut tcfg = self.train_cfg(spec, local_epochs, cseed);
                tcfg.restore_best = false;
                tcfg.patience = usize::MAX;
                let data = &client_data[c];
                pb.set_message(format!("round {round}/{rounds} client {c}"));
                train(
                    &clf,
                    data,
                    None,
                    &tcfg,
                    self.pad_id,
                    self.use_types,
                    prox.as_ref(),
                    Some(&pb),
                )?;
                let p = to_params(clf.trainable())?;
                let up = p.wire_len()? as u64;
                last_up = up;
                // A rejected update is recorded as a failure by the round; the round goes on.
                let _ = fit.submit(ClientUpdate::new(c.clone(), p, data.len() as u64), up);
            }
            let outcome = server.finish_fit(fit)?;
            if !outcome.failures.is_empty() {
                tracing::warn!(round, failures = ?outcome.failures, "clients failed this round");
            }
            assign_params(clf.trainable(), server.global())?;
            let ev = evaluate(&clf, &self.eval, 64, self.pad_id, self.use_types)?;
            let avg = avg_accuracy(&ev);
            progress.curve.push(RoundPoint {
                round: round as u32,
                accuracy: avg,
                loss: Some(ev.loss),
            });
            if avg > progress.best_avg {
                progress.best_avg = avg;
                progress.best_round = round;
                progress.best_report = Some(ev);
            }
            server.state().save_checkpoint(&ckpt)?;
            write_json(&prog_path, &progress)?;
            self.rounds_done += 1;
            if self.opts.stop_after_rounds == Some(self.rounds_done) {
                pb.abandon();
                return Err(SimError::Run {
                    run: spec.label.clone(),
                    msg: format!("stopped after round {round} as requested"),
                });
            }
        }
        pb.finish_and_clear();
        let report = progress.best_report.clone().ok_or_else(|| SimError::Run {
            run: spec.label.clone(),
            msg: "no round completed".into(),
        })?;
        let setting = match &spec.partition {
            None | Some(PartitionSpec::PerLanguage) => {
                "non-IID (one client per language)".to_string()
            }
            Some(p) => serde_json::to_string(p).unwrap_or_default(),
        };
        let mut row = ParadigmRow::new(
            &spec.label,
            method_label(&spec.method),
            setting,
            metrics(&report),
        );
        row.average = avg_accuracy(&report);
        let total = server.ledger().total();
        let comm = CommRow {
            paradigm: spec.label.clone(),
            method: method_label(&spec.method),
            trainable_params: clf.trainable().num_params() as u64,
            total_params: clf.total_params() as u64,
            bytes_up_per_client_round: last_up,
            bytes_down_per_client_round: last_down,
            clients: m as u32,
            rounds: rounds as u32,
            total_bytes: total.total(),
        };
        Ok(RunOutcome {
            best_avg: progress.best_avg,
            row,
            curve: Curve {
                paradigm: spec.label.clone(),
                points: progress.curve,
            },
            comm: Some(comm),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// Short method description for tables (`prompt (1 vt)`, `lora r8`...).
pub fn method_label(m: &MethodConfig) -> String {
    match m {
        MethodConfig::Prompt {
            num_virtual_tokens, ..
        } => format!("prompt ({num_virtual_tokens} vt)"),
        MethodConfig::PromptEncoder {
            num_virtual_tokens, ..
        } => format!("p-tuning ({num_virtual_tokens} vt)"),
        MethodConfig::Lora { r, .. } => format!("lora r{r}"),
        MethodConfig::Head => "head".into(),
        MethodConfig::Full => "full".into(),
    }
}

/// Loads the model named by the experiment (`default` = the built-in model).
pub fn load_backbone(path: &str) -> Result<Backbone> {
    let dir = if path == "default" {
        fedprompt_hub::default_model_dir()?
    } else {
        PathBuf::from(path)
    };
    Ok(Backbone::load(&dir)?)
}

/// Tokens left for the text after the longest soft prompt of any run: the model's `max_len`
/// (capped by the model) minus the most virtual tokens. Every run of a file encodes with it.
pub(crate) fn text_max_len(cfg: &ExperimentConfig, backbone: &Backbone) -> usize {
    let max_vt = cfg
        .runs
        .iter()
        .map(|r| r.method.virtual_tokens())
        .max()
        .unwrap_or(0);
    cfg.model
        .max_len
        .min(backbone.config().max_sequence_len())
        .saturating_sub(max_vt)
}

/// A run's local training settings: the file's `[train]` with the run's epochs, seed and
/// learning rate.
pub(crate) fn train_config(
    cfg: &ExperimentConfig,
    spec: &RunSpec,
    epochs: usize,
    seed: u64,
) -> TrainConfig {
    let mut t = cfg.train.clone();
    t.epochs = epochs;
    t.seed = seed;
    if let Some(lr) = spec.learning_rate {
        t.learning_rate = lr;
    }
    t
}

/// A federated run's seed and its clients (before any size cap).
pub(crate) fn federated_partition(
    cfg: &ExperimentConfig,
    spec: &RunSpec,
    train: &[Example],
) -> Result<(u64, fedprompt_data::Partition)> {
    let seed = derive_seed(cfg.seed, &[&spec.label]);
    let partition = spec
        .partition
        .clone()
        .unwrap_or(PartitionSpec::PerLanguage)
        .partition(train, seed)?;
    Ok((seed, partition))
}

/// Runs every run of the experiment and writes the results folder. Returns the results.
pub fn run_experiment(cfg: &ExperimentConfig, opts: &RunOptions) -> Result<(RunResults, PathBuf)> {
    cfg.validate().map_err(|msg| SimError::Config {
        path: PathBuf::from(&cfg.name),
        msg,
    })?;
    let out = opts.output.clone().unwrap_or_else(|| cfg.output_dir());
    let ckpt_dir = out.join("checkpoints");
    if !opts.resume && ckpt_dir.exists() {
        std::fs::remove_dir_all(&ckpt_dir).map_err(|e| io_err(&ckpt_dir, e))?;
    }
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| io_err(&ckpt_dir, e))?;

    let started = Instant::now();
    let backbone = load_backbone(&cfg.model.path)?;
    let data = crate::data::load(&cfg.data, cfg.seed)?;
    for lang in &cfg.data.languages {
        if !data.eval.iter().any(|e| &e.language == lang) {
            return Err(SimError::DataMsg(format!(
                "language `{lang}` has no evaluation examples"
            )));
        }
    }
    let max_len = text_max_len(cfg, &backbone);
    let text = backbone.text_encoder().clone().with_max_len(max_len)?;
    let train_enc = encode_examples(&text, &data.train)?;
    let eval_enc = encode_examples(&text, &data.eval)?;
    let mp = MultiProgress::new();
    if !opts.progress {
        mp.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut ctx = Ctx {
        cfg,
        backbone: &backbone,
        labels: data.labels.names().to_vec(),
        train_raw: data.train.clone(),
        train: train_enc,
        eval: eval_enc,
        pad_id: backbone.config().pad_token_id,
        use_types: backbone.config().family == fedprompt_model::Family::Bert,
        ckpt_dir: ckpt_dir.clone(),
        opts,
        mp,
        rounds_done: 0,
    };

    let mut results = RunResults {
        experiment: cfg.name.clone(),
        task: cfg.task.clone(),
        model: backbone.folder().display().to_string(),
        seed: cfg.seed,
        languages: cfg.data.languages.clone(),
        rows: Vec::new(),
        curves: Vec::new(),
        comm: Vec::new(),
        data_efficiency: Vec::new(),
        distances: None,
        meta: BTreeMap::new(),
    };
    let mut timings = Vec::new();
    for spec in &cfg.runs {
        let key = slug(&spec.label);
        let done = ckpt_dir.join(format!("{key}.done.json"));
        let outcome = if opts.resume && done.is_file() {
            read_json::<RunOutcome>(&done)?
        } else {
            let o = match spec.paradigm {
                Paradigm::Federated => ctx.run_federated(spec, None, &key)?,
                _ => ctx.run_local(spec)?,
            };
            write_json(&done, &o)?;
            o
        };
        tracing::info!(run = %spec.label, avg = outcome.row.average, "run finished");
        timings.push(format!("{}: {:.0} s", spec.label, outcome.seconds));
        results.rows.push(outcome.row);
        results.curves.push(outcome.curve);
        if let Some(c) = outcome.comm {
            results.comm.push(c);
        }
    }
    if let Some(de) = &cfg.data_efficiency {
        let spec = cfg
            .runs
            .iter()
            .find(|r| r.label == de.run)
            .expect("validated")
            .clone();
        for &n in &de.sizes {
            let key = format!("{}-cap-{n}", slug(&spec.label));
            let done = ctx.ckpt_dir.join(format!("{key}.done.json"));
            let outcome = if opts.resume && done.is_file() {
                read_json::<RunOutcome>(&done)?
            } else {
                let o = ctx.run_federated(&spec, Some(n), &key)?;
                write_json(&done, &o)?;
                o
            };
            results.data_efficiency.push(DataEffPoint {
                paradigm: spec.label.clone(),
                train_size: n,
                accuracy: outcome.row.average,
            });
        }
    }
    if cfg.language_distance {
        match distances(&cfg.data.languages) {
            Ok((d, note)) => {
                results.distances = Some(d);
                if !note.is_empty() {
                    results.meta.insert("distance_note".into(), note);
                }
            }
            Err(e) => {
                results.meta.insert(
                    "distance_note".into(),
                    format!("no language distances: {e}"),
                );
            }
        }
    }
    let counts = |ex: &[Example]| {
        let mut m: BTreeMap<&str, usize> = BTreeMap::new();
        for e in ex {
            *m.entry(e.language.as_str()).or_default() += 1;
        }
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    results
        .meta
        .insert("train examples".into(), counts(&data.train));
    results
        .meta
        .insert("eval examples".into(), counts(&data.eval));
    results
        .meta
        .insert("labels".into(), data.labels.names().join(", "));
    results.meta.insert(
        "max tokens".into(),
        format!("{} (+ virtual tokens)", max_len),
    );
    results.meta.insert("run times".into(), timings.join("; "));
    results.meta.insert(
        "wall time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    results.meta.insert(
        "selection".into(),
        "every row reports the epoch/round with the best average eval accuracy (early stopping on eval, as the paper)".into(),
    );
    if data.warnings > 0 {
        results
            .meta
            .insert("skipped lines".into(), data.warnings.to_string());
    }
    fedprompt_report::write_all(&results, &out)?;
    Ok((results, out))
}

fn distances(langs: &[String]) -> Result<(BTreeMap<String, f64>, String)> {
    let dir = fedprompt_hub::lang2vec_data_dir()?;
    let ld = fedprompt_lang::LanguageDistance::load(&dir, &Default::default())?;
    let mut out = BTreeMap::new();
    let mut notes = Vec::new();
    for l in langs {
        // Script variants share their language's typology (URIEL has no script axis).
        let base = l.split(['_', '-']).next().unwrap_or(l);
        match ld.phi(base) {
            Ok(phi) => {
                out.insert(l.clone(), phi);
                if base != l {
                    notes.push(format!("{l} uses {base}'s URIEL vector"));
                }
            }
            Err(e) => notes.push(format!("{l}: {e}")),
        }
    }
    Ok((out, notes.join("; ")))
}

/// Whether a results folder's checkpoints let `resume` continue (for messages).
pub fn has_checkpoints(out: &Path) -> bool {
    out.join("checkpoints").is_dir()
}
