"""The SVD merge (``merge_rule="svd"``, docs/method.md sec. 13.3), and the method ``dac-svd``.

Instead of the top-m experts, fold the best rank-m approximation of the whole update
(Eckart-Young):

    B A = U S V^T,    W0 <- W0 + s * U_m S_m V_m^T

``truncated_update`` returns factors with s * B_m A_m = U_m S_m V_m^T of s B A, taking
B_m = U_m S_m and A_m = V_m^T of B A (the scale s is applied by the fold). AGO keeps U_m, the
merged update's output directions, as this task's past columns.
"""
from __future__ import annotations

from typing import Optional

import torch

from r1lab.config import DACConfig
from r1lab.methods.dac import DAC
from r1lab.methods.registry import register
from r1lab.methods.layers import variant_layer
from r1lab.pool import ExpertPoolLinear


@variant_layer(50, lambda cfg: cfg.merge_rule == "svd")
class SVDMergePool(ExpertPoolLinear):
    """The expert pool that merges the rank-m truncation of its whole update."""

    @torch.no_grad()
    def truncated_update(self, m: Optional[int] = None):
        """(B_m, A_m, U_m): B_m A_m is the best rank-m approximation of B A, B_m = U_m S_m,
        A_m = V_m^T (computed in float64)."""
        m = min(self.merge_k if m is None else m, self.rank)
        U, S, Vh = torch.linalg.svd(self.B.double() @ self.A.double(), full_matrices=False)
        dt = self.B.dtype
        return (U[:, :m] * S[:m]).to(dt), Vh[:m].to(dt), U[:, :m].to(dt)

    @torch.no_grad()
    def end_task(self) -> torch.Tensor:
        """Fold s * B_m A_m, keep U_m for AGO. Returns T = TopK_m(counts), for the record: the
        folded update mixes every trained expert."""
        T = self.critical()
        B_m, A_m, U_m = self.truncated_update()
        self.merge(B_m, A_m, U_m)
        return T


@register
class SVDMerge(DAC):
    name = "dac-svd"
    summary = "merge the rank-m truncated SVD of the whole update, not the top-m"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(merge_rule="svd")
