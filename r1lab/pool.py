"""The rank-1 expert pool: one LoRA on one frozen linear, read as r rank-1 experts.

Decomposition (docs/method.md sec. 1). With B in R^{d_out x r} and A in R^{r x d_in},

    B A = sum_{i=1..r} b_i a_i^T,      b_i = B[:, i],  a_i^T = A[i, :]

so expert i is the rank-1 matrix b_i a_i^T. A fresh pool is made for every task.

Training forward (sec. 3-5), for a batch x of shape (N, L, d_in):

    x~      = dropout(x)                          # LoRA branch only
    p       = softmax(R x~[:, 0])                 # router on token 0 ([CLS] / start-of-text)
    E_n     = TopK_k(p_n)                         # per-sample choice
    c_i     = sum_n 1[i in E_n]                   # per-sample hits (the vote); a batch split
                                                  # over processes sums them over every slice
    S       = TopK_k(c)                           # one set of k experts for the batch
    y       = W0 x + b + s * B[:, S] A[S, :] x~   # hard 0/1 mask, experts not weighted by p
    counts += c                                   # training only

Because nothing in y depends on p, the router gets no gradient and stays a fixed random
projection ("frozen", the authors' code). ``router="gate"`` or ``"ste"`` make it learnable.

End of task (sec. 6): T = TopK_m(counts); W0 <- W0 + s * B[:, T] A[T, :]; then a fresh pool.

Ties (sec. 13.2): when the k-th and (k+1)-th hits (or the m-th and (m+1)-th counts) are equal,
``cfg.tie_rule`` decides: "lower" (the lower index wins; deterministic on every device),
"topk" (whatever order ``torch.topk`` returns, the call of the authors' code; not specified by
torch) or "random" (uniform among the tied, from the global torch RNG, which the engine seeds).

Variants beyond the paper (sec. 13.3), both off by default:
    consolidation   ``consolidate()`` fixes S = T = TopK_m(counts so far): until the task ends
                    only those m experts are composed and trained, the vote stops, and exactly
                    they are merged (what is merged is what was trained last)
    SVD merge       ``merge_rule="svd"``: fold the best rank-m approximation of the whole
                    update, U_m S_m V_m^T of s B A (Eckart-Young), instead of the top-m
                    experts; AGO keeps U_m as this task's past columns
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .config import DACConfig


@dataclass
class Route:
    """What one forward pass of a pool chose; read by diagnostics, no hooks needed.

    scores:   (N, r) softmax router scores p
    chosen:   (N, k) per-sample top-k expert indices E_n
    hits:     (r,)   per-sample hits c (the batch vote)
    active:   (k,)   the batch's active set S (selection="batch"), else None
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


def top_indices(values: torch.Tensor, n: int, rule: str = "lower") -> torch.Tensor:
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
        order = distributed.agree(order)   # data-parallel: rank 0's draw on every rank
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


class RouteToken:
    """Which token a tower's routers read. ``index=None`` means token 0 ([CLS] or
    start-of-text); otherwise a (N,) tensor of positions (the end-of-text token)."""

    def __init__(self):
        self.index: Optional[torch.Tensor] = None


class BranchDropout(nn.Module):
    """Inverted dropout on the LoRA branch input, drop(x) = x * 1[u >= p] / (1 - p) with
    u ~ U(0, 1) per element (training only; identity in eval mode).

    The same distribution as ``nn.Dropout(p)``; the mask comes from ``torch.rand_like``, which
    on the CPU is about twice as fast as ``nn.Dropout``'s Bernoulli sampling, and dropout of
    the 48-288 pool inputs was the largest single cost of a training step on the tiny CLIP
    (measured: a 20-step task 2.75 s -> 2.27 s on 2 CPU threads)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ExpertPoolLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a pool of ``rank`` rank-1 experts and their router.

    Attributes read by notebooks and diagnostics:
        base     the frozen linear (W0, b); merged experts are folded into it
        A        (rank, d_in)  expert input directions a_i^T
        B        (d_out, rank) expert output directions b_i (zero at the start of a task)
        router   linear d_in -> rank with bias
        counts   (rank,) per-sample hits accumulated over this task's training forwards
        last     the ``Route`` of the latest forward (None before any, or when disabled)
        past_B   (d_out, P) B columns of earlier tasks, the constants of the AGO loss
        merged_A, merged_B  factors of every merge so far, in order: replaying them onto the
                 original W0 reproduces the merged weight exactly (small checkpoints)
    """

    def __init__(self, base: nn.Linear, cfg: DACConfig, route_token: Optional[RouteToken] = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"ExpertPoolLinear wraps an nn.Linear, got {type(base).__name__}")
        self.cfg = cfg
        self.rank, self.top_k, self.merge_k = cfg.rank, cfg.top_k, cfg.merge_k
        self.scale = cfg.scale
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        d_out, d_in = base.weight.shape
        dev, dt = base.weight.device, base.weight.dtype
        self.A = nn.Parameter(torch.empty(self.rank, d_in, device=dev, dtype=dt))
        self.B = nn.Parameter(torch.zeros(d_out, self.rank, device=dev, dtype=dt))
        self.router = nn.Linear(d_in, self.rank, bias=True, device=dev, dtype=dt)
        self.drop = BranchDropout(cfg.dropout)
        self.route_token = route_token
        self.register_buffer("counts", torch.zeros(self.rank, dtype=torch.long, device=dev))
        self.register_buffer("past_B", torch.zeros(d_out, 0, device=dev, dtype=dt))
        self.register_buffer("merged_A", torch.zeros(0, d_in, device=dev, dtype=dt))
        self.register_buffer("merged_B", torch.zeros(d_out, 0, device=dev, dtype=dt))
        self.enabled = True   # False: forward is the base linear only
        self.last: Optional[Route] = None
        self.fixed: Optional[torch.Tensor] = None   # consolidation: the only active experts
        self._held = None
        self.reset()

    # ------------------------------------------------------------------ pool life cycle
    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    # open_clip reads ``block.mlp.c_fc.weight.dtype`` in ``Transformer.get_cast_dtype()``
    # (every ``encode_text`` call), so a pool must expose the frozen linear's tensors.
    @property
    def weight(self) -> torch.Tensor:
        """W0 of the frozen base linear (with every merge so far folded in)."""
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    @torch.no_grad()
    def reset(self) -> None:
        """A fresh pool (docs/method.md sec. 2): A Kaiming-uniform(a=sqrt 5), B = 0 so that
        Delta W = B A = 0 and the adapted layer equals the base layer, a new random router,
        zero counts. Uses the global torch RNG: seed before calling for reproducibility."""
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B.zero_()
        self.router.reset_parameters()
        self.router.requires_grad_(self.cfg.router != "frozen")
        self.counts.zero_()
        self.last = None
        self.fixed = None
        self._held = None

    def delta_weight(self, experts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Delta W = s * B[:, E] A[E, :] (all experts when ``experts`` is None)."""
        if experts is None:
            return self.scale * (self.B @ self.A)
        experts = torch.as_tensor(experts, device=self.A.device, dtype=torch.long)
        return self.scale * (self.B[:, experts] @ self.A[experts, :])

    def expert(self, i: int) -> torch.Tensor:
        """The rank-1 matrix s * b_i a_i^T of expert i."""
        return self.scale * torch.outer(self.B[:, i], self.A[i])

    def critical(self, m: Optional[int] = None) -> torch.Tensor:
        """T = TopK_m(counts): this task's most used experts (sorted by index; ties by
        ``cfg.tie_rule``). During consolidation: the fixed set."""
        if self.fixed is not None and m is None:
            return self.fixed
        m = self.merge_k if m is None else m
        return top_indices(self.counts, m, self.cfg.tie_rule)

    @torch.no_grad()
    def consolidate(self) -> torch.Tensor:
        """Start consolidation: from now until ``end_task`` only T = TopK_m(counts so far) is
        composed (in training and evaluation), trained and finally merged; counts stop.
        Returns T."""
        self.fixed = top_indices(self.counts, self.merge_k, self.cfg.tie_rule)
        self._held = (self.A.detach().clone(), self.B.detach().clone())
        return self.fixed

    @torch.no_grad()
    def hold_others(self) -> None:
        """During consolidation, put every expert outside the fixed set back where it was when
        consolidation started (called after each optimiser step: AdamW's momentum and weight
        decay would otherwise keep moving them), so that only the fixed experts train."""
        if self.fixed is None:
            return
        A0, B0 = self._held
        keep = torch.ones(self.rank, dtype=torch.bool, device=self.A.device)
        keep[self.fixed] = False
        self.A[keep] = A0[keep]
        self.B[:, keep] = B0[:, keep]

    @torch.no_grad()
    def truncated_update(self, m: Optional[int] = None):
        """Factors (B_m, A_m) of the best rank-m approximation of the update B A (Eckart-Young),
        with s * B_m A_m = U_m S_m V_m^T of s B A, and U_m: B_m = U_m S_m, A_m = V_m^T."""
        m = min(self.merge_k if m is None else m, self.rank)
        U, S, Vh = torch.linalg.svd(self.B.double() @ self.A.double(), full_matrices=False)
        dt = self.B.dtype
        return (U[:, :m] * S[:m]).to(dt), Vh[:m].to(dt), U[:, :m].to(dt)

    @torch.no_grad()
    def end_task(self) -> torch.Tensor:
        """Merge into W0, keep what AGO needs, start a fresh pool.

        "topm" (docs/method.md sec. 6):  W0 <- W0 + s * B[:, T] A[T, :],  T = TopK_m(counts)
            AGO's past columns: all r columns of B ("all", code) or B[:, T] ("merged", paper).
        "svd" (sec. 13.3):  W0 <- W0 + s * B_m A_m, the rank-m truncation of the whole update;
            AGO's past columns: its left singular vectors U_m.
        Returns T = TopK_m(counts) (for "svd": the experts that were used most, for the record;
        the folded update mixes every trained expert).
        """
        T = self.critical()
        if self.cfg.merge_rule == "svd":
            B_T, A_T, keep = self.truncated_update()
        else:
            B_T, A_T = self.B[:, T].clone(), self.A[T, :].clone()
            keep = self.B.detach().clone() if self.cfg.ago_past == "all" else B_T
        self._fold(B_T, A_T)
        self.merged_B = torch.cat([self.merged_B, B_T], dim=1)
        self.merged_A = torch.cat([self.merged_A, A_T], dim=0)
        self.past_B = torch.cat([self.past_B, keep], dim=1)
        self.reset()
        return T

    @torch.no_grad()
    def _fold(self, B_T: torch.Tensor, A_T: torch.Tensor) -> None:
        self.base.weight.add_(self.scale * (B_T @ A_T))

    # ------------------------------------------------------------------ adapter state
    def adapter_state(self) -> dict:
        """Everything but the frozen base weights: small enough to checkpoint every task."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith("base.")}

    @torch.no_grad()
    def load_adapter_state(self, state: dict, replay_merges: bool = True) -> None:
        """Load ``adapter_state()``. With ``replay_merges`` the stored merge factors are
        folded into the (original, unmerged) base weight in order, which reproduces the
        merged W0 bit for bit."""
        for name in ("past_B", "merged_A", "merged_B"):
            setattr(self, name, state[name].to(self.A.device, self.A.dtype).clone())
        own = {k: v for k, v in state.items() if k not in ("past_B", "merged_A", "merged_B")}
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith("base.")
                   and k not in ("past_B", "merged_A", "merged_B")]
        if missing or unexpected:
            raise KeyError(f"adapter state mismatch: missing {missing}, unexpected {unexpected}")
        if replay_merges:
            start = 0
            # every merge has merge_k columns, except merge_k >= rank which merges all r
            m = min(self.merge_k, self.rank)
            while start < self.merged_B.shape[1]:
                self._fold(self.merged_B[:, start:start + m], self.merged_A[start:start + m])
                start += m

    # ------------------------------------------------------------------ routing
    def route(self, h: torch.Tensor) -> Route:
        """Sec. 3-4: scores, per-sample top-k, batch vote, mask. h: (N, d_in) routing token."""
        N, r, k = h.shape[0], self.rank, self.top_k
        if self.fixed is not None:   # consolidation: the merged set only, no vote, no counts
            mask = torch.zeros(r, device=h.device, dtype=h.dtype)
            mask[self.fixed] = 1.0
            mask = mask.expand(N, r)
            scores = (torch.softmax(self.router(h), dim=-1) if self.cfg.router != "frozen"
                      else mask / len(self.fixed))
            return Route(scores=scores, chosen=self.fixed.expand(N, -1),
                         hits=torch.zeros(r, device=h.device, dtype=torch.long),
                         active=self.fixed, mask=mask)
        if k == r:  # plain LoRA: every expert active, nothing to choose
            ones = torch.ones(N, r, device=h.device, dtype=h.dtype)
            chosen = torch.arange(r, device=h.device).expand(N, r)
            hits = distributed.vote(torch.full((r,), N, device=h.device, dtype=torch.long))
            return Route(scores=ones / r, chosen=chosen, hits=hits,
                         active=torch.arange(r, device=h.device), mask=ones)
        scores = torch.softmax(self.router(h), dim=-1)                     # (N, r)
        chosen = scores.topk(k, dim=-1).indices                             # (N, k)
        per_sample = torch.zeros(N, r, device=h.device, dtype=h.dtype)
        per_sample.scatter_(1, chosen, 1.0)
        hits = per_sample.sum(0).round().long()                             # (r,)
        hits = distributed.vote(hits)   # the whole batch's hits when it is split over processes
        if self.cfg.selection == "batch":
            # one set for the batch; ties at the k-th place broken by cfg.tie_rule
            active = top_indices(hits, k, self.cfg.tie_rule)
            mask = torch.zeros(r, device=h.device, dtype=h.dtype)
            mask[active] = 1.0
            mask = mask.expand(N, r)
        else:
            active, mask = None, per_sample
        return Route(scores=scores, chosen=chosen, hits=hits, active=active, mask=mask)

    def _routing_token(self, x: torch.Tensor) -> torch.Tensor:
        idx = None if self.route_token is None else self.route_token.index
        if idx is None or x.dim() == 2:
            return x[:, 0] if x.dim() == 3 else x
        return x[torch.arange(x.shape[0], device=x.device), idx.to(x.device)]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            self.last = None
            return y
        xd = self.drop(x)
        dense = self.top_k == self.rank and self.fixed is None
        rt = self.route(self._routing_token(xd))
        self.last = rt.detach()
        if self.training:
            with torch.no_grad():
                self.counts += rt.hits
        if dense:
            return y + self.scale * F.linear(F.linear(xd, self.A), self.B)
        if rt.active is not None and self.cfg.router == "frozen":
            S = rt.active   # gather only the k active experts: gradient reaches only them
            return y + self.scale * F.linear(F.linear(xd, self.A[S]), self.B[:, S])
        w = self._expert_weights(rt)                                        # (N, r)
        z = F.linear(xd, self.A)                                            # (N, L, r)
        z = z * (w.unsqueeze(1) if z.dim() == 3 else w)
        return y + self.scale * F.linear(z, self.B)

    def _expert_weights(self, rt: Route) -> torch.Tensor:
        """Per-sample expert weights: the hard mask, or a learnable variant of it."""
        if self.cfg.router == "frozen":
            return rt.mask
        if self.cfg.router == "ste":
            # straight-through: forward value is the hard mask, gradient reaches p
            return rt.mask + rt.scores - rt.scores.detach()
        # "gate": renormalised gate over the active experts, mean weight 1 on the active set
        g = rt.mask * rt.scores
        return g / g.sum(-1, keepdim=True).clamp_min(1e-12) * rt.mask.sum(-1, keepdim=True)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
                f"top_k={self.top_k}, merge_k={self.merge_k}, s={self.scale:.4g}, "
                f"router={self.cfg.router}, past_cols={self.past_B.shape[1]}")
