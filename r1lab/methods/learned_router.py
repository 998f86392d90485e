"""Learned routers (``router="gate"`` or ``"ste"``, docs/method.md sec. 4 and 13), and the
method ``dac-gate``.

DAC's router gets no gradient: the forward multiplies the active experts by a hard 0/1 mask,
which does not depend on the scores p. These layers make p part of the forward:

    "gate"  w_n = (mask_n * p_n) / sum(mask_n * p_n) * |mask_n|    renormalised scores over the
            active experts, mean weight 1 on the active set
    "ste"   w_n = mask_n + p_n - stopgrad(p_n)                     straight-through: the forward
            value is the hard mask, the gradient reaches p

    y_n = W0 x_n + b + s * B diag(w_n) A x~_n

The merge is unchanged: m experts folded with weight 1 (so ``dac-gate`` trains with weights it
does not merge with).
"""
from __future__ import annotations

import torch

from r1lab.config import DACConfig
from r1lab.methods.dac import DAC
from r1lab.methods.registry import register
from r1lab.methods.sample_selection import weighted_compose
from r1lab.methods.layers import variant_layer
from r1lab.pool import ExpertPoolLinear
from r1lab.routing import Route


@variant_layer(30, lambda cfg: cfg.router != "frozen")
class LearnedRouterPool(ExpertPoolLinear):
    """The expert pool whose router trains through per-sample expert weights."""

    @torch.no_grad()
    def reset(self) -> None:
        super().reset()
        self.router.requires_grad_(True)

    def expert_weights(self, route: Route) -> torch.Tensor:
        """(N, r) weights w of the active experts (see the module docstring)."""
        if self.cfg.router == "ste":
            return route.mask + route.scores - route.scores.detach()
        g = route.mask * route.scores
        return g / g.sum(-1, keepdim=True).clamp_min(1e-12) * route.mask.sum(-1, keepdim=True)

    def compose(self, xd: torch.Tensor, route: Route) -> torch.Tensor:
        return weighted_compose(self, xd, self.expert_weights(route))


@register
class GateRouting(DAC):
    name = "dac-gate"
    summary = "a learned router: the active experts weighted by renormalised scores"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(router="gate")
