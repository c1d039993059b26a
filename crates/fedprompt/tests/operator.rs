//! What an operator does to the federation commands, with the real binary in its own process:
//! stop `join` and `flower-node` with SIGTERM (as systemd, docker and Flower's scripts do),
//! pass the token in a file, and make development credentials.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fedprompt")
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fedprompt-model/tests/fixtures/tiny-xlmr")
}

fn fedprompt(tmp: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("FEDPROMPT_CACHE", tmp.join("cache"))
        .env("FEDPROMPT_WHEELHOUSE", tmp.join("no-wheels"))
        .env_remove("FEDPROMPT_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

fn write_data(path: &Path) {
    let mut s = String::new();
    for i in 0..8 {
        let label = if i % 2 == 0 { "a" } else { "b" };
        s.push_str(&format!(
            "{{\"text\": \"line {i}\", \"label\": \"{label}\"}}\n"
        ));
    }
    std::fs::write(path, s).unwrap();
}

/// A child process whose stdout and stderr go to files, killed if the test fails.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd.stdout(out).stderr(err).spawn().unwrap();
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (panics after `limit` or if the process exits).
    fn wait_for_log(&mut self, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.log().contains(needle) {
                return;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("exited ({st}) before logging `{needle}`:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no `{needle}` after {limit:?}:\n{}", self.log());
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// The exit status within `limit`, or `None` if the process still runs.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes development credentials for client `sw` into `dir` with the CLI.
/// Credentials for client `sw` and for `idle`, which never connects (so a quorum of two
/// can be met in principle, and no round starts while `sw` alone is connected).
fn devcerts(tmp: &Path, dir: &Path) {
    let o = fedprompt(tmp)
        .arg("devcerts")
        .arg(dir)
        .args(["--clients", "sw,idle"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[cfg(unix)]
#[test]
fn join_leaves_the_federation_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let certs = t.join("certs");
    devcerts(t, &certs);
    let port = free_port();
    // Two clients needed: with one, no round starts and the client waits for a task.
    let toml = format!(
        r#"address = "127.0.0.1:{port}"
tokens = "certs/tokens.toml"
rounds = 1
checkpoint = "run/checkpoint.safetensors"
[tls]
cert = "certs/server.pem"
key = "certs/server.key"
[policy]
min_fit_clients = 2
min_available_clients = 2
min_fit_results = 2
[model]
labels = ["a", "b"]
max_len = 16
method = {{ type = "prompt", num_virtual_tokens = 2 }}
[initial]
type = "model"
dir = "{}"
"#,
        fixture_model().display()
    );
    std::fs::write(t.join("federation.toml"), toml).unwrap();
    let mut serve = fedprompt(t);
    serve.args(["-v", "serve"]).arg(t.join("federation.toml"));
    let mut server = Proc::start(serve, t.join("serve.log"));
    server.wait_for_log("serving on", Duration::from_secs(120));

    let data = t.join("sw.jsonl");
    write_data(&data);
    let mut join = fedprompt(t);
    let token = std::fs::read_to_string(certs.join("client-sw.token")).unwrap();
    join.env("FEDPROMPT_TOKEN", token.trim())
        .args(["-v", "join", "--server"])
        .arg(format!("https://localhost:{port}"))
        .arg("--ca-cert")
        .arg(certs.join("ca.pem"))
        .arg("--data")
        .arg(&data)
        .arg("--model")
        .arg(fixture_model());
    let mut client = Proc::start(join, t.join("join.log"));
    client.wait_for_log("joined as `sw`", Duration::from_secs(60));
    server.wait_for_log("client registered", Duration::from_secs(10));

    client.signal("-TERM");
    let st = client.wait_exit(Duration::from_secs(30));
    let log = client.log();
    assert!(st.is_some(), "join still runs 30 s after SIGTERM:\n{log}");
    assert_eq!(
        st.unwrap().code(),
        Some(0),
        "join's exit after SIGTERM:\n{log}"
    );
    assert!(log.contains("SIGTERM: left the federation"), "{log}");
    assert!(
        log.contains("stopped: Some("),
        "the summary is printed:\n{log}"
    );
    // The server heard the Leave: the client is no longer waited for.
    server.wait_for_log("client left: stopped (SIGTERM)", Duration::from_secs(10));
}

/// A fake Flower SuperLink Fleet API (plain HTTP/1.1 on 127.0.0.1) that answers the lifecycle
/// RPCs with empty queues and records which RPCs it got.
struct FakeFleet {
    port: u16,
    rpcs: Arc<Mutex<Vec<String>>>,
}

impl FakeFleet {
    /// Serves for at most `limit` (the accept loop is bounded; so is every connection).
    fn start(limit: Duration) -> FakeFleet {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let rpcs: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = rpcs.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                match listener.accept() {
                    Ok((s, _)) => {
                        let seen = seen.clone();
                        std::thread::spawn(move || serve_fleet(s, &seen, end));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeFleet { port, rpcs }
    }

    fn rpcs(&self) -> Vec<String> {
        self.rpcs.lock().unwrap().clone()
    }
}

/// Answers HTTP/1.1 requests on one keep-alive connection until it closes or `end`.
fn serve_fleet(s: TcpStream, seen: &Mutex<Vec<String>>, end: Instant) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while Instant::now() < end {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        for _ in 0..100 {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let rpc = path.trim_start_matches("/v1/fleet/").to_string();
        // Protobuf replies: field 1 (node id 7, or heartbeat success); the rest empty.
        let reply: &[u8] = match rpc.as_str() {
            "register-node" | "activate-node" => &[0x08, 0x07],
            "send-node-heartbeat" => &[0x08, 0x01],
            _ => &[],
        };
        seen.lock().unwrap().push(rpc);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/protobuf\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if w.write_all(head.as_bytes())
            .and_then(|()| w.write_all(reply))
            .is_err()
        {
            return;
        }
    }
}

#[cfg(unix)]
#[test]
fn flower_node_deactivates_and_unregisters_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let fleet = FakeFleet::start(Duration::from_secs(120));
    let data = t.join("sw.jsonl");
    write_data(&data);
    let mut node = fedprompt(t);
    node.args(["-v", "flower-node", "--insecure", "--superlink"])
        .arg(format!("127.0.0.1:{}", fleet.port))
        .arg("--data")
        .arg(&data)
        .arg("--model")
        .arg(fixture_model())
        .args(["--poll-interval", "0.2"]);
    let mut node = Proc::start(node, t.join("node.log"));
    node.wait_for_log("connected to the Flower SuperLink", Duration::from_secs(60));
    // Polling: the node is in its serving loop.
    let t0 = Instant::now();
    while !fleet.rpcs().iter().any(|r| r == "pull-messages") {
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", fleet.rpcs());
        std::thread::sleep(Duration::from_millis(50));
    }

    node.signal("-TERM");
    let st = node.wait_exit(Duration::from_secs(30));
    let log = node.log();
    assert!(
        st.is_some(),
        "flower-node still runs 30 s after SIGTERM:\n{log}"
    );
    assert_eq!(st.unwrap().code(), Some(0), "exit after SIGTERM:\n{log}");
    let rpcs = fleet.rpcs();
    let at = |name: &str| rpcs.iter().position(|r| r == name);
    let (reg, act) = (at("register-node"), at("activate-node"));
    let (deact, unreg) = (at("deactivate-node"), at("unregister-node"));
    assert!(reg.is_some() && act.is_some(), "{rpcs:?}");
    assert!(
        deact.is_some(),
        "no deactivate-node after SIGTERM: {rpcs:?}\n{log}"
    );
    assert!(
        unreg.is_some(),
        "no unregister-node after SIGTERM: {rpcs:?}\n{log}"
    );
    assert!(deact < unreg, "{rpcs:?}");
    assert!(log.contains("left the federation"), "{log}");
}

fn join_args(c: &mut Command, t: &Path) {
    c.args(["join", "--server", "https://localhost:1", "--data"])
        .arg(t.join("none.jsonl"));
}

#[test]
fn join_reads_its_token_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // A missing token file.
    let mut c = fedprompt(t);
    join_args(&mut c, t);
    let o = c
        .arg("--token-file")
        .arg(t.join("nope.token"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reading the token file") && err.contains("nope.token"),
        "{err}"
    );
    // An empty one (a newline only).
    std::fs::write(t.join("empty.token"), "\n").unwrap();
    let mut c = fedprompt(t);
    join_args(&mut c, t);
    let o = c
        .arg("--token-file")
        .arg(t.join("empty.token"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("empty.token is empty"), "{err}");
    // A good one: the token is read, and the run goes on to the next check (the data file).
    std::fs::write(t.join("good.token"), "fpt_abc\n").unwrap();
    let mut c = fedprompt(t);
    join_args(&mut c, t);
    let o = c
        .arg("--token-file")
        .arg(t.join("good.token"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("none.jsonl does not exist"), "{err}");
    // --token and --token-file together are refused; no token at all says what to pass.
    let mut c = fedprompt(t);
    join_args(&mut c, t);
    let o = c
        .args(["--token", "x", "--token-file"])
        .arg(t.join("good.token"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let mut c = fedprompt(t);
    join_args(&mut c, t);
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--token-file"), "{err}");
    // The environment variable still works.
    let mut c = fedprompt(t);
    join_args(&mut c, t);
    let o = c.env("FEDPROMPT_TOKEN", "fpt_abc").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("none.jsonl does not exist"), "{err}");
    // The help says that --token is visible to others.
    let o = fedprompt(t).args(["join", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--token-file") && help.contains("Visible to other users"),
        "{help}"
    );
}

#[cfg(unix)]
#[test]
fn devcerts_keeps_secrets_private_and_refuses_a_used_folder() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("certs");
    devcerts(t, &dir);
    let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
    for secret in ["server.key", "client-sw.key", "client-sw.token"] {
        assert_eq!(mode(secret), 0o600, "{secret}");
    }
    // Certificates are public.
    assert_eq!(mode("ca.pem") & 0o600, 0o600);
    let token = std::fs::read_to_string(dir.join("client-sw.token")).unwrap();

    // A second run into the same folder is refused and changes nothing.
    let o = fedprompt(t)
        .arg("devcerts")
        .arg(&dir)
        .args(["--clients", "sw"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("client-sw.token")).unwrap(),
        token
    );

    // --force replaces the credentials; a secret that was widened is private again.
    std::fs::set_permissions(
        dir.join("client-sw.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = fedprompt(t)
        .arg("devcerts")
        .arg(&dir)
        .args(["--clients", "sw", "--force"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(
        std::fs::read_to_string(dir.join("client-sw.token")).unwrap(),
        token
    );
    for secret in ["server.key", "client-sw.key", "client-sw.token"] {
        assert_eq!(mode(secret), 0o600, "{secret}");
    }
    // An empty existing folder is fine without --force.
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    devcerts(t, &empty);
    assert!(empty.join("ca.pem").is_file());
}

#[test]
fn join_checks_its_model_before_connecting_and_gives_up_when_told() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write_data(&t.join("data.jsonl"));
    // Nothing listens on this port: a client that connected first would retry for minutes.
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let o = fedprompt(t)
        .args(["join", "--server", &server, "--token", "fpt_x", "--data"])
        .arg(t.join("data.jsonl"))
        .arg("--model")
        .arg(t.join("no-model"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("checking the local setup") && err.contains("no-model"),
        "{err}"
    );
    assert!(
        !err.contains("retrying"),
        "the model is checked first:\n{err}"
    );

    // A good setup and no server: --give-up-after bounds the retries.
    let started = Instant::now();
    let o = fedprompt(t)
        .args(["join", "--server", &server, "--token", "fpt_x", "--data"])
        .arg(t.join("data.jsonl"))
        .arg("--model")
        .arg(fixture_model())
        .args(["--give-up-after", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("retrying"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gave up after {:?}",
        started.elapsed()
    );
}
