"""Continual-learning metrics of MTIL (docs/protocol.md "Metrics").

A[t, j] = top-1 accuracy (%) on dataset j after training task t; rows and columns in training
order; T tasks; no row for the untrained model.

    Transfer = mean_{j=2..T} mean_{t<j} A[t, j]     (strictly upper triangle, per column;
                                                     undefined, NaN, for a one-task stream)
    Average  = mean_j mean_t A[t, j]                (all T*T cells)
    Last     = mean_j A[T, j]                       (last row)

Extra columns the notebooks show next to them:

    Diagonal   = mean_j A[j, j]                     (plasticity: the task just trained)
    Forgetting = mean_{j<T} (A[j, j] - A[T, j])     (drop from each task's own row to the end)

Cells are selected with explicit index masks, never by value: a genuine 0 % stays in.
Round only for display; an undefined metric (NaN) is displayed as "n/a".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np


def _check(A) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
        raise ValueError(f"the accuracy matrix must be square T x T, got shape {A.shape}")
    if np.isnan(A).any():
        raise ValueError("the accuracy matrix has missing (NaN) cells: finish the run first")
    return A


def transfer_per_task(A) -> np.ndarray:
    """mean_{t<j} A[t, j] for every column j (NaN for the first column, which has none)."""
    A = _check(A)
    T = A.shape[0]
    out = np.full(T, np.nan)
    for j in range(1, T):
        out[j] = A[:j, j].mean()
    return out


def transfer(A) -> float:
    """NaN for one task: no column has a task trained before it."""
    A = _check(A)
    if A.shape[0] < 2:
        return float("nan")
    return float(np.mean(transfer_per_task(A)[1:]))


def average(A) -> float:
    return float(_check(A).mean())


def last(A) -> float:
    return float(_check(A)[-1].mean())


def diagonal(A) -> float:
    return float(np.diag(_check(A)).mean())


def forgetting(A) -> float:
    A = _check(A)
    if A.shape[0] < 2:
        return 0.0
    return float(np.mean(np.diag(A)[:-1] - A[-1, :-1]))


@dataclass
class Metrics:
    transfer: float
    average: float
    last: float
    diagonal: float
    forgetting: float

    def as_dict(self) -> Dict[str, float]:
        return dict(transfer=self.transfer, average=self.average, last=self.last,
                    diagonal=self.diagonal, forgetting=self.forgetting)

    def __str__(self) -> str:
        return (f"Transfer {fmt(self.transfer)} | Average {fmt(self.average)} | Last {fmt(self.last)}"
                f" | diag {fmt(self.diagonal)} | forgetting {fmt(self.forgetting)}")


def fmt(v: Optional[float], digits: int = 1) -> str:
    """A metric for display: one decimal, "n/a" when undefined (None or NaN)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summarize(A) -> Metrics:
    return Metrics(transfer(A), average(A), last(A), diagonal(A), forgetting(A))


def per_dataset(A, names: Sequence[str]) -> List[Dict[str, Optional[float]]]:
    """One row per dataset: its Transfer (None for the first), Average and Last."""
    A = _check(A)
    if len(names) != A.shape[0]:
        raise ValueError(f"{len(names)} names for a {A.shape[0]}-task matrix")
    tr = transfer_per_task(A)
    return [dict(dataset=n,
                 transfer=None if np.isnan(tr[j]) else float(tr[j]),
                 average=float(A[:, j].mean()), last=float(A[-1, j]))
            for j, n in enumerate(names)]


def format_table(A, names: Sequence[str]) -> str:
    """Per-dataset Transfer / Average / Last plus the means, as a fixed-width text table."""
    rows = per_dataset(A, names)
    m = summarize(A)
    w = max(8, max(len(n) for n in names) + 1)
    out = [f"{'':<{w}}{'Transfer':>9}{'Average':>9}{'Last':>9}"]
    for r in rows:
        t = "-" if r["transfer"] is None else f"{r['transfer']:.1f}"
        out.append(f"{r['dataset']:<{w}}{t:>9}{r['average']:>9.1f}{r['last']:>9.1f}")
    out.append(f"{'mean':<{w}}{fmt(m.transfer):>9}{m.average:>9.1f}{m.last:>9.1f}")
    return "\n".join(out)


def constant_matrix(row: Sequence[float]) -> np.ndarray:
    """The zero-shot "matrix": every row equal to the untrained model's accuracies."""
    row = np.asarray(row, dtype=np.float64)
    return np.tile(row, (len(row), 1))
