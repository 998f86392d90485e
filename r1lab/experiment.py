"""Experiments by name: benchmarks, presets, and multi-seed method comparisons.

    make_benchmark("world")                         the bundled offline default (no download)
    make_benchmark("mtil", data_root=..., order="I")   the 11 MTIL datasets on local folders
    make_benchmark("xtail", data_root=...)          X-TAIL (union label space)
    preset("world") / preset("paper") / preset("tiny")
    compare(["dac", "lora"], seeds=[0, 1])          runs + mean/std table, used by the CLI
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .benchmark import Benchmark
from .config import DACConfig
from .errors import ConfigError
from .metrics import fmt, summarize
from .run import RunResult, run_stream

BENCHMARKS = ("world", "mtil", "xtail", "mtil-synthetic")
PRESETS = ("world", "paper", "tiny")


def preset(name: str, benchmark: str = "world", order: str = "I") -> DACConfig:
    """Named configurations.

    world  the offline default on the generated benchmark and the bundled tiny CLIP:
           the paper's pool (r 12, k 8, m 4, s 1/12, dropout .2, lambda .1) with 16 shots,
           100 iterations per task and lr 5e-3 (2.5x the paper's 2e-3: the tiny model and
           s = 1/12 need it; docs/world.md sec. 8)
    paper  docs/method.md sec. 9 (Order II learning rates, keyed by dataset, with order="II");
           X-TAIL uses 16 shots and has only one order (its rates are not MTIL Order II's)
    tiny   a few iterations, for tests
    """
    if name == "world":
        return DACConfig(lr=5e-3, iterations=100, shots=16, batch_size=32, eval_batch_size=512)
    if name == "paper":
        if benchmark == "xtail":
            if str(order).upper() not in ("I", "1"):
                raise ConfigError(f"X-TAIL has one order (I); --order {order} would give it MTIL "
                                  f"Order II's per-task learning rates. Drop --order for X-TAIL")
            return DACConfig.paper("I").replace(shots=16)
        return DACConfig.paper(order)
    if name == "tiny":
        return DACConfig.tiny()
    raise ConfigError(f"unknown preset {name!r}; choose from {PRESETS}")


def make_benchmark(name: str = "world", data_root: Optional[str] = None, order: Optional[str] = None,
                   names: Optional[Sequence[str]] = None, seed: int = 0, image_size: int = 224,
                   **kw) -> Benchmark:
    """Build a benchmark by name. ``order`` is "I"/"II" for MTIL; for the world, a
    comma-separated list of domain names or None for the default order, and ``kw`` may set
    ``label_space="union"`` (the X-TAIL form) and ``eval_split="val"`` (score on a validation
    split of the training distribution, for choosing hyper-parameters)."""
    if name == "world":
        from .world import make_world_benchmark
        dom = None if order is None else [o.strip() for o in order.split(",")] if isinstance(order, str) else list(order)
        bm = make_world_benchmark(seed=seed, order=dom, **kw)
        return bm.reordered(names) if names else bm
    if name in ("mtil", "xtail"):
        if data_root is None:
            raise ValueError(f"the {name} benchmark reads local dataset folders: pass data_root "
                             f"(--data-root); data/README.md shows the expected layout")
        from .datasets import make_mtil, make_xtail, mtil_transforms
        train_tf, test_tf = mtil_transforms(image_size)
        if name == "mtil":
            return make_mtil(data_root, order=order or "I", train_transform=train_tf,
                             test_transform=test_tf, names=names, **kw)
        return make_xtail(data_root, train_transform=train_tf, test_transform=test_tf, names=names, **kw)
    if name == "mtil-synthetic":   # random images, real MTIL shapes: for timing a full run
        from .datasets.synthetic import make_mtil_synthetic
        return make_mtil_synthetic(order=order or "I", image_size=image_size, names=names, seed=seed, **kw)
    raise ValueError(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")


@dataclass
class Comparison:
    """Runs of several methods over several seeds on one benchmark."""
    runs: Dict[str, List[RunResult]] = field(default_factory=dict)   # method -> one per seed
    zeroshot: Optional[RunResult] = None

    def stats(self, method: str) -> Dict[str, tuple]:
        """{metric: (mean, std over seeds)}."""
        ms = [r.metrics.as_dict() for r in self.runs[method]]
        return {k: (float(np.mean([m[k] for m in ms])), float(np.std([m[k] for m in ms])))
                for k in ms[0]}

    def table(self, label: str = "method", width: Optional[int] = None) -> str:
        """One row per method (or grid cell, ``label``), names in a column ``width`` wide
        (default: the longest name + 2, at least 14): mean ± std over seeds of each metric; a
        single seed shows no spread."""
        keys = ("transfer", "average", "last", "diagonal", "forgetting")
        w = width or max([14] + [len(m) + 2 for m in self.runs])
        head = f"{label:<{w}}{'seeds':>6}" + "".join(f"{k.capitalize():>16}" for k in keys) + f"{'time/run':>10}"
        rows = [head]
        if self.zeroshot is not None:
            z = self.zeroshot.metrics.as_dict()
            rows.append(f"{'zero-shot':<{w}}{'-':>6}" + "".join(
                f"{fmt(z[k]):>16}" if k in ("transfer", "average", "last") else f"{'-':>16}" for k in keys) + f"{'-':>10}")
        for method, rs in self.runs.items():
            s = self.stats(method)
            secs = np.mean([r.seconds for r in rs])
            if len(rs) > 1:      # a spread only where there is one: a single seed shows no "± 0.0"
                cells = "".join(f"{fmt(s[k][0]):>10} ± {fmt(s[k][1]):<3}" for k in keys)
            else:
                cells = "".join(f"{fmt(s[k][0]):>16}" for k in keys)
            rows.append(f"{method:<{w}}{len(rs):>6}" + cells + f"{secs:>9.0f}s")
        return "\n".join(rows)


def compare(methods: Sequence[str] = ("dac", "lora"), seeds: Sequence[int] = (0,),
            benchmark="world", cfg: Optional[DACConfig] = None, model: str = "tiny",
            pretrained: Optional[str] = None, out_dir=None, device="cpu", progress: bool = True,
            data_root: Optional[str] = None, order: Optional[str] = None,
            with_zeroshot: bool = True, resume: bool = True, overwrite: bool = False) -> Comparison:
    """Run each method once per seed, each from a freshly loaded model.

    ``benchmark`` is a name for ``make_benchmark`` or a ``Benchmark``. The seed sets the
    training randomness (``cfg.seed``); the benchmark itself stays the same so every run is
    scored on the same test images. ``resume`` / ``overwrite`` apply to every run folder
    (see ``run_stream``).
    """
    from .models import load_clip
    cfg = cfg or preset("world")
    bm = benchmark if isinstance(benchmark, Benchmark) else make_benchmark(benchmark, data_root=data_root, order=order)
    comp = Comparison()
    out = Path(out_dir) if out_dir is not None else None
    if with_zeroshot:
        comp.zeroshot = run_stream(bm, load_clip(model, pretrained, device), cfg, "zeroshot",
                                   None if out is None else out / "zeroshot", device=device,
                                   progress=False, resume=resume, overwrite=overwrite)
    for method in methods:
        comp.runs[method] = []
        for seed in seeds:
            c = cfg.replace(seed=seed)
            run_dir = None if out is None else out / f"{method}-seed{seed}"
            res = run_stream(bm, load_clip(model, pretrained, device), c, method, run_dir,
                             device=device, progress=progress, resume=resume, overwrite=overwrite)
            if progress:
                print(f"[r1lab] {res.summary()}")
            comp.runs[method].append(res)
    return comp
