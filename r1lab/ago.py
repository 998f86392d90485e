"""Activation-guided orthogonal (AGO) loss (docs/method.md sec. 7), for tasks 2 onward.

Only the output side of the experts (columns of B) is constrained. Per pool:

    C      = TopK_m(counts so far in this task)       current task's critical experts
    P      = [past B columns]                          constants (no gradient)
    l_code = sum_{i in C, j} | b_cur_i^T p_j |         "code": sum of |cross-Gram| entries

and L_AGO = mean of l over the pools. Total loss: L = L_task + lambda * L_AGO.

``ago_form`` variants (docs/method.md sec. 12):
    "code"   the authors' code (default), as above
    "paper"  the paper's normalisation: the mean over the m x n pairs, (1/(m n)) sum |b_i^T p_j|.
             The paper writes the plain dot product; minimising a signed dot product would
             reward anti-aligned columns without bound, so the absolute value is kept here.
    "dense"  every current column against every past column (O-LoRA-style dense
             orthogonality), sum of |cross-Gram| entries

Which past columns P holds is the ``ago_past`` switch, applied when a task ends
(``ExpertPoolLinear.end_task``): all r columns of each earlier pool (code) or only its merged
top-m columns (paper).
"""
from __future__ import annotations

from typing import Iterable

import torch

from r1lab.pool import ExpertPoolLinear


def pool_ago(pool: ExpertPoolLinear, form: str = "code") -> torch.Tensor:
    """AGO term of one pool. Gradient reaches only the selected current B columns."""
    P = pool.past_B.detach()
    if P.shape[1] == 0:
        return pool.B.new_zeros(())
    if form == "dense":
        cur = pool.B
    else:
        cur = pool.B[:, pool.critical()]
    gram = cur.transpose(0, 1) @ P           # (|C|, n_past) cross-Gram matrix
    if form == "paper":
        return gram.abs().mean()
    if form in ("code", "dense"):
        return gram.abs().sum()
    raise ValueError(f"unknown AGO form {form!r}; use 'code', 'paper' or 'dense'")


def ago_loss(pools: Iterable[ExpertPoolLinear], form: str = "code") -> torch.Tensor:
    """L_AGO = mean over pools of the per-pool term (0 when no pool has past columns)."""
    pools = list(pools)
    if not pools:
        raise ValueError("ago_loss needs at least one pool")
    return torch.stack([pool_ago(p, form) for p in pools]).mean()


def cross_gram(current_B: torch.Tensor, past_B: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """|cos| (or |dot|) between current and past B columns, for orthogonality diagnostics."""
    if normalize:
        current_B = torch.nn.functional.normalize(current_B, dim=0)
        past_B = torch.nn.functional.normalize(past_B, dim=0)
    return (current_B.transpose(0, 1) @ past_B).abs()
