#!/usr/bin/env python3
"""PyTorch + PEFT side of `fedprompt bench` (crates/fedprompt-bench): one measurement per process,
so that the process's peak RSS (VmHWM) is the measurement's own.

Modes:
  --probe                          versions of torch / transformers / peft (fails if missing)
  --mode train  --model DIR ...    prompt-tuning steps (1 virtual token, AdamW lr 1e-3), timed
  --mode infer  --model DIR ...    batched inference of the prompt-tuned classifier, timed
  --mode bytes  --model DIR        bytes per round: PEFT adapter (prompt, LoRA r=8 q/v) and the
                                   full model's state dict, as safetensors

--autocast runs the forward (train: and the loss) under torch.autocast("cpu", dtype=torch.bfloat16):
PyTorch's bf16 mode on the CPU (oneDNN; AMX tiles where the CPU has them).

Token ids are the same deterministic rows as fedprompt's (`<s>`, ids in [5, vocab), `</s>`;
no padding). With --json the result is one JSON line on stdout.

    python scripts/bench_torch.py --json --mode train --model DIR --batch 8 --seq 148 \
        --warmup 1 --iters 3 --threads 2
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def vm_hwm_bytes():
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def token_rows(batch, seq, vocab):
    rows = []
    for i in range(batch):
        row = []
        for j in range(seq):
            if j == 0:
                row.append(0)
            elif j + 1 == seq:
                row.append(2)
            else:
                k = i * seq + j
                row.append(5 + (k * 7919 + 13) % (vocab - 5))
        rows.append(row)
    return rows


def versions():
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def load(args):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=args.num_labels)


def prompt_model(base):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    cfg = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=1)
    return get_peft_model(base, cfg)


def timed(args, result, step):
    times = []
    for it in range(args.warmup + args.iters):
        t = time.perf_counter()
        step(it)
        dt = time.perf_counter() - t
        if it >= args.warmup:
            times.append(dt)
    result["times_s"] = times


def run(args):
    import contextlib

    import torch

    def amp():
        if args.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = {"ok": True, "mode": args.mode, "versions": versions(), "threads": torch.get_num_threads(),
              "autocast": bool(args.autocast)}
    t0 = time.perf_counter()
    base = load(args)
    if args.mode == "bytes":
        result["bytes"] = method_bytes(args, base)
        result["load_s"] = time.perf_counter() - t0
        result["peak_rss_bytes"] = vm_hwm_bytes()
        return result

    model = prompt_model(base)
    vocab = base.config.vocab_size
    ids = torch.tensor(token_rows(args.batch, args.seq, vocab), dtype=torch.long)
    mask = torch.ones_like(ids)
    labels = torch.tensor([i % args.num_labels for i in range(args.batch)], dtype=torch.long)
    trainable = [p for p in model.parameters() if p.requires_grad]
    result["trainable_params"] = sum(p.numel() for p in trainable)
    result["attn_implementation"] = getattr(base.config, "_attn_implementation", None)
    result["load_s"] = time.perf_counter() - t0

    if args.mode == "train":
        model.train()
        opt = torch.optim.AdamW(trainable, lr=args.lr)

        def step(_it):
            with amp():
                out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            result["last_loss"] = float(out.loss.detach())

        timed(args, result, step)
    else:
        model.eval()

        def step(_it):
            with torch.inference_mode(), amp():
                logits = model(input_ids=ids, attention_mask=mask).logits
            logits.float().tolist()

        timed(args, result, step)
    result["median_s"] = statistics.median(result["times_s"])
    result["examples_per_s"] = args.batch / result["median_s"]
    result["peak_rss_bytes"] = vm_hwm_bytes()
    return result


def method_bytes(args, base):
    """Bytes per round: what PEFT's save_pretrained writes (adapter_model.safetensors, the
    classifier head included as modules_to_save) and, for full fine-tuning, the whole state dict."""
    import copy

    from peft import LoraConfig, TaskType, get_peft_model
    from safetensors.torch import save as st_save

    out = []
    for name in ["prompt", "lora"]:
        m = copy.deepcopy(base)
        if name == "prompt":
            pm = prompt_model(m)
        else:
            cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                             target_modules=["query", "value"])
            pm = get_peft_model(m, cfg)
        params = sum(p.numel() for p in pm.parameters() if p.requires_grad)
        with tempfile.TemporaryDirectory() as td:
            pm.save_pretrained(td)
            size = os.path.getsize(os.path.join(td, "adapter_model.safetensors"))
        out.append({"method": name, "params": params, "bytes": size})
        del pm, m
    sd = {k: v.contiguous() for k, v in base.state_dict().items()}
    size = len(st_save(sd, metadata={"format": "pt"}))
    out.append({"method": "full", "params": sum(p.numel() for p in base.parameters()), "bytes": size})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--probe", action="store_true", help="print library versions and exit")
    ap.add_argument("--mode", choices=["train", "infer", "bytes"], default="train")
    ap.add_argument("--model", help="Hugging Face model folder")
    ap.add_argument("--num-labels", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=148)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast on the CPU")
    args = ap.parse_args()
    try:
        if args.probe:
            res = {"ok": True, "versions": versions()}
        else:
            if not args.model:
                ap.error("--model is required")
            res = run(args)
    except ImportError as e:
        res = {"ok": False, "error": f"import failed: {e}"}
    if args.json:
        print(json.dumps(res))
    else:
        print(json.dumps(res, indent=2))
    return 0 if res.get("ok") else 2


if __name__ == "__main__":
    sys.exit(main())
