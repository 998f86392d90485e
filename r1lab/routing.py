"""What routing chooses and how choices are made (docs/method.md sec. 3-4 and 13.2).

    Route          what one forward pass of a pool chose (read by diagnostics, no hooks)
    RouteToken     which token a tower's routers read: token 0, or the end-of-text token
    top_indices    TopK_n of a 1-D tensor, ties at the n-th place broken by a stated rule
    is_tie         whether that choice depended on the tie rule
    Collective     how a pool's vote is combined over processes (one process: not at all)

Ties (sec. 13.2): when the k-th and (k+1)-th hits (or the m-th and (m+1)-th counts) are equal,
``cfg.tie_rule`` decides: "lower" (the lower index wins; the same on every device), "topk"
(whatever order ``torch.topk`` returns, the call of the authors' code; torch does not specify
it) or "random" (uniform among the tied, from the global torch RNG, which the engine seeds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Route:
    """What one forward pass of a pool chose.

    scores:   (N, r) softmax router scores p
    chosen:   (N, k) per-sample top-k expert indices E_n
    hits:     (r,)   per-sample hits c (the batch vote)
    active:   (k,)   the batch's active set S; None when every sample has its own set
    mask:     (N, r) 0/1 mask actually applied to each sample
    """
    scores: torch.Tensor
    chosen: torch.Tensor
    hits: torch.Tensor
    active: Optional[torch.Tensor]
    mask: torch.Tensor

    def detach(self) -> "Route":
        """The same route cut from the autograd graph: what ``pool.last`` keeps, so that a
        model can be deep-copied (``merged_state_dict``) right after a training forward and
        the diagnostics do not hold the forward graph alive."""
        return Route(*(None if t is None else t.detach()
                       for t in (self.scores, self.chosen, self.hits, self.active, self.mask)))


class RouteToken:
    """Which token a tower's routers read. ``index=None`` means token 0 ([CLS] or
    start-of-text); otherwise a (N,) tensor of positions (the end-of-text token)."""

    def __init__(self):
        self.index: Optional[torch.Tensor] = None


class Collective:
    """How a pool combines what several processes saw of one batch. In one process (this
    class) there is nothing to combine; the engine's data-parallel runs give every pool a
    collective that sums the vote over the slices of a split batch and shares rank 0's
    random draws (``r1lab/engine/distributed.py``)."""

    def vote(self, hits: torch.Tensor) -> torch.Tensor:
        """The whole batch's hits c = sum over the processes' slices."""
        return hits

    def agree(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of a random choice, on every process."""
        return t


LOCAL = Collective()


def top_indices(values: torch.Tensor, n: int, rule: str = "lower",
                collective: Collective = LOCAL) -> torch.Tensor:
    """Indices of the ``n`` largest entries of a 1-D tensor, sorted by index, with ties at the
    n-th place broken by ``rule``: "lower" index first, ``torch.topk``'s own order, or
    "random" (a uniform draw among equal values from the global torch RNG)."""
    if n >= values.numel():
        return torch.arange(values.numel(), device=values.device)
    if rule == "lower":
        order = torch.argsort(values, descending=True, stable=True)
    elif rule == "topk":
        order = values.topk(n).indices
    elif rule == "random":
        jitter = torch.rand(values.shape, device=values.device, dtype=torch.float64)
        order = torch.argsort(values.to(torch.float64) + 0.5 * jitter, descending=True)
        order = collective.agree(order)   # data-parallel: rank 0's draw on every rank
    else:
        raise ValueError(f"unknown tie rule {rule!r}; use 'lower', 'topk' or 'random'")
    return order[:n].sort().values


def is_tie(values: torch.Tensor, n: int) -> bool:
    """True when the n-th and (n+1)-th largest values are equal: the choice of the top n then
    depends on the tie rule."""
    if n >= values.numel() or n < 1:
        return False
    v = values.sort(descending=True).values
    return bool(v[n - 1] == v[n])
