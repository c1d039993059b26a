#!/usr/bin/env python3
"""Loopback integration runs of fedprompt against a real Flower 1.42.0 deployment.

Starts `flower-superlink` on 127.0.0.1 (free port), N SuperNodes, submits the fedprompt
Flower App (interop/flower/fedprompt_app) with `flwr run`, waits for the ServerApp to
finish, stops everything (SIGINT, then SIGTERM, then SIGKILL) and checks the result.
Standard library only; every subprocess logs to its own file under the run dir.

Scenarios:
  basic  3 nodes; the final global must equal EXPORT/expected.safetensors (fedprompt's own
         simulator) to --tol (1e-6): same names and shapes, max |diff| per tensor printed.
  mixed  2 fedprompt nodes + 1 Python SuperNode (PEFT ClientApp); all 3 reply every round,
         final arrays finite and changed from the initial ones.
  auth   TLS + --enable-supernode-auth; node keys pre-registered with
         `flwr supernode register`; 3 nodes as in basic (checked as in mixed, plus against
         expected.safetensors when it exists). Negative check first: a node whose key is not
         registered must be refused (exit code and stderr tail are recorded).

Node kinds (--node-kind): `fedprompt` runs
    FEDPROMPT_BIN flower-node --superlink 127.0.0.1:PORT --insecure --model MODEL
        --data EXPORT/clients/NAME.jsonl --client-name NAME --train EXPORT/train.toml
(with --root-certificates CA --auth-key KEY.pem instead of --insecure under auth);
`python` replaces every fedprompt node with a Python SuperNode running the app's ClientApp
(for checking the Flower side without the fedprompt binary).

Example:
    python3 interop/flower/integration.py basic --export /tmp/flower-dev-export \
        --model crates/fedprompt-model/tests/fixtures/tiny-xlmr --node-kind python

EXPORT is a folder written by `fedprompt flower-export` (or make_dev_export.py):
initial.safetensors, train-config.json, clients/<name>.jsonl, clients.txt, train.toml,
run.json {"rounds": R, "clients": [...]}, expected.safetensors.
Exit status: 0 if every check passed, 1 if a check failed, 2 on a setup error or timeout.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUPERLINK_NAME = "fedprompt-it"


class SetupError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# safetensors (F32 / F64 only), stdlib


def read_safetensors(path: Path) -> dict[str, tuple[list[int], array.array]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        code = {"F32": "f", "F64": "d"}.get(meta["dtype"])
        if code is None:
            raise SetupError(f"{path}: {name}: dtype {meta['dtype']} (only F32/F64 compared)")
        a = array.array(code)
        s, e = meta["data_offsets"]
        a.frombytes(data[s:e])
        if sys.byteorder != "little":
            a.byteswap()
        out[name] = (list(meta["shape"]), a)
    return out


def compare(got_path: Path, want_path: Path, tol: float, rtol: float = 0.0) -> tuple[bool, list[str]]:
    got, want = read_safetensors(got_path), read_safetensors(want_path)
    lines, ok = [], True
    if set(got) != set(want):
        ok = False
        lines.append(f"names differ: only in output {sorted(set(got) - set(want))}, "
                     f"only in expected {sorted(set(want) - set(got))}")
    for name in [k for k in want if k in got]:
        (gs, ga), (ws, wa) = got[name], want[name]
        if gs != ws:
            ok = False
            lines.append(f"  {name}: shape {gs} != expected {ws}")
            continue
        diff = max((abs(x - y) for x, y in zip(ga, wa)), default=0.0)
        excess = max((abs(x - y) - rtol * abs(y) for x, y in zip(ga, wa)), default=0.0)
        scale = max((abs(y) for y in wa), default=0.0)
        finite = all(math.isfinite(x) for x in ga)
        good = finite and excess <= tol
        ok &= good
        lines.append(f"  {name:<32} {str(gs):<10} max|diff| {diff:.3e} (max|expected| {scale:.3g}) "
                     f"{'ok' if good else 'FAIL'}" + ("" if finite else " (non-finite)"))
    return ok, lines


def changed_and_finite(got_path: Path, initial_path: Path) -> tuple[bool, list[str]]:
    got, init = read_safetensors(got_path), read_safetensors(initial_path)
    lines, ok = [], set(got) == set(init)
    if not ok:
        lines.append(f"names differ from initial: {sorted(got)} vs {sorted(init)}")
    for name in [k for k in init if k in got]:
        (gs, ga), (is_, ia) = got[name], init[name]
        finite = all(math.isfinite(x) for x in ga)
        moved = max((abs(x - y) for x, y in zip(ga, ia)), default=0.0)
        good = finite and gs == is_
        ok &= good
        lines.append(f"  {name:<32} {str(gs):<10} finite={finite} max|final-initial| {moved:.3e}")
    total_moved = any(
        any(x != y for x, y in zip(got[k][1], init[k][1])) for k in init if k in got
    )
    if not total_moved:
        ok = False
        lines.append("  final arrays equal the initial ones (nothing was aggregated)")
    return ok, lines


# ---------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: "Proc", timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{proc.name} exited with {proc.poll()} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SetupError(f"{proc.name}: port {port} not open after {timeout:.0f}s")


class Proc:
    """A subprocess in its own session (so its children can be signalled), logging to a file."""

    def __init__(self, name: str, cmd: list[str], run_dir: Path, env: dict, cwd: Path | None = None):
        self.name, self.cmd = name, cmd
        self.log = run_dir / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self._fh = open(self.log, "wb")
        self._fh.write(("$ " + shlex.join(cmd) + "\n").encode())
        self._fh.flush()
        self.p = subprocess.Popen(
            cmd, stdout=self._fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=str(cwd) if cwd else None, start_new_session=True,
        )
        self.exit_t: float | None = None

    def poll(self):
        rc = self.p.poll()
        if rc is not None and self.exit_t is None:
            self.exit_t = time.time()
        return rc

    def wait(self, timeout: float):
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.poll()
        return rc

    def stop(self, grace_int: float = 10.0, grace_term: float = 5.0):
        """SIGINT to the process, then SIGTERM and SIGKILL to its process group."""
        if self.poll() is None:
            self._signal(signal.SIGINT, group=False)
            if self.wait(grace_int) is None:
                self._signal(signal.SIGTERM, group=True)
                if self.wait(grace_term) is None:
                    self._signal(signal.SIGKILL, group=True)
                    self.wait(5)
        # leftover children of a process that already exited (same session id = its pid)
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        self._fh.close()
        return self.p.returncode

    def _signal(self, sig, group: bool):
        try:
            if group:
                os.killpg(self.p.pid, sig)
            else:
                self.p.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, n: int = 30) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------
# the run


class Harness:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = (args.run_dir or Path("/tmp/fedprompt-flower-it") / f"{args.scenario}-{stamp}").resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.deadline = time.time() + args.timeout
        self.procs: list[Proc] = []
        self.times: dict[str, float] = {}
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.tls = args.scenario == "auth"
        self.auth_dir = self.run_dir / "auth"
        flwr_bin = args.flwr_venv / "bin"
        self.flwr_home = self.run_dir / "flwr-home"
        self.env = dict(os.environ)
        self.env.update(
            PATH=f"{flwr_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_HOME=str(self.flwr_home),
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_TELEMETRY_ENABLED="0",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("VIRTUAL_ENV", None)
        self.port = free_port()

    def left(self) -> float:
        left = self.deadline - time.time()
        if left <= 0:
            raise SetupError(f"overall timeout ({self.args.timeout:.0f}s) reached")
        return left

    def start(self, name, cmd, env=None) -> Proc:
        p = Proc(name, cmd, self.run_dir, env or self.env, cwd=self.run_dir)
        self.procs.append(p)
        return p

    def tool(self, name: str, cmd: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
        log = self.run_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(cmd, env=self.env, cwd=self.run_dir, capture_output=True, text=True,
                           timeout=min(timeout, self.left()))
        log.write_text(f"$ {shlex.join(cmd)}\n[rc {r.returncode}]\n{r.stdout}\n{r.stderr}")
        if r.returncode != 0:
            raise SetupError(f"{name} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return r

    # -- SuperLink ---------------------------------------------------------------------
    def make_auth_material(self, names: list[str]) -> None:
        py = str(self.args.flwr_venv / "bin" / "python")
        self.tool("auth-material", [py, str(HERE / "make_auth_material.py"), str(self.auth_dir), *names])

    def write_flwr_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{SUPERLINK_NAME}"', "", f"[superlink.{SUPERLINK_NAME}]",
                 f'address = "127.0.0.1:{self.port}"']
        if self.tls:
            lines.append(f'root-certificates = "{self.auth_dir / "ca.pem"}"')
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def start_superlink(self) -> None:
        cmd = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-runtime-dependency-installation",
               "--database", str(self.run_dir / "superlink.db")]
        if self.tls:
            a = self.auth_dir
            cmd += ["--ssl-certfile", str(a / "server.pem"), "--ssl-keyfile", str(a / "server.key"),
                    "--ssl-ca-certfile", str(a / "ca.pem"), "--enable-supernode-auth"]
        else:
            cmd += ["--insecure"]
        t0 = time.time()
        p = self.start("superlink", cmd)
        wait_port(self.port, p, min(60, self.left()))
        self.times["superlink_start_s"] = time.time() - t0

    def register(self, name: str) -> None:
        self.tool(f"register-{name}", ["flwr", "supernode", "register",
                                       str(self.auth_dir / "nodes" / f"{name}.pub"), SUPERLINK_NAME,
                                       "--name", name])

    # -- SuperNodes --------------------------------------------------------------------
    def node_cmd(self, kind: str, name: str, key: str | None = None) -> tuple[list[str], dict]:
        """Command line of a node with client NAME's data and KEY's key pair (default NAME)."""
        a = self.args
        key = key or name
        data = a.export / "clients" / f"{name}.jsonl"
        if not data.is_file():
            raise SetupError(f"missing {data}")
        if kind == "fedprompt":
            if not a.fedprompt_bin or not Path(a.fedprompt_bin).is_file():
                raise SetupError(f"fedprompt binary not found: {a.fedprompt_bin} (give --fedprompt-bin)")
            cmd = [str(a.fedprompt_bin), "flower-node", "--superlink", f"127.0.0.1:{self.port}",
                   "--model", str(a.model), "--data", str(data), "--client-name", name,
                   "--train", str(a.export / "train.toml")]
            if self.tls:
                cmd += ["--root-certificates", str(self.auth_dir / "ca.pem"),
                        "--auth-key", str(self.auth_dir / "nodes" / f"{key}.key.pem")]
            else:
                cmd += ["--insecure"]
            return cmd + list(a.node_arg), self.env
        venv = a.python_supernode_venv
        if not (venv / "bin" / "flower-supernode").exists():
            raise SetupError(f"{venv}/bin/flower-supernode not found (make it with make_supernode_venv.py)")
        env = dict(self.env)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
        if a.dump_messages:
            env["FEDPROMPT_FLOWER_DUMP_DIR"] = str(self.run_dir / "messages" / name)
        cfg = f'data-path="{data}" model-path="{a.model.resolve()}"'
        cmd = [str(venv / "bin" / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
               "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", cfg]
        if self.tls:
            cmd += ["--root-certificates", str(self.auth_dir / "ca.pem"),
                    "--auth-supernode-private-key", str(self.auth_dir / "nodes" / f"{key}.key")]
        else:
            cmd += ["--insecure"]
        return cmd, env

    def start_node(self, kind: str, name: str, label: str | None = None, key: str | None = None) -> Proc:
        cmd, env = self.node_cmd(kind, name, key)
        return self.start(label or f"node-{kind}-{name}", cmd, env)

    # -- flwr run ----------------------------------------------------------------------
    def flwr_run(self, rounds: int, min_nodes: int) -> dict:
        a = self.args
        out = self.run_dir / "global"
        cfg = {
            "initial-arrays": str(a.export / "initial.safetensors"),
            "train-config": str(a.export / "train-config.json"),
            "num-server-rounds": rounds,
            "min-nodes": min_nodes,
            "output": str(out),
            "round-timeout": float(a.round_timeout),
        }
        # The server strategy of the exported run (run.json "server"), e.g. FedProx's mu.
        run_json = json.loads((a.export / "run.json").read_text())
        cfg.update(run_json.get("server", {}))
        cfg_str = " ".join(f"{k}={json.dumps(v)}" for k, v in cfg.items())
        t0 = time.time()
        p = self.start("flwr-run", ["flwr", "run", str(a.app), SUPERLINK_NAME, "--stream",
                                    "--run-config", cfg_str])
        run_id = None
        while p.poll() is None:
            self.left()
            self.check_nodes_alive()
            if run_id is None:
                m = re.search(r"Successfully started run (\d+)", p.log.read_text(errors="replace"))
                if m:
                    run_id = m.group(1)
                    self.times["flwr_run_submit_s"] = time.time() - t0
            time.sleep(1)
        self.times["flwr_run_s"] = time.time() - t0
        if p.poll() != 0:
            raise SetupError(f"flwr run exited with {p.poll()}")
        m = re.search(r"Successfully started run (\d+)", p.log.read_text(errors="replace"))
        run_id = m.group(1) if m else None
        status = None
        if run_id:
            r = self.tool("flwr-ls", ["flwr", "ls", SUPERLINK_NAME, "--run-id", run_id, "--format", "json"])
            try:
                runs = json.loads(r.stdout[r.stdout.index("{"):]).get("runs", [])
                status = runs[0]["status"] if runs else None
                if runs:
                    self.times["run_elapsed_reported"] = runs[0].get("elapsed")
            except (ValueError, KeyError, IndexError) as e:
                self.notes.append(f"could not parse flwr ls output: {e}")
        self.notes.append(f"run {run_id}: status {status}")
        if status != "finished:completed":
            self.failures.append(f"run status {status!r}, expected 'finished:completed'")
        if not (out.with_suffix(".safetensors").is_file() and out.with_suffix(".json").is_file()):
            raise SetupError(f"ServerApp wrote no {out}.safetensors/.json")
        return json.loads(out.with_suffix(".json").read_text())

    def check_nodes_alive(self) -> None:
        for p in self.procs:
            if p.name.startswith("node-") and p.poll() is not None:
                raise SetupError(f"{p.name} exited early with {p.poll()}")

    # -- checks ------------------------------------------------------------------------
    def check_replies(self, summary: dict, n_nodes: int) -> None:
        for r in summary["rounds"]:
            t, e = r.get("train_ok", 0), r.get("evaluate_ok", 0)
            tm, em = r.get("train_metrics") or {}, r.get("evaluate_metrics") or {}
            print(f"  round {r['round']}: train replies {t}/{n_nodes} {fmt(tm)} | "
                  f"evaluate replies {e}/{n_nodes} {fmt(em)}")
            for kind in ("train", "evaluate"):
                for rep in r.get(f"{kind}_replies", []):
                    if "error" in rep:
                        print(f"    {kind} error from node {rep['node_id']}: {rep['error']}")
            if t != n_nodes or e != n_nodes:
                self.failures.append(f"round {r['round']}: {t} train / {e} evaluate replies of {n_nodes}")

    def stop_all(self) -> None:
        t0 = time.time()
        for p in reversed(self.procs):
            if p.name != "superlink":
                p.stop()
        for p in self.procs:
            if p.name == "superlink":
                p.stop()
        self.times["shutdown_s"] = time.time() - t0

    def print_tails(self, n: int = 25) -> None:
        for p in self.procs:
            print(f"\n----- {p.name} (rc {p.p.returncode}) {p.log} -----")
            print(p.tail(n))


def fmt(m: dict) -> str:
    return "{" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()) + "}"


def run_scenario(h: Harness) -> None:
    a = h.args
    run = json.loads((a.export / "run.json").read_text())
    clients = [c for c in (a.export / "clients.txt").read_text().split() if c]
    rounds = a.rounds or int(run["rounds"])
    sc = a.scenario
    if len(clients) < 3:
        raise SetupError(f"{a.export}/clients.txt lists {len(clients)} clients; 3 needed")
    kind = a.node_kind
    if sc == "mixed":
        plan = [(kind, clients[0]), (kind, clients[1]), ("python", clients[2])]
    else:
        plan = [(kind, c) for c in clients[:3]]
    print(f"run dir {h.run_dir}\nscenario {sc}: {rounds} rounds, nodes "
          + ", ".join(f"{n} ({k})" for k, n in plan))

    t_all = time.time()
    if h.tls:
        h.make_auth_material([n for _, n in plan] + ["rogue"])
    h.write_flwr_config()
    h.start_superlink()

    if h.tls:
        t0 = time.time()
        for _, name in plan:
            h.register(name)
        h.times["register_s"] = time.time() - t0
        # negative check: a node whose key is not registered must be refused
        rogue_kind = plan[0][0]
        t0 = time.time()
        rogue = h.start_node(rogue_kind, clients[0], label=f"rogue-{rogue_kind}", key="rogue")
        rc = rogue.wait(min(a.rogue_timeout, h.left()))
        h.times["rogue_s"] = time.time() - t0
        if rc is None:
            rogue.stop()
            msg = f"rogue node (unregistered key, {rogue_kind}) still running after {a.rogue_timeout:.0f}s"
            (h.failures if rogue_kind == "fedprompt" else h.notes).append(msg)
        else:
            h.notes.append(f"rogue node ({rogue_kind}) refused: exit {rc}")
            if rc == 0:
                h.failures.append("rogue node exited 0 (expected non-zero)")
            rogue.stop()
        print(f"rogue node: exit {rc}; log tail:\n" + "\n".join("    " + l for l in rogue.tail(8).splitlines()))

    t0 = time.time()
    for k, name in plan:
        h.start_node(k, name)
    summary = h.flwr_run(rounds, min_nodes=len(plan))
    h.times["nodes_to_done_s"] = time.time() - t0

    out = h.run_dir / "global.safetensors"
    print(f"\nServerApp output {out} ({summary.get('strategy_seconds', 0):.1f}s in the strategy)")
    h.check_replies(summary, len(plan))
    expected = a.export / "expected.safetensors"
    if sc == "basic" or (sc == "auth" and expected.is_file() and not a.no_compare):
        if a.no_compare:
            h.notes.append("comparison with expected.safetensors skipped (--no-compare)")
        elif not expected.is_file():
            h.failures.append(f"missing {expected}")
        else:
            ok, lines = compare(out, expected, a.tol, a.rtol)
            print(f"final global vs {expected} (tol {a.tol:g}, rtol {a.rtol:g}):")
            print("\n".join(lines))
            if not ok:
                h.failures.append("final global differs from expected.safetensors")
    if sc in ("mixed", "auth"):
        ok, lines = changed_and_finite(out, a.export / "initial.safetensors")
        print("final global vs initial:")
        print("\n".join(lines))
        if not ok:
            h.failures.append("final arrays not finite / unchanged")
    h.times["total_s"] = time.time() - t_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["basic", "mixed", "auth"])
    ap.add_argument("--export", type=Path, required=True, help="folder from `fedprompt flower-export`")
    ap.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    ap.add_argument("--fedprompt-bin", type=Path, default=None,
                    help="fedprompt binary (default: the newer of target/release/fedprompt and target/debug/fedprompt)")
    ap.add_argument("--node-kind", choices=["fedprompt", "python"], default="fedprompt",
                    help="what runs the nodes that are fedprompt nodes in the scenario")
    ap.add_argument("--node-arg", action="append", default=[],
                    help="extra argument for every fedprompt node (repeatable)")
    ap.add_argument("--flwr-venv", type=Path, default=None,
                    help="venv with flwr 1.42.0 (flower-superlink, flwr); default: "
                         "make_flwr_venv.py's ($FEDPROMPT_FLWR_VENV, $FEDPROMPT_CACHE/"
                         "flwr-1.42.0-venv or ~/.cache/fedprompt/flwr-1.42.0-venv)")
    ap.add_argument("--python-supernode-venv", type=Path, default=None,
                    help="venv with flwr + torch + transformers + peft (make_supernode_venv.py)")
    ap.add_argument("--app", type=Path, default=HERE / "fedprompt_app")
    ap.add_argument("--rounds", type=int, default=None, help="default: run.json's rounds")
    ap.add_argument("--tol", type=float, default=1e-6, help="absolute tolerance (basic)")
    ap.add_argument("--rtol", type=float, default=0.0,
                    help="relative tolerance added to --tol: |diff| <= tol + rtol*|expected|")
    ap.add_argument("--dump-messages", action="store_true",
                    help="Python nodes write each received message's records to RUN_DIR/messages")
    ap.add_argument("--no-compare", action="store_true", help="skip the expected.safetensors check")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=600.0, help="overall limit in seconds")
    ap.add_argument("--round-timeout", type=float, default=300.0,
                    help="how long FedAvg waits for one phase's replies")
    ap.add_argument("--rogue-timeout", type=float, default=60.0,
                    help="auth: how long the unregistered node may take to give up")
    args = ap.parse_args()
    if args.flwr_venv is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_flwr_venv import default_dir  # noqa: E402

        args.flwr_venv = default_dir()
    if args.python_supernode_venv is None:
        args.python_supernode_venv = args.flwr_venv.parent / "flwr-1.42.0-torch-venv"
    if not (args.flwr_venv / "bin" / "flower-superlink").exists():
        print(f"error: no flwr venv at {args.flwr_venv}: run "
              "`python3 interop/flower/make_flwr_venv.py` (or pass --flwr-venv)", file=sys.stderr)
        return 2
    args.export = args.export.resolve()
    args.model = args.model.resolve()
    args.app = args.app.resolve()
    if args.fedprompt_bin is None:  # the newer of target/{release,debug}/fedprompt
        cands = [c for c in (REPO / "target/release/fedprompt", REPO / "target/debug/fedprompt") if c.is_file()]
        if cands:
            args.fedprompt_bin = max(cands, key=lambda c: c.stat().st_mtime)
    for f in ("initial.safetensors", "train-config.json", "clients.txt", "run.json"):
        if not (args.export / f).is_file():
            print(f"error: {args.export}/{f} missing", file=sys.stderr)
            return 2

    h = Harness(args)
    rc = 0
    try:
        run_scenario(h)
    except (SetupError, subprocess.TimeoutExpired) as e:
        h.failures.append(f"setup/run error: {e}")
        rc = 2
    except KeyboardInterrupt:
        h.failures.append("interrupted")
        rc = 2
    finally:
        h.stop_all()
    if h.failures:
        h.print_tails()
        rc = rc or 1
    print("\n===== summary =====")
    print(f"scenario {args.scenario} (node kind {args.node_kind}), run dir {h.run_dir}")
    for k, v in h.times.items():
        print(f"  {k}: {v:.1f}" if isinstance(v, float) else f"  {k}: {v}")
    for n in h.notes:
        print(f"  note: {n}")
    for f in h.failures:
        print(f"  FAIL: {f}")
    print("RESULT:", "PASS" if rc == 0 else "FAIL")
    (h.run_dir / "summary.json").write_text(json.dumps(
        {"scenario": args.scenario, "node_kind": args.node_kind, "times": h.times,
         "notes": h.notes, "failures": h.failures, "passed": rc == 0}, indent=2, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main())
