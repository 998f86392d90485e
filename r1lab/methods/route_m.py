"""``dac-route-m`` (docs/method.md sec. 13): compose only m experts per batch (k = m), so the
vote picks exactly what can be merged and no trained expert is thrown away at the merge."""
from __future__ import annotations

from r1lab.config import DACConfig
from r1lab.methods.dac import DAC
from r1lab.methods.registry import register


@register
class RouteM(DAC):
    name = "dac-route-m"
    summary = "compose only m experts per batch (k = m): the vote picks what merges"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(top_k=cfg.merge_k)
