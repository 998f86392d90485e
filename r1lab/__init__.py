"""r1lab: learn, reproduce and extend DAC, continual learning of CLIP with a rank-1 expert
pool in a single LoRA (Fa et al., AAAI 2026, arXiv 2601.22828).

Public API: everything a notebook needs is importable from here.

    cfg = DACConfig.paper()                         # every hyper-parameter (config.py)
    pools = attach_pools(model, cfg)                # expert pools on open_clip (attach.py)
    res = run_stream(benchmark, bundle, cfg, "dac") # a continual-learning run (run.py)
    compare(["dac", "lora"], seeds=[0, 1])          # methods x seeds (experiment.py)

Data-parallel (torchrun): ``r1lab.distributed.init()`` in every process, then the same
``run_stream`` call everywhere (``torchrun ... -m r1lab run`` does both; distributed.py).
"""
__version__ = "0.1.0"

from .config import DACConfig, METHODS, method_config
from .pool import ExpertPoolLinear, Route, RouteToken
from .poolset import PoolSet
from .ago import ago_loss, pool_ago, cross_gram
from .attach import attach_pools, detach_pools, merged_state_dict, save_merged
from .accounting import count_parameters, count_for_rank, vit_b16_shapes, ParamCount, mib
from .benchmark import Benchmark, Task, few_shot
from .evaluate import accuracy_row, zeroshot_head, zeroshot_table
from .metrics import Metrics, format_table, per_dataset, summarize
from .models import ClipBundle, load_clip
from .train import contrastive_loss, train_task
from .run import RunResult, load_run, run_stream
from .experiment import Comparison, compare, make_benchmark, preset
from .runcache import cached_run
from .errors import (CheckpointCorrupt, ConfigError, DistributedError, RunDiverged, RunLocked,
                     RunMismatch)
from . import diagnostics, distributed, metrics, plots, widgets
from . import diagram, exercises, notebook

__all__ = [
    "__version__", "DACConfig", "METHODS", "method_config",
    "ExpertPoolLinear", "Route", "RouteToken", "PoolSet",
    "ago_loss", "pool_ago", "cross_gram",
    "attach_pools", "detach_pools", "merged_state_dict", "save_merged",
    "count_parameters", "count_for_rank", "vit_b16_shapes", "ParamCount", "mib",
    "Benchmark", "Task", "few_shot",
    "accuracy_row", "zeroshot_head", "zeroshot_table",
    "Metrics", "format_table", "per_dataset", "summarize",
    "ClipBundle", "load_clip", "contrastive_loss", "train_task",
    "RunResult", "load_run", "run_stream",
    "Comparison", "compare", "make_benchmark", "preset",
    "cached_run", "CheckpointCorrupt", "ConfigError", "DistributedError", "RunDiverged",
    "RunLocked", "RunMismatch",
    "diagnostics", "distributed", "metrics", "plots", "widgets", "diagram", "exercises", "notebook",
]
