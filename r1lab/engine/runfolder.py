"""A run folder has one writer and knows what it holds; every read and write of its files is here.

    identity.json    everything that determines the numbers (identity.py); resume checks it
    config.json      the resolved DACConfig and method
    protocol.json    benchmark, order, shots, splits, templates, label space, seed, versions
    checkpoints/task_XX.pt   small adapter state after task XX (merged factors, past columns),
                     its accuracy row, counts, merged experts, log and elapsed time
    accuracy.csv     the T x T matrix (rows: after task t; columns: test set j)
    metrics.json     Transfer / Average / Last / diagonal / forgetting, per-dataset rows,
                     accuracy before and after each merge, seconds (all processes), warnings
    counts.pt        per task, per pool: the activation counts and merged experts
    losses.csv       per step: task, step, loss, task loss, AGO, lr
    zeroshot.json    the untrained model's row, when it was measured

    lock       ``<out>/.lock``, an exclusive ``fcntl.flock`` held for the whole run; a second
               process gets ``RunLocked`` at once (naming the holder's pid), never a mix
    record     ``identity.json`` (see identity.py) next to ``config.json`` / ``protocol.json``,
               written before the first checkpoint and again whenever it has gone missing
    resume     allowed only when the recorded identity's compared part equals this run's;
               a folder with checkpoints or results but no record is refused (nothing can
               tell what produced them); other library versions / device / data location
               only warn
    start over ``resume=False`` on a folder holding a run refuses, unless ``overwrite=True``:
               then everything in it but the lock and the test-set cache moves to
               ``<out>.old-<timestamp>`` (no old result is ever left beside new ones)

The lock is advisory and local (flock): two processes on one machine, or on a file system
that supports flock, cannot both write one folder.
"""
from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import csv

import numpy as np
import torch

from r1lab.engine import report
from r1lab.engine.atomic import FileLock, atomic_write, write_json, write_torch
from r1lab.engine.identity import differences
from r1lab.engine.metrics import summarize
from r1lab.engine.result import RunResult
from r1lab.engine.train import TaskLog
from r1lab.errors import CheckpointCorrupt, RunMismatch, RunUnfinished

LOCK = ".lock"
RECORD = "identity.json"
KEEP = (LOCK, "cache")                 # never moved aside: the lock itself, the test-set cache
RESULTS = ("config.json", "protocol.json", RECORD, "checkpoints", "metrics.json",
           "accuracy.csv", "counts.pt", "losses.csv", "zeroshot.json")
FLAGS = ("use another --out folder, or start over there with --no-resume --overwrite "
         "(python: resume=False, overwrite=True), which moves the old run aside")


class ResumeWarning(UserWarning):
    """Resuming under other library versions, device or data location (not a refusal)."""


def holds_run(out: Path) -> bool:
    """True when ``out`` holds anything a run writes (a record, checkpoints or results)."""
    return any((out / name).exists() for name in RESULTS)


def is_finished(out) -> bool:
    """True when the folder ``out`` holds the results of a finished run (metrics.json)."""
    return (Path(out) / "metrics.json").is_file()


def has_checkpoints(out: Path) -> bool:
    ck = out / "checkpoints"
    return ck.is_dir() and any(ck.glob("task_*.pt"))


def move_aside(out: Path) -> Path:
    """Move everything in ``out`` except the lock and the cache to ``<out>.old-<timestamp>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = out.with_name(f"{out.name}.old-{stamp}-{n}")
    dest.mkdir(parents=True)
    for p in out.iterdir():
        if p.name not in KEEP:
            shutil.move(str(p), str(dest / p.name))
    return dest


class RunFolder:
    """The run folder of one process: lock, record, resume decision (see the module doc)."""

    def __init__(self, out, identity: Dict, config_record: Dict, protocol: Dict):
        self.out = Path(out)
        self.identity, self.config_record, self.protocol = identity, config_record, protocol
        self.lock = FileLock(self.out / LOCK, what="this run folder")
        self.warnings: List[str] = []
        self.moved_to: Optional[Path] = None

    def open(self, resume: bool, overwrite: bool = False) -> "RunFolder":
        """Lock the folder, then check (resume) or clear (overwrite) what it holds."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._check(resume, overwrite)
            self.write_record()
        except BaseException:
            self.lock.release()
            raise
        return self

    def close(self) -> None:
        self.lock.release()

    def _check(self, resume: bool, overwrite: bool) -> None:
        out = self.out
        if not holds_run(out):
            return
        if not resume:
            if not overwrite:
                raise RunMismatch(f"{out} holds a run and resume is off: r1lab will not write a new "
                                  f"run beside the old one's results. Add --overwrite (python: "
                                  f"overwrite=True) to move it to {out.name}.old-<time>, or use "
                                  f"another --out folder")
            self.moved_to = move_aside(out)
            report.say(f"moved the old run in {out} to {self.moved_to} (the test-set cache stays)")
            return
        record = out / RECORD
        if not record.exists():
            if has_checkpoints(out) or is_finished(out):
                raise RunMismatch(f"{out} has checkpoints or results but no {RECORD}, so r1lab "
                                  f"cannot tell which run produced them and will not resume it; "
                                  + FLAGS)
            return                        # only a config.json / protocol.json: nothing to mix
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            raise RunMismatch(f"{record} is unreadable ({e}); r1lab cannot tell what {out} holds; "
                              + FLAGS) from None
        refuse, warn = differences(old, self.identity)
        if refuse:
            raise RunMismatch(f"{out} holds a run with another configuration; it differs in:\n  "
                              + "\n  ".join(refuse) + f"\nr1lab will not mix two runs in one folder: "
                              + FLAGS)
        if warn:
            msg = (f"resuming {out} with another environment ({'; '.join(warn)}): a warning, not a "
                   f"refusal; the numbers may differ slightly from an uninterrupted run")
            self.warnings.append(msg)
            warnings.warn(msg, ResumeWarning, stacklevel=3)
            report.warn(msg)

    def write_record(self) -> None:
        """identity.json, config.json and protocol.json (the record of this run)."""
        write_json(self.out / "config.json", self.config_record)
        write_json(self.out / "protocol.json", self.protocol)
        write_json(self.out / RECORD, self.identity)

    def ensure_record(self) -> None:
        """Write the record again if someone deleted part of it during the run."""
        if not all((self.out / f).exists() for f in (RECORD, "config.json", "protocol.json")):
            self.write_record()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, t: int, pools, row, before, counts, merged, log: TaskLog,
                   elapsed: float) -> None:
        """checkpoints/task_XX.pt after task ``t``, atomically."""
        self.ensure_record()
        write_torch(self.out / "checkpoints" / f"task_{t:02d}.pt", dict(
            task=t, adapter=pools.adapter_state(), row=row, before_merge=before,
            counts=counts, merged=merged, log=log.__dict__, elapsed=elapsed))

    def read_checkpoints(self, T: int, fallback: bool) -> List[Dict]:
        """The checkpoints of the finished tasks, in order (only the last keeps its adapter).
        A corrupt one raises ``CheckpointCorrupt`` by path, or with ``fallback`` is moved aside
        (with every later one) and the run resumes before it."""
        out = self.out
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
                report.say(f"{path} is corrupt ({why}); resuming after task {t} "
                           f"(kept as {path.name}.corrupt)")
                break
            if done:
                done[-1]["adapter"] = None            # only the last adapter state is needed
            done.append(c)
        return done

    # ------------------------------------------------------------------ results
    def finished(self) -> Optional[Dict]:
        """metrics.json of a finished folder (None when absent or unreadable: then it is redone)."""
        try:
            m = json.loads((self.out / "metrics.json").read_text())
            return m if isinstance(m, dict) and "seconds" in m else None
        except (OSError, ValueError):
            return None

    def read_zeroshot(self) -> Optional[List[float]]:
        f = self.out / "zeroshot.json"
        return json.loads(f.read_text())["row"] if f.exists() else None

    def write_zeroshot(self, row: List[float]) -> None:
        write_json(self.out / "zeroshot.json", dict(row=row))

    def write_results(self, res: RunResult) -> None:
        """accuracy.csv, metrics.json, counts.pt and losses.csv of a finished run."""
        out = self.out
        write_accuracy_csv(out / "accuracy.csv", res.task_names, res.accuracy)
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


def write_accuracy_csv(path: Path, names: List[str], A: np.ndarray) -> None:
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


def load_run(out_dir) -> RunResult:
    """Read a finished run folder back into a ``RunResult`` (no model, no live pools; to get
    those, resume the folder with ``run_stream`` or use ``cached_run``)."""
    out = Path(out_dir)
    if not is_finished(out):
        raise RunUnfinished(f"{out} has no metrics.json: the run is unfinished (resume it with "
                            f"`python -m r1lab run ... --out {out}`) or the path is wrong")
    m = json.loads((out / "metrics.json").read_text())
    names, A = read_accuracy_csv(out / "accuracy.csv")
    cp = out / "counts.pt"
    c = (torch.load(cp, weights_only=False) if cp.exists()
         else dict(counts=[{}] * len(names), merged=[{}] * len(names)))
    logs = []
    for t in range(len(names)):
        p = out / "checkpoints" / f"task_{t:02d}.pt"
        if p.exists():
            logs.append(TaskLog(**torch.load(p, weights_only=False)["log"]))
    return RunResult(method=m["method"], task_names=names, accuracy=A, metrics=summarize(A),
                     before_merge=m["before_merge"], counts=c["counts"], merged=c["merged"],
                     logs=logs, seconds=m["seconds"], out_dir=out, zeroshot=m.get("zeroshot"),
                     warnings=list(m.get("warnings") or []))
