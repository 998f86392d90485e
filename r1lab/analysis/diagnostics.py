"""Diagnostics the notebooks plot: what sparse experts can express, where the routers send
each domain, and how much different tasks' updates collide.

All functions take tensors or pools and return tensors / small dataclasses; none uses hooks
(pools record their last route in ``pool.last``). ``cmp`` checks the notebooks' exercises.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from r1lab.data.stream import Benchmark
from r1lab.pool import ExpertPoolLinear
from r1lab.poolset import PoolAddress, PoolSet


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
    scores[name]  (n, rank): the router scores p of every routed sample (images for the image
                  tower, class prompts for the text tower), with its domain and batch index;
                  ``at_k`` replays the choice for any other k from them
    """
    domains: List[str]
    chosen: Dict[str, torch.Tensor]
    active: Dict[str, torch.Tensor]
    # every routed sample, so other k can be replayed without the model (``at_k``):
    scores: Dict[str, torch.Tensor] = field(default_factory=dict)   # (n, rank) router scores p
    domain: Dict[str, torch.Tensor] = field(default_factory=dict)   # (n,) domain index
    batch: Dict[str, torch.Tensor] = field(default_factory=dict)    # (n,) batch index
    selection: str = "batch"                                        # the pools' selection switch

    def tower(self, tower: str) -> List[str]:
        return [n for n in self.chosen if PoolSet.tower_of(n) == tower]

    def at_k(self, name: str, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(chosen, active) of pool ``name`` as if its top-k were ``k``, replayed from the
        stored scores with the pool's own rules (docs/method.md sec. 4):

            E_n = TopK_k(p_n);  c_i = sum_n 1[i in E_n];  S = TopK_k(c) per batch

        ties broken toward the lower index, as ``ExpertPoolLinear.route`` does. With the
        pools' own k this reproduces ``chosen[name]`` and ``active[name]`` exactly."""
        p, dom, bat = self.scores[name], self.domain[name], self.batch[name]
        r, D = p.shape[1], len(self.domains)
        if not 1 <= k <= r:
            raise ValueError(f"k must be in 1..{r}, got {k}")
        per_sample = torch.zeros_like(p)
        per_sample.scatter_(1, p.topk(k, dim=-1).indices, 1.0)
        chosen, active = torch.zeros(D, r), torch.zeros(D, r)
        n_samples, n_batches = torch.zeros(D), torch.zeros(D)
        for b in bat.unique():
            rows = bat == b
            d = int(dom[rows][0])
            hits = per_sample[rows].sum(0).round().long()
            chosen[d] += hits.float()
            n_samples[d] += int(rows.sum())
            if self.selection == "batch":
                active[d, torch.argsort(hits, descending=True, stable=True)[:k]] += 1
            else:
                active[d] += (hits > 0).float()
            n_batches[d] += 1
        return chosen / n_samples.clamp_min(1)[:, None], active / n_batches.clamp_min(1)[:, None]

    def specialisation_table(self) -> str:
        """``specialisation`` of every pool as a text table: one row per tower and block,
        one column per adapted linear (q, k, v, o, c_fc, c_proj)."""
        targets = self.targets()
        out = [f"{'tower':<7}{'block':>6}" + "".join(f"{t:>8}" for t in targets)]
        for tower in ("image", "text"):
            for b in self.blocks(tower):
                cells = []
                for t in targets:
                    n = self.find(tower, b, t)
                    cells.append(f"{self.specialisation(n):>8.2f}" if n else f"{'-':>8}")
                out.append(f"{tower:<7}{b:>6}" + "".join(cells))
        return "\n".join(out)

    def blocks(self, tower: str) -> List[int]:
        """The block indices profiled in ``tower``."""
        return sorted({PoolAddress.of(n).block for n in self.tower(tower)})

    def targets(self) -> List[str]:
        """The adapted linears profiled (q, k, v, o, c_fc, c_proj), in pool order."""
        return list(dict.fromkeys(PoolAddress.of(n).target for n in self.chosen))

    def find(self, tower: str, block: int, target: str) -> Optional[str]:
        """The profiled pool at (tower, block, target), or None."""
        return next((n for n in self.chosen if PoolAddress.of(n) == (tower, block, target)), None)

    def specialisation(self, name: str) -> float:
        """``specialisation`` of the expert choices of the pool ``name``."""
        return specialisation(self.chosen[name])


def specialisation(freq: torch.Tensor) -> float:
    """Mean total-variation distance between domains' expert-choice distributions (rows of
    ``freq``): 0 when every domain picks the same experts, 1 when they share none."""
    P = freq / freq.sum(1, keepdim=True).clamp_min(1e-12)
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
    of one task's pool has nothing to do with index i of another's (docs/world.md).
    """
    was = model.training
    model.eval()
    r = next(iter(pools.values())).rank
    D = len(benchmark.tasks)
    chosen = {n: torch.zeros(D, r) for n in pools}
    active = {n: torch.zeros(D, r) for n in pools}
    n_batches = {n: torch.zeros(D) for n in pools}
    n_samples = {n: torch.zeros(D) for n in pools}
    scores = {n: [] for n in pools}
    sample_domain = {n: [] for n in pools}
    sample_batch = {n: [] for n in pools}

    def record(d: int, names):
        for n in names:
            rt = pools[n].last
            if rt is None:
                continue
            scores[n].append(rt.scores.detach().float().cpu())
            sample_domain[n].append(torch.full((rt.scores.shape[0],), d, dtype=torch.long))
            sample_batch[n].append(torch.full((rt.scores.shape[0],), len(scores[n]) - 1, dtype=torch.long))
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
    cat = lambda d: {n: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for n, v in d.items()}
    return RoutingProfile(benchmark.task_names, chosen, active, cat(scores), cat(sample_domain),
                          cat(sample_batch), pools.cfg.selection)


def counts_by_task(counts: Sequence[Dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    """(T, rank) share of each task's hits that went to each expert of pool ``name``, from
    ``RunResult.counts`` (rows sum to 1). Row t belongs to task t's own fresh pool: expert i
    of one row and expert i of another are unrelated (a new A, B and router every task)."""
    rows = [c[name].float() for c in counts if name in c]
    if len(rows) != len(counts):
        raise KeyError(f"pool {name!r} has no counts for some task (a zero-shot run has none)")
    C = torch.stack(rows)
    return C / C.sum(1, keepdim=True).clamp_min(1)


def top_shares(counts: Sequence[Dict[str, torch.Tensor]], m: int) -> Dict[str, List[float]]:
    """{tower: [mean over the tower's pools of ``top_share(counts, m)`` for each task]}: how
    much of a task's routing went to the m experts that get merged (m/k at most)."""
    out: Dict[str, List[float]] = {}
    for tower in ("image", "text"):
        per_task = []
        for c in counts:
            shares = [top_share(v, m) for n, v in c.items() if PoolSet.tower_of(n) == tower]
            if shares:
                per_task.append(sum(shares) / len(shares))
        if per_task:
            out[tower] = per_task
    return out


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


def mean_overlap(pools: PoolSet, kind: str = "output") -> torch.Tensor:
    """(T, T) task-overlap matrix averaged over pools (04_ago_orthogonality): the mean of
    ``output_overlap`` (merged B columns, what AGO constrains; ``kind="output"``) or of
    ``delta_overlap`` (whole merged updates s B_T A_T; ``kind="delta"``) over every pool.
    Row and column t belong to the t-th merge; a model with no merges gives a (0, 0) matrix."""
    fns = {"output": output_overlap, "delta": delta_overlap}
    if kind not in fns:
        raise ValueError(f"kind must be 'output' or 'delta', got {kind!r}")
    mats = [fns[kind](pool) for pool in pools.values()]
    if not mats:
        raise ValueError("mean_overlap needs at least one pool")
    return torch.stack(mats).mean(0)


def merged_norms(pools: PoolSet) -> torch.Tensor:
    """(T,) size of each task's merged update, ||Delta W_t||_F = ||s B_T A_T||_F, averaged over
    the pools (04_ago_orthogonality). AGO's |b_i^T p_j| shrinks when the merged columns shrink,
    so besides turning them it can also make them small: this shows how much each task wrote."""
    rows = [torch.stack([d.norm() for d in merged_deltas(pool)]) for pool in pools.values()
            if pool.merged_B.shape[1]]
    if not rows:
        return torch.zeros(0)
    return torch.stack(rows).mean(0)


@torch.no_grad()
def confusion(model, tokenizer, task, device="cpu", batch_size: int = 256) -> torch.Tensor:
    """(C, C) zero-shot confusion counts of one task's test set: row = true class, column =
    predicted class, with the template-averaged head of ``evaluate.zeroshot_head``. Its trace
    over its sum is the task's top-1 accuracy; an accuracy far *below* chance shows up as a
    near-empty diagonal with the mass in a few columns (a systematic confusion)."""
    from r1lab.engine.evaluate import encode_images, zeroshot_head
    head = zeroshot_head(model, tokenizer, task.classnames, task.templates, device, batch_size)
    feats, labels = encode_images(model, task.test, device, batch_size)
    pred = (feats @ head.to(feats.device).T).argmax(-1).cpu()
    C = task.num_classes
    return torch.bincount(labels.cpu() * C + pred, minlength=C * C).view(C, C)
