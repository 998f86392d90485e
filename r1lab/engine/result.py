"""What a run returns (``RunResult``), and the warnings a finished run carries.

A finished run whose last row is at chance everywhere, or whose loss rose more than tenfold
within a task, carries ``warnings`` (in ``RunResult``, metrics.json, the log and ``summary``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from r1lab.data.stream import Benchmark
from r1lab.engine.metrics import Metrics, per_dataset
from r1lab.engine.train import TaskLog
from r1lab.poolset import PoolSet

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
