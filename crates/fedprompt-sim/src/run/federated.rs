//! Federated runs: the shared round loop ([`fedprompt_fl::run_rounds`]) over in-process
//! clients that all train on the one shared backbone, with the same client step as
//! `fedprompt join` and the Flower node ([`fedprompt_train::local_fit`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fedprompt_data::{cap_clients, PartitionSpec, Stratify};
use fedprompt_fl::privacy::PrivacyAccounting;
use fedprompt_fl::{
    run_rounds, ClientConfig, ClientUpdate, Collected, EvalRound, FitRound, Flow, Params, Phase,
    RoundClients, RoundConfig, RoundOutcome, RunRules, Server,
};
use fedprompt_io::error_chain;
use fedprompt_model::Classifier;
use fedprompt_report::{CommRow, Convergence, Curve, ParadigmRow, RoundPoint};
use fedprompt_train::{
    local_evaluate, local_fit, local_train_config, to_params, EncodedExample, LocalModel,
    TrainConfig,
};
use indicatif::ProgressBar;

use super::plan::RunPlan;
use super::results::{avg_accuracy, method_label, metrics};
use super::state::{load_round, save_round, FedProgress, RunFiles, RunOutcome};
use super::transport::Transport;
use super::Ctx;
use crate::error::{Result, SimError};

/// Batch size of the central evaluation after each round.
const EVAL_BATCH: usize = 64;

/// The clients of a simulated federation: every client's data in memory, trained one after
/// the other on the shared classifier. After each round the global model is evaluated
/// centrally on every language's eval set (server-side evaluation, as the paper reports),
/// and the server state and the curve are saved together.
struct SimClients<'r> {
    label: &'r str,
    model: LocalModel<'r>,
    data: &'r BTreeMap<String, Vec<EncodedExample>>,
    eval: &'r [EncodedExample],
    base: TrainConfig,
    rounds: u64,
    patience: u64,
    pb: &'r ProgressBar,
    progress: FedProgress,
    state_path: &'r Path,
    rounds_done: &'r AtomicU64,
    stop_after: Option<u64>,
    started: Instant,
    last_down: u64,
    privacy: Option<PrivacyAccounting>,
    transport: Transport,
}

impl SimClients<'_> {
    fn run_err(&self, msg: impl Into<String>) -> SimError {
        SimError::Run {
            run: self.label.to_string(),
            msg: msg.into(),
        }
    }

    /// Evaluates the global centrally and adds it to the curve as round `round`.
    fn evaluate_global(&mut self, global: &Params, round: u64) -> Result<()> {
        let ev = local_evaluate(&self.model, self.eval, global, EVAL_BATCH)?;
        let avg = avg_accuracy(&ev);
        self.progress.curve.push(RoundPoint {
            round: round as u32,
            accuracy: avg,
            loss: Some(ev.loss),
            epsilon: self.privacy.as_ref().map(|p| p.epsilon(round)),
        });
        if avg > self.progress.best_avg {
            self.progress.best_avg = avg;
            self.progress.best_round = round;
            self.progress.best_report = Some(ev);
        }
        Ok(())
    }
}

impl RoundClients for SimClients<'_> {
    type Error = SimError;

    fn wait_available(&mut self, _min: usize) -> Result<Option<Vec<String>>> {
        Ok(Some(self.available()))
    }

    fn available(&mut self) -> Vec<String> {
        self.data.keys().cloned().collect()
    }

    fn fit(
        &mut self,
        mut fit: FitRound,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<Collected<FitRound>> {
        let round = fit.plan().round;
        let rc = RoundConfig::parse(config).map_err(|e| self.run_err(e))?;
        let down = global.wire_len()? as u64;
        self.last_down = down;
        for c in fit.plan().clients.clone() {
            fit.record_sent(&c, down)?;
            let tcfg = local_train_config(&self.base, &rc, Some(&c), round);
            self.pb
                .set_message(format!("round {round}/{} client {c}", self.rounds));
            match local_fit(
                &self.model,
                &self.data[&c],
                global,
                &tcfg,
                rc.proximal_mu,
                Some(self.pb),
            ) {
                Ok(mut r) => {
                    // Local DP: the client clips and noises its own delta before it leaves.
                    super::privacy::client_step(global, &mut r.params, &rc, tcfg.seed)?;
                    let update = ClientUpdate {
                        client_id: c.clone(),
                        params: r.params,
                        num_examples: r.num_examples,
                        metrics: r.metrics,
                    };
                    // Plain, compressed, or held for the round's secure aggregation.
                    self.transport.send(&mut fit, global, update)?;
                }
                Err(e) => {
                    let why = error_chain(&e);
                    tracing::warn!(run = self.label, round, client = %c, "client failed: {why}");
                    fit.fail(&c, why)?;
                }
            }
        }
        self.transport.flush(&mut fit, global)?;
        Ok(Collected {
            round: fit,
            stopped: false,
        })
    }

    fn evaluate(
        &mut self,
        round: EvalRound,
        _global: &Params,
        _config: &ClientConfig,
    ) -> Result<Collected<EvalRound>> {
        // The simulator evaluates centrally (`on_round_end`); its rules ask for no
        // federated evaluation.
        Ok(Collected {
            round,
            stopped: false,
        })
    }

    fn on_fit(&mut self, _server: &Server, outcome: &RoundOutcome) -> Result<()> {
        if !outcome.failures.is_empty() {
            tracing::warn!(round = outcome.round, failures = ?outcome.failures, "clients failed this round");
        }
        if let Some(why) = &outcome.skipped {
            tracing::warn!(round = outcome.round, "round not aggregated: {why}");
        }
        Ok(())
    }

    fn on_round_end(&mut self, server: &Server) -> Result<Flow> {
        let round = server.round();
        self.evaluate_global(server.global(), round)?;
        self.progress.seconds += self.started.elapsed().as_secs_f64();
        self.started = Instant::now();
        save_round(
            self.state_path,
            server,
            &self.progress,
            self.transport.residuals(),
        )?;
        let done = self.rounds_done.fetch_add(1, Ordering::SeqCst) + 1;
        if self.stop_after == Some(done) {
            self.pb.abandon();
            return Err(self.run_err(format!("stopped after round {round} as requested")));
        }
        if self.progress.patience_ran_out(round, self.patience) {
            tracing::info!(
                run = self.label,
                round,
                best = self.progress.best_round,
                "early stop: {} rounds without a better eval accuracy",
                self.patience
            );
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }
}

impl Ctx<'_> {
    /// A federated run; with `cap`, every client's training set is cut to `cap` examples
    /// (the data-efficiency ablation).
    pub(super) fn run_federated(
        &self,
        plan: &RunPlan<'_>,
        cap: Option<usize>,
        files: &RunFiles,
    ) -> Result<RunOutcome> {
        let start = Instant::now();
        let spec = plan.spec;
        let seed = plan.seed;
        let partition = plan.partition(&self.train_raw)?;
        let partition = match cap {
            Some(n) => {
                let all: Vec<usize> = (0..partition.clients.len()).collect();
                cap_clients(&partition, &self.train_raw, &all, n, Stratify::Label, seed)?
            }
            None => partition,
        };
        tracing::debug!(run = %spec.label, clients = ?partition.sizes(), "partition");
        let client_data: BTreeMap<String, Vec<EncodedExample>> = partition
            .clients
            .iter()
            .map(|c| {
                let data = c.indices.iter().map(|&i| self.train[i].clone()).collect();
                (c.name.clone(), data)
            })
            .collect();
        if let Some((c, _)) = client_data.iter().find(|(_, d)| d.is_empty()) {
            return Err(SimError::Run {
                run: spec.label.clone(),
                msg: format!("client `{c}` has no training examples"),
            });
        }

        let clf = Classifier::new(self.backbone, &spec.method, &self.labels, seed)?;
        let strategy = || plan.strategy.build(plan.policy.clone());
        let (server, progress, residuals) = if self.opts.resume && files.state.is_file() {
            load_round(&files.state, strategy()?)?
        } else {
            let initial = to_params(clf.trainable())?;
            let server = Server::new(initial, strategy()?)?;
            (server, FedProgress::new(), BTreeMap::new())
        };
        let mut server = server.with_client_weights(super::privacy::client_weights(plan));
        let m = plan
            .policy
            .sampling(Phase::Fit)
            .num_sampled(client_data.len())?;
        let privacy = super::privacy::accounting(plan, m, client_data.len())?;
        let mean_client = client_data.values().map(|d| d.len()).sum::<usize>() / client_data.len();
        let per_round = m as u64 * self.steps_per_epoch(mean_client) * plan.local_epochs as u64;
        let pb = self.bar(per_round * plan.rounds, self.bar_label(&spec.label));
        pb.set_position(per_round * server.round());

        let mut clients = SimClients {
            label: &spec.label,
            model: LocalModel::new(&clf),
            data: &client_data,
            eval: &self.eval,
            base: plan.client_train(),
            rounds: plan.rounds,
            patience: plan.patience as u64,
            pb: &pb,
            progress,
            state_path: &files.state,
            rounds_done: self.rounds_done,
            stop_after: self.opts.stop_after_rounds,
            started: Instant::now(),
            last_down: 0,
            privacy: privacy.clone(),
            transport: Transport::new(plan),
        };
        clients.transport.restore_residuals(residuals);
        if clients.progress.curve.is_empty() {
            // Round 0: the initial global model, so the curve shows where learning starts.
            clients.evaluate_global(&server.global().clone(), 0)?;
        }
        let rules = RunRules {
            rounds: plan.rounds,
            evaluate_every: 0,
            client_config: plan.client_config(),
            privacy: privacy.clone(),
        };
        // A resumed run whose patience had already run out (killed between its last round's
        // checkpoint and its outcome file) is not trained further.
        let mut budget_stop = None;
        if !clients
            .progress
            .patience_ran_out(server.round(), plan.patience as u64)
        {
            let run = run_rounds(&mut server, &mut clients, &rules)?;
            budget_stop = run.budget_stop;
        }
        if let Some(why) = &budget_stop {
            tracing::warn!(run = %spec.label, "{why}");
        }
        let privacy_note = privacy
            .as_ref()
            .map(|p| super::privacy::note(p, server.round(), budget_stop.as_deref()));
        pb.finish_and_clear();
        let (progress, last_up, last_down) = (
            clients.progress,
            clients.transport.last_up,
            clients.last_down,
        );
        let upload_encoding = clients.transport.label();

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
        let stopped = server.round();
        row.convergence = Some(Convergence {
            unit: "round".into(),
            best: progress.best_round as f64,
            stopped: stopped as f64,
            max: plan.rounds,
            models: 1,
            // Ran to the maximum without the patience running out (a privacy budget that
            // stopped it earlier is neither).
            hit_max: usize::from(
                stopped >= plan.rounds && !progress.patience_ran_out(stopped, plan.patience as u64),
            ),
        });
        let comm = CommRow {
            paradigm: spec.label.clone(),
            method: method_label(&spec.method),
            trainable_params: clf.trainable().num_params() as u64,
            total_params: clf.total_params() as u64,
            bytes_up_per_client_round: last_up,
            bytes_down_per_client_round: last_down,
            clients: m as u32,
            rounds: stopped as u32,
            total_bytes: server.ledger().total().total(),
            upload_encoding,
        };
        Ok(RunOutcome {
            best_avg: progress.best_avg,
            row,
            curve: Curve {
                paradigm: spec.label.clone(),
                points: progress.curve,
                sd: Vec::new(),
            },
            comm: Some(comm),
            seconds: start.elapsed().as_secs_f64(),
            privacy: privacy_note,
        })
    }
}
