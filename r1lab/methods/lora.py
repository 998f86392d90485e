"""Plain sequential LoRA on the same layer: every one of the r experts is active for every
input, all r are merged at the end of each task, no AGO (k = m = r, lambda = 0).

    y = W0 x + b + s * B A x~          (dropout x~ as in DAC; no router, no vote)

``DensePool`` is the layer for any configuration with k = r (``lora``, ``dac-no-route``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from r1lab.config import DACConfig
from r1lab.methods.dac import DAC
from r1lab.methods.registry import register
from r1lab.methods.layers import variant_layer
from r1lab.pool import ExpertPoolLinear
from r1lab.routing import Route


@variant_layer(20, lambda cfg: cfg.top_k == cfg.rank)
class DensePool(ExpertPoolLinear):
    """The expert pool with k = r: nothing to choose, so routing is skipped. Its counts are
    N per batch for every expert, and every expert is merged (m = r)."""

    def route(self, h: torch.Tensor) -> Route:
        N, r = h.shape[0], self.rank
        ones = torch.ones(N, r, device=h.device, dtype=h.dtype)
        every = torch.arange(r, device=h.device)
        hits = self.collective.vote(torch.full((r,), N, device=h.device, dtype=torch.long))
        return Route(scores=ones / r, chosen=every.expand(N, r), hits=hits, active=every, mask=ones)

    def compose(self, xd: torch.Tensor, route: Route) -> torch.Tensor:
        return self.scale * F.linear(F.linear(xd, self.A), self.B)          # s * B A x~


@register
class LoRA(DAC):
    name = "lora"
    summary = "plain sequential LoRA: all experts active and merged, no AGO"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return DACConfig.plain_lora(cfg)
