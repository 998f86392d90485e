"""A run folder has one writer and knows what it holds.

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

import fcntl
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

from .errors import RunLocked, RunMismatch
from .files import write_json
from .identity import differences

LOCK = ".lock"
RECORD = "identity.json"
KEEP = (LOCK, "cache")                 # never moved aside: the lock itself, the test-set cache
RESULTS = ("config.json", "protocol.json", RECORD, "checkpoints", "metrics.json",
           "accuracy.csv", "counts.pt", "losses.csv", "zeroshot.json")
FLAGS = ("use another --out folder, or start over there with --no-resume --overwrite "
         "(python: resume=False, overwrite=True), which moves the old run aside")


class ResumeWarning(UserWarning):
    """Resuming under other library versions, device or data location (not a refusal)."""


class FileLock:
    """An exclusive, non-blocking (or blocking) ``flock`` on ``path`` (created if needed)."""

    def __init__(self, path, blocking: bool = False, what: str = "this folder"):
        self.path, self.blocking, self.what = Path(path), blocking, what
        self.fd: Optional[int] = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"another process (pid {holder}) is writing {self.what} "
                            f"({self.path.parent}); wait for it to finish, or use another --out "
                            f"folder. One writer per folder: two runs there would mix their results")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def holds_run(out: Path) -> bool:
    """True when ``out`` holds anything a run writes (a record, checkpoints or results)."""
    return any((out / name).exists() for name in RESULTS)


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

    def open(self, resume: bool, overwrite: bool = False, progress: bool = False) -> "RunFolder":
        """Lock the folder, then check (resume) or clear (overwrite) what it holds."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._check(resume, overwrite, progress)
            self.write_record()
        except BaseException:
            self.lock.release()
            raise
        return self

    def close(self) -> None:
        self.lock.release()

    def _check(self, resume: bool, overwrite: bool, progress: bool) -> None:
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
            print(f"[r1lab] moved the old run in {out} to {self.moved_to} (the test-set cache stays)")
            return
        record = out / RECORD
        if not record.exists():
            if has_checkpoints(out) or (out / "metrics.json").exists():
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
            if progress:
                print(f"[r1lab] warning: {msg}")

    def write_record(self) -> None:
        """identity.json, config.json and protocol.json (the record of this run)."""
        write_json(self.out / "config.json", self.config_record)
        write_json(self.out / "protocol.json", self.protocol)
        write_json(self.out / RECORD, self.identity)

    def ensure_record(self) -> None:
        """Write the record again if someone deleted part of it during the run."""
        if not all((self.out / f).exists() for f in (RECORD, "config.json", "protocol.json")):
            self.write_record()
