"""Parameter accounting, under one stated rule (docs/method.md sec. 2).

Counted as DAC's trainable parameters: every pool's A (r x d_in) and B (d_out x r), and its
router (d_in x r weight + r bias) counted apart, whether the router is frozen (the code) or
learned. Not counted: the frozen CLIP weights, buffers (counts, past columns).
MiB = parameters x 4 bytes / 2^20 (fp32).

Paper preset on ViT-B/16: text 1,991,520 + image 2,986,848 = 4,978,368 = 18.99 MiB
(3,317,760 without routers); the whole CLIP is 149,620,737 = 570.76 MiB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch.nn as nn

from r1lab.poolset import PoolSet


def mib(n_params: int, bytes_per_param: int = 4) -> float:
    return n_params * bytes_per_param / 2 ** 20


@dataclass
class TowerCount:
    pools: int
    lora: int      # A and B
    router: int    # router weight and bias

    @property
    def total(self) -> int:
        return self.lora + self.router


@dataclass
class ParamCount:
    towers: Dict[str, TowerCount]
    model_total: int       # every parameter of the (unadapted) CLIP

    @property
    def pools(self) -> int:
        return sum(t.pools for t in self.towers.values())

    @property
    def total(self) -> int:
        return sum(t.total for t in self.towers.values())

    @property
    def without_routers(self) -> int:
        return sum(t.lora for t in self.towers.values())

    @property
    def total_mib(self) -> float:
        return mib(self.total)

    @property
    def model_mib(self) -> float:
        return mib(self.model_total)

    def table(self) -> str:
        rows = [f"{'tower':<8}{'pools':>7}{'A+B':>12}{'routers':>12}{'total':>12}{'MiB':>9}"]
        for name, t in self.towers.items():
            rows.append(f"{name:<8}{t.pools:>7}{t.lora:>12,}{t.router:>12,}{t.total:>12,}{mib(t.total):>9.2f}")
        rows.append(f"{'all':<8}{self.pools:>7}{self.without_routers:>12,}"
                    f"{self.total - self.without_routers:>12,}{self.total:>12,}{self.total_mib:>9.2f}")
        rows.append(f"CLIP itself: {self.model_total:,} parameters = {self.model_mib:.2f} MiB; "
                    f"DAC trains {100 * (1 - self.total / self.model_total):.1f} % fewer")
        return "\n".join(rows)


def count_parameters(pools: PoolSet, model: nn.Module) -> ParamCount:
    towers: Dict[str, TowerCount] = {}
    for name, pool in pools.items():
        t = towers.setdefault(pools.tower_of(name), TowerCount(0, 0, 0))
        t.pools += 1
        t.lora += pool.A.numel() + pool.B.numel()
        t.router += sum(p.numel() for p in pool.router.parameters())
    # Adapter parameters are A, B and routers; everything else is the frozen CLIP. Split
    # attention replaces the fused q/k/v/o weights 1:1, so this equals the plain model's count.
    adapter_ids = {id(p) for pool in pools.values()
                   for p in (pool.A, pool.B, *pool.router.parameters())}
    base = sum(p.numel() for p in model.parameters() if id(p) not in adapter_ids)
    return ParamCount(towers=towers, model_total=base)


def pool_shapes(pools: PoolSet) -> list:
    """[(tower, d_in, d_out)] of every pool: enough to count any rank without a model."""
    return [(pools.tower_of(n), p.in_features, p.out_features) for n, p in pools.items()]


def count_for_rank(shapes: list, rank: int) -> Dict[str, TowerCount]:
    """Per-tower counts for pools of ``rank`` on these shapes: A+B = r (d_in + d_out),
    router = r d_in + r."""
    out: Dict[str, TowerCount] = {}
    for tower, d_in, d_out in shapes:
        t = out.setdefault(tower, TowerCount(0, 0, 0))
        t.pools += 1
        t.lora += rank * (d_in + d_out)
        t.router += rank * d_in + rank
    return out


# The 144 pool shapes of the paper preset on CLIP ViT-B/16 (both towers, 12 blocks, q/k/v/o,
# c_fc, c_proj): derived from the architecture, so notebooks can count without building it.
def vit_b16_shapes() -> list:
    shapes = []
    for tower, d in (("image", 768), ("text", 512)):
        for _ in range(12):
            shapes += [(tower, d, d)] * 4 + [(tower, d, 4 * d), (tower, 4 * d, d)]
    return shapes


VIT_B16_PARAMS = 149_620_737   # every parameter of CLIP ViT-B/16 (open_clip ViT-B-16-quickgelu)
