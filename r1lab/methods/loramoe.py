"""LoRAMoE (Dou et al., "LoRAMoE: Alleviating World Knowledge Forgetting in Large Language Models
via MoE-Style Plugin", ACL 2024, arXiv 2312.09979): E LoRA experts per adapted linear, mixed per
token by a learned soft router, trained with a localized balancing constraint (LBC).

Layer. The pool's r rank-1 directions are split into E experts of r / E contiguous directions,
expert j = directions [j r/E, (j+1) r/E), so B_j A_j = B[:, J_j] A[J_j, :]. For token x of a
sequence (N, L, d_in):

    w(x) = softmax(W_g x)                        over the E experts, per token (no top-k)
    y    = W0 x + b + sum_j w_j(x) * s * B_j A_j x~,    x~ = dropout(x),  s = alpha / r

LBC, per layer and training step, for a batch of N samples. Importance of expert j for sample n
and its coefficient (the paper's two expert groups, world knowledge and downstream task):

    I_nj  = sum_{l=1..L} w_j(x_nl)                   summed over the sample's tokens
    Q_nj  = 1 + delta  if type(expert j) = type(sample n),  1 - delta otherwise
    Z     = I * Q   (element-wise, N x E)
    L_lbc = Var(Z) / Mean(Z)                         over all N * E entries
    L     = L_task + beta * sum_{layers} L_lbc       beta = cfg.moe_balance, delta = cfg.moe_delta

Every r1lab training sample is downstream-task data, so Q_nj = 1 + delta for every expert of the
task group and 1 - delta for every expert of the world-knowledge group, the same for all n.

LoRAMoE is not a continual learner and its per-token routing cannot be folded into W0: the same
experts and router keep training task after task and stay in the model at inference
(``merges = False``; nothing is merged, ``end_task`` returns empty index tensors).

Choices the paper leaves open:
  * Choice: each expert has rank r / E (cfg.rank / cfg.moe_experts), so LoRAMoE has the A, B
    sizes of DAC and LoRA; E must divide r and E >= 2 (``ConfigError`` otherwise).
  * Choice: every expert uses the pool's scale s = alpha / r (cfg.alpha, cfg.rank).
  * Choice: the world-knowledge group is experts 0 .. floor(E/2) - 1, the task group the rest
    (for odd E the task group has one expert more).
  * Choice: the gate W_g (d_in -> E, no bias) reads the un-dropped input x and is initialised
    Kaiming-uniform with a = sqrt(5) (PyTorch's linear default, the authors' code); A
    Kaiming-uniform, B = 0 as every r1lab pool. They are initialised once, at the first task's
    (seeded) ``reset``; later resets only clear the task's counts.
  * Choice: Var is the unbiased sample variance (denominator N E - 1, ``torch.var``'s default,
    as the authors' code); the paper writes sigma^2(Z) / mu(Z) (their code divides by mu^2).
  * Choice: I sums over every position of a sequence, padding after end-of-text included (the
    layer does not see the text mask; the authors' code sums over all positions too).
  * Choice: the penalty is the SUM of L_lbc over the pools (each layer carries its own
    constraint); in a data-parallel run each process's LBC is over its slice of the batch.
  * Choice: ``counts`` stay DensePool's (N per batch for every direction); ``last`` is
    DensePool's route (all directions active); the gate weights of the latest training forward
    are kept in ``gate_w`` (N, L, E) for the penalty, and dropped after the optimiser step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from r1lab.attach import attach_pools
from r1lab.config import DACConfig
from r1lab.errors import ConfigError
from r1lab.methods.base import Method
from r1lab.methods.lora import DensePool
from r1lab.methods.registry import register
from r1lab.poolset import PoolSet
from r1lab.routing import RouteToken


def check_moe_config(cfg: DACConfig) -> None:
    """E >= 2 experts, each of rank r / E."""
    E, r = cfg.moe_experts, cfg.rank
    if E < 2 or r % E:
        raise ConfigError(f"DACConfig: LoRAMoE splits the rank into moe_experts experts of rank "
                          f"rank / moe_experts: moe_experts must be >= 2 and divide rank, got "
                          f"moe_experts={E}, rank={r}")


def group_coefficients(experts: int, delta: float, device=None, dtype=None) -> torch.Tensor:
    """(E,) Q for a downstream-task sample: 1 - delta for the world-knowledge group (the first
    floor(E/2) experts), 1 + delta for the task group (the rest)."""
    q = torch.full((experts,), 1.0 + delta, device=device, dtype=dtype)
    q[:experts // 2] = 1.0 - delta
    return q


def lbc_loss(weights: torch.Tensor, delta: float) -> torch.Tensor:
    """L_lbc = Var(Z) / Mean(Z), Z = I * Q, from gate weights (N, L, E) or (N, E)."""
    importance = weights.sum(dim=1) if weights.dim() == 3 else weights        # (N, E)
    Z = importance * group_coefficients(weights.shape[-1], delta, weights.device, weights.dtype)
    return Z.var() / Z.mean()


class LoRAMoEPool(DensePool):
    """The pool read as E experts of r / E directions, mixed per token by a learned gate."""

    mergeable = False     # per-token mixing cannot be folded into W0: the layer stays

    def __init__(self, base: nn.Linear, cfg: DACConfig, route_token: RouteToken | None = None):
        super().__init__(base, cfg, route_token)
        self.experts = cfg.moe_experts
        self.gate = nn.Linear(self.in_features, self.experts, bias=False,
                              device=self.A.device, dtype=self.A.dtype)
        self.gate_w: torch.Tensor | None = None
        self.fresh = True     # the next reset initialises A, B and the gate

    @classmethod
    def check_config(cls, cfg: DACConfig) -> None:
        super().check_config(cfg)
        check_moe_config(cfg)

    @torch.no_grad()
    def reset(self) -> None:
        """The first reset of a fresh layer: A, B, gate (and the unused router) initialised.
        Every later one (a new task): only the task's counts and routes are cleared."""
        if getattr(self, "fresh", True):
            super().reset()
            if hasattr(self, "gate"):
                nn.init.kaiming_uniform_(self.gate.weight, a=math.sqrt(5))
                self.fresh = False
        self.counts.zero_()
        self.last = None
        self.gate_w = None

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """w(x) = softmax(W_g x) over the E experts, for every token of x (..., d_in)."""
        return torch.softmax(self.gate(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)                                                    # W0 x + b
        if not self.enabled:
            self.last = self.gate_w = None
            return y
        w = self.gate_weights(x)                                            # un-dropped x
        xd = self.drop(x)
        route = self.route(self.routing_token(xd))
        self.last = route.detach()
        self.gate_w = w if self.training else None
        if self.training:
            with torch.no_grad():
                self.counts += route.hits
        return y + self.mix(xd, w)

    def mix(self, xd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_j w_j s B_j A_j x~: each direction of expert j weighted by w_j."""
        per_direction = w.repeat_interleave(self.rank // self.experts, dim=-1)  # (..., r)
        return self.scale * F.linear(F.linear(xd, self.A) * per_direction, self.B)

    def after_step(self, step: int) -> None:
        """The step's graph is spent: drop the stored gate weights (the model stays copyable)."""
        self.gate_w = None

    @torch.no_grad()
    def end_task(self) -> torch.Tensor:
        """Nothing is merged and nothing is reset: no expert indices."""
        self.gate_w = None
        return torch.zeros(0, dtype=torch.long, device=self.A.device)

    @torch.no_grad()
    def load_adapter_state(self, state: dict, replay_merges: bool = True) -> None:
        """Resume: A, B and the gate come from ``state``; the next reset keeps them."""
        super().load_adapter_state(state, replay_merges)
        self.fresh = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, experts={self.experts}"


@register
class LoRAMoE(Method):
    name = "loramoe"
    reads = ("moe_experts", "moe_balance", "moe_delta")
    summary = "LoRAMoE: E LoRA experts mixed per token by a learned soft router, LBC loss, no merge"
    merges = False

    def configure(self, cfg: DACConfig) -> DACConfig:
        check_moe_config(cfg)
        return DACConfig.plain_lora(cfg)

    def attach(self, model, cfg: DACConfig) -> PoolSet:
        return attach_pools(model, cfg, pool_class=LoRAMoEPool)

    def penalty(self, pools: PoolSet, cfg: DACConfig, task_index: int) -> torch.Tensor | None:
        """sum over pools of L_lbc of the latest training forward (every task)."""
        terms = [lbc_loss(p.gate_w, cfg.moe_delta) for p in pools.values()
                 if getattr(p, "gate_w", None) is not None]
        return torch.stack(terms).sum() if terms else None

    def penalty_weight(self, cfg: DACConfig) -> float:
        return cfg.moe_balance
