"""fedprompt Flower App: ServerApp running Flower's stock FedAvg (Message API, flwr 1.42).

Run-config keys (defaults in pyproject.toml, override with `flwr run ... --run-config`):
  initial-arrays     safetensors file with the initial trainable set (fedprompt names, F32)
  train-config       flat JSON object; its entries go into the ConfigRecord of every train
                     and evaluate message ("" = none). FedAvg adds "server-round" to both.
  num-server-rounds  int
  fraction-train     float
  fraction-evaluate  float
  min-nodes          int: min_available_nodes = min_train_nodes = min_evaluate_nodes
  round-timeout      float seconds FedAvg waits for the replies of one phase
  strategy           "fedavg" (default), "fedprox", "fedadam", "fedyogi" or "fedadagrad":
                     Flower's own strategy classes, unchanged
  proximal-mu        FedProx's mu (sent to clients as "proximal-mu")
  server-lr          FedAdam/FedYogi/FedAdagrad's server learning rate (eta)
  output             path prefix: writes <output>.safetensors (final global arrays, the
                     initial file's names and order) and <output>.json (per-round metrics
                     and replies)
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi
from flwr.supercore import log

from .st_io import load, save

app = ServerApp()


def _config_record(path: str) -> ConfigRecord:
    if not path:
        return ConfigRecord()
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a flat JSON object")
    for k, v in entries.items():
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"{path}: entry {k!r} is {type(v).__name__}; only str/int/float/bool")
    return ConfigRecord(dict(entries))


def _metrics_dict(record: MetricRecord | None) -> dict | None:
    return None if record is None else {k: v for k, v in record.items()}


def _reply_summary(msg: Message) -> dict:
    out: dict = {"node_id": int(msg.metadata.src_node_id)}
    if msg.has_error():
        out["error"] = {"code": int(msg.error.code), "reason": msg.error.reason}
        return out
    content = msg.content
    out["metrics"] = {
        name: {k: v for k, v in rec.items()} for name, rec in content.metric_records.items()
    }
    out["array_records"] = {name: list(rec.keys()) for name, rec in content.array_records.items()}
    return out


class Recording:
    """Mixin for a stock strategy: records each round's replies (aggregation unchanged)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, dict] = {}

    def _round(self, server_round: int) -> dict:
        return self.rounds.setdefault(server_round, {"round": server_round})

    def _record(self, server_round, phase: str, replies) -> list:
        replies = list(replies)
        r = self._round(server_round)
        r[f"{phase}_replies"] = [_reply_summary(m) for m in replies]
        r[f"{phase}_ok"] = sum(1 for m in replies if not m.has_error())
        r[f"{phase}_t"] = time.time()
        return replies

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, self._record(server_round, "train", replies))

    def aggregate_evaluate(self, server_round, replies):
        return super().aggregate_evaluate(
            server_round, self._record(server_round, "evaluate", replies)
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    initial_path = str(cfg["initial-arrays"])
    output = str(cfg["output"])
    num_rounds = int(cfg["num-server-rounds"])
    min_nodes = int(cfg["min-nodes"])
    if not initial_path or not output:
        raise ValueError("run config needs `initial-arrays` and `output`")

    initial = load(initial_path)
    order = list(initial)
    initial_arrays = ArrayRecord(OrderedDict((k, Array(v)) for k, v in initial.items()))
    extra = str(cfg.get("train-config", ""))
    train_config = _config_record(extra)
    evaluate_config = _config_record(extra)
    sent_config = {k: v for k, v in train_config.items()}
    log(INFO, "fedprompt: %d tensors from %s, config keys %s", len(order), initial_path, list(train_config))

    name = str(cfg.get("strategy", "fedavg")).lower()
    classes = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi,
               "fedadagrad": FedAdagrad}
    if name not in classes:
        raise ValueError(f"strategy {name!r} is not one of {sorted(classes)}")
    kwargs = dict(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    if name == "fedprox":
        kwargs["proximal_mu"] = float(cfg.get("proximal-mu", 0.0))
    elif name != "fedavg" and "server-lr" in cfg:
        kwargs["eta"] = float(cfg["server-lr"])
    strategy = type(f"Recording{classes[name].__name__}", (Recording, classes[name]), {})(**kwargs)
    log(INFO, "fedprompt: strategy %s %s", classes[name].__name__, kwargs)
    t0 = time.time()
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=num_rounds,
        timeout=float(cfg.get("round-timeout", 600.0)),
        train_config=train_config,
        evaluate_config=evaluate_config,
    )
    elapsed = time.time() - t0

    aggregated = len(result.arrays) > 0
    final_record = result.arrays if aggregated else initial_arrays
    final = OrderedDict()
    for k in order:
        if k not in final_record:
            raise ValueError(f"final arrays lack {k!r} (have {list(final_record)})")
        final[k] = np.asarray(final_record[k].numpy())
    extra_keys = [k for k in final_record if k not in final]
    for k in extra_keys:
        final[k] = np.asarray(final_record[k].numpy())
    save(final, output + ".safetensors")

    rounds = []
    for rnd in range(1, num_rounds + 1):
        r = dict(strategy.rounds.get(rnd, {"round": rnd}))
        r["train_metrics"] = _metrics_dict(result.train_metrics_clientapp.get(rnd))
        r["evaluate_metrics"] = _metrics_dict(result.evaluate_metrics_clientapp.get(rnd))
        rounds.append(r)
    summary = {
        "flwr_version": _flwr_version(),
        "run_id": int(context.run_id),
        "num_rounds": num_rounds,
        "min_nodes": min_nodes,
        "strategy": name,
        "initial_arrays": initial_path,
        "train_config": sent_config,
        "aggregated": aggregated,
        "tensors": {k: list(v.shape) for k, v in final.items()},
        "extra_tensors": extra_keys,
        "strategy_seconds": elapsed,
        "rounds": rounds,
    }
    Path(output + ".json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    log(INFO, "fedprompt: wrote %s.safetensors and %s.json", output, output)


def _flwr_version() -> str:
    try:
        from flwr.supercore.version import package_version

        return package_version
    except Exception:  # pragma: no cover
        return "unknown"
