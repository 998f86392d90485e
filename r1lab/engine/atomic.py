"""Writing run files atomically, with the user's usual permissions, naming the file on failure;
and ``FileLock``, one writer at a time.

Every file of a run folder is written as

    write(tmp in the same folder); chmod(tmp, 0o666 & ~umask); rename(tmp, path)

so a reader (or a killed process) never sees half a file, and the files are as readable as
any other file the user writes (a bare ``mkstemp`` would leave them 0600). A failed write
(most often a full disk, which torch reports as an ``inline_container.cc`` enforce failure)
raises ``RunWriteError`` naming the file and the free space on its disk.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from r1lab.errors import RunLocked, RunWriteError


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


FILE_MODE = 0o666 & ~_umask()


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2 ** 20:,.0f} MiB free there"
    except OSError:
        return "free space unknown"


def atomic_write(path, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path`` (``tmp`` a ``Path``), then rename it
    onto ``path``: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, RunWriteError):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunWriteError(f"could not write {path}: {first} ({_free(path.parent)}). Is the "
                                f"disk full? Free some space and run again: the run resumes from "
                                f"its last complete checkpoint") from e
        raise


def write_text(path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, w)


def json_safe(obj):
    """NaN / inf -> None (strict JSON has no NaN), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path, obj) -> None:
    write_text(path, json.dumps(json_safe(obj), indent=2, default=str) + "\n")


def write_torch(path, obj) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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


def sha256_file(path) -> str:
    """SHA-256 of a file's bytes, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()
