//! `fedprompt serve` stops on SIGTERM as on Ctrl-C: exit status 0, the last
//! checkpoint kept for `--resume`. Runs the binary as separate processes.
#![cfg(unix)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fedprompt-model/tests/fixtures/tiny-xlmr")
}

/// The binary with an isolated asset cache, its output in `name.out` and `name.err`.
fn spawn(tmp: &Path, name: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fedprompt"))
        .env("FEDPROMPT_CACHE", tmp.join("cache"))
        .env("FEDPROMPT_WHEELHOUSE", tmp.join("no-wheels"))
        .env_remove("RUST_LOG")
        .arg("--quiet")
        .args(args)
        .stdout(File::create(tmp.join(format!("{name}.out"))).unwrap())
        .stderr(File::create(tmp.join(format!("{name}.err"))).unwrap())
        .spawn()
        .expect("the binary starts")
}

fn output(tmp: &Path, name: &str) -> (String, String) {
    let read = |ext: &str| std::fs::read_to_string(tmp.join(format!("{name}.{ext}"))).unwrap();
    (read("out"), read("err"))
}

fn events(tmp: &Path) -> Vec<Value> {
    std::fs::read_to_string(tmp.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls the events file (from event `from` on) until `pred` holds for one.
fn wait_for_event(tmp: &Path, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(e) = events(tmp).into_iter().skip(from).find(&pred) {
            return e;
        }
        assert!(
            Instant::now() < until,
            "no {what} event:\n{:#?}",
            events(tmp)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

/// Waits for `child` to exit (killing it after a generous limit, so a hang fails the test).
fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_stopped(tmp: &Path, name: &str, status: ExitStatus) -> String {
    let (out, err) = output(tmp, name);
    assert!(
        status.success(),
        "{name}: {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(err.contains("SIGTERM: stopping"), "{name} stderr:\n{err}");
    assert!(out.contains("stopped_early: true"), "{name} stdout:\n{out}");
    // A summary for a person, not every value of the global model.
    assert!(
        out.contains("global: ") && out.lines().count() < 20,
        "{name} stdout:\n{out}"
    );
    out
}

fn rounds_completed(summary: &str) -> u64 {
    let at = summary
        .find("rounds_completed: ")
        .expect("rounds_completed")
        + 18;
    summary[at..]
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sigterm_stops_serve_like_ctrl_c_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let certs = t.join("certs");
    let st = Command::new(env!("CARGO_BIN_EXE_fedprompt"))
        .args(["--quiet", "devcerts"])
        .arg(&certs)
        .args(["--clients", "a"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let rows: String = (0..8)
        .map(|i| {
            let (text, label) = [("good fine", "pos"), ("bad awful", "neg")][i % 2];
            format!(
                "{}\n",
                serde_json::json!({"text": format!("{text} {i}"), "label": label})
            )
        })
        .collect();
    std::fs::write(t.join("data.jsonl"), rows).unwrap();
    let toml = format!(
        r#"
address = "127.0.0.1:0"
tokens = "certs/tokens.toml"
rounds = 100000
round_deadline_s = 60
gather_s = 0.1
evaluate_every = 0
checkpoint = "checkpoint.safetensors"
events = "events.jsonl"

[tls]
cert = "certs/server.pem"
key = "certs/server.key"

[policy]
min_fit_clients = 1
min_available_clients = 1
min_fit_results = 1

[model]
labels = ["neg", "pos"]
max_len = 32
method = {{ type = "prompt", num_virtual_tokens = 2 }}

[initial]
type = "model"
dir = {model:?}
seed = 0

[client_config]
epochs = 1
batch_size = 4
"#,
        model = fixture_model().display().to_string()
    );
    let fed = t.join("federation.toml");
    std::fs::write(&fed, toml).unwrap();
    let fed = fed.to_str().unwrap();

    // A server and one client; SIGTERM once a round is checkpointed.
    let mut server = spawn(t, "serve", &["serve", fed]);
    let started = wait_for_event(t, 0, "started", |e| e["event"] == "started");
    let port = started["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let token = std::fs::read_to_string(certs.join("client-a.token")).unwrap();
    let server_url = format!("https://localhost:{port}");
    let data = t.join("data.jsonl");
    let (model, ca) = (fixture_model(), certs.join("ca.pem"));
    let mut client = spawn(
        t,
        "join",
        &[
            "join",
            "--server",
            &server_url,
            "--token",
            token.trim(),
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
    );
    wait_for_event(t, 0, "checkpoint", |e| e["event"] == "checkpoint");
    sigterm(&server);
    let status = wait_exit(&mut server, "serve");
    let _ = client.kill();
    let _ = client.wait();
    let summary = assert_stopped(t, "serve", status);
    let done = rounds_completed(&summary);
    let all = events(t);
    let last_checkpoint = all
        .iter()
        .filter(|e| e["event"] == "checkpoint")
        .filter_map(|e| e["round"].as_u64())
        .max()
        .unwrap();
    assert!(done >= 1);
    assert_eq!(done, last_checkpoint, "{summary}");
    // The run ends with one `finished` event. A client's request already on its way while
    // the server shuts down may still be logged after it, refused (CI once saw a round-9
    // upload refused as stale after `finished`); nothing else may follow.
    let at = all
        .iter()
        .position(|e| e["event"] == "finished")
        .expect("a finished event");
    let finished = &all[at];
    assert_eq!(finished["reason"], "shutdown", "{finished}");
    for e in &all[at + 1..] {
        assert_eq!(e["event"], "refused", "after finished: {e}");
    }
    assert!(t.join("checkpoint.safetensors").is_file());

    // `--resume` continues from that checkpoint (and stops on SIGTERM too).
    let seen = all.len();
    let mut resumed = spawn(t, "resume", &["serve", fed, "--resume"]);
    let started = wait_for_event(t, seen, "started", |e| e["event"] == "started");
    assert_eq!(started["resumed_at"].as_u64(), Some(done), "{started}");
    sigterm(&resumed);
    let status = wait_exit(&mut resumed, "serve --resume");
    let summary = assert_stopped(t, "resume", status);
    assert_eq!(rounds_completed(&summary), done);
}
