"""DAC among the LoRA family (notebook 07, docs/method.md sec. 14): O-LoRA, InfLoRA, SD-LoRA,
LoRAMoE and CoDyRA against ``dac`` and ``lora`` over three seeds, in both forms of the world.

The results are ordinary run folders written by the CLI at the notebooks' budget (the world
preset at ``ITERATIONS`` = 50 iterations per task, as notebook 06's study), one command per
form; ``scripts/lora_family.py`` runs everything in order and writes the tables:

    python scripts/lora_family.py all          # tune, compare (both forms), collisions, cost, README

1. **Tuning, by a rule fixed before any run.** Each method with a strength setting gets three
   values of it (``TUNING``), one run each on seed 0 in the MTIL form, scored on the world's
   validation split (``--eval-split val``, never test); the value with the highest validation
   Average is kept (a tie keeps the default). SD-LoRA has no such setting and runs as
   configured. ``dac`` and ``lora`` keep the world preset, as in notebook 06.
2. **The comparison**: ``python -m r1lab compare --methods dac lora o-lora inflora sd-lora
   loramoe codyra --seeds 0 1 2 --set iterations=50 --set <each chosen value> --out
   data/results/lora-family/<form>`` (``--label-space union`` for the X-TAIL form). A
   method's run identity holds only the family fields it reads, so the ``--set`` of one
   method's value does not touch another's run.
3. **Collisions** (``collisions.json``): r1lab's collision rate of notebook 04 (share of
   cross-task pairs of merged B columns with |cos| > 0.1, over all pools) of each run's final
   merged update, and the same for the merged A rows (the input side, which O-LoRA and
   InfLoRA constrain), read from its last checkpoint before the checkpoints are dropped.
4. **Cost** (``cost.json``, ``benchmarks/lora_family_cost.py``): trainable parameters, step
   time as a ratio to plain LoRA measured side by side, inference after the stream, memory
   kept between tasks.

The question of notebook 06: DAC and plain LoRA span a line in the (diagonal, forgetting)
plane, plain LoRA learning each task better and forgetting more. A method *above the line*
forgets less than the line predicts at its diagonal: ``line_residual`` < 0.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from r1lab.analysis import variants_study
from r1lab.engine.comparison import Comparison
from r1lab.engine.runfolder import is_finished
from r1lab.methods import LORA_FAMILY

FORMS = {"mtil": "MTIL form (each task in its own label space)",
         "xtail": "X-TAIL form (one label space over all seven domains)"}
METHODS = ("dac", "lora") + tuple(LORA_FAMILY)
SEEDS = (0, 1, 2)
ITERATIONS = 50
# method: (its strength setting, the values tried); the default is the middle one
TUNING = {"o-lora": ("olora_weight", (0.1, 0.5, 2.5)),
          "inflora": ("inflora_threshold", (0.9, 0.95, 0.99)),
          "loramoe": ("moe_balance", (0.001, 0.01, 0.1)),
          "codyra": ("codyra_sparsity", (0.25, 0.5, 0.9))}
THRESHOLD = 0.1          # |cos| above which two merged columns collide (notebook 04)


def results_dir() -> Path:
    """data/results/lora-family of this checkout."""
    return Path(__file__).resolve().parents[2] / "data" / "results" / "lora-family"


# ------------------------------------------------------------------ 1. tuning
def tuning_runs(folder, method: str) -> Dict[float, float]:
    """{value: validation Average} of one method's finished tuning runs (seed 0)."""
    field, values = TUNING[method]
    out = {}
    for v in values:
        d = Path(folder) / method / f"{method}-{field}={v:g}-seed0"
        if is_finished(d):
            out[v] = json.loads((d / "metrics.json").read_text())["average"]
    return out


def chosen(folder, method: str) -> float:
    """The rule: the value with the highest validation Average; a tie keeps the default."""
    field, values = TUNING[method]
    scores = tuning_runs(folder, method)
    missing = [v for v in values if v not in scores]
    if missing:
        raise FileNotFoundError(f"{method}: no finished tuning run for {field}={missing} in {folder}; "
                                f"run `python scripts/lora_family.py tune`")
    best = max(scores.values())
    default = values[len(values) // 2]
    return default if scores[default] == best else max(scores, key=scores.get)


def settings(folder) -> Dict[str, str]:
    """{field: value} of every tuned method, as ``--set FIELD=VALUE`` takes them."""
    return {TUNING[m][0]: f"{chosen(folder, m):g}" for m in TUNING}


# ------------------------------------------------------------------ 2. the comparison
def complete(folder, methods: Sequence[str] = METHODS, seeds: Sequence[int] = SEEDS) -> bool:
    """True when every ``<method>-seed<seed>`` run and the zero-shot row are finished in it
    (the folders of ``compare``, read as notebook 06's study reads them)."""
    return variants_study.complete(folder, methods, seeds)


def load_comparison(folder, methods: Sequence[str] = METHODS, seeds: Sequence[int] = SEEDS) -> Comparison:
    """A ``Comparison`` read from the run folders of one ``compare`` command."""
    return variants_study.load_comparison(folder, methods, seeds)


def line_residual(stats: Dict[str, Dict[str, tuple]], method: str, low: str = "dac",
                  high: str = "lora") -> float:
    """Forgetting of ``method`` minus the forgetting the DAC-LoRA line predicts at its diagonal
    (points; < 0: above the line, i.e. less forgetting for the same diagonal)."""
    f, d = (lambda m: stats[m]["forgetting"][0]), (lambda m: stats[m]["diagonal"][0])  # noqa: E731
    return f(method) - (f(low) + line_slope(stats, low, high) * (d(method) - d(low)))


def line_slope(stats: Dict[str, Dict[str, tuple]], low: str = "dac", high: str = "lora") -> float:
    """Forgetting points paid per diagonal point along the DAC-LoRA line (nan when the two
    diagonals are equal: there is no line)."""
    gap = stats[high]["diagonal"][0] - stats[low]["diagonal"][0]
    if gap == 0:
        return float("nan")
    return (stats[high]["forgetting"][0] - stats[low]["forgetting"][0]) / gap


# ------------------------------------------------------------------ 3. collisions
def task_columns(method: str, state: Dict[str, torch.Tensor], cfg: Dict,
                 side: str = "output") -> Optional[List[torch.Tensor]]:
    """The merged directions of one pool, one block of columns per task, from its adapter
    state: B columns (``side="output"``, what the update writes) or A rows as columns
    (``"input"``, what it reads); None for a method that merges nothing (LoRAMoE)."""
    if side not in ("output", "input"):
        raise ValueError(f"side must be 'output' or 'input', got {side!r}")
    if method == "loramoe":
        return None
    out = side == "output"
    if method == "sd-lora":          # the fixed direction of each task
        cols = state["dir_B"] if out else state["dir_A"].T
        sizes = [cfg["rank"]] * (cols.shape[1] // cfg["rank"])
    else:
        cols = state["merged_B"] if out else state["merged_A"].T
        if method == "codyra":
            sizes = state["merged_sizes"].tolist()
        else:
            size = min(cfg["merge_k"], cfg["rank"])
            sizes = [size] * (cols.shape[1] // size)
    starts = np.cumsum([0] + sizes[:-1]).tolist()
    return [cols[:, a:a + n] for a, n in zip(starts, sizes)]


def collision_rate(blocks_per_pool: Sequence[Sequence[torch.Tensor]], threshold: float = THRESHOLD) -> float:
    """Share of pairs of merged B columns from different tasks whose |cos| > ``threshold``,
    over every pool (``r1lab.analysis.diagnostics.collision_rate`` with per-task blocks of any
    size)."""
    hits = total = 0
    for blocks in blocks_per_pool:
        cols = torch.cat(list(blocks), dim=1).float()
        task = torch.cat([torch.full((b.shape[1],), t) for t, b in enumerate(blocks)])
        G = (F.normalize(cols, dim=0).T @ F.normalize(cols, dim=0)).abs()
        cross = task[:, None] < task[None, :]
        zero = cols.norm(dim=0) == 0          # a column that merged nothing collides with nothing
        cross &= ~zero[:, None] & ~zero[None, :]
        hits += int((G[cross] > threshold).sum())
        total += int(cross.sum())
    return hits / max(total, 1)


def run_collision_rate(run_dir, threshold: float = THRESHOLD, side: str = "output") -> Optional[float]:
    """The collision rate of a finished run's final merged update, from its last checkpoint
    (None for a method that merges nothing)."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "config.json").read_text())
    last = sorted((run_dir / "checkpoints").glob("task_*.pt"))
    if not last:
        raise FileNotFoundError(f"{run_dir} has no checkpoints: collisions are read from the last "
                                f"one, before the checkpoints are dropped")
    adapter = torch.load(last[-1], map_location="cpu", weights_only=False)["adapter"]
    blocks = [task_columns(record["method"], state, record["config"], side) for state in adapter.values()]
    if any(b is None for b in blocks):
        return None
    return collision_rate(blocks, threshold)


def write_collisions(folder, methods: Sequence[str] = METHODS, seeds: Sequence[int] = SEEDS) -> Dict:
    """collisions.json of one form: {side: {method: [rate per seed] or None}} for the output
    side (B columns, notebook 04's rate) and the input side (A rows)."""
    folder = Path(folder)
    out = {}
    for side in ("output", "input"):
        out[side] = {}
        for m in methods:
            rates = [run_collision_rate(folder / f"{m}-seed{s}", side=side) for s in seeds]
            out[side][m] = None if any(r is None for r in rates) else rates
    (folder / "collisions.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def read_collisions(folder, side: str = "output") -> Dict[str, Optional[List[float]]]:
    """{method: [collision rate per seed] or None} of one form, output (B) or input (A) side."""
    return json.loads((Path(folder) / "collisions.json").read_text())[side]


# ------------------------------------------------------------------ tables
def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def results_table(comp: Comparison, output: Dict[str, Optional[List[float]]],
                  inputs: Dict[str, Optional[List[float]]]) -> str:
    """Markdown: mean ± std over seeds of each metric, the collision rates of the merged B
    columns and A rows, and the position against the DAC-LoRA line, one row per method."""
    keys = ("transfer", "average", "last", "diagonal", "forgetting")
    stats = {m: comp.stats(m) for m in comp.runs}

    def rate(c):
        return "-" if c is None else _pm(100 * np.mean(c), 100 * np.std(c))

    rows = ["| method | Transfer | Average | Last | diagonal | forgetting | collisions B % | collisions A % | vs DAC-LoRA line |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if comp.zeroshot is not None:
        z = comp.zeroshot.metrics.as_dict()
        rows.append(f"| zero-shot | {z['transfer']:.1f} | {z['average']:.1f} | {z['last']:.1f} | - | - | - | - | - |")
    for m in comp.runs:
        line = "-" if m in ("dac", "lora") else f"{line_residual(stats, m):+.1f}"
        rows.append(f"| `{m}` | " + " | ".join(_pm(*stats[m][k]) for k in keys)
                    + f" | {rate(output.get(m))} | {rate(inputs.get(m))} | {line} |")
    return "\n".join(rows)


def read_cost(folder=None) -> Dict:
    return json.loads(((Path(folder) if folder else results_dir()) / "cost.json").read_text())


def cost_table(cost: Dict) -> str:
    """Markdown: the cost of every method (``benchmarks/lora_family_cost.py``)."""
    rows = ["| method | trainable (per task) | also trained | frozen in the pools | step time / LoRA | "
            "inference after the stream | kept between tasks (after 7 tasks) |",
            "|---|---:|---|---|---:|---|---:|"]
    for m, c in cost["methods"].items():
        rows.append(f"| `{m}` | {c['trainable']:,} | {c['also_trained'] or '-'} | {c['frozen'] or '-'} | "
                    f"{c['step_ratio']:.2f} | {c['inference']} | {c['kept_bytes'] / 1024:,.0f} KiB |")
    return "\n".join(rows)


def line_position(stats: Dict[str, Dict[str, tuple]], method: str) -> str:
    """"above" / "below" the DAC-LoRA line when the residual exceeds the method's spread of
    forgetting over seeds (its std), "on" the line within it."""
    r, spread = line_residual(stats, method), stats[method]["forgetting"][1]
    return "on" if abs(r) <= spread else ("above" if r < 0 else "below")


def line_summary(comp: Comparison) -> str:
    """One sentence: the DAC-LoRA line's price and where each method sits, counting a residual
    only where it exceeds the method's spread of forgetting over seeds."""
    stats = {m: comp.stats(m) for m in comp.runs}
    others = [m for m in comp.runs if m not in ("dac", "lora")]
    where = {pos: [f"`{m}` ({line_residual(stats, m):+.1f} ± {stats[m]['forgetting'][1]:.1f})"
                   for m in sorted(others, key=lambda m: line_residual(stats, m)) if line_position(stats, m) == pos]
             for pos in ("above", "on", "below")}
    words = {"above": "above the line (less forgetting than the line at the same diagonal, by more than the "
                      "method's forgetting spread)", "on": "on it within that spread", "below": "below it"}
    parts = [f"{words[p]}: {', '.join(ms)}" for p, ms in where.items() if ms]
    return (f"Along the DAC-LoRA line a diagonal point costs {line_slope(stats):.2f} forgetting points. "
            f"Residual ± forgetting spread, points; " + "; ".join(parts) + ".")


def readme_block(root=None) -> str:
    """The README's tables, generated from the committed run folders (both forms) and
    cost.json; ``scripts/lora_family.py readme`` writes them, a test checks them."""
    root = Path(root) if root else results_dir()
    parts = [f"Seeds {', '.join(map(str, SEEDS))}; the world preset at {ITERATIONS} iterations per "
             f"task (notebook 06's budget); settings chosen on the validation split "
             f"({', '.join(f'{k}={v}' for k, v in settings(root / 'tune').items())}). "
             f"Mean ± std over seeds; collisions: r1lab's rate of notebook 04, the share of cross-task "
             f"pairs of merged B columns (what an update writes) with |cos| > {THRESHOLD}, and the same "
             f"for the merged A rows (what it reads); last column: forgetting minus what "
             f"the DAC-LoRA line predicts at the method's diagonal (< 0: above the line)."]
    for form, title in FORMS.items():
        comp = load_comparison(root / form)
        parts += [f"**{title}**", results_table(comp, read_collisions(root / form, "output"),
                                                read_collisions(root / form, "input")), line_summary(comp)]
    parts += ["**Cost** (tiny CLIP on the CPU, `benchmarks/lora_family_cost.py`; step time as a "
              "ratio to plain LoRA, measured side by side)", cost_table(read_cost(root))]
    return "\n\n".join(parts)


# ------------------------------------------------------------------ one picture per method
# (teach.plots.layer_cards draws them): what a task trains, what is frozen, computed or kept
CARDS = {
    "lora": dict(A="trained", B="trained", extra=[], end="fold s B A into W0"),
    "dac": dict(A="trained", B="trained", extra=[("router (k of r per batch)", "frozen"),
                                                 ("earlier B columns (AGO)", "kept")],
                end="fold the m most used experts"),
    "o-lora": dict(A="trained", B="trained", extra=[("earlier rows A_i", "kept"),
                                                    ("penalty |A_i A^T|^2", "designed")],
                   end="fold s B A; keep A's rows"),
    "inflora": dict(A="designed", B="trained", extra=[("input basis M", "kept"),
                                                      ("A: top-r of P C P", "designed")],
                    end="fold s B A; grow M from the inputs"),
    "sd-lora": dict(A="trained", B="trained", extra=[("new magnitude m_t", "trained"),
                                                     ("earlier magnitudes", "trained"),
                                                     ("earlier directions D_i", "kept")],
                    end="fold m_t D_t and the magnitude changes"),
    "loramoe": dict(A="trained", B="trained", extra=[("gate W_g (per token)", "trained"),
                                                     ("experts of earlier tasks", "kept")],
                    end="nothing: the layer stays in CLIP"),
    "codyra": dict(A="trained", B="trained", extra=[("importance w (L1 to 0)", "trained")],
                   end="fold the components with w != 0"),
}


def small_comparison(form: str, out_dir, methods: Sequence[str] = METHODS, iterations: int = 20,
                     seed: int = 0, tasks: Optional[int] = None, progress: bool = False) -> Comparison:
    """The fallback when the committed results are missing: one seed, ``iterations`` per task,
    every method at its default settings, in the given form (first ``tasks`` domains when
    given); much noisier than the three-seed results."""
    from r1lab.engine.comparison import compare, make_benchmark, preset
    bm = make_benchmark("world", label_space="union" if form == "xtail" else "task")
    if tasks is not None:
        bm = type(bm)(bm.name, bm.tasks[:tasks], protocol=bm.protocol, label_space=bm.label_space)
    cfg = preset("world").replace(iterations=iterations)
    return compare(methods, [seed], bm, cfg, out_dir=Path(out_dir) / form, progress=progress)


def tuning_table(folder) -> str:
    """Each tuned setting: the values tried, their validation Average (seed 0, MTIL form) and
    the one the rule keeps."""
    lines = [f"{'method':<9}{'setting':<19}{'values tried: validation Average':<52}chosen"]
    for m, (field, values) in TUNING.items():
        scores = tuning_runs(folder, m)
        cells = "  ".join(f"{v:g}: {scores[v]:.1f}" if v in scores else f"{v:g}: -" for v in values)
        lines.append(f"{m:<9}{field:<19}{cells:<52}{chosen(folder, m):g}")
    return "\n".join(lines)
