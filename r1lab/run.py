"""The continual-learning engine: one method over one benchmark stream, resumable.

For each task t of the stream (METHOD.md sec. 4-10):

    seed(seed + 1000 t); fresh pools                     # A ~ Kaiming, B = 0, new router
    D_t = few_shot(train_t, shots)                       # frozen augmentation
    train the pools on D_t                               # L_task (+ lambda L_AGO, t >= 2)
    acc_before[t] = accuracy on task t, un-merged pool   # what the task reached
    merge the top-m experts of every pool into CLIP      # W0 += s B[:, T] A[T, :]
    A[t, :] = accuracy of the merged model on every test set (one row)
    checkpoint (adapter state, row, counts, losses), atomically

A run folder holds:
    config.json      the resolved DACConfig and method
    protocol.json    benchmark, order, shots, splits, templates, label space, seed, versions
    accuracy.csv     the T x T matrix (rows: after task t; columns: test set j)
    metrics.json     Transfer / Average / Last / diagonal / forgetting, per-dataset rows,
                     accuracy before and after each merge
    counts.pt        per task, per pool: the activation counts and merged experts
    losses.csv       per step: task, step, loss, task loss, AGO
    checkpoints/task_XX.pt   small adapter state after task XX (merged factors, past columns)

A run killed at any point resumes from its last finished task (``resume=True``) and ends
with the same accuracy matrix as an uninterrupted run: every task reseeds all randomness, and
merged weights are rebuilt by replaying the stored merge factors in order.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from . import __version__
from .attach import attach_pools
from .benchmark import Benchmark, few_shot
from .cache import cached_test_sets
from .config import DACConfig, method_config
from .evaluate import accuracy_row
from .metrics import Metrics, per_dataset, summarize
from .poolset import PoolSet
from .train import TaskLog, train_task


@dataclass
class RunResult:
    """What a run returns to Python (and what its folder holds)."""
    method: str
    task_names: List[str]
    accuracy: np.ndarray                         # (T, T)
    metrics: Metrics
    before_merge: List[Optional[float]]          # own-task accuracy just before each merge
    counts: List[Dict[str, torch.Tensor]]        # per task: {pool name: (rank,) counts}
    merged: List[Dict[str, torch.Tensor]]        # per task: {pool name: merged expert ids}
    logs: List[TaskLog]
    seconds: float
    out_dir: Optional[Path] = None
    zeroshot: Optional[List[float]] = None       # the untrained model's row, if measured
    pools: Optional[PoolSet] = field(default=None, repr=False)   # live pools (not saved)

    @property
    def after_merge(self) -> List[float]:
        return [float(self.accuracy[t, t]) for t in range(len(self.task_names))]

    def table(self) -> List[Dict]:
        return per_dataset(self.accuracy, self.task_names)

    def summary(self) -> str:
        return f"{self.method:<14} {self.metrics}  ({self.seconds:.0f} s)"


# ------------------------------------------------------------------------------ files
def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_text(path: Path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic_write(path, w)


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _write_torch(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _versions() -> Dict[str, str]:
    import open_clip
    return dict(r1lab=__version__, torch=torch.__version__, open_clip=open_clip.__version__,
                python=platform.python_version())


def protocol_record(benchmark: Benchmark, cfg: DACConfig, method: str, model_name: str,
                    device) -> Dict:
    return dict(benchmark=benchmark.name, order=benchmark.task_names,
                label_space=benchmark.label_space, method=method, model=model_name,
                shots=cfg.shots, iterations=cfg.iterations, batch_size=cfg.batch_size,
                seed=cfg.seed, device=str(device),
                templates={t.name: t.templates for t in benchmark.tasks},
                classes={t.name: t.num_classes for t in benchmark.tasks},
                splits={t.name: dict(train=len(t.train), test=len(t.test), **{
                    k: v for k, v in t.info.items() if isinstance(v, (str, int, float))})
                    for t in benchmark.tasks},
                benchmark_protocol=benchmark.protocol, versions=_versions())


def _write_accuracy_csv(path: Path, names: List[str], A: np.ndarray) -> None:
    def w(tmp):
        with open(tmp, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["after_task"] + names)
            for t, row in enumerate(A):
                wr.writerow([names[t]] + [f"{v:.4f}" for v in row])
    _atomic_write(path, w)


def read_accuracy_csv(path) -> tuple:
    """(task names, (T, T) matrix) of a run folder's accuracy.csv."""
    with open(path) as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    return names, np.array([[float(v) for v in r[1:]] for r in rows[1:]])


# ------------------------------------------------------------------------------ engine
def run_stream(benchmark: Benchmark, bundle, cfg: DACConfig, method: str = "dac",
               out_dir: Union[str, Path, None] = None, resume: bool = True,
               device="cpu", progress: bool = True, zeroshot_row: bool = False,
               stop_after: Optional[int] = None, cache_dir: Union[str, Path, None] = None,
               num_workers: int = 0, eval_bf16: bool = False) -> RunResult:
    """Run ``method`` (see ``r1lab.config.METHODS``) over the benchmark's task stream.

    bundle       a ``ClipBundle`` (model, tokenizer, name); the model is modified in place
    out_dir      the run folder (None: nothing is written and nothing can resume)
    resume       continue from the last finished task found in ``out_dir``
    zeroshot_row also evaluate the untouched model first (recorded, not part of the matrix)
    stop_after   stop after this many tasks (the run stays resumable)
    cache_dir    where preprocessed test sets live (default ``out_dir/cache``; see cache.py)
    num_workers  data-loader workers for evaluation and caching
    eval_bf16    evaluate under bf16 autocast (GPU speed option; fp32 reproduces the paper)
    """
    t_start = time.time()
    model, tokenizer = bundle.model, bundle.tokenizer
    device = torch.device(device)
    model.to(device)
    names = benchmark.task_names
    T = len(names)
    out = Path(out_dir) if out_dir is not None else None
    mcfg = method_config(method, cfg)

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        cfg_path = out / "config.json"
        record = dict(method=method, config=mcfg.to_dict(), model=bundle.name)
        if cfg_path.exists() and resume:
            old = json.loads(cfg_path.read_text())
            if json.loads(json.dumps(record, default=str)) != old:
                raise ValueError(f"{out} holds a run with another configuration; use a new --out "
                                 f"folder, or resume=False to start over there")
        _write_json(cfg_path, record)
        _write_json(out / "protocol.json", protocol_record(benchmark, mcfg, method, bundle.name, device))

    # every evaluation reads the same preprocessed test sets (built on first use)
    if cache_dir is None and out is not None:
        cache_dir = out / "cache"
    test_sets = None
    if cache_dir is not None:
        test_sets = cached_test_sets(benchmark, cache_dir, mcfg.eval_batch_size, num_workers, progress)
    ev = dict(test_sets=test_sets, num_workers=num_workers, progress=progress,
              amp_dtype=torch.bfloat16 if eval_bf16 else None)

    zs = None
    if zeroshot_row or method == "zeroshot":
        zs = accuracy_row(model, tokenizer, benchmark, device, mcfg.eval_batch_size, **ev)

    if method == "zeroshot":
        A = np.tile(np.asarray(zs), (T, 1))
        res = RunResult(method, names, A, summarize(A), [None] * T, [{}] * T, [{}] * T, [],
                        time.time() - t_start, out, zs)
        if out is not None:
            _finish(out, res)
        return res

    pools = attach_pools(model, mcfg)
    rows: List[List[float]] = []
    before: List[Optional[float]] = []
    counts: List[Dict[str, torch.Tensor]] = []
    merged: List[Dict[str, torch.Tensor]] = []
    logs: List[TaskLog] = []

    start = 0
    if out is not None and resume:
        start = _resume(out, pools, rows, before, counts, merged, logs, T)
        if start and progress:
            print(f"[r1lab] resuming {out} after task {start}/{T} ({names[start - 1]})")

    for t in range(start, T):
        task = benchmark.tasks[t]
        torch.manual_seed(mcfg.seed + 1000 * t)
        pools.reset()
        data = few_shot(task.train, mcfg.shots, seed=mcfg.seed) if mcfg.shots else _full(task.train)
        log = train_task(model, tokenizer, pools, task, data, mcfg, t, device, progress)
        b = None
        if mcfg.eval_before_merge:   # the un-merged pool, routing in eval mode
            b = accuracy_row(model, tokenizer, benchmark, device, mcfg.eval_batch_size, only=[t], **ev)[0]
        counts.append(pools.counts())
        merged.append({k: v.cpu() for k, v in pools.end_task().items()})
        with pools.disabled():   # the fresh pools have B = 0: the model is its merged weights
            row = accuracy_row(model, tokenizer, benchmark, device, mcfg.eval_batch_size, **ev)
        rows.append(row)
        before.append(b)
        logs.append(log)
        if out is not None:
            _checkpoint(out, t, pools, row, b, counts[-1], merged[-1], log)
        if progress:
            bm = "" if b is None else f" (before merge {b:.1f})"
            print(f"[r1lab] {method} task {t + 1}/{T} {task.name}: own {row[t]:.1f}{bm}, "
                  f"mean {np.mean(row):.1f}, {log.seconds:.0f} s")
        if stop_after is not None and t + 1 >= stop_after and t + 1 < T:
            break

    A = np.full((T, T), np.nan)
    A[:len(rows)] = np.asarray(rows)
    finished = len(rows) == T
    res = RunResult(method, names, A, summarize(A) if finished else None, before, counts, merged,
                    logs, time.time() - t_start, out, zs, pools)
    if out is not None and finished:
        _finish(out, res)
    return res


def _full(ds):
    from torch.utils.data import TensorDataset
    if isinstance(ds, TensorDataset):
        return ds
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def _checkpoint(out: Path, t: int, pools: PoolSet, row, before, counts, merged, log: TaskLog):
    _write_torch(out / "checkpoints" / f"task_{t:02d}.pt", dict(
        task=t, adapter=pools.adapter_state(), row=row, before_merge=before,
        counts=counts, merged=merged, log=log.__dict__))


def _resume(out: Path, pools: PoolSet, rows, before, counts, merged, logs, T: int) -> int:
    ck = out / "checkpoints"
    done = 0
    while (ck / f"task_{done:02d}.pt").exists() and done < T:
        done += 1
    if done == 0:
        return 0
    for t in range(done):
        c = torch.load(ck / f"task_{t:02d}.pt", map_location="cpu", weights_only=False)
        rows.append(c["row"])
        before.append(c["before_merge"])
        counts.append(c["counts"])
        merged.append(c["merged"])
        logs.append(TaskLog(**c["log"]))
    pools.load_adapter_state(c["adapter"], replay_merges=True)
    return done


def _finish(out: Path, res: RunResult) -> None:
    _write_accuracy_csv(out / "accuracy.csv", res.task_names, res.accuracy)
    _write_json(out / "metrics.json", dict(
        method=res.method, **res.metrics.as_dict(), per_dataset=res.table(),
        before_merge=res.before_merge, after_merge=res.after_merge,
        zeroshot=res.zeroshot, seconds=res.seconds))
    if res.counts and res.counts[0]:
        _write_torch(out / "counts.pt", dict(counts=res.counts, merged=res.merged))
    def w(tmp):
        with open(tmp, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["task", "step", "loss", "task_loss", "ago"])
            for log in res.logs:
                for s, (l, lt, la) in enumerate(zip(log.loss, log.task_loss, log.ago)):
                    wr.writerow([log.task, s, f"{l:.6f}", f"{lt:.6f}", f"{la:.6f}"])
    if res.logs:
        _atomic_write(out / "losses.csv", w)


def load_run(out_dir) -> RunResult:
    """Read a finished run folder back into a ``RunResult``."""
    out = Path(out_dir)
    if not (out / "metrics.json").exists():
        raise FileNotFoundError(f"{out} has no metrics.json: the run is unfinished (resume it with "
                                f"`python -m r1lab run ... --out {out}`) or the path is wrong")
    m = json.loads((out / "metrics.json").read_text())
    names, A = read_accuracy_csv(out / "accuracy.csv")
    cp = out / "counts.pt"
    c = torch.load(cp, weights_only=False) if cp.exists() else dict(counts=[{}] * len(names), merged=[{}] * len(names))
    logs = []
    for t in range(len(names)):
        p = out / "checkpoints" / f"task_{t:02d}.pt"
        if p.exists():
            logs.append(TaskLog(**torch.load(p, weights_only=False)["log"]))
    return RunResult(m["method"], names, A, summarize(A), m["before_merge"], c["counts"], c["merged"],
                     logs, m["seconds"], out, m.get("zeroshot"))
