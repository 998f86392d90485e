"""InfLoRA: Y.-S. Liang and W.-J. Li, "InfLoRA: Interference-Free Low-Rank Adaptation for
Continual Learning", CVPR 2024, arXiv 2404.00228, on r1lab's layer.

Notation of pool.py: Delta W_t = s * B_t A_t, A_t (r x d_in), B_t (d_out x r), s = alpha / r,
x~ = dropout(x). (The paper calls the designed input-side matrix B_t and the trained one A_t;
here they are A_t and B_t.)

    y = W0 x + b + s * B_t A_t x~          A_t designed, frozen;  B_t trained from 0

Kept between tasks, per layer: an orthonormal basis M (d_in x k) of the inputs that earlier
tasks fed this layer; k grows per task.

Design of A_t, before the task's training, from C_t = sum x x^T over the task's inputs:

    P          = I - M M^T                               onto the complement of span(M)
    rows of A_t = the top-r eigenvectors of P C_t P       (orthonormal, inside the complement)

so A_t x = 0, hence Delta W_t x = 0, for every x in span(M): the new task's update leaves
what earlier tasks' inputs see in this layer unchanged. Only B_t is trained.

End of task (GPM / DualGPM basis growth, then a LoRA merge): with C = sum of x x^T over the
task's training forwards and (lambda_i, u_i) the eigen-pairs of P C P, largest first,

    M  <- [M, u_1 .. u_n],   n the least with  tr(M^T C M) + sum_{i<=n} lambda_i >= eps tr(C)
    W0 <- W0 + s * B_t A_t   (all r experts, as plain LoRA), then a fresh pool

with eps = ``cfg.inflora_threshold`` (n = 0 when M already holds that share of the energy).

Choices (the paper leaves them open, or r1lab's engine makes them):
  * Choice: A_t is designed at the first training forward of each task, from that mini-batch's
    inputs: the engine has no "before the task, with its data" hook. B_t = 0 at that step, so
    its output does not depend on A_t, which equals designing from the first batch before
    training. The paper designs from the task's data before training.
  * Choice: C is summed over every training forward of the task, on the un-dropped input x;
    a token sequence (N, L, d_in) gives its N L token vectors. Covariances are float64.
  * Choice: M itself is kept (DualGPM keeps M or its complement, whichever is smaller), and
    eps is one number for every task and layer (the authors' code raises it per task).
  * Choice: where the complement of span(M) has fewer than r directions, A_t takes those and
    its other rows are 0 (those experts stay inert); a warning says so once.
  * Data-parallel: the design batch's covariance, and the task's covariance at its last step,
    are summed over the processes (the pool's collective), so every process designs the same
    A_t and grows the same M.

Memory: a d_in x d_in float64 covariance per layer during a task (ViT-B/16, both towers, all
six targets: about 1.7 GB; the tiny test CLIPs: kilobytes), and M (d_in x k, k <= d_in, the
layer's dtype) between tasks, saved in every checkpoint.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from r1lab.attach import attach_pools
from r1lab.config import DACConfig
from r1lab.errors import ConfigError
from r1lab.methods.lora import DensePool, LoRA
from r1lab.methods.registry import register
from r1lab.pool import PAPER_SWITCHES
from r1lab.poolset import PoolSet
from r1lab.routing import RouteToken

# float64 round-off allowance on the energy criterion (numerics, not a method setting): with
# eps = 1 and rank-deficient inputs, the basis stops at the inputs' rank
_ENERGY_RTOL = 1e-9
FEW_DIRECTIONS = ("InfLoRA: the complement of a layer's kept basis M has fewer than r directions; "
                  "the other rows of A are 0 (those experts stay inert)")


def _complement_eigen(cov: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-pairs of P C P inside the complement of span(M), largest first: (values (d - k),
    vectors (d, d - k)), in float64. span(M) is an eigenspace of P C P with eigenvalue 0, as
    are the complement's own null directions; shifting span(M) to -(tr C + 1) keeps it out of
    the top d - k."""
    C = cov.double()
    M = basis.to(C)
    d, k = M.shape
    P = torch.eye(d, dtype=C.dtype, device=C.device) - M @ M.T
    R = P @ C @ P - (torch.trace(C) + 1.0) * (M @ M.T)
    values, vectors = torch.linalg.eigh((R + R.T) / 2)                  # ascending
    free = d - k
    values, vectors = values.flip(0)[:free], vectors.flip(1)[:, :free]
    return values.clamp(min=0.0), P @ vectors


def design_rows(cov: torch.Tensor, basis: torch.Tensor, rank: int) -> torch.Tensor:
    """A_t (rank x d_in, float64): the top-``rank`` eigenvectors of P C P as rows, zero rows
    where the complement of span(M) has fewer than ``rank`` directions."""
    _, vectors = _complement_eigen(cov, basis)
    n = min(rank, vectors.shape[1])
    if n < rank:
        warnings.warn(FEW_DIRECTIONS, RuntimeWarning, stacklevel=2)
    A = torch.zeros(rank, cov.shape[0], dtype=vectors.dtype, device=vectors.device)
    A[:n] = vectors[:, :n].T
    return A


def grow_basis(cov: torch.Tensor, basis: torch.Tensor, threshold: float) -> torch.Tensor:
    """[M, u_1 .. u_n] with the least n such that tr(M^T C M) + sum_{i<=n} lambda_i reaches
    ``threshold`` * tr(C) (GPM's criterion); M itself when it already does. Float64."""
    C = cov.double()
    M = basis.to(C)
    total = torch.trace(C)
    need = threshold * total * (1.0 - _ENERGY_RTOL)
    kept = torch.trace(M.T @ C @ M)
    if total <= 0 or kept >= need:
        return M
    values, vectors = _complement_eigen(C, M)
    energy = kept + torch.cumsum(values, 0)
    n = min(int((energy < need).sum()) + 1, vectors.shape[1])
    return torch.cat([M, vectors[:, :n]], dim=1)


class InfLoRAPool(DensePool):
    """Plain LoRA (all r experts active, all merged) whose A is designed, not trained.

    Attributes beyond the pool's:
        basis      (d_in, k) orthonormal basis M of earlier tasks' inputs (a growing buffer)
        designed   whether this task's A has been designed (at its first training forward)
        cov        (d_in, d_in) float64 sum of x x^T over this task's training forwards, or None
    """

    def __init__(self, base: nn.Linear, cfg: DACConfig, route_token: RouteToken | None = None):
        super().__init__(base, cfg, route_token)
        w = base.weight
        self.register_buffer("basis", torch.zeros(w.shape[1], 0, device=w.device, dtype=w.dtype))

    @classmethod
    def check_config(cls, cfg: DACConfig) -> None:
        """InfLoRA is plain LoRA's layer with a designed A: the switches of DAC's variant
        layers do not combine with it."""
        for name, value in PAPER_SWITCHES:
            if getattr(cfg, name) != value:
                raise ConfigError(f"inflora: {name}={getattr(cfg, name)!r} is a variant of DAC's "
                                  f"layer that InfLoRA does not combine with; use {name}={value!r}")

    @torch.no_grad()
    def reset(self) -> None:
        """A fresh pool: B = 0, A frozen (designed at the first training forward)."""
        super().reset()
        self.A.requires_grad_(False)
        self.designed = False
        self.cov: torch.Tensor | None = None
        self.last_step = False

    def before_step(self, step: int) -> None:
        self.last_step = step == self.cfg.iterations - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.enabled:
            self.observe(x)
        return super().forward(x)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Add this forward's x x^T to the task's covariance; design A at the first one."""
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        batch = flat.T @ flat
        if not self.designed:
            self.A.copy_(design_rows(self.collective.vote(batch), self.basis, self.rank))
            self.designed = True
        self.cov = batch if self.cov is None else self.cov + batch
        if self.last_step:          # data-parallel: the task's covariance over every process
            self.cov = self.collective.vote(self.cov)

    @torch.no_grad()
    def end_task(self) -> torch.Tensor:
        """Grow M from the task's covariance, then merge all r experts (a fresh pool)."""
        if self.cov is not None:
            self.basis = grow_basis(self.cov, self.basis, self.cfg.inflora_threshold).to(self.A)
        return super().end_task()

    @torch.no_grad()
    def load_adapter_state(self, state: dict, replay_merges: bool = True) -> None:
        """As the pool's, with M (whose width grows per task) taken at its stored size."""
        self.basis = state["basis"].to(self.A.device, self.A.dtype).clone()
        super().load_adapter_state(state, replay_merges)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, basis={self.basis.shape[1]}"


@register
class InfLoRA(LoRA):
    name = "inflora"
    reads = ("inflora_threshold",)
    summary = "InfLoRA: A designed orthogonal to earlier tasks' inputs, only B trained, all merged"

    def configure(self, cfg: DACConfig) -> DACConfig:
        InfLoRAPool.check_config(cfg)
        return DACConfig.plain_lora(cfg)

    def attach(self, model, cfg: DACConfig) -> PoolSet:
        return attach_pools(model, cfg, pool_class=InfLoRAPool)
