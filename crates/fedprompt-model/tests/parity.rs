//! Parity with PyTorch + transformers + PEFT: logits, loss and every trainable tensor's
//! gradient on tiny random XLM-R and BERT models, for every method. The references are made
//! by `scripts/make_parity_fixtures.py` and committed under `tests/fixtures/`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::DType;
mod common;

use common::{batch_from, fixtures, labels3, load_refs, max_abs, max_abs_diff};
use fedprompt_model::adapter::from_peft_key;
use fedprompt_model::nn::cross_entropy;
use fedprompt_model::{Backbone, Classifier, ForwardCtx, MethodConfig, TextInput};

fn method(m: &str) -> MethodConfig {
    match m {
        "prompt" => MethodConfig::Prompt {
            num_virtual_tokens: 4,
            init_text: None,
        },
        "prompt-encoder" => MethodConfig::PromptEncoder {
            num_virtual_tokens: 4,
            encoder_hidden_size: 16,
        },
        "lora" => MethodConfig::Lora {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            target_modules: vec!["query".into(), "value".into()],
        },
        "head" => MethodConfig::Head,
        "full" => MethodConfig::Full,
        _ => unreachable!(),
    }
}

/// Our trainable name of a PyTorch `named_parameters()` name.
fn our_name(method: &str, torch_name: &str) -> String {
    if torch_name == "prompt_encoder.default.embedding.weight" && method == "prompt" {
        return "prompt_embeddings".into();
    }
    if let Some(rest) = torch_name.strip_prefix("prompt_encoder.default.") {
        return format!("prompt_encoder.{rest}");
    }
    from_peft_key(torch_name)
}

fn check_case(family: &str, m: &str) {
    let case = format!("{family}-{m}");
    let backbone = Backbone::load(&fixtures().join(format!("tiny-{family}"))).unwrap();
    let clf = Classifier::new(&backbone, &method(m), &labels3(), 0).unwrap();
    let refs = load_refs(&case);

    // Same trainable set as PEFT, name for name, and start from PEFT's exact values.
    let mut values = BTreeMap::new();
    let mut grads_ref = BTreeMap::new();
    for (k, v) in &refs {
        if let Some(n) = k.strip_prefix("param/") {
            values.insert(our_name(m, n), v.clone());
        }
        if let Some(n) = k.strip_prefix("grad/") {
            grads_ref.insert(our_name(m, n), v.clone());
        }
    }
    let ours: Vec<&str> = clf.trainable().names().collect();
    let theirs: Vec<&str> = values.keys().map(|s| s.as_str()).collect();
    assert_eq!(ours, theirs, "{case}: trainable set differs from PEFT's");
    clf.trainable().assign(&values, Path::new("refs")).unwrap();

    let batch = batch_from(&refs);
    let logits = clf.forward(&batch, &ForwardCtx::eval_with_grad()).unwrap();
    let d = max_abs_diff(&logits, &refs["logits"]);
    assert!(d <= 1e-4, "{case}: logits differ by {d}");

    let loss = cross_entropy(&logits, &refs["labels"]).unwrap();
    let loss_ref = refs["loss"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let l = loss.to_scalar::<f32>().unwrap();
    assert!(
        (l - loss_ref).abs() <= 1e-4,
        "{case}: loss {l} vs {loss_ref}"
    );

    let grads = loss.backward().unwrap();
    for (name, var) in clf.trainable().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{case}: no gradient reached `{name}`"));
        let r = &grads_ref[name];
        let scale = max_abs(r).max(1e-3);
        let d = max_abs_diff(g, r);
        assert!(
            d <= 1e-4 * scale,
            "{case}: gradient of `{name}` differs by {d} (scale {scale})"
        );
    }
    // The frozen backbone accumulates no weight gradients (except in full fine-tuning, where
    // it is the trainable set).
    // Frozen, the word embeddings are not even a tensor: they stay in the file.
    if m != "full" {
        let table = clf.encoder().embeddings().word_embeddings();
        assert!(
            table.tensor().is_none(),
            "{case}: frozen word embeddings were loaded as a tensor"
        );
    } else {
        let enc = clf.encoder().embeddings().word_embeddings().tensor();
        let enc =
            enc.unwrap_or_else(|| panic!("{case}: trainable word embeddings are not a tensor"));
        assert!(
            grads.get(enc).is_some(),
            "{case}: trainable word embeddings received no gradient"
        );
    }
}

macro_rules! parity {
    ($name:ident, $fam:expr, $m:expr) => {
        #[test]
        fn $name() {
            check_case($fam, $m);
        }
    };
}

parity!(xlmr_prompt, "xlmr", "prompt");
parity!(xlmr_prompt_encoder, "xlmr", "prompt-encoder");
parity!(xlmr_lora, "xlmr", "lora");
parity!(xlmr_head, "xlmr", "head");
parity!(xlmr_full, "xlmr", "full");
parity!(bert_prompt, "bert", "prompt");
parity!(bert_prompt_encoder, "bert", "prompt-encoder");
parity!(bert_lora, "bert", "lora");
parity!(bert_head, "bert", "head");
parity!(bert_full, "bert", "full");

/// Largest logit difference allowed between the bf16 backbone and PyTorch's fp32 logits on the
/// parity fixtures (logits of these tiny models are O(0.1–1)). Measured: see
/// `docs/performance.md`.
const BF16_LOGIT_TOL: f32 = 2e-2;

/// Fast mode: the same cases with the backbone's matrices in bf16 (and, on AMX CPUs, the
/// products' activations rounded to bf16), against PyTorch's fp32 logits.
#[test]
fn bf16_backbone_logits_near_fp32() {
    let mut report = Vec::new();
    for family in ["xlmr", "bert"] {
        for m in ["prompt", "prompt-encoder", "lora", "head"] {
            let case = format!("{family}-{m}");
            let dir = fixtures().join(format!("tiny-{family}"));
            let backbone = Backbone::load_with(&dir, fedprompt_model::WeightDtype::Bf16).unwrap();
            let clf = Classifier::new(&backbone, &method(m), &labels3(), 0).unwrap();
            let refs = load_refs(&case);
            let mut values = BTreeMap::new();
            for (k, v) in &refs {
                if let Some(n) = k.strip_prefix("param/") {
                    values.insert(our_name(m, n), v.clone());
                }
            }
            clf.trainable().assign(&values, Path::new("refs")).unwrap();
            let batch = batch_from(&refs);
            let logits = clf.forward(&batch, &ForwardCtx::eval()).unwrap();
            let d = max_abs_diff(&logits, &refs["logits"]);
            report.push(format!("{case}: {d:.2e}"));
            assert!(
                d <= BF16_LOGIT_TOL,
                "{case}: bf16 logits differ from fp32 by {d} (> {BF16_LOGIT_TOL})"
            );
            // Not exact: the bf16 path really runs (a difference of 0 would mean f32 weights).
            assert!(d > 0.0, "{case}: bf16 logits equal fp32 exactly");
        }
    }
    eprintln!("bf16 vs fp32 max |Δlogit|: {}", report.join(", "));
}

#[test]
fn tokenizer_matches_hugging_face() {
    let text: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("refs/xlmr-lora.json")).unwrap(),
    )
    .unwrap();
    let backbone = Backbone::load(&fixtures().join("tiny-xlmr")).unwrap();
    let refs = load_refs("xlmr-lora");
    let ids = refs["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = refs["attention_mask"].to_dtype(DType::U32).unwrap();
    let texts = text["texts"].as_array().unwrap();
    let pairs = text["text_pairs"].as_array().unwrap();
    for (i, t) in texts.iter().enumerate() {
        let input = TextInput {
            text: t.as_str().unwrap().to_string(),
            text_pair: pairs[i].as_str().map(String::from),
        };
        let (ours, _) = backbone.text_encoder().encode(&input).unwrap();
        let n = mask
            .get(i)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<u32>()
            .unwrap() as usize;
        let theirs: Vec<u32> = ids.get(i).unwrap().to_vec1().unwrap()[..n].to_vec();
        assert_eq!(ours, theirs, "row {i}");
    }
}

#[test]
fn sharded_folder_equals_single_file() {
    let a = Backbone::load(&fixtures().join("tiny-xlmr")).unwrap();
    let b = Backbone::load(&fixtures().join("tiny-xlmr-sharded")).unwrap();
    let refs = load_refs("xlmr-head");
    let batch = batch_from(&refs);
    let ctx = ForwardCtx::eval();
    let ha = a
        .encoder()
        .forward(&batch.input_ids, &batch.attention_mask, None, &ctx)
        .unwrap();
    let hb = b
        .encoder()
        .forward(&batch.input_ids, &batch.attention_mask, None, &ctx)
        .unwrap();
    assert_eq!(max_abs_diff(&ha, &hb), 0.0);
}

#[test]
fn text_init_matches_peft() {
    let backbone = Backbone::load(&fixtures().join("tiny-xlmr")).unwrap();
    let refs = load_refs("prompt-text-init");
    for n in [1usize, 12] {
        let m = MethodConfig::Prompt {
            num_virtual_tokens: n,
            init_text: Some(fedprompt_model::peft::PAPER_INIT_TEXT.into()),
        };
        let clf = Classifier::new(&backbone, &m, &labels3(), 0).unwrap();
        let p = clf.prompt_embeddings().unwrap().unwrap();
        let r = &refs[&format!("prompt_init_{n}")];
        assert_eq!(max_abs_diff(&p, r), 0.0, "text init with {n} tokens");
    }
}

/// One rayon pool of one thread and one of two, for the tests below that compare a batch cut
/// over two threads with the whole batch on one.
fn one_and_two_threads() -> (rayon::ThreadPool, rayon::ThreadPool) {
    let pool = |n: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    (pool(1), pool(2))
}

/// A tiny family, a weight dtype, its backbone and a batch.
type CutCase = (
    &'static str,
    fedprompt_model::WeightDtype,
    Backbone,
    fedprompt_model::Batch,
);

/// For each tiny family and weight dtype: the backbone and a batch of `n` texts of various
/// lengths (words the tiny tokenizer knows; text `i` repeated `min_repeat + i % span` times).
fn cut_cases(n: usize, min_repeat: usize, span: usize) -> Vec<CutCase> {
    let mut cases = Vec::new();
    for family in ["xlmr", "bert"] {
        for dtype in [
            fedprompt_model::WeightDtype::F32,
            fedprompt_model::WeightDtype::Bf16,
        ] {
            let dir = fixtures().join(format!("tiny-{family}"));
            let backbone = Backbone::load_with(&dir, dtype).unwrap();
            let texts: Vec<TextInput> = (0..n)
                .map(|i| TextInput {
                    text: [
                        "hello world",
                        "the final match of the team",
                        "Börse price bank",
                    ][i % 3]
                        .repeat(min_repeat + i % span),
                    text_pair: None,
                })
                .collect();
            let batch = backbone.text_encoder().batch(&texts).unwrap();
            cases.push((family, dtype, backbone, batch));
        }
    }
    cases
}

/// An inference batch large enough is cut into one part per compute thread (each part's
/// products on one thread); the logits must be those of the whole batch on one thread, bit
/// for bit, for every method and both families, f32 and bf16.
#[test]
fn inference_batch_cut_over_threads_gives_the_same_logits() {
    use fedprompt_model::classifier::{eval_parts, MIN_PART_ROWS};
    let (one, two) = one_and_two_threads();
    for (family, dtype, backbone, batch) in cut_cases(37, 1, 4) {
        for m in ["prompt", "prompt-encoder", "lora", "head"] {
            let clf = Classifier::new(&backbone, &method(m), &labels3(), 5).unwrap();
            let virtual_tokens = if m.starts_with("prompt") { 4 } else { 0 };
            let len = batch.input_ids.dims()[1] + virtual_tokens;
            assert!(
                18 * len >= MIN_PART_ROWS,
                "the batch is too small to be cut"
            );
            assert_eq!(two.install(|| eval_parts(&batch, virtual_tokens)), 2);
            assert_eq!(one.install(|| eval_parts(&batch, virtual_tokens)), 1);
            let eval = ForwardCtx::eval();
            let whole = one.install(|| clf.forward(&batch, &eval)).unwrap();
            let cut = two.install(|| clf.forward(&batch, &eval)).unwrap();
            assert_eq!(cut.dims(), &[37, 3]);
            let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
                (whole.to_vec2().unwrap(), cut.to_vec2().unwrap());
            assert_eq!(a, b, "{family} {m} {dtype:?}");
        }
    }
}

/// A training step's batch large enough is cut into one part per thread inside every frozen
/// layer (forward and backward, dropout on): loss and every trainable gradient must be those
/// of one thread, bit for bit.
#[test]
fn training_step_cut_over_threads_gives_the_same_gradients() {
    let (one, two) = one_and_two_threads();
    for (family, dtype, backbone, batch) in cut_cases(29, 2, 3) {
        let y: Vec<u32> = (0..29).map(|i| (i % 3) as u32).collect();
        let y = candle_core::Tensor::new(y.as_slice(), &candle_core::Device::Cpu).unwrap();
        for m in ["prompt", "prompt-encoder"] {
            let clf = Classifier::new(&backbone, &method(m), &labels3(), 5).unwrap();
            let len = batch.input_ids.dims()[1] + 4;
            assert!(14 * len >= fedprompt_model::classifier::MIN_PART_ROWS);
            let step = || {
                let logits = clf.forward(&batch, &ForwardCtx::train(11)).unwrap();
                let loss = cross_entropy(&logits, &y).unwrap();
                let grads = loss.backward().unwrap();
                let mut out = vec![("loss".to_string(), vec![loss.to_vec0::<f32>().unwrap()])];
                for (name, var) in clf.trainable().iter() {
                    let g = grads
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("{name}"));
                    out.push((
                        name.to_string(),
                        g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    ));
                }
                out
            };
            let whole = one.install(step);
            let cut = two.install(step);
            for (a, b) in whole.iter().zip(&cut) {
                let d =
                    a.1.iter()
                        .zip(&b.1)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                assert!(a == b, "{family} {m} {dtype:?}: {} differs by {d}", a.0);
            }
        }
    }
}
