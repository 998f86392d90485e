"""``dac-eot`` (docs/method.md sec. 13): the text tower's routers read the end-of-text token
instead of token 0.

With causal attention, token 0 of every caption is the same start-of-text embedding at every
layer, so DAC's text routers see a constant and vote for the same experts for every input
(``r1lab/analysis/router_census.py`` counts them). The end-of-text token has read the whole
caption. ``r1lab/attach.py`` finds its position per batch (``RouteToken``).
"""
from __future__ import annotations

from r1lab.config import DACConfig
from r1lab.methods.dac import DAC
from r1lab.methods.registry import register


@register
class EOTRouting(DAC):
    name = "dac-eot"
    summary = "text pools route on the end-of-text token instead of start-of-text"

    def configure(self, cfg: DACConfig) -> DACConfig:
        return cfg.replace(text_route_token="eot")
