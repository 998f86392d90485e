"""``PoolSet``: the pools of one model, by qualified module name, with task-level operations.

Every operation here is a loop over ``ExpertPoolLinear`` methods; the maths lives in
``pool.py`` (the layer) and ``ago.py`` (the loss).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Dict, Iterator, List

import torch
import torch.nn as nn

from .config import DACConfig
from .pool import ExpertPoolLinear, Route


class PoolSet(OrderedDict):
    """Ordered ``{qualified name: ExpertPoolLinear}`` returned by ``attach_pools``."""

    def __init__(self, pools: Dict[str, ExpertPoolLinear], cfg: DACConfig):
        super().__init__(pools)
        self.cfg = cfg

    # ------------------------------------------------------------------ views
    @staticmethod
    def tower_of(name: str) -> str:
        return "image" if name.startswith("visual.") else "text"

    def tower(self, tower: str) -> "PoolSet":
        """The pools of one tower ("image" or "text")."""
        return PoolSet({n: p for n, p in self.items() if self.tower_of(n) == tower}, self.cfg)

    def block_index(self, name: str) -> int:
        return int(name.split(".resblocks.")[1].split(".")[0])

    def trainable_parameters(self) -> List[nn.Parameter]:
        """A and B of every pool, plus the routers when they are learned."""
        return [p for pool in self.values() for p in pool.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ task life cycle
    def reset(self) -> None:
        """Fresh pools for a new task (seed the global RNG first for reproducibility)."""
        for pool in self.values():
            pool.reset()

    def consolidate(self) -> Dict[str, torch.Tensor]:
        """Fix every pool's active set to its current top-m for the rest of the task
        (docs/method.md sec. 13.3); returns {name: fixed expert indices}."""
        return {name: pool.consolidate() for name, pool in self.items()}

    def hold_others(self) -> None:
        """During consolidation: experts outside the fixed sets stay where they were."""
        for pool in self.values():
            pool.hold_others()

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
