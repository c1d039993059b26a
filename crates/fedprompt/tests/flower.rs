//! fedprompt as a native Flower node against a real Flower 1.42.0 deployment on 127.0.0.1:
//! a `flower-superlink`, three `fedprompt flower-node` processes and the repo's Flower App
//! (`interop/flower/fedprompt_app`, Flower's stock FedAvg) submitted with `flwr run`.
//!
//! 1. Plain HTTP, 3 rounds: Flower's aggregated arrays equal fedprompt's own simulator for
//!    the same seed and data (`flower-export --simulate`), max |diff| ≤ 1e-6.
//! 2. TLS with SuperNode authentication: the nodes' keys pre-registered with
//!    `flwr supernode register`, a node with an unregistered key refused with a clear error,
//!    and the result again equal to the simulator's.
//!
//! Needs python3 with venv and pip reaching PyPI: flwr 1.42.0 is installed once into a venv
//! under $FEDPROMPT_CACHE (`interop/flower/make_flwr_venv.py`). About 2 minutes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn check(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

#[test]
fn flower_superlink_fedavg_equals_simulator_plain_and_authenticated() {
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let venv = std::env::var_os("FEDPROMPT_FLWR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("FEDPROMPT_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join(".cache/fedprompt"));
            cache.join("flwr-1.42.0-venv")
        });
    check(
        Command::new("python3")
            .arg(repo.join("interop/flower/make_flwr_venv.py"))
            .arg(&venv),
        "installing flwr 1.42.0",
    );

    let export = tmp.path().join("export");
    let bin = env!("CARGO_BIN_EXE_fedprompt");
    let text = check(
        Command::new(bin)
            .current_dir(&repo)
            .args(["--quiet", "flower-export", "interop/flower/experiment.toml"])
            .args(["--run", "PE_FL (non-IID)", "--simulate", "--out"])
            .arg(&export),
        "flower-export",
    );
    assert!(text.contains("3 clients (de, en, fr), 3 rounds"), "{text}");

    for scenario in ["basic", "auth"] {
        let run_dir = tmp.path().join(scenario);
        let text = check(
            Command::new("python3")
                .current_dir(&repo)
                .arg("interop/flower/integration.py")
                .arg(scenario)
                .arg("--export")
                .arg(&export)
                .arg("--model")
                .arg(repo.join("crates/fedprompt-model/tests/fixtures/tiny-xlmr"))
                .arg("--fedprompt-bin")
                .arg(bin)
                .arg("--flwr-venv")
                .arg(&venv)
                .arg("--run-dir")
                .arg(&run_dir)
                .args(["--tol", "1e-6", "--timeout", "480"]),
            &format!("the `{scenario}` Flower run"),
        );
        println!("{text}");
        assert!(text.contains("RESULT: PASS"), "{text}");
        // Every round: all three nodes trained and evaluated.
        for r in 1..=3 {
            assert!(
                text.contains(&format!("round {r}: train replies 3/3")),
                "round {r}:\n{text}"
            );
        }
        // The comparison with the simulator ran and passed for every tensor.
        assert_eq!(text.matches("max|diff|").count(), 5, "{text}");
        if scenario == "auth" {
            assert!(text.contains("rogue node (fedprompt) refused"), "{text}");
        }
    }
}
