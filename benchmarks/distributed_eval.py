"""Evaluation throughput of one process against two data-parallel processes (gloo, CPU).

What is timed: one accuracy row (``r1lab.engine.evaluate.accuracy_row``: the heads, then every test
set encoded and scored) of the bundled tiny CLIP over the world benchmark's 7 test sets
(3,050 images; ``--scale k`` repeats each set k times), eval batch 512, as a run evaluates
its merged model after every task. The variants run interleaved, round by round, in an
order that rotates every round, inside one torchrun job of 2 processes (so process start-up
is not timed); medians over rounds:

    1 process, 1 thread      rank 0 alone, ``shard=False`` (rank 1 waits in a barrier)
    1 process, C threads     rank 0 alone with all C cores as intra-op threads
    2 processes x C/2        both ranks, ``shard=True``: each encodes its slice of every
                             batch, the correct counts are summed (r1lab/engine/distributed.py);
                             timed from a barrier before to a barrier after, on rank 0

The rows of all variants must be equal (checked). The ratio that matters is 2 processes
against 1 process with all threads (the same cores, used two ways); the table also gives it
against the faster of the two 1-process variants (on a loaded machine one thread can beat
two, docs/benchmarks.md).

    python benchmarks/distributed_eval.py                  # starts its own torchrun job
    python benchmarks/distributed_eval.py --rounds 7 --scale 2
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(argv) -> int:
    """Run this script under ``torchrun --standalone --nproc_per_node 2``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "--worker", *argv]
    return subprocess.call(cmd, cwd=ROOT, env=env)


def worker(args) -> int:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.utils.data import TensorDataset

    from r1lab import load_clip, make_benchmark
    from r1lab.engine import distributed
    from r1lab.engine.evaluate import accuracy_row

    distributed.init("cpu", timeout=3600)
    cores = distributed._cores()
    per_process = torch.get_num_threads()
    main = distributed.is_main()
    bundle = load_clip("tiny")
    bm = make_benchmark("world")
    sets = []
    for t in bm.tasks:
        x, y = t.test.tensors
        sets.append(TensorDataset(x.repeat(args.scale, 1, 1, 1), y.repeat(args.scale)))
    n_images = sum(len(s) for s in sets)

    def row(shard):
        return accuracy_row(bundle.model, bundle.tokenizer, bm, "cpu", args.batch_size,
                            test_sets=sets, shard=shard)

    def alone(threads):
        """rank 0 evaluates by itself; rank 1 waits."""
        dist.barrier()
        out = None
        if main:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            r = row(False)
            out = (time.perf_counter() - t0, r)
            torch.set_num_threads(per_process)
        dist.barrier()
        return out

    def together():
        dist.barrier()
        t0 = time.perf_counter()
        r = row(True)
        dist.barrier()
        return time.perf_counter() - t0, r

    variants = {"1 process, 1 thread": lambda: alone(1),
                f"1 process, {cores} threads": lambda: alone(cores),
                f"2 processes x {per_process} thread{'s' if per_process > 1 else ''}": together}
    names = list(variants)
    load0 = os.getloadavg()
    times = {k: [] for k in names}
    rows = {}
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            res = variants[k]()
            if main and r >= args.warmup:
                times[k].append(res[0])
                rows.setdefault(k, res[1])
    load1 = os.getloadavg()
    if main:
        ref = rows[names[0]]
        for k in names:
            assert np.allclose(rows[k], ref, atol=1e-9), (k, rows[k], ref)
        cpu = platform.processor() or "CPU"
        try:
            cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                       if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        print(f"machine: {cpu}, {cores} cores visible, torch {torch.__version__}, Python "
              f"{platform.python_version()}; load average {' '.join(f'{v:.1f}' for v in load0)} "
              f"at start, {' '.join(f'{v:.1f}' for v in load1)} at the end")
        print(f"one accuracy row: world benchmark, 7 test sets x{args.scale} = {n_images:,} images, "
              f"tiny CLIP, eval batch {args.batch_size}; {args.rounds} rounds after {args.warmup} "
              f"warm-up, rotating order; rows equal in every variant")
        med = {k: statistics.median(times[k]) for k in names}
        best = min(med[names[0]], med[names[1]])
        print(f"| variant | median s | images/s | speed vs 1 process, {cores} threads | "
              f"speed vs the faster 1-process variant |")
        print("|---|---:|---:|---:|---:|")
        for k in names:
            print(f"| {k} | {med[k]:.2f} | {n_images / med[k]:,.0f} | {med[names[1]] / med[k]:.2f}x "
                  f"| {best / med[k]:.2f}x |")
    distributed.shutdown()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--scale", type=int, default=1, help="repeat every test set this many times")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.worker:
        return worker(args)
    return launch([a for a in sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
