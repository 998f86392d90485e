"""The method interface: what a continual learner may change in the engine's task loop.

The engine (``r1lab/engine/run.py``) runs every method through the same loop and calls a
method at five named points; a method overrides only those where it differs from DAC:

    configure(cfg)                      the method's configuration of the layer
    attach(model, cfg) -> PoolSet       how it changes the model (which layer, where)
    penalty(pools, cfg, t) -> term      an extra loss term of a training step, unweighted,
    penalty_weight(cfg)                 and its weight: L = L_task + weight * term
    before_step / after_step            before the forward, after the optimiser step
    end_task(pools) -> merged experts   at the end of each task (merge, keep what is needed)
    evaluation(pools)                   how the model is evaluated after end_task (a context)

``trains = False`` (zero-shot) skips training and merging: the loop only evaluates.
Methods that score test images their own way will add a sixth point, ``score``.

A method is one class in one file of ``r1lab/methods/``, registered by name with
``@register`` (``r1lab/methods/__init__.py``); docs/architecture.md walks through adding one.
"""
from __future__ import annotations

from typing import Dict, Optional

import contextlib

import torch

from r1lab.config import DACConfig
from r1lab.methods.layers import attach_pools
from r1lab.poolset import PoolSet


class Method:
    """The defaults at every point: the model's pools train on L_task alone and are merged by
    their layer's own rule at the end of each task. ``DAC`` (dac.py) adds the AGO loss."""

    name: str = ""          # the registry key (``--method NAME``)
    summary: str = ""       # one line for tables and ``--help``
    trains: bool = True     # False: nothing is trained or merged (zero-shot)
    merges: bool = True     # False: the layers stay in the model at inference (not plain CLIP)
    reads: tuple = ()       # the LoRA-family config fields it reads (config.FAMILY_FIELDS)

    def configure(self, cfg: DACConfig) -> DACConfig:
        """The configuration this method runs: ``cfg`` with the method's own settings."""
        return cfg

    def attach(self, model, cfg: DACConfig) -> PoolSet:
        """Put the method's layers on the model; returns the pools it trains."""
        return attach_pools(model, cfg)

    def penalty(self, pools: PoolSet, cfg: DACConfig, task_index: int) -> Optional[torch.Tensor]:
        """An extra loss term of a training step (unweighted), or None."""
        return None

    def penalty_weight(self, cfg: DACConfig) -> float:
        return 0.0

    def before_step(self, pools: PoolSet, cfg: DACConfig, step: int) -> None:
        """Called before the forward pass of optimiser step ``step`` (0-based). The default
        runs the schedule of layers that have one (consolidation, methods/consolidation.py)."""
        pools.before_step(step)

    def after_step(self, pools: PoolSet, cfg: DACConfig, step: int) -> None:
        """Called right after the optimiser updated the parameters at step ``step``."""
        pools.after_step(step)

    def end_task(self, pools: PoolSet) -> Dict[str, torch.Tensor]:
        """Merge what the task learned into the model; returns {pool name: merged experts}."""
        return pools.end_task()

    def evaluation(self, pools: PoolSet) -> contextlib.AbstractContextManager:
        """The context the model is evaluated in after ``end_task``. A merging method's fresh
        pools have B = 0, so the model is its merged weights: the pools are switched off. A
        method that keeps its layers at inference (``merges = False``) evaluates through them."""
        return pools.disabled() if self.merges else contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"<method {self.name!r}: {self.summary}>"
