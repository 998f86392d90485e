"""SD-LoRA (Wu, Piao, Huang, Wang, Li, Pfister, Meng, Ma and Wei, "SD-LoRA: Scalable Decoupled
Low-Rank Adaptation for Class Incremental Learning", ICLR 2025, arXiv 2501.13198), on r1lab's
layer.

The update of every task is split into a magnitude and a direction. The direction of task i is
a LoRA normalised to unit Frobenius norm and fixed once task i ends; its magnitude keeps
learning in every later task; task t learns a new direction and its magnitude:

    D_i = B_i A_i / ||B_i A_i||_F                       (||D_i||_F = 1, fixed after task i)
    W_t = W_orig + alpha * ( sum_{i<t} m_i D_i + m_t B_t A_t / ||B_t A_t||_F )
    trained in task t: A_t, B_t, m_t and every earlier magnitude m_i

(the paper's magnitude of direction i is alpha * m_i). r1lab's engine folds every task into
CLIP's weight and evaluates the merged weight alone, so the layer trains, per earlier direction,
the change delta_i of its magnitude in this task (from 0), and folds it in at the end:

    y       = W0 x + b + alpha * ( sum_{i<t} delta_i D_i x~ + m_t B_t A_t x~ / ||B_t A_t||_F )
    W0     <- W0 + alpha * ( sum_{i<t} delta_i D_i + m_t D_t )        at the end of task t
    m_i(t)  = m_i(t-1) + delta_i

with W0 the merged weight at the start of task t, so after task t it is
W_orig + alpha * sum_{i<=t} m_i(t) D_i, SD-LoRA's weight. D_i is kept as its factors,
B_i / ||B_i A_i||_F and A_i (buffers ``dir_B`` (d_out, r t), ``dir_A`` (r t, d_in)); no
d_out x d_in matrix is formed in the forward: ||B A||_F^2 = sum((B^T B) * (A A^T)) comes from
two r x r Gram matrices and sum_i delta_i D_i x~ = dir_B (delta_rep * (dir_A x~)).

The merge record grows linearly: ``merged_B`` / ``merged_A`` hold r columns per task,
(m_t B_t / ||B_t A_t||_F, A_t), and ``delta_record`` the t - 1 scalars delta_i of task t; the
replay folds, task by task, (delta_i D_i factors) for i < t and then the task's own columns,
the same products in the same order as ``end_task``: a checkpoint replayed on the original
weights gives the merged weight bit for bit. ``past_B`` stays empty (no AGO).

Choices the paper leaves to us (docs/method.md sec. 14):
    * initialisation: m_t = 0, delta_i = 0, A Kaiming-uniform as in every fresh pool and B
      Kaiming-uniform too (U(+-1/sqrt(r)), PyTorch's default for a linear r -> d_out). The layer
      equals its base at the start of a task and the direction is defined from the first step.
      LoRA's start B = 0 leaves B A / ||B A||_F undefined; clamping the norm below by an eps
      would make B's first gradient about 1/eps times the later ones, which fills AdamW's second
      moment and holds B still for ~1/(1 - beta_2) steps.
    * the unit of the magnitudes is ``cfg.alpha``, not s = alpha / r: the 1/r of LoRA's s keeps
      B A (a sum of r rank-1 terms) at a scale independent of r, and D_i has unit norm whatever
      r is. The layer's ``scale`` is therefore alpha (fold and diagnostics read it); with the
      default alpha = 1 the magnitudes are the paper's alpha_i.
    * AdamW's weight decay applies to every trained tensor (one optimiser group, train.py):
      A, B, m_t and delta_i. On delta_i it pulls the change of magnitude in this task towards 0,
      not the magnitude itself (lr * weight_decay = 2e-5 per step at the defaults).
    * the whole branch, earlier directions included, reads the dropped-out input x~.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from r1lab.attach import attach_pools
from r1lab.config import DACConfig
from r1lab.errors import ConfigError
from r1lab.methods.lora import DensePool, LoRA
from r1lab.methods.registry import register
from r1lab.pool import PAPER_SWITCHES
from r1lab.poolset import PoolSet
from r1lab.routing import Route


class SDLoRAPool(DensePool):
    """Plain LoRA whose update is magnitude x unit direction, with the directions of earlier tasks
    kept fixed and their magnitudes trained on (see the module docstring).

    Extra state: ``magnitude`` (scalar m_t, trained, 0 at each reset), ``delta`` (n,) the change
    of the n earlier magnitudes in this task (trained, made anew at each reset), ``dir_A``,
    ``dir_B`` the factors of the n fixed directions, r rows / columns per task."""

    def __init__(self, base: nn.Linear, cfg: DACConfig, route_token=None):
        super().__init__(base, cfg, route_token)
        self.scale = cfg.alpha             # the unit of every magnitude (module docstring)
        d_out, d_in = base.weight.shape
        self.register_buffer("dir_A", self.A.new_zeros(0, d_in))
        self.register_buffer("dir_B", self.A.new_zeros(d_out, 0))
        self.register_buffer("delta_record", self.A.new_zeros(0))   # every task's deltas, in order

    @classmethod
    def check_config(cls, cfg: DACConfig) -> None:
        """Every r component is composed and merged (k = m = r), alpha > 0, and none of the
        switches that select another layer."""
        for name, value in (("top_k", cfg.rank), ("merge_k", cfg.rank), *PAPER_SWITCHES):
            if getattr(cfg, name) != value:
                raise ConfigError(f"sd-lora needs {name}={value!r}, got {getattr(cfg, name)!r}")
        if not cfg.alpha > 0:
            raise ConfigError(f"sd-lora needs alpha > 0 (the unit of its magnitudes), got {cfg.alpha}")

    def directions(self) -> int:
        """n: how many fixed directions of earlier tasks the layer keeps."""
        kept = self._buffers.get("dir_A")          # absent while the base __init__ runs reset()
        return 0 if kept is None else kept.shape[0] // self.rank

    @torch.no_grad()
    def reset(self) -> None:
        """A, B Kaiming-uniform, m_t = 0, delta = 0 (one per earlier direction)."""
        super().reset()
        nn.init.kaiming_uniform_(self.B, a=math.sqrt(5))
        n = self.directions()
        self.magnitude = nn.Parameter(self.A.new_zeros(()))
        self.delta = nn.Parameter(self.A.new_zeros(n), requires_grad=n > 0)

    def direction_norm(self) -> torch.Tensor:
        """||B A||_F, from the r x r Gram matrices: ||B A||_F^2 = sum((B^T B) * (A A^T))."""
        return ((self.B.T @ self.B) * (self.A @ self.A.T)).sum().sqrt()

    def compose(self, xd: torch.Tensor, route: Route) -> torch.Tensor:
        """alpha (m_t B A x~ / ||B A||_F + sum_i delta_i D_i x~)."""
        out = F.linear(F.linear(xd, self.A), self.B) * (self.magnitude / self.direction_norm())
        if self.directions():
            weights = self.delta.repeat_interleave(self.rank)
            out = out + F.linear(F.linear(xd, self.dir_A) * weights, self.dir_B)
        return self.scale * out

    def delta_weight(self, experts: torch.Tensor | None = None) -> torch.Tensor:
        """alpha m_t B[:, E] A[E, :] / ||B A||_F, plus alpha sum_i delta_i D_i when ``experts``
        is None (the whole update of this task)."""
        if experts is not None:
            E = torch.as_tensor(experts, device=self.A.device, dtype=torch.long)
            return self.scale * self.magnitude / self.direction_norm() * (self.B[:, E] @ self.A[E])
        W = self.magnitude / self.direction_norm() * (self.B @ self.A)
        if self.directions():
            W = W + (self.dir_B * self.delta.repeat_interleave(self.rank)) @ self.dir_A
        return self.scale * W

    @torch.no_grad()
    def end_task(self) -> torch.Tensor:
        """Fold alpha delta_i D_i (i < t), then alpha m_t D_t; record (m_t B_t / ||B_t A_t||_F,
        A_t) in the merge factors and the deltas in ``delta_record``; keep D_t's factors; a
        fresh pool. Returns the r merged components of this task."""
        r, n = self.rank, self.directions()
        for i in range(n):
            self.fold(self.dir_B[:, i * r:(i + 1) * r] * self.delta[i], self.dir_A[i * r:(i + 1) * r])
        B_t = self.B / self.direction_norm()
        self.delta_record = torch.cat([self.delta_record, self.delta.detach().clone()])
        self.merged_B = torch.cat([self.merged_B, B_t * self.magnitude], dim=1)
        self.merged_A = torch.cat([self.merged_A, self.A.detach().clone()], dim=0)
        self.fold(self.merged_B[:, -r:], self.merged_A[-r:])
        self.dir_B = torch.cat([self.dir_B, B_t], dim=1)
        self.dir_A = torch.cat([self.dir_A, self.A.detach()], dim=0)
        self.reset()
        return torch.arange(r, device=self.A.device)

    @torch.no_grad()
    def load_adapter_state(self, state: dict, replay_merges: bool = True) -> None:
        """As the base layer's, with the grown buffers (directions, deltas) and a ``delta`` of
        the stored size; the replay folds task by task exactly what ``end_task`` folded."""
        for name in ("dir_A", "dir_B", "delta_record"):   # sized here, loaded by the base load
            setattr(self, name, torch.empty_like(state[name], device=self.A.device, dtype=self.A.dtype))
        n = self.directions()
        self.delta = nn.Parameter(self.A.new_zeros(n), requires_grad=n > 0)
        super().load_adapter_state(state, replay_merges=False)
        if replay_merges:
            r, k = self.rank, 0
            for t in range(self.merged_B.shape[1] // r):
                for i in range(t):
                    self.fold(self.dir_B[:, i * r:(i + 1) * r] * self.delta_record[k], self.dir_A[i * r:(i + 1) * r])
                    k += 1
                self.fold(self.merged_B[:, t * r:(t + 1) * r], self.merged_A[t * r:(t + 1) * r])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, directions={self.directions()}"


@register
class SDLoRA(LoRA):
    name = "sd-lora"
    summary = "SD-LoRA: earlier tasks' LoRA directions fixed (unit norm), their magnitudes keep learning"

    def configure(self, cfg: DACConfig) -> DACConfig:
        cfg = DACConfig.plain_lora(cfg)
        SDLoRAPool.check_config(cfg)
        return cfg

    def attach(self, model, cfg: DACConfig) -> PoolSet:
        return attach_pools(model, cfg, pool_class=SDLoRAPool)
