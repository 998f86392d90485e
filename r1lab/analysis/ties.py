"""Ties in the vote and in the merge (docs/method.md sec. 13.2).

The batch vote keeps S = TopK_k(c) of the per-sample hits c (integers from 0 to N), and the
merge keeps T = TopK_m(counts). When the k-th and (k+1)-th largest hits are equal, which
experts win is decided by the tie rule, not by the data (``DACConfig.tie_rule``: "lower"
index, ``torch.topk``'s order as in the authors' code, or "random"). This module measures
how often that happens:

    vote tie   in a training forward, sort(c)[k-1] == sort(c)[k]     (``TieCounter``)
    merge tie  at the end of a task,  sort(counts)[m-1] == sort(counts)[m]   (``merge_ties``)

and what independent routing would give (``simulate_vote_ties``: every sample picks k of r
experts uniformly at random).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Sequence

import torch

from r1lab.routing import is_tie
from r1lab.poolset import PoolSet


class TieCounter:
    """Counts, per pool, the training forwards and those whose vote tied at the k-th place.

        with TieCounter(pools) as ties:
            train_task(...)
        ties.rate()          # {pool name: share of training forwards with a tie}

    Dense pools (k = r) never tie: nothing is chosen. Reads ``pool.last`` after each
    forward (a forward hook), so it changes nothing in training."""

    def __init__(self, pools: PoolSet):
        self.pools = pools
        self.forwards: Dict[str, int] = defaultdict(int)
        self.ties: Dict[str, int] = defaultdict(int)
        self._handles = []

    def __enter__(self) -> "TieCounter":
        for name, pool in self.pools.items():
            self._handles.append(pool.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name):
        def hook(pool, args, output):
            rt = pool.last
            if not pool.training or rt is None or getattr(pool, "fixed", None) is not None:
                return
            self.forwards[name] += 1
            self.ties[name] += int(pool.top_k < pool.rank and is_tie(rt.hits, pool.top_k))
        return hook

    def rate(self) -> Dict[str, float]:
        return {n: self.ties[n] / f for n, f in self.forwards.items() if f}

    def overall(self) -> float:
        """Share of all (pool, forward) votes that tied."""
        f = sum(self.forwards.values())
        return sum(self.ties.values()) / f if f else float("nan")


def merge_ties(counts: Sequence[Dict[str, torch.Tensor]], m: int) -> Dict[str, float]:
    """{pool name: share of tasks whose end-of-task counts tied at the m-th place}, from a
    run's per-task counts (``RunResult.counts`` or a run folder's counts.pt)."""
    names = list(counts[0])
    return {n: sum(is_tie(c[n], m) for c in counts) / len(counts) for n in names}


def simulate_vote_ties(batch: int = 32, rank: int = 12, k: int = 8, trials: int = 10000,
                       seed: int = 0) -> float:
    """Share of batches whose vote ties at the k-th place when each of ``batch`` samples
    picks k of ``rank`` experts uniformly at random (independent tokens)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.rand(trials, batch, rank, generator=g).argsort(-1)[..., :k]
    hits = torch.zeros(trials, rank, dtype=torch.long)
    hits.scatter_add_(1, picks.reshape(trials, -1), torch.ones(trials, batch * k, dtype=torch.long))
    v = hits.sort(-1, descending=True).values
    return float((v[:, k - 1] == v[:, k]).double().mean())
