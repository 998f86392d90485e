"""Consolidation (``consolidate = c > 0``, docs/method.md sec. 13.3), and the method
``dac-consolidate``.

For the last round(c T) of a task's T steps, each pool composes and trains only
T_fix = TopK_m(counts so far); the vote and the counts stop, and exactly T_fix is merged:

    step T - round(c T):   T_fix = TopK_m(counts);  hold a copy of A and B
    every later step:      route = T_fix;  after the optimiser step, experts outside T_fix are
                           put back where they were (AdamW's momentum and weight decay would
                           otherwise keep moving them)
    end of task:           merge T_fix  (what is merged is what was trained last)

The schedule is the layer's own (``before_step`` / ``after_step``, called by the engine through
``PoolSet``), so the switch works with any method: ``--method dac --set consolidate=0.5``.
"""
from __future__ import annotations

from typing import Optional

import torch

from r1lab.config import DACConfig
from r1lab.methods.dac import DAC
from r1lab.methods.registry import register
from r1lab.methods.layers import variant_layer
from r1lab.pool import ExpertPoolLinear
from r1lab.routing import Route, top_indices

# the share c of each task's steps that dac-consolidate trains only the top-m experts, chosen
# on seed 0 and the world's validation split (docs/method.md sec. 13.3)
CONSOLIDATE = 0.75


def consolidation_step(cfg: DACConfig) -> Optional[int]:
    """The step at which consolidation starts, T - round(c T); None when it is off."""
    n = int(round(cfg.consolidate * cfg.iterations))
    return cfg.iterations - n if n > 0 else None


@variant_layer(10, lambda cfg: cfg.consolidate > 0)
class ConsolidatingPool(ExpertPoolLinear):
    """The expert pool that fixes its merged set for the last share of each task."""

    @classmethod
    def check_config(cls, cfg: DACConfig) -> None:
        if cfg.router != "frozen" and cfg.top_k == cfg.rank:
            raise ValueError("consolidation with a learned router needs top_k < rank")

    @torch.no_grad()
    def reset(self) -> None:
        super().reset()
        self.fixed: Optional[torch.Tensor] = None    # the only active experts, once fixed
        self._held = None

    def critical(self, m: Optional[int] = None) -> torch.Tensor:
        if self.fixed is not None and m is None:
            return self.fixed
        return super().critical(m)

    @torch.no_grad()
    def consolidate(self) -> torch.Tensor:
        """Fix T = TopK_m(counts so far) until the task ends; returns T."""
        self.fixed = top_indices(self.counts, self.merge_k, self.cfg.tie_rule, self.collective)
        self._held = (self.A.detach().clone(), self.B.detach().clone())
        return self.fixed

    @torch.no_grad()
    def hold_others(self) -> None:
        """Put every expert outside the fixed set back where it was when consolidation began."""
        if self.fixed is None:
            return
        A0, B0 = self._held
        keep = torch.ones(self.rank, dtype=torch.bool, device=self.A.device)
        keep[self.fixed] = False
        self.A[keep] = A0[keep]
        self.B[:, keep] = B0[:, keep]

    def before_step(self, step: int) -> None:
        if step == consolidation_step(self.cfg):
            self.consolidate()

    def after_step(self, step: int) -> None:
        start = consolidation_step(self.cfg)
        if start is not None and step >= start:
            self.hold_others()

    def route(self, h: torch.Tensor) -> Route:
        """Once fixed: the fixed set for every sample, no vote, no hits."""
        if self.fixed is None:
            return super().route(h)
        N, r = h.shape[0], self.rank
        mask = torch.zeros(r, device=h.device, dtype=h.dtype)
        mask[self.fixed] = 1.0
        mask = mask.expand(N, r)
        scores = (torch.softmax(self.router(h), dim=-1) if self.cfg.router != "frozen"
                  else mask / len(self.fixed))
        return Route(scores=scores, chosen=self.fixed.expand(N, -1),
                     hits=torch.zeros(r, device=h.device, dtype=torch.long),
                     active=self.fixed, mask=mask)

    def compose(self, xd: torch.Tensor, route: Route) -> torch.Tensor:
        if self.fixed is not None and self.cfg.router == "frozen":
            return ExpertPoolLinear.compose(self, xd, route)     # gather the fixed set
        return super().compose(xd, route)


@register
class Consolidate(DAC):
    name = "dac-consolidate"
    summary = "the last CONSOLIDATE share of each task trains only the top-m experts"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(consolidate=CONSOLIDATE)
