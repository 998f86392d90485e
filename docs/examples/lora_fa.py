"""Adding a method to r1lab, in one file: LoRA-FA (Zhang et al., 2023, "LoRA-FA: Memory-efficient
Low-rank Adaptation for Large Language Models Fine-tuning", arXiv 2308.03303).

LoRA-FA freezes the down-projection A at its random initialisation and trains only the
up-projection B, which halves the LoRA's optimiser state:

    y = W0 x + b + s * B A x~,    A fixed (Kaiming-uniform),  B trained from 0

In r1lab that is plain LoRA (``r1lab/methods/lora.py``) with one change to its layer, so the file
holds a layer (a subclass of LoRA's ``DensePool``) and a method (a subclass of ``LoRA``) that
attaches it. ``docs/architecture.md`` walks through it; ``tests/test_add_a_method.py`` runs it.
To ship it with r1lab, move this file to ``r1lab/methods/`` and import it in
``r1lab/methods/__init__.py`` (the CLI's ``--method`` choices come from there).
"""
from __future__ import annotations

import torch

from r1lab.attach import attach_pools
from r1lab.config import DACConfig
from r1lab.methods import register
from r1lab.methods.lora import DensePool, LoRA
from r1lab.poolset import PoolSet


class FrozenAPool(DensePool):
    """Plain LoRA whose input directions A keep their random initialisation."""

    @torch.no_grad()
    def reset(self) -> None:
        super().reset()                   # A ~ Kaiming-uniform, B = 0, as every fresh pool
        self.A.requires_grad_(False)      # the optimiser only sees parameters that need grad


@register
class LoRAFA(LoRA):
    name = "lora-fa"
    summary = "plain LoRA with A frozen at its random initialisation (LoRA-FA)"

    def attach(self, model, cfg: DACConfig) -> PoolSet:
        return attach_pools(model, cfg, pool_class=FrozenAPool)
