"""Sweeps: a grid of ordinary run folders, dispatched one job per point through submitit.

    python -m r1lab sweep --methods dac lora --seeds 0 1 --set ago_weight=0,0.1 \\
        --out runs/sweep --cluster local            # or --cluster slurm --partition gpu ...
    python -m r1lab summary runs/sweep              # mean +- std over seeds per grid cell

The grid is methods x orders x every ``--set FIELD=v1,v2,...`` with several values x seeds
(a ``--set`` with one value is a fixed setting of every point; for tuple-valued fields such as
``towers`` or ``betas``, whose values contain commas, separate the alternatives with ``|``).
Each point is the command line ``python -m r1lab run ... --out <out>/<name>`` with
``<name> = <method>-<key=value>-...-seed<seed>``: an ordinary resumable run folder, with its
identity record, its lock and its refusal of a mismatched resume (``run_stream``). A point
whose folder already holds a finished run of the same configuration (metrics.json) is
skipped; every other point is one submitit job (``<out>/.submitit`` holds their logs):
``cluster="local"`` runs the jobs as processes here, ``"slurm"`` on a SLURM cluster,
``"debug"`` in this process, one after the other. Jobs that stopped part-way resume where
they stopped when the sweep is run again. Concurrency is the scheduler's: the local executor
starts every job at once (use --threads to keep them from oversubscribing the cores).
"""
from __future__ import annotations

import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple


from r1lab.config import DACConfig
from r1lab.errors import ConfigError
from r1lab.engine import report as report_
from r1lab.engine.atomic import write_json
from r1lab.engine.comparison import grid_table, is_sweep  # noqa: F401 (the summary of a sweep folder)
from r1lab.engine.identity import differences, run_identity
from r1lab.engine.presets import benchmark_from_args, config_from_args, parse_run_argv
from r1lab.engine.runfolder import holds_results, is_finished
from r1lab.methods import method_config

CLUSTERS = ("local", "slurm", "debug")


# ------------------------------------------------------------------------------ grid
def _is_tuple_field(name: str) -> bool:
    hint = typing.get_type_hints(DACConfig).get(name)
    args = [hint] + list(typing.get_args(hint))
    return name == "lr_by_task" or any(typing.get_origin(a) is tuple or a is tuple for a in args)


def parse_sets(items: Sequence[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """(fixed ``FIELD=VALUE`` settings, {field: [grid values]}) of the ``--set`` items."""
    fixed, grid = [], {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k == "seed":
            raise ConfigError("--set seed=... in a sweep: give the seeds with --seeds")
        sep = "|" if ("|" in v or _is_tuple_field(k)) else ","
        values = [x.strip() for x in v.split(sep)] if sep in v else [v]
        for x in values:
            DACConfig.parse_value(k, x)            # a bad value is refused before any job
        if len(values) > 1:
            if k in grid:
                raise ConfigError(f"--set {k}: given twice as a grid axis")
            grid[k] = values
        else:
            fixed.append(f"{k}={values[0]}")
    return fixed, grid


@dataclass(frozen=True)
class Point:
    method: str
    seed: int
    order: Optional[str] = None                            # None: the common --order
    values: Tuple[Tuple[str, str], ...] = ()               # grid axes of --set, in order

    @property
    def name(self) -> str:
        parts = [self.method]
        if self.order is not None:
            parts.append(f"order={self.order}")
        parts += [f"{k}={v}" for k, v in self.values]
        parts.append(f"seed{self.seed}")
        return re.sub(r"[^A-Za-z0-9_.,=+:-]", "_", "-".join(parts))

    @property
    def cell(self) -> str:
        """The name without the seed: the grid cell a point belongs to."""
        return self.name.rsplit("-seed", 1)[0]


def expand(methods: Sequence[str], seeds: Sequence[int], orders: Optional[Sequence[str]] = None,
           grid: Optional[Dict[str, List[str]]] = None) -> List[Point]:
    """Every point of methods x orders x grid axes x seeds (seeds vary fastest)."""
    grid = grid or {}
    axes = [[(k, v) for v in vs] for k, vs in grid.items()]
    out = []
    for m in methods:
        for o in (orders or [None]):
            for combo in itertools.product(*axes):
                for s in seeds:
                    out.append(Point(m, int(s), o, tuple(combo)))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points would share one run folder: repeated methods, seeds "
                          "or values in the grid")
    return out


def point_argv(p: Point, out: Path, common: Sequence[str], fixed: Sequence[str]) -> List[str]:
    """The ``python -m r1lab run`` arguments of a point (resume is on: a rerun continues)."""
    argv = ["run", "--method", p.method, "--out", str(out / p.name), *common]
    if p.order is not None:
        argv += ["--order", p.order]
    for s in list(fixed) + [f"{k}={v}" for k, v in p.values] + [f"seed={p.seed}"]:
        argv += ["--set", s]
    return argv


def run_point(runner: Callable[[List[str]], int], argv: List[str], threads: int = 0) -> dict:
    """The job of one point: ``runner(argv)``, ``python -m r1lab run ...`` in this process
    (``r1lab.cli.run_argv``; errors propagate, so the scheduler records the job as failed with
    its traceback in the job's stderr)."""
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    args = parse_run_argv(argv)
    rc = runner(list(argv))
    metrics = Path(args.out) / "metrics.json"
    if rc != 0 or not is_finished(args.out):
        raise RuntimeError(f"the run {args.out} did not finish (status {rc})")
    return json.loads(metrics.read_text())


def _run_point_caught(runner: Callable[[List[str]], int], argv: List[str], threads: int = 0) -> dict:
    """``run_point`` for the in-process debug executor, which would open pdb on an exception:
    the error comes back as ``{"error": ...}`` and is reported like a failed job."""
    import traceback
    try:
        return run_point(runner, argv, threads)
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def point_identity(args, method: str, cache: dict) -> dict:
    """The identity record (r1lab/engine/identity.py) of the run a point's arguments describe:
    benchmark, task list, label space, model and its weights, configuration, method, seed. The
    benchmark and model are built once per sweep for every point that shares them."""
    from r1lab.engine.models import load_clip
    bkey = ("benchmark", args.benchmark, args.data_root, args.order, args.tasks, args.label_space,
            args.eval_split, args.test_scale, args.check, args.model, args.pretrained)
    if bkey not in cache:
        cache[bkey] = benchmark_from_args(args)
    mkey = ("model", args.model, args.pretrained)
    if mkey not in cache:
        cache[mkey] = load_clip(args.model, args.pretrained)
    cfg = method_config(method, config_from_args(args))
    return run_identity(cache[bkey], cache[mkey], cfg, method, args.device, args.bf16)


def finished(folder: Path, identity: dict) -> bool:
    """True when ``folder`` holds a finished run (its completion record verified) of exactly
    this identity. Raises ``ConfigError`` naming the differences when it holds results of
    another run (another task list, label space, model, configuration, ...)."""
    try:
        old = json.loads((folder / "identity.json").read_text())
    except (OSError, ValueError):
        return False
    refuse, _ = differences(old, identity)
    if refuse and holds_results(folder):
        raise ConfigError(f"{folder} holds a run of other arguments than this sweep's point; it "
                          f"differs in: {'; '.join(refuse[:6])}. Use another --out for this sweep "
                          f"(or move that folder away): a sweep never reports another run's numbers")
    return not refuse and is_finished(folder)


# ------------------------------------------------------------------------------ dispatch
@dataclass
class SweepReport:
    points: List[Point]
    skipped: List[Point] = field(default_factory=list)
    done: List[Point] = field(default_factory=list)
    failed: List[Tuple[Point, str, str]] = field(default_factory=list)   # point, error, stderr path

    @property
    def ok(self) -> bool:
        return not self.failed


def run_sweep(points: Sequence[Point], out, common: Sequence[str] = (), fixed: Sequence[str] = (),
              cluster: str = "local", partition: Optional[str] = None,
              timeout_min: Optional[int] = None, gpus_per_node: Optional[int] = None,
              threads: int = 0, progress: bool = True,
              runner: Optional[Callable[[List[str]], int]] = None) -> SweepReport:
    """Skip finished points, submit one submitit job per other point, wait for all of them.
    ``runner(argv)`` runs one point: the command line passes its ``run_argv``
    (``python -m r1lab run ARGV``); this layer does not import the command line."""
    import submitit
    if runner is None:
        raise TypeError("run_sweep needs runner=: a function that runs `python -m r1lab run ARGV` "
                        "in this process, such as r1lab.cli.run_argv")

    if cluster not in CLUSTERS:
        raise ConfigError(f"--cluster must be one of {CLUSTERS}, got {cluster!r}")
    out = Path(out)
    report = SweepReport(list(points))
    todo, built = [], {}
    for p in points:
        argv = point_argv(p, out, common, fixed)
        args = parse_run_argv(argv)
        method_config(p.method, config_from_args(args))         # refuses a bad setting now
        if (out / p.name / "identity.json").exists() and finished(
                out / p.name, point_identity(args, p.method, built)):
            report.skipped.append(p)
        else:
            todo.append((p, argv))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", dict(
        common=list(common), fixed=list(fixed),
        points={p.name: point_argv(p, out, common, fixed) for p in points}))
    with report_.speaking(progress):
        report_.say(f"sweep {out}: {len(points)} points, {len(report.skipped)} finished "
                    f"(skipped), {len(todo)} to run on {cluster}")
    if not todo:
        return report
    ex = submitit.AutoExecutor(folder=out / ".submitit", cluster=cluster)
    params = dict(name="r1lab-sweep")
    if timeout_min is not None:
        params["timeout_min"] = int(timeout_min)
    if gpus_per_node is not None:
        params["gpus_per_node"] = int(gpus_per_node)
    if partition is not None:
        params["slurm_partition"] = partition
    ex.update_parameters(**params)
    fn = _run_point_caught if cluster == "debug" else run_point
    jobs = [(p, ex.submit(fn, runner, argv, threads)) for p, argv in todo]
    for p, job in jobs:
        try:
            res = job.result()
            if isinstance(res, dict) and "error" in res:
                err = getattr(getattr(job, "paths", None), "stderr", None)
                if err is not None:
                    Path(err).parent.mkdir(parents=True, exist_ok=True)
                    with open(err, "a") as f:
                        f.write(res.get("traceback", res["error"]))
                raise RuntimeError(res["error"])
            report.done.append(p)
            with report_.speaking(progress):
                report_.say(f"finished {p.name}")
        except Exception as e:  # noqa: BLE001 - any failure of a job is reported by point
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            why = next((ln.strip() for ln in reversed(lines) if "Error" in ln or "error" in ln),
                       lines[-1].strip() if lines else type(e).__name__)
            err = getattr(getattr(job, "paths", None), "stderr", None)
            report.failed.append((p, why, str(err) if err is not None else "-"))
            with report_.speaking(progress):
                report_.say(f"FAILED {p.name}: {why} (stderr: {err})")
    return report
