//! The report as Markdown: the machine line, the workload table, the bytes-per-round table
//! and the notes (`bench.md`, and what `run` prints).

use std::fmt::Write as _;

use crate::report::BenchReport;

fn gib(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "—".into(),
    }
}

fn human_bytes(b: Option<u64>) -> String {
    match b {
        None => "—".into(),
        Some(b) if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) if b < 1 << 30 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "—".into(),
    }
}

/// The report as Markdown.
pub fn render_markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# fedprompt vs PyTorch + PEFT\n");
    let tv = r
        .torch_versions
        .as_ref()
        .map(|v| {
            format!(
                "torch {}, transformers {}, peft {}",
                v["torch"].as_str().unwrap_or("?"),
                v["transformers"].as_str().unwrap_or("?"),
                v["peft"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "PyTorch: not measured".into());
    let _ = writeln!(
        s,
        "{} ({} cores), {} threads per side, {} round(s) interleaved; {}. Load average {} → {}; \
         wall {:.0} s.\n",
        r.cpu,
        r.cores,
        r.threads,
        r.rounds,
        tv,
        opt_f(r.loadavg.0, 2),
        opt_f(r.loadavg.1, 2),
        r.wall_s
    );
    let p = &r.peak;
    let _ = writeln!(
        s,
        "Peak ({} threads): f32 nominal {:.0} GFLOP/s, measured {} GFLOP/s (an FMA loop on \
         every thread); bf16 nominal {:.0} GFLOP/s. {}.\n",
        p.threads,
        p.f32_nominal_gflops,
        opt_f(p.f32_measured_gflops, 0),
        p.bf16_nominal_gflops,
        p.how
    );
    let _ = writeln!(
        s,
        "Prompt tuning (1 virtual token, RoBERTa head, 10 labels, AdamW lr 1e-3); medians of the \
         timed iterations; peak memory is each process's VmHWM. Ratios: > 1 means fedprompt is \
         faster; memory ratio < 1 means fedprompt is leaner. bf16: fedprompt's bf16 backbone \
         (`--dtype bf16`), PyTorch under `torch.autocast(\"cpu\", dtype=torch.bfloat16)`.\n"
    );
    let _ = writeln!(
        s,
        "| workload | model | batch × tokens | iters | fedprompt s/iter | PyTorch s/iter | fedprompt ex/s | PyTorch ex/s | ratio (fp/pt) | peak RSS fedprompt | peak RSS PyTorch | memory ratio |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for w in &r.workloads {
        let f = w.fedprompt.as_ref();
        let t = w.torch.as_ref();
        let _ = writeln!(
            s,
            "| {} | {} | {} × {} | {}+{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            w.workload.name(),
            w.model.describe(),
            w.batch,
            w.tokens,
            w.warmup,
            w.iters,
            opt_f(f.map(|x| x.median_s), 3),
            opt_f(t.map(|x| x.median_s), 3),
            opt_f(f.map(|x| x.examples_per_s), 1),
            opt_f(t.map(|x| x.examples_per_s), 1),
            opt_f(w.speed_ratio, 2),
            gib(f.and_then(|x| x.peak_rss_bytes)),
            gib(t.and_then(|x| x.peak_rss_bytes)),
            opt_f(w.memory_ratio, 2),
        );
    }
    if r.workloads
        .iter()
        .any(|w| w.fedprompt_bf16.is_some() || w.torch_bf16.is_some())
    {
        let _ = writeln!(
            s,
            "\nbf16 (fast mode beside PyTorch fp32 and PyTorch bf16 autocast).\n\n\
             | workload | fedprompt bf16 s/iter | PyTorch bf16 s/iter | ratio vs PyTorch fp32 | ratio vs autocast | peak RSS fedprompt bf16 | peak RSS PyTorch bf16 | memory ratio vs PyTorch fp32 | memory ratio vs autocast |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        for w in &r.workloads {
            let f = w.fedprompt_bf16.as_ref();
            let t = w.torch_bf16.as_ref();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w.workload.name(),
                opt_f(f.map(|x| x.median_s), 3),
                opt_f(t.map(|x| x.median_s), 3),
                opt_f(w.bf16_speed_ratio, 2),
                opt_f(w.bf16_vs_autocast_ratio, 2),
                gib(f.and_then(|x| x.peak_rss_bytes)),
                gib(t.and_then(|x| x.peak_rss_bytes)),
                opt_f(w.bf16_memory_ratio, 2),
                opt_f(w.bf16_vs_autocast_memory_ratio, 2),
            );
        }
    }
    let _ = writeln!(
        s,
        "\nArithmetic rate: FLOP per iteration counted from the shapes (see `fedprompt_bench::flops`) \
         ÷ median time, and its share of the peak (f32 sides: the measured f32 peak; bf16 sides: \
         the nominal bf16 peak).\n\n\
         | workload | GFLOP/iter | fedprompt | PyTorch | fedprompt bf16 | PyTorch bf16 |\n\
         |---|---|---|---|---|---|"
    );
    let rate = |x: Option<&crate::report::SideResult>| match x.and_then(|x| x.gflops) {
        Some(g) => match x.and_then(|x| x.peak_fraction) {
            Some(f) => format!("{g:.0} GFLOP/s ({:.0}%)", 100.0 * f),
            None => format!("{g:.0} GFLOP/s"),
        },
        None => "—".into(),
    };
    for w in &r.workloads {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.workload.name(),
            opt_f(w.flops.map(|f| f / 1e9), 1),
            rate(w.fedprompt.as_ref()),
            rate(w.torch.as_ref()),
            rate(w.fedprompt_bf16.as_ref()),
            rate(w.torch_bf16.as_ref()),
        );
    }
    if !r.bytes.is_empty() {
        let _ = writeln!(
            s,
            "\nBytes per round (trainable set as safetensors; PEFT: adapter_model.safetensors with \
             the head as modules_to_save, full: the whole state dict).\n"
        );
        let _ = writeln!(
            s,
            "| model | method | fedprompt params | fedprompt bytes | PEFT params | PEFT bytes |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for b in &r.bytes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                b.model.describe(),
                b.method,
                b.fedprompt_params
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "—".into()),
                human_bytes(b.fedprompt_bytes),
                b.peft_params
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "—".into()),
                human_bytes(b.peft_bytes),
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}
