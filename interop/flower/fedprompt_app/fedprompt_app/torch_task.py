"""PyTorch + transformers + PEFT side of the fedprompt Flower App (no flwr imports).

Trains and evaluates the same trainable set that fedprompt's own nodes train, under
fedprompt's tensor names, so that Python SuperNodes can join a federation beside
`fedprompt flower-node` nodes. Used by `client_app.py` and by `make_dev_export.py`
(which runs it without flwr to compute a reference result).

Name mapping (XLM-R, SEQ_CLS):
    prompt_embeddings      <-> prompt_encoder.default.embedding.weight
    classifier.X           <-> base_model.classifier.modules_to_save.default.X   (prompt)
                               base_model.model.classifier.modules_to_save.default.X (lora)
    <module>.lora_A.weight <-> base_model.model.<module>.lora_A.default.weight   (lora)
    classifier.X           <-> classifier.X                                       (head)

Every import of torch / transformers / peft happens inside functions so that the
ServerApp (which imports this package) loads in an environment without torch.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

PEFT_PROMPT_PARAM = "prompt_encoder.default.embedding.weight"
FEDPROMPT_PROMPT_NAME = "prompt_embeddings"


def fedprompt_name(peft_name: str) -> str:
    """fedprompt's trainable name of a PEFT parameter name (mirrors fedprompt's from_peft_key)."""
    if peft_name == PEFT_PROMPT_PARAM:
        return FEDPROMPT_PROMPT_NAME
    k = peft_name
    for prefix in ("base_model.model.", "base_model."):
        if k.startswith(prefix):
            k = k[len(prefix):]
            break
    return (
        k.replace(".modules_to_save.default.", ".")
        .replace(".modules_to_save.", ".")
        .replace(".default.", ".")
    )


def parse_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """The `fedprompt-spec` config entry: {"method": {...}, "labels": [...], "max_len": N}."""
    s = json.loads(spec) if isinstance(spec, str) else dict(spec)
    if "method" not in s or "labels" not in s:
        raise ValueError(f"fedprompt-spec needs `method` and `labels`, got keys {sorted(s)}")
    if not s["labels"]:
        raise ValueError("fedprompt-spec: empty `labels`")
    s.setdefault("max_len", 128)
    return s


def read_jsonl(path: str | Path, labels: list[str]) -> tuple[list[str], list[int]]:
    """Texts and label indices of a JSONL file with one {"text", "label"} per line."""
    index = {name: i for i, name in enumerate(labels)}
    texts, ys = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            label = row["label"]
            if isinstance(label, int) and not isinstance(label, bool):
                y = label
            elif label in index:
                y = index[label]
            else:
                raise ValueError(f"{path}:{lineno}: label {label!r} not in {labels}")
            texts.append(str(row["text"]))
            ys.append(int(y))
    if not texts:
        raise ValueError(f"{path}: no examples")
    return texts, ys


def build_model(model_path: str | Path, spec: dict[str, Any]):
    """The PEFT model for the spec's method; returns (model, tokenizer, {fedprompt name: param})."""
    import torch  # noqa: F401  (lazy)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    labels = spec["labels"]
    method = dict(spec["method"])
    kind = method.get("type")
    base = AutoModelForSequenceClassification.from_pretrained(
        str(model_path),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    tokenizer.padding_side = "right"

    if kind == "prompt":
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        if method.get("init_text"):
            raise ValueError("method.init_text is not supported here (arrays come from the server)")
        cfg = PromptTuningConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=int(method.get("num_virtual_tokens", 1)),
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
        model = get_peft_model(base, cfg)
    elif kind == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        cfg = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=int(method.get("r", 8)),
            lora_alpha=float(method.get("alpha", 16.0)),
            lora_dropout=float(method.get("dropout", 0.1)),
            target_modules=list(method.get("target_modules", ["query", "value"])),
            bias="none",
        )
        model = get_peft_model(base, cfg)
    elif kind == "head":
        model = base
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
    else:
        raise ValueError(
            f"method type {kind!r} is not supported by the Python ClientApp (prompt, lora, head)"
        )

    params = OrderedDict()
    for name, p in model.named_parameters():
        if p.requires_grad:
            params[fedprompt_name(name)] = p
    return model, tokenizer, params


def load_arrays(params: dict, arrays: dict[str, np.ndarray]) -> None:
    """Copy the server's arrays (fedprompt names) into the model's trainable parameters."""
    import torch

    have, want = set(params), set(arrays)
    if have != want:
        raise ValueError(
            "trainable set mismatch: server sent "
            f"{sorted(want - have)} not in the model, model has {sorted(have - want)} not sent"
        )
    with torch.no_grad():
        for name, value in arrays.items():
            p = params[name]
            if tuple(p.shape) != tuple(value.shape):
                raise ValueError(f"{name}: model shape {tuple(p.shape)}, server sent {value.shape}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def dump_arrays(params: dict, order: list[str]) -> "OrderedDict[str, np.ndarray]":
    """The trainable parameters as float32 numpy arrays, in `order`."""
    return OrderedDict(
        (name, params[name].detach().cpu().numpy().astype(np.float32, copy=True)) for name in order
    )


def _batches(tokenizer, texts, ys, idx, batch_size, max_len):
    import torch

    for start in range(0, len(idx), batch_size):
        sel = idx[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in sel],
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        yield enc["input_ids"], enc["attention_mask"], torch.tensor([ys[i] for i in sel])


def train(
    arrays: "OrderedDict[str, np.ndarray]",
    spec: dict[str, Any],
    model_path: str | Path,
    data_path: str | Path,
    *,
    learning_rate: float,
    epochs: int,
    seed: int,
    batch_size: int = 16,
    weight_decay: float = 0.01,
) -> tuple["OrderedDict[str, np.ndarray]", int, float]:
    """Local training from `arrays`; returns (new arrays in the same order, num examples, mean loss)."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model, tokenizer, params = build_model(model_path, spec)
    load_arrays(params, arrays)
    texts, ys = read_jsonl(data_path, spec["labels"])
    opt = torch.optim.AdamW(list(params.values()), lr=learning_rate, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    total, count = 0.0, 0
    for _ in range(max(int(epochs), 0)):
        order = torch.randperm(len(texts), generator=gen).tolist()
        for input_ids, mask, labels in _batches(
            tokenizer, texts, ys, order, batch_size, int(spec["max_len"])
        ):
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            total += float(out.loss.detach()) * len(labels)
            count += len(labels)
    mean_loss = total / count if count else math.nan
    return dump_arrays(params, list(arrays)), len(texts), mean_loss


def evaluate(
    arrays: "OrderedDict[str, np.ndarray]",
    spec: dict[str, Any],
    model_path: str | Path,
    data_path: str | Path,
    *,
    batch_size: int = 16,
) -> tuple[int, float, float]:
    """(num examples, accuracy, mean cross-entropy) of `arrays` on the node's data."""
    import torch

    torch.set_num_threads(1)
    model, tokenizer, params = build_model(model_path, spec)
    load_arrays(params, arrays)
    texts, ys = read_jsonl(data_path, spec["labels"])
    model.eval()
    correct, total_loss = 0, 0.0
    with torch.no_grad():
        for input_ids, mask, labels in _batches(
            tokenizer, texts, ys, list(range(len(texts))), batch_size, int(spec["max_len"])
        ):
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
            total_loss += float(out.loss) * len(labels)
            correct += int((out.logits.argmax(-1) == labels).sum())
    n = len(texts)
    return n, correct / n, total_loss / n
