//! Adapters on disk, in PEFT's own layout so that Python users load them with
//! `PeftModel.from_pretrained`, and fedprompt loads adapters saved by PEFT.
//!
//! A folder written by fedprompt holds:
//! - `adapter_config.json` + `adapter_model.safetensors` (PEFT's names) for prompt tuning,
//!   P-tuning and LoRA;
//! - `trainable.safetensors`: the whole trainable set under fedprompt's names (for P-tuning this
//!   includes the MLP, which PEFT does not save; for head-only and full fine-tuning it is the
//!   only weight file, under Hugging Face's names, loadable with `load_state_dict(strict=False)`);
//! - `fedprompt_adapter.json`: the method, the labels and the model shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backbone::Backbone;
use crate::classifier::Classifier;
use crate::error::{ModelError, Result};
use crate::peft::MethodConfig;
use crate::trainable::{save_tensors, write_atomic};
use crate::weights::Weights;

/// File with fedprompt's own description of an adapter.
pub const META_FILE: &str = "fedprompt_adapter.json";
/// File with the full trainable set under fedprompt's names.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";

/// What an adapter folder says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterMeta {
    /// Format tag.
    pub format: String,
    /// The method that trained it.
    pub method: MethodConfig,
    /// Label names in logit order, when known.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Hidden size of the model it belongs to.
    pub hidden_size: usize,
    /// Layers of the model it belongs to.
    pub num_layers: usize,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Reads the method of an adapter folder: fedprompt's own description, or PEFT's
/// `adapter_config.json` (a PEFT P-tuning adapter stores only the encoder's output, so it is
/// read as a soft prompt).
pub fn read_meta(dir: &Path) -> Result<AdapterMeta> {
    if !dir.is_dir() {
        return Err(ModelError::NotFound {
            what: "adapter folder",
            path: dir.to_path_buf(),
            hint: "pass the folder written by `fedprompt train` or PEFT's save_pretrained",
        });
    }
    let own = dir.join(META_FILE);
    if own.is_file() {
        let text = std::fs::read_to_string(&own).map_err(|e| ModelError::io(&own, e))?;
        return serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: own,
            msg: e.to_string(),
        });
    }
    let cfg_path = dir.join("adapter_config.json");
    if !cfg_path.is_file() {
        return Err(ModelError::NotFound {
            what: "adapter_config.json",
            path: cfg_path,
            hint: "an adapter folder needs adapter_config.json + adapter_model.safetensors (PEFT) or fedprompt_adapter.json",
        });
    }
    let v = read_json(&cfg_path)?;
    let get_usize = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
    let bad = |msg: String| ModelError::Config {
        path: cfg_path.clone(),
        msg,
    };
    let peft_type = v
        .get("peft_type")
        .and_then(|x| x.as_str())
        .ok_or_else(|| bad("no `peft_type`".into()))?;
    if let Some(t) = v.get("task_type").and_then(|x| x.as_str()) {
        if t != "SEQ_CLS" {
            return Err(bad(format!(
                "task_type `{t}`: fedprompt loads sequence-classification adapters (SEQ_CLS)"
            )));
        }
    }
    let (method, hidden) = match peft_type {
        "PROMPT_TUNING" | "P_TUNING" => {
            let n = get_usize("num_virtual_tokens")
                .ok_or_else(|| bad("no `num_virtual_tokens`".into()))?;
            if get_usize("num_transformer_submodules").unwrap_or(1) != 1 {
                return Err(bad(
                    "num_transformer_submodules must be 1 for an encoder".into()
                ));
            }
            (
                MethodConfig::Prompt {
                    num_virtual_tokens: n,
                    init_text: None,
                },
                get_usize("token_dim"),
            )
        }
        "LORA" => {
            let r = get_usize("r").ok_or_else(|| bad("no `r`".into()))?;
            let alpha = v
                .get("lora_alpha")
                .and_then(|x| x.as_f64())
                .ok_or_else(|| bad("no `lora_alpha`".into()))?;
            for flag in ["use_dora", "use_rslora"] {
                if v.get(flag).and_then(|x| x.as_bool()).unwrap_or(false) {
                    return Err(bad(format!("`{flag}` is not supported")));
                }
            }
            if v.get("bias").and_then(|x| x.as_str()).unwrap_or("none") != "none" {
                return Err(bad(
                    "LoRA `bias` other than \"none\" is not supported".into()
                ));
            }
            let targets: Vec<String> = match v.get("target_modules") {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                _ => return Err(bad("no `target_modules` list".into())),
            };
            (
                MethodConfig::Lora {
                    r,
                    alpha,
                    dropout: v
                        .get("lora_dropout")
                        .and_then(|x| x.as_f64())
                        .unwrap_or(0.0),
                    target_modules: targets,
                },
                None,
            )
        }
        other => {
            return Err(bad(format!(
                "PEFT type `{other}` is not supported (PROMPT_TUNING, P_TUNING, LORA)"
            )))
        }
    };
    method.validate()?;
    Ok(AdapterMeta {
        format: "peft".into(),
        method,
        labels: None,
        hidden_size: hidden.unwrap_or(0),
        num_layers: get_usize("num_layers").unwrap_or(0),
    })
}

/// PEFT's saved key of a fedprompt trainable name, for methods PEFT knows.
fn peft_key(method: &MethodConfig, name: &str) -> Option<String> {
    match method {
        MethodConfig::Prompt { .. } | MethodConfig::PromptEncoder { .. } => {
            if name.starts_with("classifier.") {
                Some(format!("base_model.{name}"))
            } else if name == crate::peft::prompt::PROMPT_NAME {
                Some(name.to_string())
            } else {
                None
            }
        }
        MethodConfig::Lora { .. } => Some(format!("base_model.model.{name}")),
        _ => None,
    }
}

/// fedprompt's trainable name of a key in a PEFT `adapter_model.safetensors`.
pub fn from_peft_key(key: &str) -> String {
    let k = key
        .strip_prefix("base_model.model.")
        .or_else(|| key.strip_prefix("base_model."))
        .unwrap_or(key);
    k.replace(".modules_to_save.default.", ".")
        .replace(".modules_to_save.", ".")
        .replace(".default.", ".")
}

/// Saves the classifier's trainable set into `dir` (see the module docs for the files).
pub fn save(classifier: &Classifier, backbone: &Backbone, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let cfg = backbone.config();
    let method = classifier.method();
    let snap = classifier.trainable().snapshot()?;
    save_tensors(&snap, &dir.join(TRAINABLE_FILE))?;

    let meta = AdapterMeta {
        format: "fedprompt-adapter/1".into(),
        method: method.clone(),
        labels: Some(classifier.labels().to_vec()),
        hidden_size: cfg.hidden_size,
        num_layers: cfg.num_hidden_layers,
    };
    let meta_text = serde_json::to_string_pretty(&meta).expect("serialisable meta");
    write_atomic(&dir.join(META_FILE), meta_text.as_bytes())?;

    let base = backbone
        .folder()
        .canonicalize()
        .unwrap_or_else(|_| backbone.folder().to_path_buf())
        .to_string_lossy()
        .to_string();
    let peft_cfg = match method {
        MethodConfig::Prompt {
            num_virtual_tokens,
            init_text,
        } => Some(json!({
            "peft_type": "PROMPT_TUNING", "task_type": "SEQ_CLS",
            "num_virtual_tokens": num_virtual_tokens, "token_dim": cfg.hidden_size,
            "num_transformer_submodules": 1, "num_attention_heads": cfg.num_attention_heads,
            "num_layers": cfg.num_hidden_layers,
            "prompt_tuning_init": if init_text.is_some() { "TEXT" } else { "RANDOM" },
            "prompt_tuning_init_text": init_text,
            "tokenizer_name_or_path": init_text.as_ref().map(|_| base.clone()),
            "base_model_name_or_path": base, "inference_mode": true,
            "modules_to_save": ["classifier", "score"], "revision": null,
        })),
        MethodConfig::PromptEncoder {
            num_virtual_tokens,
            encoder_hidden_size,
        } => Some(json!({
            "peft_type": "P_TUNING", "task_type": "SEQ_CLS",
            "num_virtual_tokens": num_virtual_tokens, "token_dim": cfg.hidden_size,
            "num_transformer_submodules": 1, "num_attention_heads": cfg.num_attention_heads,
            "num_layers": cfg.num_hidden_layers, "encoder_hidden_size": encoder_hidden_size,
            "encoder_reparameterization_type": "MLP", "encoder_num_layers": 2,
            "encoder_dropout": 0.0, "base_model_name_or_path": base, "inference_mode": true,
            "modules_to_save": ["classifier", "score"], "revision": null,
        })),
        MethodConfig::Lora {
            r,
            alpha,
            dropout,
            target_modules,
        } => Some(json!({
            "peft_type": "LORA", "task_type": "SEQ_CLS", "r": r, "lora_alpha": alpha,
            "lora_dropout": dropout, "target_modules": target_modules, "bias": "none",
            "fan_in_fan_out": false, "init_lora_weights": true, "use_rslora": false,
            "use_dora": false, "base_model_name_or_path": base, "inference_mode": true,
            "modules_to_save": ["classifier", "score"], "revision": null,
        })),
        MethodConfig::Head | MethodConfig::Full => None,
    };
    if let Some(peft_cfg) = peft_cfg {
        let mut peft_tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, t) in &snap {
            if let Some(k) = peft_key(method, name) {
                peft_tensors.insert(k, t.clone());
            }
        }
        if matches!(method, MethodConfig::PromptEncoder { .. }) {
            // PEFT saves P-tuning's output embeddings, not the MLP.
            if let Some(p) = classifier.prompt_embeddings()? {
                peft_tensors.insert(crate::peft::prompt::PROMPT_NAME.into(), p.detach());
            }
        }
        save_tensors(&peft_tensors, &dir.join("adapter_model.safetensors"))?;
        let text = serde_json::to_string_pretty(&peft_cfg).expect("serialisable config");
        write_atomic(&dir.join("adapter_config.json"), text.as_bytes())?;
    }
    Ok(())
}

/// Loads an adapter folder's values into a classifier built with the adapter's method
/// (see [`read_meta`]).
pub fn load(classifier: &Classifier, dir: &Path) -> Result<()> {
    let own = dir.join(TRAINABLE_FILE);
    if own.is_file() {
        return classifier.trainable().load(&own);
    }
    let file: PathBuf = dir.join("adapter_model.safetensors");
    if !file.is_file() {
        return Err(ModelError::NotFound {
            what: "adapter weights",
            path: file,
            hint: "the folder needs adapter_model.safetensors (PEFT) or trainable.safetensors (fedprompt)",
        });
    }
    let w = Weights::open_file(&file)?;
    let mut values = BTreeMap::new();
    for key in w.shapes().keys() {
        values.insert(from_peft_key(key), w.get_any(key)?);
    }
    classifier.trainable().assign(&values, &file)
}
