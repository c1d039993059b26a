//! Local training and evaluation: AdamW over the trainable set only, seeded shuffled
//! (length-bucketed) batches with dynamic padding, early stopping on eval accuracy,
//! accuracy and macro-F1 per language.
#![warn(missing_docs)]

pub mod client;
pub mod encode;
pub mod metrics;
pub mod params;
pub mod trainer;

pub use client::{
    apply_client_dp, eval_metrics, local_evaluate, local_fit, local_train_config, text_max_len,
    DeterministicTrainer, EvalResult, FitResult, LocalModel, LocalTrainer, ModelSpec, ModelTrainer,
    ModelTrainerConfig, Task, TrainerError,
};
pub use encode::{encode_examples, EncodedExample};
pub use metrics::{evaluate, score, EvalReport, LangScore};
pub use params::{assign_params, params_to_tensors, to_params};
pub use trainer::{train, EpochStat, Proximal, TrainConfig, TrainError, TrainReport};
