"""One home for configuration: presets, benchmarks by name, and how the command line's
``--preset / --benchmark / --set`` resolve to a ``DACConfig`` and a ``Benchmark``. The CLI, the
sweep and the notebooks all come here.

    preset("world") / preset("paper") / preset("tiny")
    make_benchmark("world")                         the bundled offline default (no download)
    make_benchmark("mtil", data_root=..., order="I")   the 11 MTIL datasets on local folders
    make_benchmark("xtail", data_root=...)          X-TAIL (union label space)
    resolve_config("paper", "mtil", "II", ["iterations=200"])
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from r1lab.config import DACConfig
from r1lab.data.stream import Benchmark
from r1lab.errors import ConfigError, R1labError
from r1lab.methods import METHODS

BENCHMARKS = ("world", "mtil", "xtail", "mtil-synthetic")
PRESETS = ("world", "paper", "tiny")


def preset(name: str, benchmark: str = "world", order: str = "I") -> DACConfig:
    """Named configurations.

    world  the offline default on the generated benchmark and the bundled tiny CLIP:
           the paper's pool (r 12, k 8, m 4, s 1/12, dropout .2, lambda .1) with 16 shots,
           100 iterations per task and lr 5e-3 (2.5x the paper's 2e-3: the tiny model and
           s = 1/12 need it; docs/world.md sec. 8)
    paper  docs/method.md sec. 9 (Order II learning rates, keyed by dataset, with order="II");
           X-TAIL uses 16 shots and has only one order (its rates are not MTIL Order II's)
    tiny   a few iterations, for tests
    """
    if name == "world":
        return DACConfig(lr=5e-3, iterations=100, shots=16, batch_size=32, eval_batch_size=512)
    if name == "paper":
        if benchmark == "xtail":
            if str(order).upper() not in ("I", "1"):
                raise ConfigError(f"X-TAIL has one order (I); --order {order} would give it MTIL "
                                  f"Order II's per-task learning rates. Drop --order for X-TAIL")
            return DACConfig.paper("I").replace(shots=16)
        return DACConfig.paper(order)
    if name == "tiny":
        return DACConfig.tiny()
    raise ConfigError(f"unknown preset {name!r}; choose from {PRESETS}")


def make_benchmark(name: str = "world", data_root: Optional[str] = None, order: Optional[str] = None,
                   names: Optional[Sequence[str]] = None, seed: int = 0, image_size: int = 224,
                   **kw) -> Benchmark:
    """Build a benchmark by name. ``order`` is "I"/"II" for MTIL; for the world, a
    comma-separated list of domain names or None for the default order, and ``kw`` may set
    ``label_space="union"`` (the X-TAIL form) and ``eval_split="val"`` (score on a validation
    split of the training distribution, for choosing hyper-parameters)."""
    if name == "world":
        from r1lab.data.world import make_world_benchmark
        dom = None if order is None else [o.strip() for o in order.split(",")] if isinstance(order, str) else list(order)
        bm = make_world_benchmark(seed=seed, order=dom, **kw)
        return bm.reordered(names) if names else bm
    if name in ("mtil", "xtail"):
        if data_root is None:
            raise ValueError(f"the {name} benchmark reads local dataset folders: pass data_root "
                             f"(--data-root); data/README.md shows the expected layout")
        from r1lab.data.mtil import make_mtil, make_xtail, mtil_transforms
        train_tf, test_tf = mtil_transforms(image_size)
        if name == "mtil":
            return make_mtil(data_root, order=order or "I", train_transform=train_tf,
                             test_transform=test_tf, names=names, **kw)
        return make_xtail(data_root, train_transform=train_tf, test_transform=test_tf, names=names, **kw)
    if name == "mtil-synthetic":   # random images, real MTIL shapes: for timing a full run
        from r1lab.data.mtil.synthetic import make_mtil_synthetic
        return make_mtil_synthetic(order=order or "I", image_size=image_size, names=names, seed=seed, **kw)
    raise ValueError(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options every command that builds a run shares (benchmark, model, preset, --set, ...)."""
    p.add_argument("--benchmark", default="world", choices=("world", "mtil", "xtail", "mtil-synthetic"),
                   help="world: generated offline default; mtil / xtail: local dataset folders")
    p.add_argument("--data-root", default=None, help="folder holding the MTIL datasets (data/README.md)")
    p.add_argument("--order", default=None, help="MTIL order I or II; for world, comma-separated domains")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the order's tasks (quick runs)")
    p.add_argument("--check", default="full", choices=("full", "classes", "none"),
                   help="dataset count checks before training (mtil / xtail)")
    p.add_argument("--model", default="tiny", help="'tiny' (bundled) or an open_clip name, e.g. ViT-B-16-quickgelu")
    p.add_argument("--pretrained", default=None, help="open_clip tag ('openai', needs internet) or a local weights file")
    p.add_argument("--preset", default=None, choices=("world", "paper", "tiny"),
                   help="configuration preset (default: world for the world benchmark, paper otherwise)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a DACConfig field, e.g. --set iterations=200 --set lr=2e-3")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    p.add_argument("--workers", type=int, default=0, help="data-loader workers for caching and evaluation")
    p.add_argument("--bf16", action="store_true", help="evaluate under bf16 autocast (GPU; fp32 is the default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--label-space", default=None, choices=("task", "union"),
                   help="world only: 'union' classifies every test image among all domains' "
                        "classes (the X-TAIL form); default 'task' (MTIL form)")
    p.add_argument("--eval-split", default="test", choices=("test", "val"),
                   help="world only: 'val' scores on a validation split of the training "
                        "distribution (choose hyper-parameters there, report on test)")
    p.add_argument("--test-scale", type=float, default=1.0,
                   help="mtil-synthetic only: shrink every test set to this share (0 < s <= 1)")


def resolve_config(preset_name: Optional[str] = None, benchmark: str = "world",
                   order: Optional[str] = None, sets: Sequence[str] = ()) -> DACConfig:
    """The configuration of a run: the preset (default: world for the world benchmark, paper
    otherwise), then every "FIELD=VALUE" of ``sets`` parsed to the field's declared type."""
    name = preset_name or ("world" if benchmark == "world" else "paper")
    cfg = preset(name, benchmark, order if order in ("I", "II", "1", "2") else "I")
    changes = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        changes[k.strip()] = DACConfig.parse_value(k.strip(), v)
    return cfg.replace(**changes)


def config_from_args(args) -> DACConfig:
    """``resolve_config`` from parsed command-line options."""
    if getattr(args, "workers", 0) < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    return resolve_config(args.preset, args.benchmark, args.order, args.set)


def benchmark_from_args(args) -> Benchmark:
    """The benchmark that command-line options name."""
    kw = {}
    if args.benchmark == "mtil-synthetic":
        # random images at the model's input size (no dataset read: timing only);
        # --test-scale < 1 shrinks the test sets (CPU tests)
        from r1lab.engine.models import model_input_size
        kw["image_size"] = model_input_size(args.model, args.pretrained)
        kw["shots"] = config_from_args(args).shots or 5
        kw["test_scale"] = args.test_scale
    elif args.benchmark != "world":
        kw["check"] = False if args.check == "none" else args.check
    if args.benchmark == "world":
        kw["eval_split"] = args.eval_split
        if args.label_space:
            kw["label_space"] = args.label_space
    elif args.label_space or args.eval_split != "test":
        raise ConfigError(f"--label-space and --eval-split apply to the world benchmark only "
                          f"(mtil has the task label space, xtail the union one)")
    names = None if args.tasks is None else parse_tasks(args.tasks)
    if args.benchmark in ("mtil", "xtail") and not args.data_root:
        raise ConfigError(f"the {args.benchmark} benchmark reads local dataset folders: pass "
                          f"--data-root FOLDER (data/README.md shows the expected layout)")
    if args.benchmark == "mtil" and args.order not in (None, "I", "II", "1", "2"):
        raise ConfigError(f"--order {args.order}: MTIL has orders I and II")
    try:
        return make_benchmark(args.benchmark, data_root=args.data_root, order=args.order,
                              names=names, **kw)
    except R1labError:
        raise
    except (ValueError, KeyError) as e:      # an unknown task or domain, a bad order
        raise ConfigError(_first_line(e)) from None


def parse_tasks(text: str) -> list:
    """--tasks "a,b": the task names, refusing an empty list and repeated names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--tasks {text!r} names no task: give comma-separated task names "
                          f"(e.g. --tasks digits,shapes), or leave --tasks out for the whole stream")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--tasks names {', '.join(twice)} twice: a stream trains each task once")
    return names


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m r1lab run`` (and of every sweep point)."""
    add_common_arguments(p)
    p.add_argument("--method", default="dac", choices=METHODS)
    p.add_argument("--out", default=None, help="run folder; an existing one is resumed")
    p.add_argument("--no-resume", action="store_true",
                   help="start over; refused on a folder holding a run unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="with --no-resume: move the old run aside to <out>.old-<time> first")
    p.add_argument("--fallback", action="store_true",
                   help="on a corrupt checkpoint, resume from the last readable one")
    p.add_argument("--zeroshot-row", action="store_true", help="also evaluate the untrained model first")
    p.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others in a collective "
                        "before it stops the run with an error (default 600)")


def parse_run_argv(argv: Sequence[str]) -> argparse.Namespace:
    """The options of ``python -m r1lab run ARGV...`` (the leading "run" may be given)."""
    p = argparse.ArgumentParser(prog="python -m r1lab run")
    add_run_arguments(p)
    argv = list(argv)
    return p.parse_args(argv[1:] if argv[:1] == ["run"] else argv)
