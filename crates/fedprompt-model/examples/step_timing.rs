//! Times one prompt-tuning training step (forward + backward, gradients only for the soft
//! prompt and the head) and one inference batch on random-weight encoders of the XLM-R-base
//! and multilingual-e5-small shapes:
//!
//! ```sh
//! cargo run --release -p fedprompt-model --example step_timing            # all shapes
//! cargo run --release -p fedprompt-model --example step_timing -- small   # e5-small only
//! ```
//!
//! Sequence lengths are the total the encoder sees, the 8 virtual tokens included.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use fedprompt_model::config::EncoderConfig;
use fedprompt_model::encoder::Encoder;
use fedprompt_model::head::Head;
use fedprompt_model::nn::{cross_entropy, Linear};
use fedprompt_model::weights::{ParamSource, Weights};
use fedprompt_model::ForwardCtx;

const VIRTUAL: usize = 8;

/// CPU seconds (user + system, all threads) of this process so far: steadier than wall time on
/// a machine shared with other jobs.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/<pid>/stat, counted after the command name.
    (ticks(11) + ticks(12)) / 100.0
}
const LABELS: usize = 10;

fn config_json(hidden: usize, heads: usize, ffn: usize, vocab: usize) -> String {
    format!(
        r#"{{"model_type":"xlm-roberta","architectures":["XLMRobertaForSequenceClassification"],
        "vocab_size":{vocab},"hidden_size":{hidden},"num_hidden_layers":12,
        "num_attention_heads":{heads},"intermediate_size":{ffn},"hidden_act":"gelu",
        "max_position_embeddings":514,"type_vocab_size":1,"layer_norm_eps":1e-5,
        "pad_token_id":1}}"#
    )
}

fn random_weights(cfg: &EncoderConfig, dir: &Path) -> anyhow::Result<Weights> {
    let h = cfg.hidden_size;
    let f = cfg.intermediate_size;
    let dev = Device::Cpu;
    let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut put = |name: String, shape: &[usize], ln: Option<f32>| -> anyhow::Result<()> {
        let v = match ln {
            Some(c) => Tensor::full(c, shape, &dev)?,
            None => Tensor::randn(0f32, 0.02, shape, &dev)?,
        };
        t.insert(name, v);
        Ok(())
    };
    let e = "embeddings";
    put(
        format!("{e}.word_embeddings.weight"),
        &[cfg.vocab_size, h],
        None,
    )?;
    put(
        format!("{e}.position_embeddings.weight"),
        &[cfg.max_position_embeddings, h],
        None,
    )?;
    put(format!("{e}.token_type_embeddings.weight"), &[1, h], None)?;
    put(format!("{e}.LayerNorm.weight"), &[h], Some(1.0))?;
    put(format!("{e}.LayerNorm.bias"), &[h], Some(0.0))?;
    for i in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        for (name, o, n) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", f, h),
            ("output.dense", h, f),
        ] {
            put(format!("{p}.{name}.weight"), &[o, n], None)?;
            put(format!("{p}.{name}.bias"), &[o], None)?;
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{name}.weight"), &[h], Some(1.0))?;
            put(format!("{p}.{name}.bias"), &[h], Some(0.0))?;
        }
    }
    let path = dir.join("model.safetensors");
    fedprompt_model::trainable::save_tensors(&t, &path)?;
    Ok(Weights::open_file(&path)?)
}

struct Model {
    encoder: Encoder,
    prompt: Var,
    head: Head,
    vars: Vec<Var>,
}

fn build(cfg: &EncoderConfig, dir: &Path) -> anyhow::Result<Model> {
    let w = random_weights(cfg, dir)?;
    let encoder = Encoder::load(cfg, &ParamSource::frozen(&w))?;
    let h = cfg.hidden_size;
    let dev = Device::Cpu;
    let prompt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (VIRTUAL, h), &dev)?)?;
    let dw = Var::from_tensor(&Tensor::randn(0f32, 0.02, (h, h), &dev)?)?;
    let db = Var::from_tensor(&Tensor::zeros(h, DType::F32, &dev)?)?;
    let ow = Var::from_tensor(&Tensor::randn(0f32, 0.02, (LABELS, h), &dev)?)?;
    let ob = Var::from_tensor(&Tensor::zeros(LABELS, DType::F32, &dev)?)?;
    let head = Head::Roberta {
        dense: Linear::new(dw.as_tensor().clone(), Some(db.as_tensor().clone())),
        out_proj: Linear::new(ow.as_tensor().clone(), Some(ob.as_tensor().clone())),
        dropout: 0.1,
    };
    let vars = vec![prompt.clone(), dw, db, ow, ob];
    Ok(Model {
        encoder,
        prompt,
        head,
        vars,
    })
}

/// Random ids and a mask with some right padding; `total` includes the virtual tokens.
fn batch(cfg: &EncoderConfig, b: usize, total: usize) -> anyhow::Result<(Tensor, Tensor)> {
    let l = total - VIRTUAL;
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..b * l)
        .map(|i| 3 + ((i as u32).wrapping_mul(2_654_435_761u32) >> 7) % (cfg.vocab_size as u32 - 3))
        .collect();
    let mut mask = vec![1u32; b * l];
    for r in 0..b {
        let len = l - (r * l / (2 * b)); // rows padded by 0 .. l/2
        for c in len..l {
            mask[r * l + c] = 0;
        }
    }
    let ones = vec![1u32; b * VIRTUAL];
    let mask = Tensor::cat(
        &[
            &Tensor::from_vec(ones, (b, VIRTUAL), &dev)?,
            &Tensor::from_vec(mask, (b, l), &dev)?,
        ],
        1,
    )?;
    Ok((Tensor::from_vec(ids, (b, l), &dev)?, mask))
}

fn logits(m: &Model, ids: &Tensor, mask: &Tensor, ctx: &ForwardCtx) -> anyhow::Result<Tensor> {
    let e = m.encoder.embed(ids)?;
    let (b, _, h) = e.dims3()?;
    let p = m
        .prompt
        .as_tensor()
        .unsqueeze(0)?
        .broadcast_as((b, VIRTUAL, h))?;
    let x = Tensor::cat(&[&p, &e], 1)?;
    let hidden = m.encoder.forward_embeds(&x, mask, None, ctx)?;
    Ok(m.head.forward(&hidden, ctx)?)
}

fn time_shape(
    name: &str,
    cfg: &EncoderConfig,
    shapes: &[(usize, usize, usize)],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let m = build(cfg, dir.path())?;
    for &(b, total, reps) in shapes {
        let (ids, mask) = batch(cfg, b, total)?;
        let labels = Tensor::from_vec(
            (0..b as u32).map(|i| i % LABELS as u32).collect::<Vec<_>>(),
            b,
            &Device::Cpu,
        )?;
        let mut train = Vec::new();
        let mut train_cpu = Vec::new();
        for r in 0..=reps {
            let t0 = Instant::now();
            let c0 = cpu_s();
            let ctx = ForwardCtx::train(r as u64);
            let lg = logits(&m, &ids, &mask, &ctx)?;
            let loss = cross_entropy(&lg, &labels)?;
            let grads = loss.backward()?;
            for v in &m.vars {
                assert!(grads.get(v.as_tensor()).is_some(), "no gradient");
            }
            let dt = t0.elapsed().as_secs_f64() * 1e3;
            if r > 0 {
                train.push(dt);
                train_cpu.push((cpu_s() - c0) * 1e3);
            }
        }
        let mut infer = Vec::new();
        let mut infer_cpu = Vec::new();
        for r in 0..=reps {
            let t0 = Instant::now();
            let c0 = cpu_s();
            let lg = logits(&m, &ids, &mask, &ForwardCtx::eval())?;
            lg.to_vec2::<f32>()?;
            let dt = t0.elapsed().as_secs_f64() * 1e3;
            if r > 0 {
                infer.push(dt);
                infer_cpu.push((cpu_s() - c0) * 1e3);
            }
        }
        let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{name:<10} batch {b:>2} x {total:>3}: train step {:>8.1} ms (best {:>8.1}, cpu {:>8.1}), inference {:>8.1} ms (best {:>8.1}, cpu {:>8.1}), {:.1} train ex/s",
            mean(&train),
            best(&train),
            mean(&train_cpu),
            mean(&infer),
            best(&infer),
            mean(&infer_cpu),
            b as f64 / (best(&train) / 1e3),
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let reps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let p = Path::new("config.json");
    if which == "all" || which == "small" {
        let cfg = EncoderConfig::from_json(&config_json(384, 12, 1536, 1000), p)?;
        time_shape("e5-small", &cfg, &[(8, 148, reps), (16, 12, reps * 4)])?;
    }
    if which == "all" || which == "base" {
        let cfg = EncoderConfig::from_json(&config_json(768, 12, 3072, 1000), p)?;
        time_shape("xlmr-base", &cfg, &[(8, 148, reps), (16, 12, reps * 4)])?;
    }
    Ok(())
}
