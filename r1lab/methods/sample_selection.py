"""Per-sample selection (``selection="sample"``, docs/method.md sec. 4): each sample composes
its own top-k experts E_n instead of the batch's voted set S.

    y_n = W0 x_n + b + s * sum_i w_ni b_i a_i^T x~_n,     w_n = 1[i in E_n]  (a 0/1 row per sample)

The counts are the same hits c as DAC's. Because each sample may use any expert, all r are
computed and weighted (``weighted_compose``), which the learned routers reuse with their own w.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from r1lab.methods.layers import variant_layer
from r1lab.pool import ExpertPoolLinear
from r1lab.routing import Route


def weighted_compose(pool: ExpertPoolLinear, xd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """s * B diag(w_n) A x~_n for per-sample expert weights w of shape (N, r)."""
    z = F.linear(xd, pool.A)                                            # (N, L, r) or (N, r)
    z = z * (w.unsqueeze(1) if z.dim() == 3 else w)
    return pool.scale * F.linear(z, pool.B)


@variant_layer(40, lambda cfg: cfg.selection == "sample")
class SampleSelectionPool(ExpertPoolLinear):
    """The expert pool with one set of k experts per sample (no batch vote for the forward)."""

    def route(self, h: torch.Tensor) -> Route:
        scores, chosen, per_sample, hits = self.vote(h)
        return Route(scores=scores, chosen=chosen, hits=hits, active=None, mask=per_sample)

    def compose(self, xd: torch.Tensor, route: Route) -> torch.Tensor:
        return weighted_compose(self, xd, route.mask)
