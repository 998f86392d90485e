"""Several methods over several seeds on one benchmark, and their table.

    compare(["dac", "lora"], seeds=[0, 1])          runs + mean/std table, used by the CLI
    Comparison.table()                              mean ± std over seeds per method

Benchmarks and presets by name are presets.py's.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from r1lab.data.stream import Benchmark
from r1lab.config import DACConfig
from r1lab.engine import report
from r1lab.engine.presets import make_benchmark, preset  # noqa: F401 (also importable here)
from r1lab.engine.metrics import fmt
from r1lab.engine.run import RunResult, run_stream
from r1lab.engine.runfolder import is_finished, load_run

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
    from r1lab.engine.models import load_clip
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
            with report.speaking(progress):
                report.say(res.summary())
            comp.runs[method].append(res)
    return comp


# ------------------------------------------------------------------------------ sweep folders
def is_sweep(folder) -> bool:
    """A folder that holds run folders rather than being one."""
    f = Path(folder)
    return (f.is_dir() and not is_finished(f)
            and any(is_finished(d) or (d / "config.json").exists() for d in f.iterdir() if d.is_dir()))


def _cell_key(d: Path) -> str:
    """The folder's name without its seed, when it carries one; else everything but the seed."""
    m = re.match(r"^(.*)-seed\d+$", d.name)
    if m:
        return m.group(1)
    rec = json.loads((d / "config.json").read_text())
    cfg = {k: v for k, v in (rec.get("config") or {}).items() if k != "seed"}
    return f"{rec.get('method')} {json.dumps(cfg, sort_keys=True)}"


def grid_table(folder) -> str:
    """Finished run folders of a sweep, grouped by everything but the seed: mean +- std over
    seeds per grid cell (one seed shows no spread): ``Comparison.table`` over the cells."""
    groups: Dict[str, list] = {}
    unfinished, warned = [], []
    for d in sorted(p for p in Path(folder).iterdir()          # not .submitit, not runs moved
                    if p.is_dir() and not p.name.startswith(".") and ".old-" not in p.name):
        if not is_finished(d):
            if (d / "config.json").exists():
                unfinished.append(d.name)
            continue
        res = load_run(d)
        groups.setdefault(_cell_key(d), []).append(res)
        warned += [f"warning ({d.name}): {w}" for w in res.warnings]
    width = max([14] + [len(k) + 2 for k in groups])
    rows = [Comparison(groups).table(label="point", width=width)] if groups else []
    if unfinished:
        rows.append(f"unfinished: {', '.join(unfinished)}")
    rows += warned
    return "\n".join(rows)
