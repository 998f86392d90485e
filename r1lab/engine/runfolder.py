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
    complete.json    written last: each final file above (accuracy.csv, metrics.json, counts.pt,
                     losses.csv) with its size and SHA-256. A folder is finished only when this
                     record exists and every file matches it; otherwise its final files are
                     rebuilt from the checkpoints, or the damaged file is named (``RunDamaged``).

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

import csv
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional


import numpy as np
import torch

from r1lab.engine import report
from r1lab.engine.atomic import FileLock, atomic_write, sha256_file, write_json, write_torch
from r1lab.engine.identity import differences
from r1lab.engine.metrics import summarize
from r1lab.engine.result import RunResult
from r1lab.engine.train import TaskLog
from r1lab.errors import CheckpointCorrupt, ConfigError, RunDamaged, RunMismatch, RunUnfinished

LOCK = ".lock"
RECORD = "identity.json"
KEEP = (LOCK, "cache")                 # never moved aside: the lock itself, the test-set cache
COMPLETE = "complete.json"             # the completion record, written last
FINAL = ("accuracy.csv", "metrics.json", "counts.pt", "losses.csv")
RESULTS = ("config.json", "protocol.json", RECORD, "checkpoints", *FINAL, "zeroshot.json", COMPLETE)
FORMAT = 2                             # metrics.json of r1lab with completion records
FLAGS = ("use another --out folder, or start over there with --no-resume --overwrite "
         "(python: resume=False, overwrite=True), which moves the old run aside")


class ResumeWarning(UserWarning):
    """Resuming under other library versions, device or data location (not a refusal)."""


def holds_run(out: Path) -> bool:
    """True when ``out`` holds anything a run writes (a record, checkpoints or results)."""
    return any((out / name).exists() for name in RESULTS)


def is_finished(out) -> bool:
    """True when the folder ``out`` holds the results of a finished run: a completion record
    that every final file matches, or (folders of r1lab before completion records) a
    metrics.json of the old format."""
    return not completion_problems(Path(out))


def completion_problems(out: Path) -> List[str]:
    """Why ``out`` is not a finished run folder (empty: it is). Reads every final file once."""
    out = Path(out)
    record = out / COMPLETE
    if not record.is_file():
        legacy = _legacy_metrics(out)
        if legacy:
            return []
        return [f"{out} has no {COMPLETE}: the run did not finish"]
    try:
        files = json.loads(record.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{record} is unreadable ({type(e).__name__})"]
    problems = []
    for name, want in files.items():
        f = out / name
        if not f.is_file():
            problems.append(f"{f} is missing")
        elif f.stat().st_size != want["bytes"] or sha256_file(f) != want["sha256"]:
            problems.append(f"{f} does not match {COMPLETE} (damaged or edited)")
    return problems


def _legacy_metrics(out: Path) -> bool:
    """A metrics.json written before completion records existed (no "format" field)."""
    try:
        m = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "seconds" in m and "format" not in m


_MADE = (*FINAL, COMPLETE, "zeroshot.json", "config.json", "protocol.json", RECORD)


def _is_temporary(name: str) -> bool:
    """``.<file>.<8 random characters>``: the naming of ``atomic_write``'s temporary files."""
    if not name.startswith("."):
        return False
    stem, _, suffix = name[1:].rpartition(".")
    base = stem
    return len(suffix) == 8 and (base in _MADE or (base.startswith("task_") and base.endswith(".pt")))


def check_out(out: Path) -> None:
    """Refuse an --out that cannot hold a run folder, before anything is created: a regular
    file, a name too long for the file system (also for its ``.old-<time>`` name)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose a folder path")
    longest = len(out.name) + len(".old-20260101-000000-99")
    try:
        limit = os.pathconf(next(p for p in [out, *out.parents] if p.exists()), "PC_NAME_MAX")
    except (OSError, StopIteration, ValueError):
        limit = 255
    if longest > limit:
        raise ConfigError(f"--out {out}: the folder name is {len(out.name)} characters; with "
                          f"'.old-<time>' it must fit the file system's {limit}: choose a shorter name")


def holds_results(out: Path) -> bool:
    """True when ``out`` holds checkpoints or final files (more than a run's record)."""
    return has_checkpoints(out) or any((out / f).exists() for f in (*FINAL, COMPLETE, "zeroshot.json"))


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
        """Lock the folder, then check (resume) or clear (overwrite) what it holds, and remove
        the temporary files of writes that were killed."""
        check_out(self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as e:
            raise ConfigError(f"--out {self.out}: cannot create or lock it ({e.strerror or e}); "
                              f"choose a folder you can write") from None
        try:
            self._check(resume, overwrite)
            self.write_record()
            self.remove_litter()
        except BaseException:
            self.lock.release()
            raise
        return self

    def remove_litter(self) -> List[Path]:
        """Delete the temporary files that ``atomic_write`` leaves when its process is killed
        (``.<name>.<random>`` beside a run file or checkpoint); only under the folder's lock."""
        gone = []
        for folder in (self.out, self.out / "checkpoints"):
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.is_file() and _is_temporary(f.name):
                    f.unlink()
                    gone.append(f)
        return gone

    def close(self) -> None:
        self.lock.release()

    def _check(self, resume: bool, overwrite: bool) -> None:
        out = self.out
        if not holds_run(out):
            return
        if not resume and not holds_results(out):
            return        # only the record of a failed start: nothing to keep or move aside
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
        if refuse and not holds_results(out):
            return        # a failed start left only its record: the corrected run replaces it
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
                for stale in (COMPLETE, *FINAL):           # the record first
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
        """metrics.json of a finished folder (see ``completion_problems``); None otherwise,
        and then the final files are rebuilt from the checkpoints."""
        if completion_problems(self.out):
            return None
        return json.loads((self.out / "metrics.json").read_text())

    def damaged(self) -> List[str]:
        """The final files that exist but do not match the completion record."""
        return [p for p in completion_problems(self.out) if "does not match" in p or "is missing" in p]

    def read_zeroshot(self) -> Optional[List[float]]:
        f = self.out / "zeroshot.json"
        return json.loads(f.read_text())["row"] if f.exists() else None

    def write_zeroshot(self, row: List[float]) -> None:
        write_json(self.out / "zeroshot.json", dict(row=row))

    def write_results(self, res: RunResult) -> None:
        """The final files of a finished run, each atomically, then the completion record that
        names them (until it exists, the folder is not finished)."""
        out = self.out
        if (out / COMPLETE).exists():
            (out / COMPLETE).unlink()
        write_accuracy_csv(out / "accuracy.csv", res.task_names, res.accuracy)
        write_json(out / "metrics.json", dict(
            format=FORMAT, method=res.method, **res.metrics.as_dict(), per_dataset=res.table(),
            accuracy=[[float(v) for v in row] for row in res.accuracy],
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
        written = [n for n in FINAL if (out / n).is_file()]
        write_json(out / COMPLETE, dict(files={n: dict(bytes=(out / n).stat().st_size,
                                                       sha256=sha256_file(out / n))
                                               for n in written}))


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
    problems = completion_problems(out)
    if problems and not (out / COMPLETE).exists():
        raise RunUnfinished(f"{out} holds no finished run: {problems[0]} (resume it with the "
                            f"command that started it, or check the path)")
    if problems:
        raise RunDamaged(f"{out}: {'; '.join(problems)}. Run the same command again: the "
                         f"final files are rebuilt from the checkpoints")
    m = json.loads((out / "metrics.json").read_text())
    names, A = read_accuracy_csv(out / "accuracy.csv")
    if "accuracy" in m:                       # full precision (the CSV is rounded to 4 decimals)
        A = np.asarray(m["accuracy"], dtype=float)
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
