#!/usr/bin/env python3
"""Make a small export folder in the layout of `fedprompt flower-export`, for developing
and checking the Flower interop without the fedprompt binary.

    TORCH_VENV/bin/python interop/flower/make_dev_export.py /tmp/flower-dev-export \
        --model crates/fedprompt-model/tests/fixtures/tiny-xlmr [--rounds 3] [--no-expected]

Writes:
  initial.safetensors   PEFT prompt tuning (4 virtual tokens, RANDOM init) on the model, the
                        trainable set under fedprompt's names: prompt_embeddings [P,H],
                        classifier.{dense,out_proj}.{weight,bias}
  train-config.json     {"fedprompt-spec": "<json>", "seed", "local-epochs", "learning-rate"}
  clients/<name>.jsonl  a few {"text", "label"} lines per client (different sizes)
  clients.txt           client names, one a line
  run.json              {"rounds": R, "clients": [...]}
  train.toml            placeholder (fedprompt's own file; unused by Python nodes)
  expected.safetensors  (unless --no-expected) the final global of an in-process FedAvg
                        run of the Python ClientApp's training code (fedprompt_app.torch_task)
                        with Flower's aggregation arithmetic: what a run with 3 Python
                        SuperNodes must reproduce

Needs torch, transformers, peft, numpy (no flwr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fedprompt_app"))

import numpy as np  # noqa: E402

from fedprompt_app import st_io, torch_task  # noqa: E402

LABELS = ["greet", "bye", "thanks"]
TEXTS = {
    "greet": ["hello there", "good morning", "hi friend", "hey how are you", "greetings all"],
    "bye": ["goodbye now", "see you later", "bye bye", "farewell friend", "take care"],
    "thanks": ["thank you", "many thanks", "thanks a lot", "much appreciated", "cheers mate"],
}
CLIENTS = {"alpha": 7, "beta": 5, "gamma": 9}  # examples per client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, default=HERE.parents[1] / "crates/fedprompt-model/tests/fixtures/tiny-xlmr")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--virtual-tokens", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--no-expected", action="store_true")
    args = ap.parse_args()

    import torch

    out: Path = args.out
    (out / "clients").mkdir(parents=True, exist_ok=True)
    spec = {
        "method": {"type": "prompt", "num_virtual_tokens": args.virtual_tokens},
        "labels": LABELS,
        "max_len": 32,
    }
    train_config = {
        "fedprompt-spec": json.dumps(spec, separators=(",", ":")),
        "seed": args.seed,
        "local-epochs": args.epochs,
        "learning-rate": args.lr,
    }
    (out / "train-config.json").write_text(json.dumps(train_config, indent=2) + "\n")

    torch.manual_seed(args.seed)
    _, _, params = torch_task.build_model(args.model, spec)
    order = ["prompt_embeddings", "classifier.dense.weight", "classifier.dense.bias",
             "classifier.out_proj.weight", "classifier.out_proj.bias"]
    assert set(order) == set(params), sorted(params)
    initial = torch_task.dump_arrays(params, order)
    st_io.save(initial, out / "initial.safetensors")

    names = list(CLIENTS)
    for ci, (name, n) in enumerate(CLIENTS.items()):
        with open(out / "clients" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                label = LABELS[(i + ci) % len(LABELS)]
                text = TEXTS[label][(i * 2 + ci) % len(TEXTS[label])]
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    (out / "clients.txt").write_text("".join(f"{n}\n" for n in names))
    (out / "run.json").write_text(json.dumps({"rounds": args.rounds, "clients": names}) + "\n")
    (out / "train.toml").write_text(
        "# placeholder written by make_dev_export.py (fedprompt's train.toml goes here)\n"
        f"learning_rate = {args.lr}\nepochs = {args.epochs}\nseed = {args.seed}\n"
    )

    if not args.no_expected:
        t0 = time.time()
        glob = initial
        for rnd in range(1, args.rounds + 1):
            results = []
            for name in names:
                arrays, n, loss = torch_task.train(
                    glob, spec, args.model, out / "clients" / f"{name}.jsonl",
                    learning_rate=args.lr, epochs=args.epochs, seed=args.seed + rnd,
                )
                results.append((arrays, n))
                print(f"round {rnd} {name}: n={n} train_loss={loss:.5f}")
            glob = fedavg(results)
        st_io.save(glob, out / "expected.safetensors")
        print(f"expected.safetensors: {args.rounds} rounds in {time.time() - t0:.1f}s")
    print(f"wrote {out}")
    return 0


def fedavg(results):
    """Flower 1.42's aggregate_arrayrecords arithmetic (float32 arrays times float weights)."""
    total = sum(n for _, n in results)
    agg: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for arrays, n in results:
        w = n / total
        for k, v in arrays.items():
            if k not in agg:
                agg[k] = v * w
            else:
                agg[k] += v * w
    return OrderedDict((k, np.asarray(v)) for k, v in agg.items())


if __name__ == "__main__":
    sys.exit(main())
