"""fedprompt Flower App: Python ClientApp (PyTorch + transformers + PEFT).

Lets ordinary Python SuperNodes join a federation beside `fedprompt flower-node` nodes.
Node config (flower-supernode --node-config 'data-path="..." model-path="..."'):
  data-path   JSONL file, one {"text": ..., "label": "<label name>"} per line
  model-path  Hugging Face model folder (XLM-R style sequence classifier)
Message config (ConfigRecord "config"): "fedprompt-spec" (JSON string: method, labels,
max_len), "seed", "local-epochs", "learning-rate", optional "weight-decay" (0.01) and
"batch-size" (16); FedAvg adds "server-round". Torch is seeded with seed + server-round.

Replies use exactly the keys fedprompt's nodes use (FedAvg needs identical keys):
  train:    ArrayRecord "arrays" + MetricRecord "metrics" {"num-examples", "train_loss"}
  evaluate: MetricRecord "metrics" {"num-examples", "accuracy", "loss"}
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import torch_task

app = ClientApp()


def _dump(msg: Message, context: Context) -> None:
    """With FEDPROMPT_FLOWER_DUMP_DIR set, write what the message carried (for debugging)."""
    out = os.environ.get("FEDPROMPT_FLOWER_DUMP_DIR")
    if not out:
        return
    md = msg.metadata
    rec = {
        "message_type": md.message_type,
        "run_id": md.run_id,
        "group_id": md.group_id,
        "dst_node_id": md.dst_node_id,
        "config_records": {
            name: {k: [type(v).__name__, v] for k, v in cr.items()}
            for name, cr in msg.content.config_records.items()
        },
        "array_records": {
            name: {k: [a.dtype, list(a.shape), a.stype] for k, a in ar.items()}
            for name, ar in msg.content.array_records.items()
        },
        "metric_records": list(msg.content.metric_records),
        "node_config": dict(context.node_config),
        "run_config": dict(context.run_config),
    }
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{md.dst_node_id}-{md.message_type}-{md.group_id}-{time.time_ns()}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1, default=str)


def _inputs(msg: Message, context: Context):
    _dump(msg, context)
    cfg = msg.content["config"]
    spec = torch_task.parse_spec(str(cfg["fedprompt-spec"]))
    record = msg.content["arrays"]
    arrays = OrderedDict((k, np.asarray(record[k].numpy(), dtype=np.float32)) for k in record.keys())
    node = context.node_config
    for key in ("data-path", "model-path"):
        if key not in node:
            raise ValueError(f"node config lacks {key!r} (flower-supernode --node-config)")
    return cfg, spec, arrays, str(node["model-path"]), str(node["data-path"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, spec, arrays, model_path, data_path = _inputs(msg, context)
    seed = int(cfg.get("seed", 0)) + int(cfg.get("server-round", 0))
    new, n, loss = torch_task.train(
        arrays,
        spec,
        model_path,
        data_path,
        learning_rate=float(cfg.get("learning-rate", 1e-3)),
        epochs=int(cfg.get("local-epochs", 1)),
        seed=seed,
        batch_size=int(cfg.get("batch-size", 16)),
        weight_decay=float(cfg.get("weight-decay", 0.01)),
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(OrderedDict((k, Array(v)) for k, v in new.items())),
            "metrics": MetricRecord({"num-examples": int(n), "train_loss": float(loss)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, spec, arrays, model_path, data_path = _inputs(msg, context)
    n, acc, loss = torch_task.evaluate(
        arrays, spec, model_path, data_path, batch_size=int(cfg.get("batch-size", 16))
    )
    content = RecordDict(
        {"metrics": MetricRecord({"num-examples": int(n), "accuracy": float(acc), "loss": float(loss)})}
    )
    return Message(content=content, reply_to=msg)
