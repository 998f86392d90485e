"""Errors a user can act on. Each message names the problem and the fix; the command line
prints it without a traceback and exits with status 2 (``r1lab.cli.main``).

    ConfigError       a configuration value is wrong (names the field)      -> fix the value
    RunMismatch       a run folder holds another run, or one with no record -> another --out
    RunLocked         another process is writing the run folder             -> wait, or another --out
    RunDiverged       the loss or a parameter became non-finite             -> a lower lr
    CheckpointCorrupt a checkpoint cannot be read (names the file)          -> fallback=True
    RunWriteError     a run file could not be written (disk full?)          -> free space, resume
    RunUnfinished     a run folder has no results yet                       -> resume it
    DistributedError  a torchrun process stopped or timed out (names which) -> its own message;
                                                                            --dist-timeout
"""
from __future__ import annotations

from typing import Optional


class R1labError(Exception):
    """Base class of the errors above."""


class ConfigError(R1labError, ValueError):
    """A configuration value (a ``DACConfig`` field, a ``--set``, a flag) is invalid."""


class RunMismatch(R1labError, ValueError):
    """Resuming would mix two runs in one folder, or the folder cannot say what it holds."""


class RunLocked(R1labError, RuntimeError):
    """Another process holds the lock of a run folder (one writer per folder)."""


class RunUnfinished(R1labError, FileNotFoundError):
    """A run folder holds no finished run (no completion record yet)."""


class RunDamaged(R1labError, ValueError):
    """A final file of a run folder does not match its completion record."""


class RunWriteError(R1labError, OSError):
    """Writing a run file failed (most often: the disk is full)."""


class DistributedError(R1labError, RuntimeError):
    """A data-parallel run (torchrun) could not start, or a collective operation failed: another
    process stopped, or did not answer within ``--dist-timeout`` seconds (r1lab/engine/distributed.py)."""


class CheckpointCorrupt(R1labError, RuntimeError):
    """A checkpoint file exists but cannot be read."""

    def __init__(self, message: str, path=None, task: Optional[int] = None):
        super().__init__(message)
        self.path, self.task = path, task


class RunDiverged(R1labError, FloatingPointError):
    """Training produced a non-finite loss or parameter.

    task_index counts from 0; ``step`` is the optimiser step (0-based) where it was seen.
    """

    def __init__(self, task: str, task_index: int, step: int, lr: float, what: str,
                 kept: Optional[str] = None):
        self.task, self.task_index, self.step, self.lr, self.what = task, task_index, step, lr, what
        self.kept = kept
        super().__init__(self._message())

    def _message(self) -> str:
        where = (f"The checkpoints of the tasks before it are kept in {self.kept}; a lower lr "
                 if self.kept else "A lower lr ")
        return (f"training diverged: {self.what} at step {self.step + 1} of task "
                f"{self.task_index + 1} ({self.task}) with lr {self.lr:g}. The likely cause is a "
                f"learning rate too high: lower it (--set lr=...). {where}is another run, so give "
                f"it a new --out (or --no-resume --overwrite)")

    def with_kept(self, kept: str) -> "RunDiverged":
        return RunDiverged(self.task, self.task_index, self.step, self.lr, self.what, kept)
