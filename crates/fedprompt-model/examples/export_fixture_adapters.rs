//! Writes fedprompt adapters holding the parity fixtures' exact values, so that
//! `scripts/check_adapter_in_peft.py` can prove they load in Python PEFT:
//!
//! ```sh
//! cargo run -p fedprompt-model --example export_fixture_adapters -- /tmp/fp-adapters
//! for c in xlmr-prompt xlmr-lora bert-prompt bert-lora xlmr-prompt-encoder; do
//!   python scripts/check_adapter_in_peft.py --model crates/fedprompt-model/tests/fixtures/tiny-${c%%-*} \
//!     --adapter /tmp/fp-adapters/$c --refs crates/fedprompt-model/tests/fixtures/refs/$c.safetensors
//! done
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedprompt_model::{adapter, Backbone, Classifier, MethodConfig};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/fp-adapters".into()),
    );
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let labels: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
    for family in ["xlmr", "bert"] {
        let backbone = Backbone::load(&fx.join(format!("tiny-{family}")))?;
        for m in ["prompt", "prompt-encoder", "lora"] {
            let method = match m {
                "prompt" => MethodConfig::Prompt {
                    num_virtual_tokens: 4,
                    init_text: None,
                },
                "prompt-encoder" => MethodConfig::PromptEncoder {
                    num_virtual_tokens: 4,
                    encoder_hidden_size: 16,
                },
                _ => MethodConfig::Lora {
                    r: 4,
                    alpha: 8.0,
                    dropout: 0.1,
                    target_modules: vec!["query".into(), "value".into()],
                },
            };
            let clf = Classifier::new(&backbone, &method, &labels, 0)?;
            let refs = candle_core::safetensors::load(
                fx.join(format!("refs/{family}-{m}.safetensors")),
                &candle_core::Device::Cpu,
            )?;
            let mut values = BTreeMap::new();
            for (k, v) in refs {
                if let Some(n) = k.strip_prefix("param/") {
                    let name = if n == "prompt_encoder.default.embedding.weight" && m == "prompt" {
                        "prompt_embeddings".to_string()
                    } else if let Some(rest) = n.strip_prefix("prompt_encoder.default.") {
                        format!("prompt_encoder.{rest}")
                    } else {
                        adapter::from_peft_key(n)
                    };
                    values.insert(name, v);
                }
            }
            clf.trainable().assign(&values, Path::new("refs"))?;
            let dir = out.join(format!("{family}-{m}"));
            adapter::save(&clf, &backbone, &dir)?;
            println!("wrote {}", dir.display());
        }
    }
    Ok(())
}
