//! What a fedprompt node does with Flower's messages.
//!
//! - `train`: the ArrayRecord is the global trainable set under fedprompt's names; the node
//!   trains it on its local data and replies with the updated arrays under `"arrays"` and a
//!   MetricRecord `"metrics"` with `num-examples` (Flower's FedAvg weight) and `train_loss`.
//! - `evaluate`: evaluates the arrays on local data; replies with a MetricRecord `"metrics"`
//!   with `num-examples`, `accuracy` and `loss`.
//! - `query` and anything else: an error reply saying it is not supported.
//! - a message whose arrays hold no `classifier.*` (every fedprompt trainable set has its
//!   classification head): an error reply saying the ServerApp does not look like a fedprompt
//!   app, with what it sent (see [`describe`]); the node logs the reply.
//!
//! The model description (PEFT method, labels, maximum length) comes with the message, as
//! the JSON string `fedprompt-spec` of the ConfigRecord, or from the node's own settings.
//! Flower's hyphenated config keys map onto fedprompt's: `server-round` is the round,
//! `local-epochs` (or `epochs`), `learning-rate` (or `lr`), `batch-size`, `seed`,
//! `proximal-mu` (FedProx), and `clipping_norm`: sent by Flower's
//! `DifferentialPrivacyClientSideFixedClipping`, it makes the node clip its update's delta
//! from the global to that L2 norm before replying, as Flower's `fixedclipping_mod` does.

use std::collections::BTreeMap;

use fedprompt_fl::{keys, ClientConfig, ConfigValue, Params, Tensor};
use fedprompt_train::client::{LocalTrainer, ModelSpec, Task};

use crate::node::{MessageHandler, CLIENT_APP_RAISED_EXCEPTION};
use crate::proto::{self, config_record_value::Value as Cv, metric_record_value::Value as Mv};
use crate::records::{Array, ArrayRecord, Message, Record, RecordDict};

/// ConfigRecord key carrying the model description as JSON.
pub const SPEC_KEY: &str = "fedprompt-spec";
/// Reply record names (those of Flower's stock strategies).
pub const ARRAYS_KEY: &str = "arrays";
/// Reply metric record name.
pub const METRICS_KEY: &str = "metrics";

/// A Flower client app backed by a fedprompt [`LocalTrainer`].
pub struct FedpromptApp<T: LocalTrainer> {
    trainer: T,
    spec: Option<ModelSpec>,
}

impl<T: LocalTrainer> FedpromptApp<T> {
    /// An app with a trainer and, optionally, a local model description (used when the
    /// messages carry none).
    pub fn new(trainer: T, spec: Option<ModelSpec>) -> Self {
        Self { trainer, spec }
    }

    /// The trainer.
    pub fn trainer(&self) -> &T {
        &self.trainer
    }
}

/// Flower's ConfigRecord as fedprompt's round configuration (keys normalised, the model
/// description taken out).
pub fn client_config(items: &[&proto::config_record::Item]) -> (ClientConfig, Option<String>) {
    let mut cfg = ClientConfig::new();
    let mut spec = None;
    for it in items {
        let Some(v) = it.value.as_ref().and_then(|v| v.value.as_ref()) else {
            continue;
        };
        if it.key == SPEC_KEY {
            if let Cv::String(s) = v {
                spec = Some(s.clone());
            }
            continue;
        }
        let value = match v {
            Cv::Double(x) => ConfigValue::Float(*x),
            Cv::Sint64(x) => ConfigValue::Int(*x),
            Cv::Uint64(x) => ConfigValue::Int(*x as i64),
            Cv::Bool(b) => ConfigValue::Bool(*b),
            Cv::String(s) => ConfigValue::Str(s.clone()),
            _ => continue, // lists and bytes mean nothing to fedprompt's trainer
        };
        let key = match it.key.replace('-', "_").as_str() {
            "server_round" => keys::ROUND.to_string(),
            "local_epochs" => keys::EPOCHS.to_string(),
            "lr" => keys::LEARNING_RATE.to_string(),
            k => k.to_string(),
        };
        cfg.insert(key, value);
    }
    (cfg, spec)
}

/// The arrays of a message as fedprompt parameters (float32; other float and integer dtypes
/// converted).
pub fn params_from_arrays(ar: &ArrayRecord) -> Result<Params, String> {
    let mut p = Params::new();
    for (name, a) in &ar.0 {
        let values = a.to_f32().map_err(|e| format!("array `{name}`: {e}"))?;
        let t = Tensor::new(a.shape.clone(), values).map_err(|e| format!("array `{name}`: {e}"))?;
        if p.insert(name.clone(), t).is_some() {
            return Err(format!("array `{name}` appears twice"));
        }
    }
    Ok(p)
}

/// Parameters as an ArrayRecord, in `order` (names not in `order` follow, sorted).
pub fn arrays_from_params(p: &Params, order: &[String]) -> ArrayRecord {
    let mut names: Vec<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|n| p.get(n).is_some())
        .collect();
    for n in p.names() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    ArrayRecord(
        names
            .into_iter()
            .filter_map(|n| {
                p.get(n)
                    .map(|t| (n.to_string(), Array::from_f32(t.shape(), t.data())))
            })
            .collect(),
    )
}

fn metric_record(items: &[(&str, Mv)]) -> proto::MetricRecord {
    proto::MetricRecord {
        items: items
            .iter()
            .map(|(k, v)| proto::metric_record::Item {
                key: k.to_string(),
                value: Some(proto::MetricRecordValue {
                    value: Some(v.clone()),
                }),
            })
            .collect(),
    }
}

/// What a message carries, for error replies and logs: its type, its records, the first
/// arrays' names and shapes, and its config keys.
pub fn describe(message: &Message) -> String {
    let kind = &message.metadata.message_type;
    let Some(content) = message.content.as_ref() else {
        return format!("a `{kind}` message without content");
    };
    let arrays = match content.arrays() {
        None => "no ArrayRecord".to_string(),
        Some((name, a)) => {
            const SHOWN: usize = 5;
            let mut list: Vec<String> =
                a.0.iter()
                    .take(SHOWN)
                    .map(|(n, arr)| format!("`{n}` {:?}", arr.shape))
                    .collect();
            if a.0.len() > SHOWN {
                list.push(format!("{} more", a.0.len() - SHOWN));
            }
            format!(
                "ArrayRecord `{name}` with {} array{} ({})",
                a.0.len(),
                if a.0.len() == 1 { "" } else { "s" },
                list.join(", ")
            )
        }
    };
    let mut keys: Vec<&str> = content.config().iter().map(|i| i.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let config = if keys.is_empty() {
        "no config keys".to_string()
    } else {
        format!(
            "config keys {}",
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!("a `{kind}` message with {arrays} and {config}")
}

fn fail(msg: impl Into<String>) -> (i64, String) {
    (
        CLIENT_APP_RAISED_EXCEPTION,
        format!("fedprompt node: {}", msg.into()),
    )
}

impl<T: LocalTrainer> MessageHandler for FedpromptApp<T> {
    fn handle(&mut self, message: &Message) -> Result<RecordDict, (i64, String)> {
        let kind = message
            .metadata
            .message_type
            .split('.')
            .next()
            .unwrap_or("");
        if kind != "train" && kind != "evaluate" {
            return Err(fail(format!(
                "message type `{}` is not supported (only `train` and `evaluate`)",
                message.metadata.message_type
            )));
        }
        let content = message
            .content
            .as_ref()
            .ok_or_else(|| fail("the message has no content"))?;
        let (config, spec_json) = client_config(&content.config());
        // fedprompt's trainable set always holds its classification head (`classifier.*`);
        // arrays without one come from a ServerApp that is not fedprompt's.
        let fedprompt_arrays = content
            .arrays()
            .is_some_and(|(_, a)| a.0.iter().any(|(n, _)| n.starts_with("classifier.")));
        if !fedprompt_arrays {
            let reason = format!(
                "the ServerApp does not look like a fedprompt app: it sent {}, and fedprompt's trainable set always holds `classifier.*` arrays. This node only answers a fedprompt ServerApp (such as interop/flower/fedprompt_app) whose arrays are the trainable set under fedprompt's names",
                describe(message)
            );
            return Err(fail(reason));
        }
        let spec = match spec_json {
            Some(s) => Some(serde_json::from_str::<ModelSpec>(&s).map_err(|e| {
                fail(format!(
                    "`{SPEC_KEY}` is not a valid model description: {e}"
                ))
            })?),
            None => self.spec.clone(),
        };
        let spec = spec.ok_or_else(|| {
            fail(format!(
                "no model description: the ServerApp sent fedprompt's arrays but no `{SPEC_KEY}` in the ConfigRecord ({}); make it send one, or start the node with `--spec`",
                describe(message)
            ))
        })?;
        let (_, arrays) = content
            .arrays()
            .ok_or_else(|| fail("the message carries no ArrayRecord (the global model)"))?;
        let global = params_from_arrays(arrays).map_err(fail)?;
        global
            .check_finite()
            .map_err(|e| fail(format!("the global model: {e}")))?;
        let round = match config.get(keys::ROUND) {
            Some(ConfigValue::Int(r)) if *r >= 0 => *r as u64,
            _ => 0,
        };
        let task = Task {
            round,
            config: &config,
            global: &global,
            model: Some(&spec),
        };
        let order: Vec<String> = arrays.0.iter().map(|(k, _)| k.clone()).collect();
        if kind == "train" {
            let mut r = self.trainer.fit(&task).map_err(|e| fail(e.to_string()))?;
            // Flower's client-side fixed clipping sends `clipping_norm`: clip the delta to it.
            fedprompt_train::apply_client_dp(&task, &mut r).map_err(|e| fail(e.to_string()))?;
            if !r.params.same_layout(&global) {
                return Err(fail(
                    "training changed the names or shapes of the trainable set",
                ));
            }
            let loss = r.metrics.get("train_loss").copied().unwrap_or(f64::NAN);
            Ok(RecordDict(vec![
                (
                    ARRAYS_KEY.into(),
                    Record::Arrays(arrays_from_params(&r.params, &order)),
                ),
                (
                    METRICS_KEY.into(),
                    Record::Metrics(metric_record(&[
                        ("num-examples", Mv::Sint64(r.num_examples as i64)),
                        ("train_loss", Mv::Double(loss)),
                    ])),
                ),
            ]))
        } else {
            let r = self
                .trainer
                .evaluate(&task)
                .map_err(|e| fail(e.to_string()))?;
            let get = |k: &str| r.metrics.get(k).copied().unwrap_or(f64::NAN);
            Ok(RecordDict(vec![(
                METRICS_KEY.into(),
                Record::Metrics(metric_record(&[
                    ("num-examples", Mv::Sint64(r.num_examples as i64)),
                    ("accuracy", Mv::Double(get("accuracy"))),
                    ("loss", Mv::Double(get("loss"))),
                ])),
            )]))
        }
    }
}

/// Reads a metric as f64 (for summaries and tests).
pub fn metric(rec: &proto::MetricRecord, key: &str) -> Option<f64> {
    rec.items.iter().find(|i| i.key == key).and_then(|i| {
        match i.value.as_ref()?.value.as_ref()? {
            Mv::Double(x) => Some(*x),
            Mv::Sint64(x) => Some(*x as f64),
            Mv::Uint64(x) => Some(*x as f64),
            _ => None,
        }
    })
}

/// Reads the config of a record dict into a map (for logs and tests).
pub fn config_map(rd: &RecordDict) -> BTreeMap<String, ConfigValue> {
    client_config(&rd.config()).0
}
