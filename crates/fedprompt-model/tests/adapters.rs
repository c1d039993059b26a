//! Adapters: PEFT-saved adapters load in fedprompt and reproduce PEFT's logits; fedprompt's
//! own adapters round-trip exactly. (That fedprompt's adapters load in Python PEFT is checked
//! by `scripts/check_adapter_in_peft.py`, see the README.)

use candle_core::Tensor;
use fedprompt_model::{adapter, Backbone, Classifier, ForwardCtx, MethodConfig};

mod common;

use common::{batch_from, fixtures, labels3, load_refs, max_abs_diff};

#[test]
fn peft_adapters_load_and_reproduce_peft_logits() {
    for family in ["xlmr", "bert"] {
        let backbone = Backbone::load(&fixtures().join(format!("tiny-{family}"))).unwrap();
        for m in ["prompt", "prompt-encoder", "lora"] {
            let dir = fixtures().join(format!("adapters/{family}-{m}"));
            let meta = adapter::read_meta(&dir).unwrap();
            let clf = Classifier::new(&backbone, &meta.method, &labels3(), 7).unwrap();
            adapter::load(&clf, &dir).unwrap();
            let r = load_refs(&format!("{family}-{m}"));
            let logits = clf.forward(&batch_from(&r), &ForwardCtx::eval()).unwrap();
            let d = max_abs_diff(&logits, &r["logits"]);
            assert!(d <= 1e-4, "{family}-{m}: logits differ by {d}");
        }
    }
}

#[test]
fn head_file_loads() {
    for family in ["xlmr", "bert"] {
        let backbone = Backbone::load(&fixtures().join(format!("tiny-{family}"))).unwrap();
        let clf = Classifier::new(&backbone, &MethodConfig::Head, &labels3(), 7).unwrap();
        clf.trainable()
            .load(&fixtures().join(format!("adapters/{family}-head/head.safetensors")))
            .unwrap();
        let r = load_refs(&format!("{family}-head"));
        let logits = clf.forward(&batch_from(&r), &ForwardCtx::eval()).unwrap();
        assert!(max_abs_diff(&logits, &r["logits"]) <= 1e-4, "{family}-head");
    }
}

#[test]
fn own_adapters_round_trip_exactly() {
    let backbone = Backbone::load(&fixtures().join("tiny-xlmr")).unwrap();
    let r = load_refs("xlmr-lora");
    let methods = [
        MethodConfig::Prompt {
            num_virtual_tokens: 3,
            init_text: Some("hello world".into()),
        },
        MethodConfig::PromptEncoder {
            num_virtual_tokens: 2,
            encoder_hidden_size: 8,
        },
        MethodConfig::Lora {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: vec!["query".into(), "value".into(), "dense".into()],
        },
        MethodConfig::Head,
        MethodConfig::Full,
    ];
    for m in methods {
        let a = Classifier::new(&backbone, &m, &labels3(), 1).unwrap();
        // Move away from the initial values so the round trip is meaningful.
        for (_, v) in a.trainable().iter() {
            let noise = Tensor::randn(0f32, 0.05, v.shape(), v.device()).unwrap();
            v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        adapter::save(&a, &backbone, dir.path()).unwrap();
        let meta = adapter::read_meta(dir.path()).unwrap();
        assert_eq!(meta.method, m);
        assert_eq!(meta.labels.as_deref(), Some(labels3().as_slice()));
        let b = Classifier::new(&backbone, &meta.method, &labels3(), 99).unwrap();
        adapter::load(&b, dir.path()).unwrap();
        let la = a.forward(&batch_from(&r), &ForwardCtx::eval()).unwrap();
        let lb = b.forward(&batch_from(&r), &ForwardCtx::eval()).unwrap();
        assert_eq!(max_abs_diff(&la, &lb), 0.0, "{}", m.name());
        // PEFT-layout files exist for the methods PEFT knows.
        let peft = dir.path().join("adapter_model.safetensors").is_file();
        assert_eq!(
            peft,
            matches!(
                m,
                MethodConfig::Prompt { .. }
                    | MethodConfig::PromptEncoder { .. }
                    | MethodConfig::Lora { .. }
            )
        );
    }
}
