"""DAC (Fa et al., AAAI 2026): the expert pool of ``r1lab/pool.py`` trained with the AGO loss.

    L = L_task + lambda * L_AGO     from the second task on (docs/method.md sec. 7)

The layer, the vote and the top-m merge are the pool's own; this plug-in adds only the loss.
"""
from __future__ import annotations

from typing import Optional

import torch

from r1lab.ago import ago_loss
from r1lab.config import DACConfig
from r1lab.methods.base import Method
from r1lab.methods.registry import register
from r1lab.poolset import PoolSet


@register
class DAC(Method):
    name = "dac"
    summary = "the authors' DAC: sparse rank-1 experts, batch vote, AGO, top-m merge"

    def penalty(self, pools: PoolSet, cfg: DACConfig, task_index: int) -> Optional[torch.Tensor]:
        """L_AGO over every pool, for tasks 2 onward when lambda > 0."""
        if task_index == 0 or cfg.ago_weight <= 0:
            return None
        return ago_loss(pools.values(), cfg.ago_form)

    def penalty_weight(self, cfg: DACConfig) -> float:
        return cfg.ago_weight
