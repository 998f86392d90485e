"""r1lab: learn, reproduce and extend DAC, continual learning of CLIP with a rank-1 expert
pool in a single LoRA (Fa et al., AAAI 2026, arXiv 2601.22828).

Public API: everything a notebook needs is importable from here.

    cfg = DACConfig.paper()                         # every hyper-parameter (config.py)
    pools = attach_pools(model, cfg)                # expert pools on open_clip (attach.py)
    res = run_stream(benchmark, bundle, cfg, "dac") # a continual-learning run (engine/run.py)
    compare(["dac", "lora"], seeds=[0, 1])          # methods x seeds (engine/comparison.py)
    get_method("dac-svd")                           # a method plug-in (methods/)

The layers (docs/architecture.md), each importing only those below it:

    cli                         the command line
    scale                       sweeps
    teach                       plots, widgets, the method diagram, exercises (lazy)
    analysis                    accounting, diagnostics, ties, router census
    engine                      training, evaluation, the run loop, run folders, presets
    methods                     DAC, LoRA, zero-shot, ablations and variants as plug-ins
    data                        task streams: the generated world, MTIL / X-TAIL
    core                        config, pool, routing, ago, poolset, attach, attention, errors

``plots``, ``widgets``, ``diagram``, ``exercises`` and ``notebook`` load on first use, so
``import r1lab`` (and every training process) loads neither matplotlib, seaborn nor ipywidgets.

Data-parallel (torchrun): ``r1lab.distributed.init()`` in every process, then the same
``run_stream`` call everywhere (``torchrun ... -m r1lab run`` does both).
"""
import importlib
import importlib.abc
import importlib.util
import sys

from r1lab._version import __version__
from r1lab.config import DACConfig
from r1lab.routing import Route, RouteToken
from r1lab.pool import ExpertPoolLinear
from r1lab.poolset import PoolSet
from r1lab.ago import ago_loss, pool_ago, cross_gram
from r1lab.attach import detach_pools, merged_state_dict, save_merged
from r1lab.errors import (CheckpointCorrupt, ConfigError, DistributedError, RunDiverged, RunLocked,
                          RunMismatch)
from r1lab.methods import (METHODS, Method, attach_pools, get_method, make_pool, method_config,
                           register)
from r1lab.data.stream import Benchmark, Task, few_shot
from r1lab.analysis.accounting import count_parameters, count_for_rank, vit_b16_shapes, ParamCount, mib
from r1lab.engine.evaluate import accuracy_row, zeroshot_head, zeroshot_table
from r1lab.engine.metrics import Metrics, format_table, per_dataset, summarize
from r1lab.engine.models import ClipBundle, load_clip
from r1lab.engine.train import contrastive_loss, train_task
from r1lab.engine.run import RunOptions, RunResult, load_run, run_stream
from r1lab.engine.presets import make_benchmark, preset
from r1lab.engine.comparison import Comparison, compare
from r1lab.engine.cached_runs import cached_run
from r1lab.engine import distributed, metrics
from r1lab.analysis import diagnostics

# Modules that moved into the layers in 0.1.x: the old dotted paths keep working for this
# release (``r1lab.plots``, ``from r1lab.widgets import ...``, ``import r1lab.run``), and load
# lazily, so that importing r1lab never imports the plotting stack.
MOVED = {
    "r1lab.benchmark": "r1lab.data.stream",
    "r1lab.world": "r1lab.data.world",
    "r1lab.world.benchmark": "r1lab.data.world.stream",
    "r1lab.world.captions": "r1lab.data.world.captions",
    "r1lab.world.domains": "r1lab.data.world.domains",
    "r1lab.world.render": "r1lab.data.world.render",
    "r1lab.world.pretrain": "r1lab.engine.pretrain_world",
    "r1lab.datasets": "r1lab.data.mtil",
    "r1lab.datasets.checks": "r1lab.data.mtil.checks",
    "r1lab.datasets.fixtures": "r1lab.data.mtil.fixtures",
    "r1lab.datasets.mtil": "r1lab.data.mtil.folders",
    "r1lab.datasets.synthetic": "r1lab.data.mtil.synthetic",
    "r1lab.models": "r1lab.engine.models",
    "r1lab.train": "r1lab.engine.train",
    "r1lab.evaluate": "r1lab.engine.evaluate",
    "r1lab.run": "r1lab.engine.run",
    "r1lab.runfolder": "r1lab.engine.runfolder",
    "r1lab.files": "r1lab.engine.atomic",
    "r1lab.identity": "r1lab.engine.identity",
    "r1lab.cache": "r1lab.engine.testset_cache",
    "r1lab.runcache": "r1lab.engine.cached_runs",
    "r1lab.experiment": "r1lab.engine.comparison",
    "r1lab.sweep": "r1lab.scale.sweep",
    "r1lab.accounting": "r1lab.analysis.accounting",
    "r1lab.ties": "r1lab.analysis.ties",
    "r1lab.route_inputs": "r1lab.analysis.router_census",
    "r1lab.beyond": "r1lab.analysis.variants_study",
    "r1lab.plots": "r1lab.teach.plots",
    "r1lab.widgets": "r1lab.teach.widgets",
    "r1lab.diagram": "r1lab.teach.diagram",
    "r1lab.exercises": "r1lab.teach.exercises",
    "r1lab.notebook": "r1lab.teach.notebook",
    "r1lab.metrics": "r1lab.engine.metrics",
    "r1lab.distributed": "r1lab.engine.distributed",
    "r1lab.diagnostics": "r1lab.analysis.diagnostics",
}


def __getattr__(name: str):
    """``r1lab.plots`` and the other moved modules, imported on first use."""
    target = MOVED.get(f"{__name__}.{name}")
    if target is None:
        raise AttributeError(f"module 'r1lab' has no attribute {name!r}")
    module = importlib.import_module(target)
    globals()[name] = module
    return module


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import r1lab.<old path>`` gives the module at its new path (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec   # keep the module's own identity (import set the alias's)


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())

__all__ = [
    "__version__", "DACConfig", "METHODS", "Method", "get_method", "make_pool", "method_config",
    "register", "ExpertPoolLinear", "Route", "RouteToken", "PoolSet",
    "ago_loss", "pool_ago", "cross_gram",
    "attach_pools", "detach_pools", "merged_state_dict", "save_merged",
    "count_parameters", "count_for_rank", "vit_b16_shapes", "ParamCount", "mib",
    "Benchmark", "Task", "few_shot",
    "accuracy_row", "zeroshot_head", "zeroshot_table",
    "Metrics", "format_table", "per_dataset", "summarize",
    "ClipBundle", "load_clip", "contrastive_loss", "train_task",
    "RunOptions", "RunResult", "load_run", "run_stream",
    "Comparison", "compare", "make_benchmark", "preset",
    "cached_run", "CheckpointCorrupt", "ConfigError", "DistributedError", "RunDiverged",
    "RunLocked", "RunMismatch",
    "diagnostics", "distributed", "metrics", "plots", "widgets", "diagram", "exercises", "notebook",
]
