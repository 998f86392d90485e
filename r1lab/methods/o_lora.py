"""O-LoRA (Wang et al., "Orthogonal Subspace Learning for Language Model Continual Learning",
Findings of EMNLP 2023, arXiv 2310.14152), on r1lab's layer.

Each task learns a new LoRA; the LoRAs of earlier tasks are frozen and summed into the weight,
and the new LoRA's *input* subspace, the row space of A_t, is pushed away from the row spaces
of the earlier A_i by a penalty on their cross products:

    y      = W0 x + b + s * B_t A_t x~,      W0 = W_orig + s * sum_{i<t} B_i A_i   (frozen)
    L_orth = sum_{i<t} || A_i A_t^T ||_F^2  = sum_{i<t} sum_{j,k} (a_{i,j} . a_{t,k})^2
    L      = L_task + lambda_1 * L_orth                     (from the second task on)

In r1lab that is plain LoRA (``lora.py``: all r experts active and merged at the end of each
task) plus the loss: the layer already keeps the factors of every merge (``merged_A``, the rows
A_i of earlier tasks), which are the constants of L_orth. The sum runs over every pool of the
model. Since A_t x is what the new update reads, an A_t orthogonal to the A_i reads directions
of the input that earlier updates did not read.

Choices the paper leaves to us (docs/method.md sec. 14.1):
    lambda_1 = ``cfg.olora_weight`` (0.5); the squared Frobenius form above; no extra L2 term on
    the new LoRA; the penalty summed (not averaged) over pools.
"""
from __future__ import annotations

from typing import Optional

import torch

from r1lab.config import DACConfig
from r1lab.methods.lora import LoRA
from r1lab.methods.registry import register
from r1lab.poolset import PoolSet


def orthogonality_loss(pools) -> Optional[torch.Tensor]:
    """L_orth = sum over pools of ||A_past A^T||_F^2 (None when no pool has a past)."""
    terms = [(pool.merged_A @ pool.A.T).pow(2).sum() for pool in pools if pool.merged_A.shape[0]]
    return torch.stack(terms).sum() if terms else None


@register
class OLoRA(LoRA):
    name = "o-lora"
    reads = ("olora_weight",)
    summary = "O-LoRA: a new LoRA per task, its A kept orthogonal to earlier tasks' A (penalty)"

    def penalty(self, pools: PoolSet, cfg: DACConfig, task_index: int) -> Optional[torch.Tensor]:
        if task_index == 0 or cfg.olora_weight <= 0:
            return None
        return orthogonality_loss(pools.values())

    def penalty_weight(self, cfg: DACConfig) -> float:
        return cfg.olora_weight
