#!/usr/bin/env python3
"""Check that an adapter folder loads in PEFT and reproduces reference logits.

    python scripts/check_adapter_in_peft.py --model MODEL_DIR --adapter ADAPTER_DIR --refs REFS.safetensors

MODEL_DIR is loaded with AutoModelForSequenceClassification; ADAPTER_DIR (PEFT layout:
adapter_config.json + adapter_model.safetensors) is applied with PeftModel.from_pretrained.
As a convenience, an ADAPTER_DIR holding only head.safetensors (classifier tensors under their
HF names) is loaded into the base model with load_state_dict instead.
REFS must hold `input_ids`, `attention_mask` (and `token_type_ids` for BERT) as integers and
`logits` [B, num_labels]; the model runs them in eval mode and the script prints the max abs
difference of the logits. Exit code 0 if it is <= --atol (default 1e-4), 1 otherwise
(2 on usage/loading errors). Used to prove that adapters written by the Rust side load in PEFT.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model folder (config.json + *.safetensors)")
    ap.add_argument("--adapter", required=True, help="PEFT adapter folder (or a folder with head.safetensors)")
    ap.add_argument("--refs", required=True, help="safetensors with input_ids, attention_mask[, token_type_ids], logits")
    ap.add_argument("--atol", type=float, default=1e-4, help="max allowed abs difference (default 1e-4)")
    args = ap.parse_args()

    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    refs = load_file(args.refs)
    for k in ("input_ids", "attention_mask", "logits"):
        if k not in refs:
            print(f"error: {args.refs} has no `{k}`", file=sys.stderr)
            return 2
    base = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    adapter = Path(args.adapter)
    if (adapter / "adapter_config.json").exists():
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(base, str(adapter)).eval()
        except Exception as e:  # e.g. KeyError when the classifier tensors are missing
            print(f"error: PEFT could not load {adapter}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        pt = model.active_peft_config.peft_type
        kind = f"PEFT {getattr(pt, 'value', pt)}"
    elif (adapter / "head.safetensors").exists():
        head = load_file(str(adapter / "head.safetensors"))
        missing, unexpected = base.load_state_dict(head, strict=False)
        if unexpected:
            print(f"error: head.safetensors has unknown keys {unexpected}", file=sys.stderr)
            return 2
        model, kind = base, f"head ({len(head)} tensors)"
    else:
        print(f"error: {adapter} has neither adapter_config.json nor head.safetensors", file=sys.stderr)
        return 2

    inputs = {"input_ids": refs["input_ids"].long(), "attention_mask": refs["attention_mask"].long()}
    if "token_type_ids" in refs:
        inputs["token_type_ids"] = refs["token_type_ids"].long()
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    want = refs["logits"].float()
    if logits.shape != want.shape:
        print(f"FAIL: logits shape {tuple(logits.shape)} != refs {tuple(want.shape)}")
        return 1
    diff = (logits - want).abs().max().item()
    ok = diff <= args.atol
    print(f"{kind}: max |logits - refs| = {diff:.3e} (atol {args.atol:g}) -> {'OK' if ok else 'FAIL'}")
    if not ok:
        print("peft logits:\n", logits)
        print("refs logits:\n", want)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
