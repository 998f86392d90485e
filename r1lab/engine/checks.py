"""Everything a run can check before any work (``preflight``) and the images it will train on
(``verify_data``): a bad input fails in seconds with one message naming it, not in task 2."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from r1lab.attach import plan_pools
from r1lab.config import DACConfig
from r1lab.data.stream import Benchmark
from r1lab.engine import distributed
from r1lab.engine.identity import model_image_size, stream_name
from r1lab.errors import ConfigError


def _first_image(ds) -> torch.Tensor:
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][0]
    return ds[0][0]


def preflight(benchmark: Benchmark, bundle, cfg: DACConfig, trains: bool = True, num_workers=0,
              stop_after=None) -> None:
    """Everything that can be checked before any work: raises ``ConfigError`` naming it.

    The stream (at least one task; one task is fine, its Transfer is undefined), worker and
    stop counts, per-task learning rates against the stream's datasets, and the model's input
    size against the images of the benchmark's first task (one image decoded).
    """
    if len(benchmark.tasks) == 0:
        raise ConfigError(f"the benchmark {benchmark.name} has no tasks")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers (--workers) must be an integer >= 0, got {num_workers!r}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or stop_after < 1):
        raise ConfigError(f"stop_after must be an integer >= 1 or None, got {stop_after!r}")
    if trains:
        cfg.check_stream(benchmark.task_names, stream_name(benchmark))
        distributed.check_batch(cfg.batch_size)
        try:                                  # blocks / towers / targets the model has
            plan_pools(bundle.model, cfg)
        except ValueError as e:
            raise ConfigError(str(e).strip().splitlines()[0]) from None
    side = model_image_size(bundle.model)
    if side is None:
        return
    task = benchmark.tasks[0]
    for split, ds in (("test", task.test), ("train", task.train)):
        if len(ds) == 0:
            continue
        try:
            shape = tuple(_first_image(ds).shape[-2:])
        except Exception:  # noqa: BLE001 - a corrupt image: verify_data reports every one
            continue
        if shape != (side, side):
            raise ConfigError(
                f"the model {getattr(bundle, 'name', '?')} takes {side}x{side} images, but the "
                f"{benchmark.name} benchmark's {split} images are {shape[0]}x{shape[1]} (task "
                f"{task.name}): use a model made for {shape[0]}-px images (MTIL / X-TAIL: e.g. "
                f"--model ViT-B-16-quickgelu), or a benchmark made for this model (the tiny CLIP: "
                f"--benchmark world)")


def verify_data(benchmark: Benchmark, cfg: DACConfig, tasks) -> None:
    """Decode every image of the few-shot subsets of ``tasks`` (indices) before training;
    raise ``DataRootProblems`` / ``DatasetIncomplete`` listing every corrupt file by path."""
    todo = [benchmark.tasks[t] for t in tasks if not isinstance(benchmark.tasks[t].train, TensorDataset)]
    if not todo or not cfg.shots:
        return
    from r1lab.data.mtil import DataRootProblems, DatasetIncomplete, few_shot_problems
    problems = [p for task in todo for p in few_shot_problems(task, cfg.shots, cfg.seed)]
    if len(problems) == 1:
        raise DatasetIncomplete(problems[0])
    if problems:
        raise DataRootProblems(problems)
