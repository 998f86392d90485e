"""``PoolSet``: the pools of one model, by qualified module name, with task-level operations.

Every operation here is a loop over ``ExpertPoolLinear`` methods; the maths lives in
``pool.py`` (the layer) and ``ago.py`` (the loss).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Dict, Iterator, List, NamedTuple

import torch
import torch.nn as nn

from r1lab.config import DACConfig
from r1lab.pool import ExpertPoolLinear
from r1lab.routing import Route


class PoolAddress(NamedTuple):
    """Where a pool sits: ``visual.transformer.resblocks.3.mlp.c_fc`` -> ("image", 3, "c_fc")."""
    tower: str
    block: int
    target: str

    @classmethod
    def of(cls, name: str) -> "PoolAddress":
        """The address of the pool at the module path ``name`` (as ``attach_pools`` names it)."""
        try:
            block = int(name.split(".resblocks.")[1].split(".")[0])
        except (IndexError, ValueError):
            raise ValueError(f"{name!r} is not a pool path (…resblocks.<block>.…<target>)") from None
        return cls("image" if name.startswith("visual.") else "text", block, name.rsplit(".", 1)[-1])

    def words(self) -> str:
        """"image tower, block 3, c_fc"."""
        return f"{self.tower} tower, block {self.block}, {self.target}"


class PoolSet(OrderedDict):
    """Ordered ``{qualified name: ExpertPoolLinear}`` returned by ``attach_pools``."""

    def __init__(self, pools: Dict[str, ExpertPoolLinear], cfg: DACConfig):
        super().__init__(pools)
        self.cfg = cfg

    # ------------------------------------------------------------------ views
    @staticmethod
    def tower_of(name: str) -> str:
        return PoolAddress.of(name).tower

    def tower(self, tower: str) -> "PoolSet":
        """The pools of one tower ("image" or "text")."""
        return PoolSet({n: p for n, p in self.items() if self.tower_of(n) == tower}, self.cfg)

    @staticmethod
    def block_index(name: str) -> int:
        return PoolAddress.of(name).block

    def find(self, tower: str, block: int, target: str):
        """The name of the pool at (tower, block, target), or None."""
        return next((n for n in self if PoolAddress.of(n) == (tower, block, target)), None)

    def trainable_parameters(self) -> List[nn.Parameter]:
        """A and B of every pool, plus the routers when they are learned."""
        return [p for pool in self.values() for p in pool.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ task life cycle
    def reset(self) -> None:
        """Fresh pools for a new task (seed the global RNG first for reproducibility)."""
        for pool in self.values():
            pool.reset()

    def before_step(self, step: int) -> None:
        """The step schedule of layers that have one (consolidation), before step ``step``."""
        for pool in self.values():
            if hasattr(pool, "before_step"):
                pool.before_step(step)

    def after_step(self, step: int) -> None:
        """... and right after the optimiser step."""
        for pool in self.values():
            if hasattr(pool, "after_step"):
                pool.after_step(step)

    def use_collective(self, collective) -> None:
        """How every pool combines its vote over processes (``routing.Collective``)."""
        for pool in self.values():
            pool.collective = collective

    def end_task(self) -> Dict[str, torch.Tensor]:
        """Merge every pool's top-m experts; returns {name: merged expert indices}."""
        return {name: pool.end_task() for name, pool in self.items()}

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the model as its base (merged) weights only: the un-merged pool is ignored."""
        before = [p.enabled for p in self.values()]
        for p in self.values():
            p.enabled = False
        try:
            yield
        finally:
            for p, b in zip(self.values(), before):
                p.enabled = b

    # ------------------------------------------------------------------ diagnostics
    def counts(self) -> Dict[str, torch.Tensor]:
        """{name: (rank,) activation counts of the current task}."""
        return {name: pool.counts.detach().cpu().clone() for name, pool in self.items()}

    def counts_matrix(self, tower: str) -> torch.Tensor:
        """(pools of the tower, rank) counts, in block/target order."""
        return torch.stack([p.counts.detach().cpu() for p in self.tower(tower).values()])

    def last_routes(self) -> Dict[str, Route]:
        return {name: pool.last for name, pool in self.items() if pool.last is not None}

    # ------------------------------------------------------------------ checkpoints
    def adapter_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {name: pool.adapter_state() for name, pool in self.items()}

    def load_adapter_state(self, state: Dict[str, Dict[str, torch.Tensor]],
                           replay_merges: bool = True) -> None:
        missing = set(self) ^ set(state)
        if missing:
            raise KeyError(f"adapter state does not match the attached pools: {sorted(missing)[:5]}")
        for name, pool in self.items():
            pool.load_adapter_state(state[name], replay_merges=replay_merges)
