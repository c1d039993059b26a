//! A run's settings, resolved once: the file's defaults with the run's overrides, checked.

use fedprompt_data::{Example, Partition, PartitionSpec};
use fedprompt_fl::codec::Compression;
use fedprompt_fl::privacy::PrivacyConfig;
use fedprompt_fl::secagg::SecAggConfig;
use fedprompt_fl::{derive_seed, ClientConfig, RoundConfig, RoundPolicy, StrategyConfig};
use fedprompt_model::Backbone;
use fedprompt_train::TrainConfig;

use crate::config::{ExperimentConfig, Paradigm, RunSpec};
use crate::error::{Result, SimError};

/// One run of an experiment with every setting decided: nothing downstream reads
/// `RunSpec`'s options or the file's defaults again.
#[derive(Clone, Debug)]
pub(crate) struct RunPlan<'a> {
    /// The run as written.
    pub spec: &'a RunSpec,
    /// The run's seed: initialisation, partition, client sampling; clients derive theirs.
    pub seed: u64,
    /// Local training settings (the file's `[train]` with the run's learning rate).
    pub train: TrainConfig,
    /// Epochs of a monolingual or centralized run.
    pub epochs: usize,
    /// Communication rounds of a federated run.
    pub rounds: u64,
    /// Local epochs per round.
    pub local_epochs: usize,
    /// Aggregation strategy.
    pub strategy: StrategyConfig,
    /// Sampling and quorum rules.
    pub policy: RoundPolicy,
    /// Early stopping: rounds (federated) or epochs (local) without improvement.
    pub patience: usize,
    /// Cap on each client's claimed example count.
    pub max_examples_per_client: Option<u64>,
    /// Differential privacy (accounting, budget, local DP).
    pub privacy: Option<PrivacyConfig>,
    /// How clients compress their uploads, if they do.
    pub compression: Option<Compression>,
    /// Secure aggregation settings, if updates are securely aggregated.
    pub secure_aggregation: Option<SecAggConfig>,
}

impl<'a> RunPlan<'a> {
    /// Resolves `spec` against the file's defaults.
    pub fn resolve(cfg: &ExperimentConfig, spec: &'a RunSpec) -> Result<Self> {
        let seed = derive_seed(cfg.seed, &[spec.seed_key()]);
        let mut train = cfg.train.clone();
        if let Some(lr) = spec.learning_rate {
            train.learning_rate = lr;
        }
        let patience = match spec.paradigm {
            Paradigm::Federated => spec
                .patience
                .or(cfg.federation.patience)
                .unwrap_or(cfg.train.patience),
            _ => spec.patience.unwrap_or(cfg.train.patience),
        };
        train.patience = patience;
        let plan = RunPlan {
            spec,
            seed,
            epochs: spec.epochs.unwrap_or(cfg.train.epochs),
            rounds: spec.rounds.unwrap_or(cfg.federation.rounds),
            local_epochs: spec.local_epochs.unwrap_or(cfg.federation.local_epochs),
            strategy: spec
                .strategy
                .clone()
                .unwrap_or_else(|| cfg.federation.strategy.clone()),
            policy: RoundPolicy {
                fraction_fit: spec.fraction.unwrap_or(cfg.federation.fraction),
                seed,
                ..RoundPolicy::default()
            },
            patience,
            max_examples_per_client: spec
                .max_examples_per_client
                .or(cfg.federation.max_examples_per_client),
            privacy: spec
                .privacy
                .clone()
                .or_else(|| cfg.federation.privacy.clone()),
            train,
            compression: spec.compression.or(cfg.federation.compression),
            secure_aggregation: spec
                .secure_aggregation
                .clone()
                .or_else(|| cfg.federation.secure_aggregation.clone()),
        };
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> Result<()> {
        let err = |msg: String| SimError::Run {
            run: self.spec.label.clone(),
            msg,
        };
        self.train.validate().map_err(|e| err(e.to_string()))?;
        if self.epochs == 0 || self.local_epochs == 0 || self.rounds == 0 {
            return Err(err(
                "epochs, local_epochs and rounds must be at least 1".into()
            ));
        }
        if self.spec.paradigm == Paradigm::Federated {
            self.policy.validate().map_err(|e| err(e.to_string()))?;
            self.strategy
                .build(self.policy.clone())
                .map_err(|e| err(e.to_string()))?;
            // The sampling rate is known once the clients are (at run time, with the
            // budget); everything else is checked now.
            let unbudgeted = self.privacy.clone().map(|p| PrivacyConfig {
                max_epsilon: None,
                ..p
            });
            fedprompt_fl::privacy::privacy_accounting(&self.strategy, unbudgeted.as_ref(), 1.0)
                .map_err(|e| err(e.to_string()))?;
            if self.max_examples_per_client == Some(0) {
                return Err(err("max_examples_per_client must be at least 1".into()));
            }
            super::transport::check(self).map_err(err)?;
        }
        Ok(())
    }

    /// Local training settings of a monolingual or centralized model seeded `seed`.
    pub fn local_train(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            seed,
            ..self.train.clone()
        }
    }

    /// The clients' base training settings in a federated run (the round configuration
    /// goes over them).
    pub fn client_train(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.local_epochs,
            seed: self.seed,
            ..self.train.clone()
        }
    }

    /// The operator's round configuration, as `serve` sends its `[client_config]`: local
    /// epochs and the run's seed (from which each client derives its own each round).
    pub fn client_config(&self) -> ClientConfig {
        // Local DP travels as it does from `serve`: the clients clip and noise themselves.
        let local = self.privacy.as_ref().and_then(|p| p.local);
        RoundConfig {
            epochs: Some(self.local_epochs),
            seed: Some(self.seed),
            clipping_norm: local.map(|l| l.clip_norm),
            dp_noise_multiplier: local.map(|l| l.noise_multiplier),
            ..RoundConfig::default()
        }
        .to_config()
    }

    /// The federated run's clients (before any size cap).
    pub fn partition(&self, train: &[Example]) -> Result<Partition> {
        Ok(self
            .spec
            .partition
            .clone()
            .unwrap_or(PartitionSpec::PerLanguage)
            .partition(train, self.seed)?)
    }
}

/// Tokens left for the text in every run of the file: [`fedprompt_train::text_max_len`] with
/// the most virtual tokens of any run, so that every run sees the same texts.
pub(crate) fn text_max_len(cfg: &ExperimentConfig, backbone: &Backbone) -> Result<usize> {
    let max_vt = cfg
        .runs
        .iter()
        .map(|r| r.method.virtual_tokens())
        .max()
        .unwrap_or(0);
    Ok(fedprompt_train::text_max_len(
        backbone.config().max_sequence_len(),
        Some(cfg.model.max_len),
        max_vt,
    )?)
}
