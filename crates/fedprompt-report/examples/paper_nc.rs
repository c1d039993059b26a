//! Writes a results folder from the paper's NC numbers (Table 1, Table 4, Figure 4 shape) to
//! preview tables and plots: `cargo run -p fedprompt-report --example paper_nc -- OUT_DIR`.

use std::collections::BTreeMap;

use fedprompt_report::{
    render_summary, write_all, CommRow, Curve, DataEffPoint, LangMetrics, ParadigmRow, RoundPoint,
    RunResults,
};

fn row(paradigm: &str, method: &str, setting: &str, langs: &[&str], acc: &[f64]) -> ParadigmRow {
    let per = langs
        .iter()
        .zip(acc)
        .map(|(l, a)| {
            let m = LangMetrics {
                accuracy: a / 100.0,
                macro_f1: a / 100.0 - 0.02,
                n: 1000,
            };
            (l.to_string(), m)
        })
        .collect::<BTreeMap<_, _>>();
    ParadigmRow::new(paradigm, method, setting, per)
}

fn curve(paradigm: &str, end: f64, speed: f64) -> Curve {
    let points = (1..=10)
        .map(|r| RoundPoint {
            round: r,
            accuracy: (0.1 + (end - 0.1) * (1.0 - (-speed * f64::from(r)).exp())).min(1.0),
            loss: Some(2.3 * (-speed * f64::from(r)).exp() + 0.4),
            epsilon: None,
        })
        .collect();
    Curve {
        paradigm: paradigm.into(),
        points,
        sd: Vec::new(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "paper-nc-preview".into());
    let langs = ["en", "es", "fr", "de", "ru"];
    let rows = vec![
        row(
            "Monolingual",
            "full",
            "local",
            &langs,
            &[92.4, 84.7, 79.5, 88.3, 89.0],
        ),
        row(
            "Centralized",
            "full",
            "pooled",
            &langs,
            &[93.9, 86.7, 82.9, 89.5, 88.6],
        ),
        row(
            "FL-Full (IID)",
            "full",
            "IID",
            &langs,
            &[94.1, 86.9, 82.7, 89.4, 88.8],
        ),
        row(
            "PE_Monolingual",
            "prompt",
            "local",
            &langs,
            &[82.9, 59.7, 47.3, 71.4, 60.0],
        ),
        row(
            "PE_Centralized",
            "prompt",
            "pooled",
            &langs,
            &[89.1, 76.2, 67.4, 78.8, 75.9],
        ),
        row(
            "PE_FL (IID)",
            "prompt",
            "IID",
            &langs,
            &[91.2, 82.2, 76.5, 86.4, 81.6],
        ),
        row(
            "PE_FL (non-IID)",
            "prompt",
            "non-IID α=0.1",
            &langs,
            &[87.8, 79.2, 73.7, 83.1, 79.5],
        ),
        row(
            "LoRA_FL (non-IID)",
            "lora-r8",
            "non-IID α=0.1",
            &langs,
            &[89.3, 76.0, 75.4, 75.8, 83.2],
        ),
    ];
    let curves = vec![
        curve("PE_Centralized", 0.775, 0.35),
        curve("PE_FL (IID)", 0.836, 0.45),
        curve("PE_FL (non-IID)", 0.807, 0.3),
        curve("LoRA_FL (non-IID)", 0.799, 0.25),
    ];
    let comm = vec![
        CommRow::full_participation("FL-Full (IID)", "full", 278_655_764, 278_655_764, 4, 5, 10),
        CommRow::full_participation("PE_FL (IID)", "prompt", 1_202_708, 278_655_764, 4, 5, 10),
        CommRow::full_participation(
            "LoRA_FL (non-IID)",
            "lora-r8",
            1_491_476,
            278_655_764,
            4,
            5,
            10,
        ),
    ];
    let mut data_efficiency = Vec::new();
    for (size, mono, fl) in [
        (30, 0.21, 0.70),
        (100, 0.35, 0.76),
        (500, 0.52, 0.80),
        (1000, 0.58, 0.82),
        (8000, 0.643, 0.836),
    ] {
        data_efficiency.push(DataEffPoint {
            paradigm: "PE_Monolingual".into(),
            train_size: size,
            accuracy: mono,
            sd: None,
        });
        data_efficiency.push(DataEffPoint {
            paradigm: "PE_FL (IID)".into(),
            train_size: size,
            accuracy: fl,
            sd: None,
        });
    }
    let distances = [
        ("en", 0.53),
        ("es", 1.12),
        ("fr", 1.05),
        ("de", 0.98),
        ("ru", 1.41),
    ]
    .into_iter()
    .map(|(l, d)| (l.to_string(), d))
    .collect();
    let results = RunResults {
        experiment: "paper-nc".into(),
        task: "XGLUE-NC".into(),
        model: "xlm-roberta-base".into(),
        seed: 42,
        seeds: Vec::new(),
        languages: langs.iter().map(|s| s.to_string()).collect(),
        rows,
        curves,
        comm,
        data_efficiency,
        distances: Some(distances),
        meta: BTreeMap::from([(
            "source".into(),
            "paper Table 1 and Table 4 (illustrative curves)".into(),
        )]),
    };
    for path in write_all(&results, &dir)? {
        println!("wrote {}", path.display());
    }
    println!("\n{}", render_summary(&results));
    Ok(())
}
