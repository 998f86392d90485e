"""Continual learners as plug-ins on one engine (docs/architecture.md).

Each method is one class in one file, registered by name; the engine calls it at a few named
points (``base.Method``). A variant of the paper's layer is a subclass of
``r1lab.pool.ExpertPoolLinear`` in the variant's file, chosen from the configuration's switches
(``layers.pool_class``).

    zeroshot.py          zeroshot         the untouched CLIP
    dac.py               dac              the paper: expert pool + AGO
    lora.py              lora             plain sequential LoRA (DensePool: k = r)
    ablations.py         dac-no-ago, dac-no-route, dac-merge-all
    eot_routing.py       dac-eot          text routers read the end-of-text token
    learned_router.py    dac-gate         a router trained through expert weights
    consolidation.py     dac-consolidate  the last share of a task trains only the top-m
    svd_merge.py         dac-svd          merge the rank-m truncated SVD of the update
    route_m.py           dac-route-m      compose only m experts (k = m)
    sample_selection.py  (switch)         per-sample expert sets, no batch vote

    the LoRA family (docs/method.md sec. 14), each on plain LoRA's layer:
    o_lora.py            o-lora           a new A per task kept orthogonal to earlier ones
    inflora.py           inflora          A designed orthogonal to earlier inputs, only B trained
    sd_lora.py           sd-lora          fixed directions of earlier tasks, learned magnitudes
    loramoe.py           loramoe          experts mixed per token by a soft router (not merged)
    codyra.py            codyra           importance weights pruned to zero, kept ones merged
"""
from r1lab.config import DACConfig
from r1lab.methods.base import Method
from r1lab.methods.registry import get_method, names, register
from r1lab.methods import zeroshot, dac, lora, ablations  # noqa: F401  (registers, in this order)
from r1lab.methods import eot_routing, learned_router, consolidation, svd_merge, route_m  # noqa: F401
from r1lab.methods import o_lora, inflora, sd_lora, loramoe, codyra  # noqa: F401
from r1lab.methods.layers import attach_pools, make_pool, pool_class

METHODS = tuple(names())
BEYOND = ("dac-eot", "dac-gate", "dac-consolidate", "dac-svd", "dac-route-m")
LORA_FAMILY = ("o-lora", "inflora", "sd-lora", "loramoe", "codyra")


def method_config(method: str, cfg: DACConfig) -> DACConfig:
    """The configuration ``method`` runs: ``get_method(method).configure(cfg)``."""
    return get_method(method).configure(cfg)


__all__ = ["Method", "METHODS", "BEYOND", "LORA_FAMILY", "get_method", "names", "register", "method_config",
           "pool_class", "make_pool", "attach_pools"]
