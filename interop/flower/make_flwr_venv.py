"""Create a virtual environment with Flower (flwr) 1.42.0 for the integration runs.

    python3 interop/flower/make_flwr_venv.py [DIR]

DIR defaults to $FEDPROMPT_FLWR_VENV, else $FEDPROMPT_CACHE/flwr-1.42.0-venv, else
~/.cache/fedprompt/flwr-1.42.0-venv. Installs the pinned dependencies
(requirements-flwr-1.42.0.txt), then the flwr wheel with --no-deps (see the notes in that
file), then checks `flower-superlink --help`. Does nothing if DIR already holds flwr 1.42.0.
Standard library only; needs PyPI (or a mirror) reachable through pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLWR = "flwr==1.42.0"


def default_dir() -> Path:
    if os.environ.get("FEDPROMPT_FLWR_VENV"):
        return Path(os.environ["FEDPROMPT_FLWR_VENV"])
    cache = os.environ.get("FEDPROMPT_CACHE") or str(Path.home() / ".cache" / "fedprompt")
    return Path(cache) / "flwr-1.42.0-venv"


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def has_flwr(venv: Path) -> bool:
    py = venv / "bin" / "python"
    if not py.exists():
        return False
    r = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('flwr'))"],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0 and r.stdout.strip() == "1.42.0"


def main() -> int:
    venv = Path(sys.argv[1]) if len(sys.argv) > 1 else default_dir()
    if has_flwr(venv):
        print(f"{venv}: flwr 1.42.0 already installed")
        return 0
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run(pip + ["install", "-r", str(HERE / "requirements-flwr-1.42.0.txt")])
    run(pip + ["install", "--no-deps", FLWR])
    env = dict(os.environ, FLWR_DISABLE_UPDATE_CHECK="1", FLWR_TELEMETRY_ENABLED="0")
    subprocess.run([str(venv / "bin" / "flower-superlink"), "--help"], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    if not has_flwr(venv):
        print(f"{venv}: flwr 1.42.0 did not install", file=sys.stderr)
        return 1
    print(f"{venv}: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
