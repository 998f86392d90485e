"""The paper's ablations of DAC (docs/method.md sec. 12), each one change of configuration:

    dac-no-ago      lambda = 0: routing and the top-m merge without the AGO loss
    dac-no-route    k = m = r with AGO: every expert active and merged (densely
                    orthogonalised LoRA; its layer is lora.DensePool)
    dac-merge-all   m = k: every expert that was active may be merged
"""
from __future__ import annotations

from r1lab.config import DACConfig
from r1lab.methods.dac import DAC
from r1lab.methods.registry import register


@register
class NoAGO(DAC):
    name = "dac-no-ago"
    summary = "DAC with lambda = 0"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(ago_weight=0.0)


@register
class NoRoute(DAC):
    name = "dac-no-route"
    summary = "no routing: all r experts active and merged, AGO on (LoRA + AGO)"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(top_k=cfg.rank, merge_k=cfg.rank)


@register
class MergeAll(DAC):
    name = "dac-merge-all"
    summary = "DAC that merges every active expert (m = k)"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(merge_k=cfg.top_k)
