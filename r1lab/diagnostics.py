"""Diagnostics the notebooks plot: what sparse experts can express, where the routers send
each domain, and how much different tasks' updates collide.

All functions take tensors or pools and return tensors / small dataclasses; none uses hooks
(pools record their last route in ``pool.last``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .benchmark import Benchmark
from .pool import ExpertPoolLinear
from .poolset import PoolSet


# ------------------------------------------------------------------ decomposition
def subset_energy(B: torch.Tensor, A: torch.Tensor, experts: Sequence[int]) -> float:
    """||B[:, E] A[E, :]||_F^2 / ||B A||_F^2: the share of the full update's energy that a
    subset E of rank-1 experts expresses on its own (can exceed 1: experts are not orthogonal)."""
    full = (B @ A).pow(2).sum()
    E = torch.as_tensor(list(experts), dtype=torch.long)
    part = (B[:, E] @ A[E, :]).pow(2).sum() if len(E) else full.new_zeros(())
    return float(part / full.clamp_min(1e-30))


def best_rank_energy(B: torch.Tensor, A: torch.Tensor, k: int) -> float:
    """Energy share of the best rank-k approximation of B A (Eckart-Young: top-k singular
    values squared over all of them), the ceiling for any k experts."""
    s = torch.linalg.svdvals(B @ A)
    return float(s[:k].pow(2).sum() / s.pow(2).sum().clamp_min(1e-30))


def topk_energy_curve(B: torch.Tensor, A: torch.Tensor, order: Optional[Sequence[int]] = None) -> List[float]:
    """Energy share of the first k experts of ``order`` (default: by expert norm), k = 1..r."""
    r = A.shape[0]
    if order is None:
        norms = B.norm(dim=0) * A.norm(dim=1)
        order = torch.argsort(norms, descending=True).tolist()
    return [subset_energy(B, A, order[:k]) for k in range(1, r + 1)]


# ------------------------------------------------------------------ routing
@dataclass
class RoutingProfile:
    """How often each expert of each pool is chosen, per domain.

    chosen[name]  (domains, rank): fraction of a domain's samples whose per-sample top-k
                  contains expert i (each row sums to top_k)
    active[name]  (domains, rank): fraction of the domain's batches whose voted active set
                  contains expert i
    """
    domains: List[str]
    chosen: Dict[str, torch.Tensor]
    active: Dict[str, torch.Tensor]

    def tower(self, tower: str) -> List[str]:
        return [n for n in self.chosen if PoolSet.tower_of(n) == tower]

    def specialisation(self, name: str) -> float:
        """Mean total-variation distance between domains' expert-choice distributions:
        0 when every domain picks the same experts, 1 when they share none."""
        P = self.chosen[name] / self.chosen[name].sum(1, keepdim=True).clamp_min(1e-12)
        D = P.shape[0]
        if D < 2:
            return 0.0
        tv = [0.5 * (P[i] - P[j]).abs().sum() for i in range(D) for j in range(i + 1, D)]
        return float(torch.stack(tv).mean())


@torch.no_grad()
def routing_profile(model, tokenizer, pools: PoolSet, benchmark: Benchmark, n_per_task: int = 64,
                    batch_size: int = 32, split: str = "test", device="cpu") -> RoutingProfile:
    """Route up to ``n_per_task`` images of each domain (and its class prompts, for the text
    tower) through the current pools in eval mode, and count the experts chosen.

    Expert indices belong to the pools as they are now: a fresh pool per task means index i
    of one task's pool has nothing to do with index i of another's (OFFLINE-WORLD.md).
    """
    was = model.training
    model.eval()
    r = next(iter(pools.values())).rank
    D = len(benchmark.tasks)
    chosen = {n: torch.zeros(D, r) for n in pools}
    active = {n: torch.zeros(D, r) for n in pools}
    n_batches = {n: torch.zeros(D) for n in pools}
    n_samples = {n: torch.zeros(D) for n in pools}

    def record(d: int, names):
        for n in names:
            rt = pools[n].last
            if rt is None:
                continue
            chosen[n][d] += torch.bincount(rt.chosen.reshape(-1).cpu(), minlength=r).float()
            n_samples[n][d] += rt.chosen.shape[0]
            if rt.active is not None:
                active[n][d, rt.active.cpu()] += 1
            else:
                active[n][d] += (rt.mask.sum(0) > 0).float().cpu()
            n_batches[n][d] += 1

    image_names = [n for n in pools if PoolSet.tower_of(n) == "image"]
    text_names = [n for n in pools if PoolSet.tower_of(n) == "text"]
    for d, task in enumerate(benchmark.tasks):
        ds = task.test if split == "test" else task.train
        seen = 0
        for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False):
            x = x[: n_per_task - seen]
            model.encode_image(x.to(device))
            record(d, image_names)
            seen += len(x)
            if seen >= n_per_task:
                break
        prompts = [t.format(c) for c in task.classnames for t in task.templates]
        for i in range(0, len(prompts), batch_size):
            model.encode_text(tokenizer(prompts[i:i + batch_size]).to(device))
            record(d, text_names)
    model.train(was)
    for n in pools:
        chosen[n] /= n_samples[n].clamp_min(1)[:, None]
        active[n] /= n_batches[n].clamp_min(1)[:, None]
    return RoutingProfile(benchmark.task_names, chosen, active)


def top_share(counts: torch.Tensor, m: int) -> float:
    """Share of all hits that went to the top-m experts (at most m/k of them under batch
    voting, where each forward adds k hits)."""
    c = counts.float()
    return float(c.topk(m).values.sum() / c.sum().clamp_min(1))


# ------------------------------------------------------------------ orthogonality
def task_blocks(pool: ExpertPoolLinear, per_task: Optional[int] = None) -> List[torch.Tensor]:
    """The past B columns of a pool, split per task (r columns each with ago_past="all",
    m with "merged")."""
    cols = pool.past_B
    if per_task is None:
        per_task = pool.rank if pool.cfg.ago_past == "all" else min(pool.merge_k, pool.rank)
    return [cols[:, i:i + per_task] for i in range(0, cols.shape[1], per_task)]


def merged_deltas(pool: ExpertPoolLinear) -> List[torch.Tensor]:
    """Delta W_t = s * B_T A_T of every merge so far, in task order."""
    m = min(pool.merge_k, pool.rank)
    out = []
    for i in range(0, pool.merged_B.shape[1], m):
        out.append(pool.scale * pool.merged_B[:, i:i + m] @ pool.merged_A[i:i + m])
    return out


def delta_overlap(pool: ExpertPoolLinear) -> torch.Tensor:
    """(T, T) |cosine| between the merged updates of every pair of tasks, in weight space:
    |<dW_t, dW_u>_F| / (||dW_t|| ||dW_u||). Off-diagonal cells near 0 mean the tasks wrote
    into separate directions of W0; near 1, they overwrote each other."""
    ds = merged_deltas(pool)
    if not ds:
        return torch.zeros(0, 0)
    V = F.normalize(torch.stack([d.reshape(-1) for d in ds]), dim=1)
    return (V @ V.T).abs()


def output_overlap(pool: ExpertPoolLinear) -> torch.Tensor:
    """(T, T) mean |cosine| between the merged B columns (output directions) of two tasks,
    the quantity AGO pushes to 0."""
    m = min(pool.merge_k, pool.rank)
    Bm = F.normalize(pool.merged_B, dim=0)
    T = Bm.shape[1] // m
    G = (Bm.T @ Bm).abs()
    out = torch.zeros(T, T)
    for i in range(T):
        for j in range(T):
            out[i, j] = G[i * m:(i + 1) * m, j * m:(j + 1) * m].mean()
    return out


def collision_rate(pools: PoolSet, threshold: float = 0.1, kind: str = "output") -> float:
    """Share of cross-task pairs of merged columns (``kind="output"``: B columns; or whole
    updates with ``"delta"``) whose |cosine| exceeds ``threshold``, over all pools: r1lab's
    stand-in for the paper's "parameter collision rate" (Fig. 5a)."""
    hits, total = 0, 0
    for pool in pools.values():
        m = min(pool.merge_k, pool.rank)
        if kind == "delta":
            G = delta_overlap(pool)
            T = G.shape[0]
            mask = ~torch.eye(T, dtype=torch.bool)
            hits += int((G[mask] > threshold).sum())
            total += int(mask.sum())
            continue
        Bm = F.normalize(pool.merged_B, dim=0)
        T = Bm.shape[1] // m
        task = torch.arange(T).repeat_interleave(m)
        G = (Bm.T @ Bm).abs()
        cross = task[:, None] < task[None, :]
        hits += int((G[cross] > threshold).sum())
        total += int(cross.sum())
    return hits / max(total, 1)
