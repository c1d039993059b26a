//! Load run (not part of CI): one server process, N fake clients, R rounds, over TLS on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p fedprompt-net --example load -- [clients] [rounds] [values]
//! ```
//!
//! Defaults: 50 clients, 20 rounds, 100,000 trainable values (400 KB). The
//! server runs in a child process so its peak memory is its own. Prints
//! rounds/s, the server's peak RSS, and checks that every accepted update
//! was aggregated: the final parameters must equal the in-process core's.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fedprompt_fl::{ClientUpdate, Params, RoundPolicy, Server, StrategyConfig};
use fedprompt_net::{
    devcerts, join_async, ClientTlsConfig, DeterministicTrainer, InitialParams, JoinConfig,
    ServeConfig, ServerTlsConfig,
};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn initial(values: usize) -> Params {
    let mut p = Params::new();
    let data = (0..values).map(|i| (i as f32 * 0.001).sin()).collect();
    p.insert_vec("prompt", vec![values], data).expect("shape");
    p
}

fn policy(n: usize) -> RoundPolicy {
    RoundPolicy {
        min_available_clients: n,
        min_fit_results: n,
        seed: 1,
        ..Default::default()
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Child process: serve and print a summary line.
fn server_main(cfg_path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = ServeConfig::from_file(std::path::Path::new(cfg_path))?;
    let rt = tokio::runtime::Runtime::new()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let summary = rt.block_on(async {
        let running = fedprompt_net::start(cfg).await?;
        tx.send(running.local_addr().port()).ok();
        running.wait().await
    });
    let port = rx.recv().unwrap_or(0);
    let s = summary?;
    let line = serde_json::json!({
        "port": port,
        "rounds": s.rounds_completed,
        "accepted": s.stats.accepted_updates,
        "aggregated_updates": s.outcomes.iter().map(|o| o.n_ok as u64).sum::<u64>(),
        "refused": s.stats.total_refused(),
        "late": s.stats.late,
        "bytes_up": s.stats.bytes_up,
        "bytes_down": s.stats.bytes_down,
        "peak_rss_kib": peak_rss_kib(),
    });
    std::fs::write(format!("{cfg_path}.summary.json"), line.to_string())?;
    std::fs::write(
        format!("{cfg_path}.global.safetensors"),
        s.global.to_safetensors()?,
    )?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("--server") {
        let path = std::env::args()
            .nth(2)
            .ok_or("--server needs a config path")?;
        return server_main(&path);
    }
    let n = arg(1, 50);
    let rounds = arg(2, 20) as u64;
    let values = arg(3, 100_000);
    let dir = tempfile::tempdir()?;
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let certs = devcerts::generate(&dir.path().join("certs"), &id_refs)?;
    let init = initial(values);
    std::fs::write(dir.path().join("init.safetensors"), init.to_safetensors()?)?;
    // Pick a free port for the child.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = ServeConfig {
        address: format!("127.0.0.1:{port}"),
        tls: Some(ServerTlsConfig {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            client_ca: None,
        }),
        allow_plaintext: false,
        tokens: certs.tokens_file.clone(),
        rounds,
        strategy: StrategyConfig::FedAvg,
        policy: policy(n),
        round_deadline_s: 120.0,
        gather_s: 1.0,
        evaluate_every: 0,
        client_config: Default::default(),
        model: None,
        initial: InitialParams::File {
            path: dir.path().join("init.safetensors"),
        },
        checkpoint: dir.path().join("checkpoint.safetensors"),
        resume: false,
        events: Some(dir.path().join("events.jsonl")),
        output: None,
        max_chunk_bytes: fedprompt_net::DEFAULT_CHUNK_BYTES,
        max_update_bytes: None,
        liveness_s: 60.0,
        linger_s: 5.0,
        privacy: None,
        weights: Default::default(),
        compression: None,
        secure_aggregation: None,
        secagg_stage_deadline_s: 60.0,
    };
    let cfg_path = dir.path().join("federation.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg)?)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--server")
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr(), "[server] {line}");
            }
        });
    }
    let rt = tokio::runtime::Runtime::new()?;
    let t0 = Instant::now();
    let trainers: BTreeMap<String, DeterministicTrainer> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.clone(),
                DeterministicTrainer::new(i as u64, 1 + i as u64),
            )
        })
        .collect();
    let summaries = rt.block_on(async {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let mut cfg = JoinConfig::new(
                    format!("https://localhost:{port}"),
                    certs.clients[id].token.clone(),
                );
                cfg.tls = ClientTlsConfig {
                    ca_cert: Some(certs.ca_cert.clone()),
                    ..Default::default()
                };
                cfg.backoff_initial_s = 0.1;
                let mut t = trainers[id].clone();
                tokio::spawn(async move { join_async(cfg, &mut t).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await);
        }
        out
    });
    let elapsed = t0.elapsed();
    let status = child.wait()?;
    let mut client_accepted = 0u64;
    for s in summaries {
        client_accepted += s??.rounds_trained.len() as u64;
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!(
        "{}.summary.json",
        cfg_path.display()
    ))?)?;
    let global = Params::from_safetensors(&std::fs::read(format!(
        "{}.global.safetensors",
        cfg_path.display()
    ))?)?;
    // The same rounds in-process.
    let mut core = Server::new(init, StrategyConfig::FedAvg.build(policy(n))?)?;
    for _ in 0..rounds {
        let mut fit = core.begin_fit(&ids)?;
        let round = fit.plan().round;
        for id in fit.plan().clients.clone() {
            let t = &trainers[&id];
            fit.submit(
                ClientUpdate::new(id.clone(), t.apply(core.global(), round), t.num_examples),
                0,
            )?;
        }
        core.finish_fit(fit)?;
    }
    let max_diff = global
        .iter()
        .flat_map(|(name, t)| {
            let r = core
                .global()
                .get(name)
                .map(|x| x.data().to_vec())
                .unwrap_or_default();
            t.data()
                .iter()
                .zip(r)
                .map(|(a, b)| (a - b).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0f32, f32::max);
    println!("clients {n}, rounds {rounds}, trainable values {values}");
    println!("server exit: {status}");
    println!(
        "wall {:.2} s, {:.2} rounds/s",
        elapsed.as_secs_f64(),
        rounds as f64 / elapsed.as_secs_f64()
    );
    println!(
        "server peak RSS {:.1} MiB",
        summary["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
    );
    println!(
        "bytes up {:.1} MiB, down {:.1} MiB",
        summary["bytes_up"].as_f64().unwrap_or(0.0) / 1048576.0,
        summary["bytes_down"].as_f64().unwrap_or(0.0) / 1048576.0
    );
    println!(
        "updates: accepted by server {}, aggregated {}, confirmed to clients {client_accepted}, expected {}; refused {}, late {}",
        summary["accepted"], summary["aggregated_updates"], rounds * n as u64, summary["refused"], summary["late"]
    );
    println!("final params vs in-process core: max abs diff {max_diff:e}");
    let ok = summary["accepted"].as_u64() == Some(rounds * n as u64)
        && summary["aggregated_updates"].as_u64() == Some(rounds * n as u64)
        && client_accepted == rounds * n as u64
        && max_diff <= 1e-6;
    println!(
        "{}",
        if ok {
            "OK: no accepted update was lost"
        } else {
            "MISMATCH"
        }
    );
    std::thread::sleep(Duration::from_millis(10));
    if ok {
        Ok(())
    } else {
        Err("load run mismatch".into())
    }
}
