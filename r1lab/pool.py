"""The rank-1 expert pool: one LoRA on one frozen linear, read as r rank-1 experts.

This file is the paper's layer and nothing else (docs/method.md sec. 1-7); its variants are
subclasses in ``r1lab/methods/`` (docs/architecture.md).

Decomposition (sec. 1). With B in R^{d_out x r} and A in R^{r x d_in},

    B A = sum_{i=1..r} b_i a_i^T,      b_i = B[:, i],  a_i^T = A[i, :]

so expert i is the rank-1 matrix b_i a_i^T. A fresh pool is made for every task (``reset``).

                 x ──────────────► W0 x + b ─────────────┐
                 │                                        (+)──► y
                 └─ dropout ─► x~ ─► A[S] ─► B[:, S] ─► s ┘
                                │
                  x~[:, 0] ─► router R ─► softmax ─► per-sample top-k ─► vote ─► S

Training forward (sec. 3-5), for a batch x of shape (N, L, d_in):

    x~      = dropout(x)                          # LoRA branch only
    p       = softmax(R x~[:, 0])                 # router on token 0 ([CLS] / start-of-text)
    E_n     = TopK_k(p_n)                         # per-sample choice
    c_i     = sum_n 1[i in E_n]                   # per-sample hits: the vote
    S       = TopK_k(c)                           # one set of k experts for the whole batch
    y       = W0 x + b + s * B[:, S] A[S, :] x~   # hard 0/1 mask: experts are not weighted by p
    counts += c                                   # training only

Nothing in y depends on p, so the router gets no gradient: it stays the fixed random
projection it was initialised to (the authors' code).

End of task (sec. 6):  T = TopK_m(counts);  W0 <- W0 + s * B[:, T] A[T, :];  a fresh pool.
AGO (sec. 7, ``ago.py``) reads ``critical()`` (T so far) and ``past_B``, the B columns of earlier
tasks that ``end_task`` keeps: all r of them ("all", the code) or B[:, T] ("merged", the paper).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1lab.config import DACConfig
from r1lab.routing import LOCAL, Route, RouteToken, top_indices


# the switches of DAC's variant layers at the paper's values (docs/method.md sec. 12-13): a
# layer that implements none of the variants refuses any other value
PAPER_SWITCHES = (("router", "frozen"), ("selection", "batch"), ("merge_rule", "topm"), ("consolidate", 0.0))


class BranchDropout(nn.Module):
    """Inverted dropout on the LoRA branch input, drop(x) = x * 1[u >= p] / (1 - p) with
    u ~ U(0, 1) per element (training only).

    The same distribution as ``nn.Dropout(p)``; ``torch.rand_like`` is about twice as fast on
    the CPU as ``nn.Dropout``'s Bernoulli sampling, and dropout was the largest single cost of
    a training step on the tiny CLIP (a 20-step task: 2.75 s -> 2.27 s on 2 CPU threads)."""

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
        router   linear d_in -> rank with bias (frozen)
        counts   (rank,) per-sample hits accumulated over this task's training forwards
        last     the ``Route`` of the latest forward (None before any, or when disabled)
        past_B   (d_out, P) B columns of earlier tasks, the constants of the AGO loss
        merged_A, merged_B  factors of every merge so far, in order: replaying them onto the
                 original W0 reproduces the merged weight exactly (small checkpoints)
        collective  how the vote is combined over processes (``routing.Collective``)
    """

    def __init__(self, base: nn.Linear, cfg: DACConfig, route_token: Optional[RouteToken] = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps an nn.Linear, got {type(base).__name__}")
        self.check_config(cfg)
        self.cfg = cfg
        self.rank, self.top_k, self.merge_k = cfg.rank, cfg.top_k, cfg.merge_k
        self.scale = cfg.scale                                              # s = alpha / r
        self.base = base.requires_grad_(False)
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
        self.collective = LOCAL
        self.reset()

    mergeable = True   # what a task learns is folded into W0 (False: the layer stays, LoRAMoE)

    @classmethod
    def check_config(cls, cfg: DACConfig) -> None:
        """The paper's layer has a frozen router and one vote per batch; a configuration that
        asks for a variant names the layer that implements it."""
        for name, value in PAPER_SWITCHES:
            if cls is ExpertPoolLinear and getattr(cfg, name) != value:
                raise ValueError(f"ExpertPoolLinear is the paper's layer ({name}={value!r}); "
                                 f"{name}={getattr(cfg, name)!r} is a variant: build the pool with "
                                 f"r1lab.make_pool(linear, cfg), which picks its layer")

    # open_clip reads ``block.mlp.c_fc.weight.dtype`` (every ``encode_text`` call), so a pool
    # exposes the frozen linear's tensors.
    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)
    weight = property(lambda self: self.base.weight, doc="W0 (every merge so far folded in)")
    bias = property(lambda self: self.base.bias)

    # ------------------------------------------------------------------ a task's life cycle
    @torch.no_grad()
    def reset(self) -> None:
        """A fresh pool (sec. 2): A Kaiming-uniform with a = sqrt(5) (PyTorch's default for a
        linear layer's weight: uniform in +-1/sqrt(d_in)), B = 0 so that Delta W = B A = 0 and
        the layer equals its base, a new random router (frozen), zero counts. Uses the global
        torch RNG: seed before calling for reproducibility."""
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B.zero_()
        self.router.reset_parameters()
        self.router.requires_grad_(False)
        self.counts.zero_()
        self.last = None

    def critical(self, m: Optional[int] = None) -> torch.Tensor:
        """T = TopK_m(counts): this task's most used experts so far (sorted by index)."""
        m = self.merge_k if m is None else m
        return top_indices(self.counts, m, self.cfg.tie_rule, self.collective)

    @torch.no_grad()
    def end_task(self) -> torch.Tensor:
        """Sec. 6: W0 <- W0 + s * B[:, T] A[T, :] with T = TopK_m(counts); keep AGO's past
        columns (all r columns of B, or B[:, T]); a fresh pool. Returns T."""
        T = self.critical()
        B_T, A_T = self.B[:, T].clone(), self.A[T, :].clone()
        keep = self.B.detach().clone() if self.cfg.ago_past == "all" else B_T
        self.merge(B_T, A_T, keep)
        return T

    @torch.no_grad()
    def merge(self, B_T: torch.Tensor, A_T: torch.Tensor, keep: torch.Tensor) -> None:
        """Fold s * B_T A_T into W0, record the factors, add ``keep`` to AGO's past columns,
        start a fresh pool."""
        self.fold(B_T, A_T)
        self.merged_B = torch.cat([self.merged_B, B_T], dim=1)
        self.merged_A = torch.cat([self.merged_A, A_T], dim=0)
        self.past_B = torch.cat([self.past_B, keep], dim=1)
        self.reset()

    @torch.no_grad()
    def fold(self, B_T: torch.Tensor, A_T: torch.Tensor) -> None:
        self.base.weight.add_(self.scale * (B_T @ A_T))

    def delta_weight(self, experts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Delta W = s * B[:, E] A[E, :] (all experts when ``experts`` is None)."""
        if experts is None:
            return self.scale * (self.B @ self.A)
        experts = torch.as_tensor(experts, device=self.A.device, dtype=torch.long)
        return self.scale * (self.B[:, experts] @ self.A[experts, :])

    def expert(self, i: int) -> torch.Tensor:
        """The rank-1 matrix s * b_i a_i^T of expert i."""
        return self.scale * torch.outer(self.B[:, i], self.A[i])

    # ------------------------------------------------------------------ routing (sec. 3-4)
    def vote(self, h: torch.Tensor):
        """Scores p, per-sample choices E_n, their 0/1 matrix and the hits c, for the (N, d_in)
        routing tokens h. A batch split over processes sums its hits over every slice."""
        N, r = h.shape[0], self.rank
        scores = torch.softmax(self.router(h), dim=-1)                     # (N, r)
        chosen = scores.topk(self.top_k, dim=-1).indices                    # (N, k)
        per_sample = torch.zeros(N, r, device=h.device, dtype=h.dtype).scatter_(1, chosen, 1.0)
        hits = self.collective.vote(per_sample.sum(0).round().long())       # (r,)
        return scores, chosen, per_sample, hits

    def route(self, h: torch.Tensor) -> Route:
        """S = TopK_k(c): one active set for the batch (ties by ``cfg.tie_rule``)."""
        scores, chosen, _, hits = self.vote(h)
        active = top_indices(hits, self.top_k, self.cfg.tie_rule, self.collective)
        mask = torch.zeros(self.rank, device=h.device, dtype=h.dtype)
        mask[active] = 1.0
        return Route(scores=scores, chosen=chosen, hits=hits, active=active,
                     mask=mask.expand(h.shape[0], self.rank))

    def routing_token(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_in): token 0 of each sequence, or the tower's ``route_token`` positions."""
        idx = None if self.route_token is None else self.route_token.index
        if idx is None or x.dim() == 2:
            return x[:, 0] if x.dim() == 3 else x
        return x[torch.arange(x.shape[0], device=x.device), idx.to(x.device)]

    # ------------------------------------------------------------------ forward (sec. 5)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)                                                    # W0 x + b
        if not self.enabled:
            self.last = None
            return y
        xd = self.drop(x)
        route = self.route(self.routing_token(xd))
        self.last = route.detach()
        if self.training:
            with torch.no_grad():
                self.counts += route.hits
        return y + self.compose(xd, route)

    def compose(self, xd: torch.Tensor, route: Route) -> torch.Tensor:
        """s * B[:, S] A[S, :] x~: only the k active experts are gathered, so only they get a
        gradient."""
        S = route.active
        return self.scale * F.linear(F.linear(xd, self.A[S]), self.B[:, S])

    # ------------------------------------------------------------------ checkpoints
    def adapter_state(self) -> dict:
        """Everything but the frozen base weights: small enough to checkpoint every task."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith("base.")}

    @torch.no_grad()
    def load_adapter_state(self, state: dict, replay_merges: bool = True) -> None:
        """Load ``adapter_state()``. With ``replay_merges`` the stored merge factors are folded
        into the (original, unmerged) base weight in order, which reproduces the merged W0 bit
        for bit."""
        grown = ("past_B", "merged_A", "merged_B")        # buffers whose size grows per task
        for name in grown:
            setattr(self, name, state[name].to(self.A.device, self.A.dtype).clone())
        own = {k: v for k, v in state.items() if k not in grown}
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith("base.") and k not in grown]
        if missing or unexpected:
            raise KeyError(f"adapter state mismatch: missing {missing}, unexpected {unexpected}")
        if replay_merges:
            m = min(self.merge_k, self.rank)    # every merge folds m columns (all r when m >= r)
            for start in range(0, self.merged_B.shape[1], m):
                self.fold(self.merged_B[:, start:start + m], self.merged_A[start:start + m])

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
                f"top_k={self.top_k}, merge_k={self.merge_k}, s={self.scale:.4g}, "
                f"past_cols={self.past_B.shape[1]}")
