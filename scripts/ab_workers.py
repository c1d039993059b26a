#!/usr/bin/env python3
"""Interleaved A/B of fedprompt builds or settings on one bench job.

Runs the bench's worker protocol (`FEDPROMPT_BENCH_WORKER=1 <binary> < job.json`) for every
variant, ROUNDS times, alternating the order each round, and prints per variant the median
over rounds of each worker's median timed iteration, every round's value, and the worker's CPU
time (user + system, steadier than wall time on a shared machine).

    python3 scripts/ab_workers.py JOB.json ROUNDS NAME=BINARY[:ENV=V,ENV=V] ...

Example (the allocator A/B of docs/performance.md section 4):

    B=target/release/fedprompt
    python3 scripts/ab_workers.py job.json 3 "dflt=$B:FEDPROMPT_MALLOC_DEFAULTS=1" "keep=$B:"

A job is the JSON of `fedprompt_bench::worker::Job`, e.g.
{"kind":"infer","model_dir":"...","batch":32,"seq_len":148,"warmup":1,"iters":3,
 "num_labels":10,"seed":0,"lr":0.001,"dtype":"bf16"}. Threads: $T (default 2).
"""
import json
import os
import resource
import statistics
import subprocess
import sys

MARKER = "FEDPROMPT_BENCH_RESULT "


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    job = open(sys.argv[1]).read()
    rounds = int(sys.argv[2])
    variants = sys.argv[3:]
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            _, _, spec = v.partition("=")
            binary, _, envs = spec.partition(":")
            env = dict(os.environ, FEDPROMPT_BENCH_WORKER="1",
                       RAYON_NUM_THREADS=os.environ.get("T", "2"))
            for kv in filter(None, envs.split(",")):
                k, _, val = kv.partition("=")
                env[k] = val
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([binary], input=job, capture_output=True, text=True,
                                 env=env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            lines = [l for l in out.stdout.splitlines() if l.startswith(MARKER)]
            if not lines:
                sys.exit(f"{v}: the worker printed no result (exit {out.returncode}):\n"
                         f"{out.stderr[-2000:]}")
            result = json.loads(lines[0][len(MARKER):])
            times[v].append(statistics.median(result["times_s"]))
            cpu[v].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    for v in variants:
        name = v.partition("=")[0]
        print(f"{name:12s} median {statistics.median(times[v]):.4f} s/iter  rounds "
              f"{' '.join(f'{x:.3f}' for x in times[v])}  cpu min {min(cpu[v]):.2f} "
              f"median {statistics.median(cpu[v]):.2f} s")
    print("load average", " ".join(open("/proc/loadavg").read().split()[:3]))


if __name__ == "__main__":
    main()
