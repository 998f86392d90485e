"""The continual-learning engine: one method over one benchmark stream, resumable.

For each task t of the stream (docs/method.md sec. 4-10), with seed_t = seed + 1000 t:

    torch.manual_seed(seed_t); fresh pools               # A ~ Kaiming, B = 0, new router
    D_t = few_shot(train_t, shots, seed)                 # frozen augmentation
    train the pools on D_t                               # L_task (+ lambda L_AGO, t >= 2);
                                                         # template and batches from seed_t
    acc_before[t] = accuracy on task t, un-merged pool   # what the task reached
    merge the top-m experts of every pool into CLIP      # W0 += s B[:, T] A[T, :]
    A[t, :] = accuracy of the merged model on every test set (one row)
    checkpoint (adapter state, row, counts, losses, elapsed time), atomically

Before any of it, everything that can be checked is checked (``preflight``): the configuration
against the stream (per-task learning rates by dataset name), the model's input size against
the benchmark's images, worker counts; then the images of the few-shot subsets still to train
are decoded (a corrupt file is reported by path before training, not in task 2).

A run folder holds:
    .lock            one writer per folder (runfolder.py)
    identity.json    everything that determines the numbers (identity.py); resume checks it
    config.json      the resolved DACConfig and method
    protocol.json    benchmark, order, shots, splits, templates, label space, seed, versions
    accuracy.csv     the T x T matrix (rows: after task t; columns: test set j)
    metrics.json     Transfer / Average / Last / diagonal / forgetting, per-dataset rows,
                     accuracy before and after each merge, seconds (all processes), warnings
    counts.pt        per task, per pool: the activation counts and merged experts
    losses.csv       per step: task, step, loss, task loss, AGO, lr
    zeroshot.json    the untrained model's row, when it was measured
    checkpoints/task_XX.pt   small adapter state after task XX (merged factors, past columns)

A run killed at any point resumes from its last finished task (``resume=True``) and ends
with the same accuracy matrix as an uninterrupted run: every task reseeds all randomness, and
merged weights are rebuilt by replaying the stored merge factors in order. A finished folder
is reloaded the same way, without training. A corrupt checkpoint is reported by path;
``fallback=True`` moves it (and any later one) aside as ``*.corrupt`` and trains again from
the last readable one.

Data-parallel under torchrun (r1lab/distributed.py): every process runs this same loop on its
slice of each global batch and of each test set; rank 0 alone opens, locks and writes the run
folder, reads the checkpoints and broadcasts what it read, so every process resumes from the
same adapter state; the others write nothing there.

A non-finite loss or parameter stops the run (``RunDiverged``: task, step, lr); a finished run
whose last row is at chance everywhere, or whose loss rose more than tenfold within a task,
carries ``warnings`` (RunResult, metrics.json, the log and ``summary``).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import distributed
from .attach import attach_pools
from .benchmark import Benchmark, few_shot
from .cache import cached_test_sets
from .config import DACConfig, method_config
from .errors import CheckpointCorrupt, ConfigError, RunDiverged, RunUnfinished
from .evaluate import accuracy_row
from .files import atomic_write, write_json, write_torch
from .identity import model_image_size, run_identity, stream_name, versions
from .metrics import Metrics, per_dataset, summarize
from .poolset import PoolSet
from .runfolder import RunFolder
from .train import TaskLog, task_seed, train_task

CHANCE_MARGIN = 1.0     # points: a last row this close to chance everywhere is flagged
LOSS_RISE = 10.0        # a task whose loss ends this many times above its start is flagged


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
    seconds: float                               # wall time of the run, over all its processes
    out_dir: Optional[Path] = None
    zeroshot: Optional[List[float]] = None       # the untrained model's row, if measured
    pools: Optional[PoolSet] = field(default=None, repr=False)   # live pools (not saved)
    warnings: List[str] = field(default_factory=list)           # suspicious outcomes

    @property
    def after_merge(self) -> List[float]:
        return [float(self.accuracy[t, t]) for t in range(len(self.task_names))]

    def table(self) -> List[Dict]:
        return per_dataset(self.accuracy, self.task_names)

    def summary(self) -> str:
        return f"{self.method:<14} {self.metrics}  ({self.seconds:.0f} s)"


# ------------------------------------------------------------------------------ files
def protocol_record(benchmark: Benchmark, cfg: DACConfig, method: str, model_name: str,
                    device) -> Dict:
    return dict(benchmark=benchmark.name, order=benchmark.task_names,
                label_space=benchmark.label_space, method=method, model=model_name,
                shots=cfg.shots, iterations=cfg.iterations, batch_size=cfg.batch_size,
                seed=cfg.seed, device=str(device),
                **({"processes": distributed.world_size()} if distributed.world_size() > 1 else {}),
                templates={t.name: t.templates for t in benchmark.tasks},
                classes={t.name: t.num_classes for t in benchmark.tasks},
                splits={t.name: dict(train=len(t.train), test=len(t.test), **{
                    k: v for k, v in t.info.items() if isinstance(v, (str, int, float))})
                    for t in benchmark.tasks},
                benchmark_protocol=benchmark.protocol, versions=versions())


def _write_accuracy_csv(path: Path, names: List[str], A: np.ndarray) -> None:
    def w(tmp):
        with open(tmp, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["after_task"] + names)
            for t, row in enumerate(A):
                wr.writerow([names[t]] + [f"{v:.4f}" for v in row])
    atomic_write(path, w)


def read_accuracy_csv(path) -> tuple:
    """(task names, (T, T) matrix) of a run folder's accuracy.csv."""
    with open(path) as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    return names, np.array([[float(v) for v in r[1:]] for r in rows[1:]])


# ------------------------------------------------------------------------------ checks
def _first_image(ds) -> torch.Tensor:
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][0]
    return ds[0][0]


def preflight(benchmark: Benchmark, bundle, cfg: DACConfig, method: str, num_workers=0,
              stop_after=None) -> None:
    """Everything that can be checked before any work: raises ``ConfigError`` naming it.

    The stream (at least one task; one task is fine, its Transfer is undefined), worker and
    stop counts, per-task learning rates against the stream's datasets, and the model's input
    size against the images of the benchmark's first task (one image decoded).
    """
    if len(benchmark.tasks) == 0:
        raise ConfigError(f"the benchmark {benchmark.name} has no tasks")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers (--workers) must be an integer >= 0, got {num_workers!r}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or stop_after < 1):
        raise ConfigError(f"stop_after must be an integer >= 1 or None, got {stop_after!r}")
    if method != "zeroshot":
        cfg.check_stream(benchmark.task_names, stream_name(benchmark))
        distributed.check_batch(cfg.batch_size)
    side = model_image_size(bundle.model)
    if side is None:
        return
    task = benchmark.tasks[0]
    for split, ds in (("test", task.test), ("train", task.train)):
        if len(ds) == 0:
            continue
        try:
            shape = tuple(_first_image(ds).shape[-2:])
        except Exception:  # noqa: BLE001 - a corrupt image: verify_data reports every one
            continue
        if shape != (side, side):
            raise ConfigError(
                f"the model {getattr(bundle, 'name', '?')} takes {side}x{side} images, but the "
                f"{benchmark.name} benchmark's {split} images are {shape[0]}x{shape[1]} (task "
                f"{task.name}): use a model made for {shape[0]}-px images (MTIL / X-TAIL: e.g. "
                f"--model ViT-B-16-quickgelu), or a benchmark made for this model (the tiny CLIP: "
                f"--benchmark world)")


def verify_data(benchmark: Benchmark, cfg: DACConfig, tasks) -> None:
    """Decode every image of the few-shot subsets of ``tasks`` (indices) before training;
    raise ``DataRootProblems`` / ``DatasetIncomplete`` listing every corrupt file by path."""
    todo = [benchmark.tasks[t] for t in tasks if not isinstance(benchmark.tasks[t].train, TensorDataset)]
    if not todo or not cfg.shots:
        return
    from .datasets.checks import DataRootProblems, DatasetIncomplete, few_shot_problems
    problems = [p for task in todo for p in few_shot_problems(task, cfg.shots, cfg.seed)]
    if len(problems) == 1:
        raise DatasetIncomplete(problems[0])
    if problems:
        raise DataRootProblems(problems)


def chance_levels(benchmark: Benchmark) -> List[float]:
    """Accuracy (%) of guessing, per test set: 100 / classes it is scored over."""
    if benchmark.label_space == "union":
        return [100.0 / sum(t.num_classes for t in benchmark.tasks)] * len(benchmark.tasks)
    return [100.0 / t.num_classes for t in benchmark.tasks]


def run_warnings(A: np.ndarray, chance: List[float], logs: List[TaskLog]) -> List[str]:
    """Warnings of a finished run: every cell of the last row within CHANCE_MARGIN points of
    chance; a task whose loss ended more than LOSS_RISE times above where it started (mean of
    the first and last tenth of its steps)."""
    out = []
    last = np.asarray(A)[-1]
    if np.all(np.abs(last - np.asarray(chance)) <= CHANCE_MARGIN):
        out.append(f"every accuracy of the last row is within {CHANCE_MARGIN:g} point of chance "
                   f"({', '.join(f'{a:.1f}' for a in last)}): the model has collapsed; the likely "
                   f"cause is a learning rate too high (lower it with --set lr=...)")
    for log in logs:
        n = max(1, len(log.loss) // 10)
        if len(log.loss) < 2:
            continue
        first, end = float(np.mean(log.loss[:n])), float(np.mean(log.loss[-n:]))
        if first > 0 and end > LOSS_RISE * first:
            out.append(f"the loss of task {log.task} rose from {first:.3g} to {end:.3g} "
                       f"(more than {LOSS_RISE:g}x): training was unstable; lower the learning rate")
    return out


# ------------------------------------------------------------------------------ engine
def run_stream(benchmark: Benchmark, bundle, cfg: DACConfig, method: str = "dac",
               out_dir: Union[str, Path, None] = None, resume: bool = True,
               device="cpu", progress: bool = True, zeroshot_row: bool = False,
               stop_after: Optional[int] = None, cache_dir: Union[str, Path, None] = None,
               num_workers: int = 0, eval_bf16: bool = False, overwrite: bool = False,
               fallback: bool = False) -> RunResult:
    """Run ``method`` (see ``r1lab.config.METHODS``) over the benchmark's task stream.

    bundle       a ``ClipBundle`` (model, tokenizer, name); the model is modified in place
    out_dir      the run folder (None: nothing is written and nothing can resume); locked
                 for the run, and resumed only when it holds this very run (identity.json)
    resume       continue from the last finished task found in ``out_dir`` (a finished
                 folder is reloaded without training); False on a folder holding a run
                 refuses, unless ``overwrite``
    overwrite    with resume=False: move the old run to ``<out_dir>.old-<time>`` first
    fallback     on a corrupt checkpoint, resume from the last readable one (the bad files
                 are kept as ``*.corrupt``) instead of stopping
    zeroshot_row also evaluate the untouched model first (recorded, not part of the matrix)
    stop_after   stop after this many tasks (the run stays resumable)
    cache_dir    where preprocessed test sets live (default ``out_dir/cache``; see cache.py)
    num_workers  data-loader workers for evaluation and caching
    eval_bf16    evaluate under bf16 autocast (GPU speed option; fp32 reproduces the paper)

    Under torchrun every process calls this with the same arguments (see r1lab/distributed.py);
    only rank 0 prints and writes ``out_dir``.
    """
    t_start = time.time()
    mcfg = method_config(method, cfg)
    progress = progress and distributed.is_main()
    with distributed.raised_everywhere():
        preflight(benchmark, bundle, mcfg, method, num_workers, stop_after)
    out = Path(out_dir) if out_dir is not None else None

    def open_folder() -> RunFolder:
        identity = run_identity(benchmark, bundle, mcfg, method, device, eval_bf16)
        f = RunFolder(out, identity, dict(method=method, config=mcfg.to_dict(), model=bundle.name),
                      protocol_record(benchmark, mcfg, method, bundle.name, device))
        return f.open(resume, overwrite, progress)
    # rank 0 alone holds the folder (None on the others); its errors stop every process
    folder = distributed.main_only(open_folder) if out is not None else None
    try:
        return _run(benchmark, bundle, mcfg, method, out, folder, resume, torch.device(device),
                    progress, zeroshot_row, stop_after, cache_dir, num_workers, eval_bf16,
                    fallback, t_start)
    finally:
        if folder is not None:
            try:
                folder.ensure_record()   # the record stays with the checkpoints, whatever happened
            except OSError:              # (a full disk: the error being raised says so)
                pass
            folder.close()


def _run(benchmark, bundle, mcfg, method, out, folder, resume, device, progress, zeroshot_row,
         stop_after, cache_dir, num_workers, eval_bf16, fallback, t_start) -> RunResult:
    model, tokenizer = bundle.model, bundle.tokenizer
    names = benchmark.task_names
    T = len(names)
    zs_file = None if out is None else out / "zeroshot.json"
    want_zs = zeroshot_row or method == "zeroshot"

    def read_folder():   # rank 0 reads; every process gets the same (done, finished, zs)
        done = _read_checkpoints(out, T, fallback, progress) if (out is not None and resume) else []
        finished = _finished(out) if (out is not None and resume) else None
        zs = None
        if want_zs and zs_file is not None and resume and zs_file.exists():
            zs = json.loads(zs_file.read_text())["row"]
        return done, finished, zs
    done, finished, zs = distributed.main_only(read_folder, share=True)
    start = len(done)
    if method != "zeroshot" and start < T:
        distributed.main_only(lambda: verify_data(benchmark, mcfg, range(start, T)))
    model.to(device)
    distributed.broadcast_model(model)      # every process starts from rank 0's weights

    # a finished folder is reloaded without evaluating anything (except a missing zero-shot row)
    reload = finished is not None and (method == "zeroshot" or start == T)
    need_zs = want_zs and zs is None

    # every evaluation reads the same preprocessed test sets (built on first use, by rank 0
    # while the other processes wait; then they read it)
    if cache_dir is None and out is not None:
        cache_dir = out / "cache"
    test_sets = None
    if cache_dir is not None and (need_zs or not reload):
        def cache():
            return cached_test_sets(benchmark, cache_dir, mcfg.eval_batch_size, num_workers, progress)
        test_sets = distributed.main_only(cache)
        if test_sets is None:          # a process other than rank 0: read what rank 0 built
            test_sets = cache()        # (or build it, on a machine without rank 0's disk)
        distributed.wait_for_all()
    ev = dict(test_sets=test_sets, num_workers=num_workers, progress=progress,
              amp_dtype=torch.bfloat16 if eval_bf16 else None)
    if need_zs:
        zs = accuracy_row(model, tokenizer, benchmark, device, mcfg.eval_batch_size, **ev)
        if folder is not None:
            write_json(zs_file, dict(row=zs))

    if method == "zeroshot":
        A = np.tile(np.asarray(zs), (T, 1))
        res = RunResult(method, names, A, summarize(A), [None] * T, [{}] * T, [{}] * T, [],
                        time.time() - t_start, out, zs)
        return _conclude(res, out, folder, finished, benchmark, progress)

    pools = attach_pools(model, mcfg)
    rows = [c["row"] for c in done]
    before = [c["before_merge"] for c in done]
    counts = [c["counts"] for c in done]
    merged = [c["merged"] for c in done]
    logs = [TaskLog(**c["log"]) for c in done]
    elapsed = 0.0
    if done:
        pools.load_adapter_state(done[-1]["adapter"], replay_merges=True)
        elapsed = float(done[-1].get("elapsed", sum(log.seconds for log in logs)))
        done[-1]["adapter"] = None
        if progress and start < T:
            print(f"[r1lab] resuming {out} after task {start}/{T} ({names[start - 1]})")

    for t in range(start, T):
        task = benchmark.tasks[t]
        torch.manual_seed(task_seed(mcfg, t))
        pools.reset()
        distributed.seed_rank(task_seed(mcfg, t))   # rank q > 0: its own dropout masks
        data = few_shot(task.train, mcfg.shots, seed=mcfg.seed) if mcfg.shots else _full(task.train)
        try:
            log = train_task(model, tokenizer, pools, task, data, mcfg, t, device, progress)
        except RunDiverged as e:   # every process sees the same loss and stops alike
            raise distributed.mark_everywhere(
                e.with_kept(str(out)) if out is not None and t > 0 else e) from None
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
        if folder is not None:
            folder.ensure_record()
            _checkpoint(out, t, pools, row, b, counts[-1], merged[-1], log,
                        elapsed + time.time() - t_start)
        if progress:
            bm = "" if b is None else f" (before merge {b:.1f})"
            print(f"[r1lab] {method} task {t + 1}/{T} {task.name}: own {row[t]:.1f}{bm}, "
                  f"mean {np.mean(row):.1f}, {log.seconds:.0f} s")
        if stop_after is not None and t + 1 >= stop_after and t + 1 < T:
            break

    A = np.full((T, T), np.nan)
    A[:len(rows)] = np.asarray(rows)
    complete = len(rows) == T
    res = RunResult(method, names, A, summarize(A) if complete else None, before, counts, merged,
                    logs, elapsed + time.time() - t_start, out, zs, pools)
    if not complete:
        return res
    return _conclude(res, out, folder, finished if start == T else None, benchmark, progress)


def _conclude(res: RunResult, out, folder, finished, benchmark, progress) -> RunResult:
    """A finished run: its warnings, its files (unless reloaded from a finished folder)."""
    if finished is not None:                       # reloaded: the original time and warnings
        res.seconds = float(finished["seconds"])
        res.warnings = list(finished.get("warnings", []))
    else:
        res.warnings = run_warnings(res.accuracy, chance_levels(benchmark), res.logs)
    if folder is not None:
        res.warnings += [w for w in folder.warnings if w not in res.warnings]
    if folder is not None and finished is None:
        _finish(out, res)
    if progress:
        for w in res.warnings:
            print(f"[r1lab] warning: {w}")
    return res


def _finished(out: Path) -> Optional[Dict]:
    """metrics.json of a finished folder (None when absent or unreadable: then it is redone)."""
    try:
        m = json.loads((out / "metrics.json").read_text())
        return m if isinstance(m, dict) and "seconds" in m else None
    except (OSError, ValueError):
        return None


def _full(ds):
    if isinstance(ds, TensorDataset):
        return ds
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def _checkpoint(out: Path, t: int, pools: PoolSet, row, before, counts, merged, log: TaskLog,
                elapsed: float):
    write_torch(out / "checkpoints" / f"task_{t:02d}.pt", dict(
        task=t, adapter=pools.adapter_state(), row=row, before_merge=before,
        counts=counts, merged=merged, log=log.__dict__, elapsed=elapsed))


def _read_checkpoints(out: Path, T: int, fallback: bool, progress: bool) -> List[Dict]:
    """The checkpoints of the finished tasks, in order (only the last keeps its adapter).
    A corrupt one raises ``CheckpointCorrupt`` by path, or with ``fallback`` is moved aside
    (with every later one) and the run resumes before it."""
    ck = out / "checkpoints"
    n = 0
    while n < T and (ck / f"task_{n:02d}.pt").exists():
        n += 1
    done: List[Dict] = []
    for t in range(n):
        path = ck / f"task_{t:02d}.pt"
        try:
            c = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(c, dict) or c.get("task") != t or "adapter" not in c:
                raise ValueError("not an r1lab checkpoint of this task")
        except Exception as e:  # noqa: BLE001 - zip, pickle, EOF errors: all mean unreadable
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if not fallback:
                prev = (f"task_{t - 1:02d}.pt, the last readable one" if t else "the start")
                raise CheckpointCorrupt(
                    f"the checkpoint {path} is corrupt ({type(e).__name__}: {why}). Resume from "
                    f"{prev} with --fallback (python: fallback=True), which keeps the bad file as "
                    f"{path.name}.corrupt and trains task {t + 1} again", path, t) from None
            for later in range(t, n):
                bad = ck / f"task_{later:02d}.pt"
                bad.rename(bad.with_name(bad.name + ".corrupt"))
            for stale in ("metrics.json", "accuracy.csv", "counts.pt", "losses.csv"):
                if (out / stale).exists():
                    (out / stale).unlink()
            if progress:
                print(f"[r1lab] {path} is corrupt ({why}); resuming after task {t} "
                      f"(kept as {path.name}.corrupt)")
            break
        if done:
            done[-1]["adapter"] = None            # only the last adapter state is needed
        done.append(c)
    return done


def _finish(out: Path, res: RunResult) -> None:
    _write_accuracy_csv(out / "accuracy.csv", res.task_names, res.accuracy)
    write_json(out / "metrics.json", dict(
        method=res.method, **res.metrics.as_dict(), per_dataset=res.table(),
        before_merge=res.before_merge, after_merge=res.after_merge,
        zeroshot=res.zeroshot, seconds=res.seconds, warnings=res.warnings))
    if res.counts and res.counts[0]:
        write_torch(out / "counts.pt", dict(counts=res.counts, merged=res.merged))

    def w(tmp):
        with open(tmp, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["task", "step", "loss", "task_loss", "ago", "lr"])
            for log in res.logs:
                lrs = log.lrs or [float("nan")] * len(log.loss)
                for s, (l, lt, la, lr) in enumerate(zip(log.loss, log.task_loss, log.ago, lrs)):
                    wr.writerow([log.task, s, f"{l:.6f}", f"{lt:.6f}", f"{la:.6f}", f"{lr:.6g}"])
    if res.logs:
        atomic_write(out / "losses.csv", w)


def load_run(out_dir) -> RunResult:
    """Read a finished run folder back into a ``RunResult`` (no model, no live pools; to get
    those, resume the folder with ``run_stream`` or use ``runcache.cached_run``)."""
    out = Path(out_dir)
    if not (out / "metrics.json").exists():
        raise RunUnfinished(f"{out} has no metrics.json: the run is unfinished (resume it with "
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
                     logs, m["seconds"], out, m.get("zeroshot"), warnings=list(m.get("warnings") or []))
