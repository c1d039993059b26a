#!/usr/bin/env python3
"""Make a Python environment for a Python SuperNode running the fedprompt ClientApp:
flwr 1.42.0 (flower-supernode, flower-superexec, flwr-clientapp) plus torch,
transformers and peft, without touching the environments it borrows from.

    python3 interop/flower/make_supernode_venv.py VENV \
        --flwr-wheel flwr-1.42.0-py3-none-any.whl \
        --flwr-deps-from FLWR_VENV --torch-from TORCH_VENV

What it does (stdlib only, offline):
  1. `<base python> -m venv DIR` with the same interpreter as --torch-from (same minor
     version is required: it borrows site-packages);
  2. `DIR/bin/pip install --no-deps <flwr wheel>`: flwr itself and its console scripts,
     with DIR's python in their shebangs;
  3. two .pth files in DIR's site-packages that append, in this order,
     --flwr-deps-from's site-packages (flwr's dependencies: protobuf < 7, grpcio,
     cryptography, fastapi, uvicorn, ...) and --torch-from's site-packages (torch,
     transformers, peft, safetensors, tokenizers). Earlier paths win, so flwr's pins
     (protobuf, rich, packaging) shadow the newer copies in the torch environment.

With --install-deps it instead installs flwr's dependencies from the package index into
DIR (`pip install -r REQS`, with certifi unpinned because flwr 1.42.0's certifi pin is
newer than the index offers) and links only the torch environment.
Finally it imports flwr, torch, transformers, peft and fedprompt_app.client_app in DIR's
python as a check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"{venv}: no lib/python3*/site-packages")
    return found[0]


def base_python(venv: Path) -> str:
    cfg = (venv / "pyvenv.cfg").read_text().splitlines()
    for line in cfg:
        k, _, v = line.partition("=")
        if k.strip() == "executable":
            return v.strip()
    for line in cfg:
        k, _, v = line.partition("=")
        if k.strip() == "home":
            return str(Path(v.strip()) / "python3")
    raise SystemExit(f"{venv}/pyvenv.cfg: no executable/home")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--flwr-wheel", type=Path, required=True, help="flwr-1.42.0-py3-none-any.whl (pip download --no-deps flwr==1.42.0)")
    ap.add_argument("--flwr-deps-from", type=Path, required=True, help="a venv with flwr's dependencies (make_flwr_venv.py's)")
    ap.add_argument("--torch-from", type=Path, required=True, help="a venv with torch, transformers, peft")
    ap.add_argument("--install-deps", type=Path, metavar="REQS", default=None,
                    help="requirements file of flwr's dependencies to install from the index instead of linking")
    args = ap.parse_args()

    venv: Path = args.dir.resolve()
    if not (venv / "bin" / "python").exists():
        run([base_python(args.torch_from), "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    if args.install_deps:
        run([py, "-m", "pip", "install", "-q", "-r", str(args.install_deps)])
    run([py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(args.flwr_wheel)])

    sp = site_packages(venv)
    links = []
    if not args.install_deps:
        links.append(("a_fedprompt_flwr_deps.pth", site_packages(args.flwr_deps_from)))
    links.append(("b_fedprompt_torch.pth", site_packages(args.torch_from)))
    for name, target in links:
        (sp / name).write_text(f"{target}\n")
        print(f"{sp / name} -> {target}")

    check = (
        "import sys; sys.path.insert(0, %r)\n"
        "import flwr, torch, transformers, peft, google.protobuf as pb\n"
        "import fedprompt_app.client_app\n"
        "print('flwr', flwr.__version__, 'torch', torch.__version__, 'transformers', "
        "transformers.__version__, 'peft', peft.__version__, 'protobuf', pb.__version__)\n"
    ) % str(HERE / "fedprompt_app")
    run([py, "-c", check])
    for script in ("flower-supernode", "flower-superexec", "flwr-clientapp"):
        if not (venv / "bin" / script).exists():
            raise SystemExit(f"missing {venv / 'bin' / script}")
    print(f"ok: {venv} (put {venv / 'bin'} first on PATH for a Python SuperNode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
