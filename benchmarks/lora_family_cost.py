"""The cost of DAC and the LoRA family (docs/method.md sec. 14) side by side, on the world's
tiny CLIP (CPU), written to data/results/lora-family/cost.json for notebook 07 and the README.

Every method runs the world's seven tasks in lockstep with the others (task t of every method,
then task t + 1, the methods' order rotating each task, so that load from other processes hits
them alike), ``--steps`` optimiser steps per task through the engine's own ``train_task`` and
the method's ``end_task``. Measured:

    trainable       parameters the optimiser updates in the last task (LoRA-family extras named)
    frozen          parameters inside the method's layers that never train (routers, InfLoRA's A)
    step ratio      median step time over all steps after the first two of each task, divided
                    by plain LoRA's median
    inference       after the stream: plain CLIP for every method that merges; for one that
                    keeps its layers, eval-mode encode_image + encode_text time through them as a
                    ratio to the same model with its layers switched off (medians of ``--rounds``)
    kept            bytes a method keeps between tasks because a later task reads them (not the
                    merge record r1lab keeps for checkpoints): DAC's past B columns, O-LoRA's
                    earlier A rows, InfLoRA's input basis, SD-LoRA's directions, LoRAMoE's live
                    experts and gate; measured after the seventh task

    python benchmarks/lora_family_cost.py              # ~3 minutes on 2 idle cores
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from r1lab.analysis.lora_family import METHODS, results_dir  # noqa: E402
from r1lab.data.stream import few_shot  # noqa: E402
from r1lab.engine.models import load_clip  # noqa: E402
from r1lab.engine.presets import make_benchmark, preset  # noqa: E402
from r1lab.engine.train import task_seed, train_task  # noqa: E402
from r1lab.methods import get_method  # noqa: E402

# what a later task reads, per method (pool attribute names); the rest is the merge record
KEPT = {"dac": ("past_B",), "lora": (), "o-lora": ("merged_A",), "inflora": ("basis",),
        "sd-lora": ("dir_A", "dir_B"), "loramoe": ("A", "B", "gate.weight"), "codyra": ()}
BASE = {"A", "B"}


def _tensor(pool, name):
    obj = pool
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _named(pool, trainable: bool):
    """{parameter name: numel} of one pool's own parameters (not the frozen base linear)."""
    return {n: p.numel() for n, p in pool.named_parameters()
            if not n.startswith("base.") and p.requires_grad == trainable}


def _timed(model, images, tokens, context, rounds: int) -> float:
    """Median seconds of eval-mode encode_image + encode_text inside ``context()``."""
    times = []
    for _ in range(rounds):
        with context(), torch.no_grad():
            t0 = time.perf_counter()
            model.encode_image(images)
            model.encode_text(tokens)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _totals(pools, trainable: bool) -> dict:
    """{parameter name within a pool: numel summed over the pools}."""
    out = {}
    for p in pools.values():
        for n, k in _named(p, trainable).items():
            out[n] = out.get(n, 0) + k
    return out


def measure(steps: int, rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    bench = make_benchmark("world")
    base_cfg = preset("world").replace(iterations=steps)
    runs = {}
    for name in METHODS:
        method = get_method(name)
        bundle = load_clip("tiny")
        cfg = method.configure(base_cfg)
        runs[name] = dict(method=method, bundle=bundle, cfg=cfg, pools=method.attach(bundle.model, cfg),
                          steps=[])
    order = list(METHODS)
    for t, task in enumerate(bench.tasks):
        data = few_shot(task.train, base_cfg.shots, seed=base_cfg.seed)
        for name in order:
            r = runs[name]
            torch.manual_seed(task_seed(r["cfg"], t))
            r["pools"].reset()
            stamps = []
            train_task(r["bundle"].model, r["bundle"].tokenizer, r["pools"], task, data, r["cfg"], t,
                       progress=False, method=r["method"], on_step=lambda s, v, st=stamps: st.append(time.perf_counter()))
            r["steps"] += [b - a for a, b in zip(stamps[1:], stamps[2:])]
            r["train_names"] = _totals(r["pools"], trainable=True)      # the last task's
            r["frozen_names"] = _totals(r["pools"], trainable=False)
            r["method"].end_task(r["pools"])
        order = order[1:] + order[:1]
    lora_step = statistics.median(runs["lora"]["steps"])
    out = {}
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, r in runs.items():
        model, method, pools = r["bundle"].model, r["method"], r["pools"]
        kept = sum(_tensor(p, a).numel() * _tensor(p, a).element_size() for p in pools.values() for a in KEPT[name])
        also = {n: k for n, k in r["train_names"].items() if n.split(".")[-1] not in BASE}
        inference = "plain CLIP (merged)"
        if not method.merges:
            tokens = r["bundle"].tokenizer([f"a photo of class {i}." for i in range(64)])
            model.eval()
            with_layers, without = [], []
            for _ in range(3):     # alternate the two, three times
                with_layers.append(_timed(model, images, tokens, functools.partial(method.evaluation, pools), rounds))
                without.append(_timed(model, images, tokens, pools.disabled, rounds))
            ratio = statistics.median(with_layers) / statistics.median(without)
            inference = f"CLIP + its layers ({ratio:.2f}x plain CLIP's time)"
        frozen = r["frozen_names"]
        if r["cfg"].top_k == r["cfg"].rank:   # every expert always active: the router is never called
            frozen = {(f"{n} (never called, k = r)" if n.startswith("router.") else n): k for n, k in frozen.items()}
        out[name] = dict(
            trainable=sum(r["train_names"].values()),
            also_trained=", ".join(f"{n} ({k:,})" for n, k in also.items()),
            frozen=", ".join(f"{n} ({k:,})" for n, k in frozen.items()),
            step_ms=1000 * statistics.median(r["steps"]),
            step_ratio=statistics.median(r["steps"]) / lora_step,
            inference=inference, kept_bytes=int(kept))
    return dict(methods=out, steps_per_task=steps, tasks=len(bench.tasks), threads=threads,
                model="tiny (world)", machine=platform.processor() or platform.machine(),
                torch=torch.__version__, note="step ratio: medians of steps 3.. of every task, "
                "the methods interleaved task by task")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per task (default 20)")
    p.add_argument("--rounds", type=int, default=5, help="inference timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=results_dir() / "cost.json")
    a = p.parse_args(argv)
    res = measure(a.steps, a.rounds, a.threads)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    from r1lab.analysis.lora_family import cost_table
    print(cost_table(res))
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
