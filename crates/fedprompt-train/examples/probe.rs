use fedprompt_data::{load_chatterbot, ChatterbotOptions};
use fedprompt_model::{Backbone, Classifier, MethodConfig};
use fedprompt_train::*;
fn main() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let dir = fedprompt_hub::default_model_dir()?;
    let bb = Backbone::load(&dir)?;
    let bb_text = bb.text_encoder().clone().with_max_len(64)?;
    println!("load {:?}", t0.elapsed());
    let data = load_chatterbot(
        &fedprompt_hub::chatterbot_corpus_dir()?,
        &ChatterbotOptions::default(),
    )?;
    let labels: Vec<String> = data.labels.names().to_vec();
    let m: MethodConfig = toml::from_str(
        &std::env::args()
            .nth(1)
            .unwrap_or("type='prompt'\nnum_virtual_tokens=8".into()),
    )?;
    let clf = Classifier::new(&bb, &m, &labels, 0)?;
    let tr = encode_examples(&bb_text, &data.train)?;
    let ev = encode_examples(&bb_text, &data.eval)?;
    println!(
        "train {} eval {} mean len {}",
        tr.len(),
        ev.len(),
        tr.iter().map(|e| e.ids.len()).sum::<usize>() as f64 / tr.len() as f64
    );
    let t = std::time::Instant::now();
    let r0 = evaluate(&clf, &ev, 64, 1, false)?;
    println!("eval0 acc {:.3} in {:?}", r0.overall.accuracy, t.elapsed());
    let cfg = TrainConfig {
        learning_rate: 1e-3,
        batch_size: 16,
        epochs: 1,
        max_steps_per_epoch: Some(60),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let rep = train(&clf, &tr, None, &cfg, 1, false, None, None)?;
    println!(
        "train {} steps in {:?}, loss {:.3}",
        rep.steps,
        t.elapsed(),
        rep.epochs[0].train_loss
    );
    let r1 = evaluate(&clf, &ev, 64, 1, false)?;
    println!(
        "eval1 acc {:.3} f1 {:.3}",
        r1.overall.accuracy, r1.overall.macro_f1
    );
    for (l, s) in &r1.per_language {
        println!("  {l} {:.3}", s.accuracy);
    }
    Ok(())
}
