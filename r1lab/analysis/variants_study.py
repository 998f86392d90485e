"""The "beyond the paper" experiment (notebook 06, docs/method.md sec. 13): the variants of
DAC against ``dac`` and ``lora`` over three seeds, in both forms of the world.

The results are ordinary run folders written by the CLI at the notebooks' budget (the world
preset at ``ITERATIONS`` = 50 iterations per task), one command per form:

    python -m r1lab compare --methods dac lora dac-eot dac-gate dac-consolidate dac-svd \\
        dac-route-m --seeds 0 1 2 --set iterations=50 --out data/results/beyond-the-paper/mtil
    python -m r1lab compare ... --label-space union --out data/results/beyond-the-paper/xtail

plus the tie-rule runs and the validation sweep that chose ``CONSOLIDATE``:

    python -m r1lab sweep --methods dac --seeds 0 1 2 --set iterations=50 \\
        --set tie_rule=topk,random --cluster debug --out data/results/beyond-the-paper/ties
    python -m r1lab sweep --methods dac --seeds 0 --set iterations=50 \\
        --set consolidate=0,0.25,0.5,0.75 --eval-split val --cluster debug \\
        --out data/results/beyond-the-paper/tune

The rule that chose ``CONSOLIDATE`` was fixed before the sweep ran: among c > 0, the largest
validation diagonal whose validation forgetting is within 2 points of c = 0 (plain DAC).

The repository keeps those folders without their checkpoints (``load_run`` needs only
metrics.json, accuracy.csv and counts.pt). The goal of the issue that asked for the variants:

    forgetting(variant) <= forgetting(dac) + 2 points, and
    diagonal(variant) - diagonal(dac) >= (diagonal(lora) - diagonal(dac)) / 2

both on the means over seeds, in both forms.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

from r1lab.engine.comparison import Comparison, grid_table, is_sweep
from r1lab.engine.runfolder import is_finished, load_run

FORMS = {"mtil": "MTIL form (each task in its own label space)",
         "xtail": "X-TAIL form (one label space over all seven domains)"}
METHODS = ("dac", "lora", "dac-eot", "dac-gate", "dac-consolidate", "dac-svd", "dac-route-m")
SEEDS = (0, 1, 2)
ITERATIONS = 50
TOLERANCE = 2.0


def results_dir() -> Path:
    """data/results/beyond-the-paper of this checkout."""
    return Path(__file__).resolve().parents[2] / "data" / "results" / "beyond-the-paper"


def complete(folder, methods: Sequence[str] = METHODS, seeds: Sequence[int] = SEEDS) -> bool:
    """True when every ``<method>-seed<seed>`` run and the zero-shot row are finished in it."""
    folder = Path(folder)
    need = [folder / "zeroshot"] + [folder / f"{m}-seed{s}" for m in methods for s in seeds]
    return all(is_finished(d) and (d / "accuracy.csv").exists() for d in need)


def load_comparison(folder, methods: Sequence[str] = METHODS, seeds: Sequence[int] = SEEDS) -> Comparison:
    """A ``Comparison`` read from the run folders of one ``compare`` command."""
    folder = Path(folder)
    zs = load_run(folder / "zeroshot") if is_finished(folder / "zeroshot") else None
    return Comparison({m: [load_run(folder / f"{m}-seed{s}") for s in seeds] for m in methods}, zs)


def goal(stats: Dict[str, Dict[str, tuple]], variant: str, reference: str = "dac",
         baseline: str = "lora", tolerance: float = TOLERANCE) -> Dict[str, float]:
    """How ``variant`` stands against the goal, from ``Comparison.stats``-style means:
    extra forgetting over ``reference`` (points), the share of the diagonal gap from
    ``reference`` to ``baseline`` it closes, whether both conditions hold, and its price,
    the extra forgetting per point of diagonal gained, next to ``baseline``'s price (a variant
    on the straight line from ``reference`` to ``baseline`` pays the same)."""
    f, d = (lambda m: stats[m]["forgetting"][0]), (lambda m: stats[m]["diagonal"][0])  # noqa: E731
    extra = f(variant) - f(reference)
    gain = d(variant) - d(reference)
    gap = d(baseline) - d(reference)
    closed = gain / gap if gap > 0 else float("nan")
    price = extra / gain if gain > 0 else float("nan")
    line = (f(baseline) - f(reference)) / gap if gap > 0 else float("nan")
    return {"extra forgetting": extra, "gap closed": closed,
            "met": bool(extra <= tolerance and closed >= 0.5),
            "price": price, "baseline price": line}


def merge_drop(runs) -> tuple:
    """Mean over seeds of each run's mean own-task accuracy lost at the merge (before minus
    after, points), and its std over seeds."""
    import numpy as np
    per_seed = [float(np.mean(np.asarray(r.before_merge, float) - np.asarray(r.after_merge, float)))
                for r in runs]
    return float(np.mean(per_seed)), float(np.std(per_seed))


def config():
    """The configuration of every run of the comparison: the world preset at ITERATIONS."""
    from r1lab.engine.comparison import preset
    return preset("world").replace(iterations=ITERATIONS)


def small_comparison(form: str, out_dir, methods: Sequence[str] = METHODS, iterations: int = 20,
                     seed: int = 0, progress: bool = False) -> Comparison:
    """The fallback when the committed results are missing: one seed, ``iterations`` per
    task, every method, in the given form (much noisier than the three-seed results)."""
    from r1lab.engine.comparison import compare, make_benchmark, preset
    bm = make_benchmark("world", label_space="union" if form == "xtail" else "task")
    cfg = preset("world").replace(iterations=iterations)
    return compare(methods, [seed], bm, cfg, out_dir=Path(out_dir) / form, progress=progress)


def tuning_table(folder) -> Optional[str]:
    """The validation sweep over ``consolidate`` as a table (None when absent)."""
    return grid_table(folder) if Path(folder).exists() and is_sweep(folder) else None
