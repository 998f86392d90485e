"""r1lab: learn, reproduce and extend DAC, continual learning of CLIP with a rank-1 expert
pool in a single LoRA (Fa et al., AAAI 2026, arXiv 2601.22828).

Public API (everything a notebook needs is importable from here).
"""
__version__ = "0.1.0"

from .config import DACConfig, METHODS, method_config
from .pool import ExpertPoolLinear, Route, RouteToken
from .poolset import PoolSet
from .ago import ago_loss, pool_ago, cross_gram
from .attach import attach_pools, detach_pools, merged_state_dict, save_merged
from .accounting import count_parameters, ParamCount, mib

__all__ = [
    "__version__", "DACConfig", "METHODS", "method_config",
    "ExpertPoolLinear", "Route", "RouteToken", "PoolSet",
    "ago_loss", "pool_ago", "cross_gram",
    "attach_pools", "detach_pools", "merged_state_dict", "save_merged",
    "count_parameters", "ParamCount", "mib",
]
