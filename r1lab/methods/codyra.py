"""CoDyRA (Lu et al., "Adaptive Rank, Reduced Forgetting: Knowledge Retention in Continual
Learning Vision-Language Models with Dynamic Rank-Selective LoRA", 2024, arXiv 2412.01004),
on r1lab's layer.

The r rank-1 components of a LoRA get learned importance weights w_i, and a sparsity-promoting
penalty drives the weights of components the task does not need to exactly zero, so each layer
chooses its own rank; the kept components are merged into the weight after the task:

    y        = W0 x + b + s * B diag(w) A x~ = W0 x + b + s * sum_i w_i b_i a_i^T x~
    L        = L_task + kappa * ||w||_1                      (kappa: the sparsity weight)
    w       <- sign(w) * max(|w| - tau_t, 0)                 after every optimiser step
    K        = {i : w_i != 0}
    W0      <- W0 + s * B[:, K] diag(w_K) A[K, :]            at the end of the task

The L1 term is applied as its proximal step (soft thresholding) rather than through the
gradient: a gradient step on |w| oscillates around zero, soft thresholding lands on it.

Choices the paper leaves to us (docs/method.md sec. 14.5):
    * the threshold of step t follows the learning-rate schedule: tau_t = rho * lr_t with
      rho = ``cfg.codyra_sparsity`` (0.5) and lr_t the cosine schedule of ``cfg.lr``
      (train.py); under per-task rates (``lr_by_task``) it still follows ``cfg.lr``. With Adam
      a weight whose gradient keeps one sign moves by about lr_t per step, so with rho < 1 a
      component the task keeps pushing grows while one it does not shrinks to zero.
    * w starts at ``cfg.codyra_init`` (0.05) for every component (B = 0, A Kaiming, as every
      fresh pool), so that a component the task does not use reaches zero within a task
      of the world's length; w trains with AdamW like A and B.
    * no rank floor: a pool may keep no component of a task.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1lab.attach import attach_pools
from r1lab.config import DACConfig
from r1lab.methods.lora import DensePool, LoRA
from r1lab.methods.registry import register
from r1lab.poolset import PoolSet
from r1lab.routing import Route


def threshold(cfg: DACConfig, step: int) -> float:
    """tau_t = rho * lr_t, lr_t = lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2."""
    lr_t = cfg.lr_min + (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * step / cfg.iterations)) / 2.0
    return cfg.codyra_sparsity * lr_t


class RankSelectivePool(DensePool):
    """Plain LoRA with an importance weight per rank-1 component (see the module docstring).

    Extra state: ``weight_w`` (r,) the importance weights (trained, reset per task) and
    ``merged_sizes`` (one entry per task: how many components its merge folded)."""

    def __init__(self, base: nn.Linear, cfg: DACConfig, route_token=None):
        self.importance = None            # made in reset(), which __init__ calls
        super().__init__(base, cfg, route_token)
        self.register_buffer("merged_sizes", torch.zeros(0, dtype=torch.long, device=self.A.device))

    @torch.no_grad()
    def reset(self) -> None:
        super().reset()
        w = torch.full((self.rank,), self.cfg.codyra_init, device=self.A.device, dtype=self.A.dtype)
        if self.importance is None:
            self.importance = nn.Parameter(w)
        else:
            self.importance.copy_(w)

    def compose(self, xd: torch.Tensor, route: Route) -> torch.Tensor:
        return self.scale * F.linear(F.linear(xd, self.A) * self.importance, self.B)

    @torch.no_grad()
    def shrink(self, tau: float) -> None:
        """The proximal step of tau * ||w||_1: soft thresholding."""
        w = self.importance
        w.copy_(w.sign() * (w.abs() - tau).clamp_min(0.0))

    def kept(self) -> torch.Tensor:
        """K = {i : w_i != 0}, sorted."""
        return torch.nonzero(self.importance.detach() != 0).flatten()

    def delta_weight(self, experts=None) -> torch.Tensor:
        """Delta W = s * B[:, E] diag(w_E) A[E, :] (every component when ``experts`` is None)."""
        E = torch.arange(self.rank, device=self.A.device) if experts is None else \
            torch.as_tensor(experts, device=self.A.device, dtype=torch.long)
        return self.scale * (self.B[:, E] * self.importance[E]) @ self.A[E, :]

    def expert(self, i: int) -> torch.Tensor:
        """The rank-1 matrix s * w_i * b_i a_i^T of component i."""
        return self.scale * self.importance[i] * torch.outer(self.B[:, i], self.A[i])

    @torch.no_grad()
    def end_task(self) -> torch.Tensor:
        """W0 <- W0 + s * B[:, K] diag(w_K) A[K, :]; returns K."""
        K = self.kept()
        B_K = (self.B[:, K] * self.importance[K]).clone()
        self.merged_sizes = torch.cat([self.merged_sizes, self.merged_sizes.new_tensor([len(K)])])
        self.merge(B_K, self.A[K, :].clone(), keep=B_K)
        return K

    @torch.no_grad()
    def load_adapter_state(self, state: dict, replay_merges: bool = True) -> None:
        """As the base layer's, with merges of varying size replayed one task at a time."""
        self.merged_sizes = state["merged_sizes"].to(self.A.device).clone()   # grows per task
        super().load_adapter_state(state, replay_merges=False)
        if replay_merges:
            start = 0
            for size in self.merged_sizes.tolist():
                self.fold(self.merged_B[:, start:start + size], self.merged_A[start:start + size])
                start += size


@register
class CoDyRA(LoRA):
    name = "codyra"
    reads = ("codyra_sparsity", "codyra_init")
    summary = "CoDyRA: rank-1 components with importance weights pruned to exact zeros (L1), kept ones merged"

    def attach(self, model, cfg: DACConfig) -> PoolSet:
        return attach_pools(model, cfg, pool_class=RankSelectivePool)

    def after_step(self, pools: PoolSet, cfg: DACConfig, step: int) -> None:
        super().after_step(pools, cfg, step)
        tau = threshold(cfg, step)
        for pool in pools.values():
            pool.shrink(tau)
