"""Which layer a configuration asks for: the paper's ``ExpertPoolLinear``, or it combined with
the variant layers that its switches select. Each variant layer registers the switch that
selects it, in its own file:

    order 10  consolidate > 0        consolidation.ConsolidatingPool
    order 20  top_k == rank          lora.DensePool
    order 30  router gate / ste      learned_router.LearnedRouterPool
    order 40  selection "sample"     sample_selection.SampleSelectionPool
    order 50  merge_rule "svd"       svd_merge.SVDMergePool

Several selected layers combine by inheritance in that order (the first wins where two override
the same step: a consolidated set overrides the vote, k = r skips routing).
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Tuple

import torch.nn as nn

from r1lab import attach
from r1lab.config import DACConfig
from r1lab.pool import ExpertPoolLinear
from r1lab.poolset import PoolSet
from r1lab.routing import RouteToken

_LAYERS: List[Tuple[int, Callable[[DACConfig], bool], type]] = []


def variant_layer(order: int, when: Callable[[DACConfig], bool]):
    """Class decorator for a subclass of ``ExpertPoolLinear``: it becomes part of the layer of
    every configuration for which ``when(cfg)`` holds."""
    def register(cls: type) -> type:
        if not issubclass(cls, ExpertPoolLinear):
            raise TypeError(f"{cls.__name__} must subclass ExpertPoolLinear")
        _LAYERS.append((order, when, cls))
        _LAYERS.sort(key=lambda entry: entry[0])
        _combined.cache_clear()
        return cls
    return register


def pool_class(cfg: DACConfig) -> type:
    """The layer class for ``cfg`` (see the module docstring)."""
    chosen = tuple(cls for _, when, cls in _LAYERS if when(cfg))
    if not chosen:
        return ExpertPoolLinear
    return chosen[0] if len(chosen) == 1 else _combined(chosen)


@functools.lru_cache(maxsize=None)
def _combined(classes: Tuple[type, ...]) -> type:
    name = "".join(c.__name__[:-len("Pool")] for c in classes) + "Pool"
    return type(name, classes, {"__doc__": " + ".join(c.__name__ for c in classes)})


def make_pool(base: nn.Linear, cfg: DACConfig, route_token: Optional[RouteToken] = None):
    """One pool on the linear ``base``, of the layer ``cfg`` asks for."""
    return pool_class(cfg)(base, cfg, route_token)


def attach_pools(model: nn.Module, cfg: DACConfig, **kw) -> PoolSet:
    """``r1lab.attach.attach_pools`` with the layer ``cfg`` asks for (``pool_class``)."""
    return attach.attach_pools(model, cfg, pool_class=pool_class(cfg), **kw)
