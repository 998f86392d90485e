"""Command line: ``python -m r1lab {compare,run,summary,zeroshot} --help``.

    python -m r1lab compare                  DAC vs plain LoRA on the bundled offline world
    python -m r1lab run --method dac --out runs/dac      one run (resumes when --out exists)
    python -m r1lab summary runs/dac runs/lora            metrics of finished runs
    python -m r1lab sweep --methods dac lora --seeds 0 1 --set ago_weight=0,0.1 --out runs/sweep
                                  a grid, one submitit job per point (--cluster local/slurm);
                                  `summary runs/sweep` tables it, mean ± std over seeds
    python -m r1lab zeroshot                              zero-shot accuracy per dataset
    python -m r1lab run --benchmark mtil --order I --data-root /data --model ViT-B-16-quickgelu \\
        --pretrained openai --preset paper --device cuda --out runs/mtil-order1
    torchrun --nproc_per_node 8 -m r1lab run ... --device cuda
                                  one run, data-parallel over 8 processes (r1lab/engine/distributed.py)

Errors a user can fix (a wrong --set value, a folder holding another run, a diverged run, a
locked folder, a corrupt checkpoint or dataset file) print as "r1lab: error: ..." without a
traceback and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

from r1lab.engine.presets import (add_common_arguments, add_run_arguments, benchmark_from_args,
                                  config_from_args)
from r1lab.errors import ConfigError, R1labError
from r1lab.methods import METHODS


def cmd_compare(args) -> int:
    from r1lab.engine.comparison import compare
    _check_flags(args)
    cfg = config_from_args(args)
    comp = compare(args.methods, args.seeds, benchmark_from_args(args), cfg, args.model, args.pretrained,
                   args.out, args.device, not args.quiet, resume=not args.no_resume,
                   overwrite=args.overwrite)
    print()
    print(f"{args.benchmark}: {', '.join(args.methods)} over seeds {args.seeds} "
          f"(lr {cfg.lr:g}, {cfg.iterations} it/task, {cfg.shots} shots)")
    print(comp.table())
    for method, runs in comp.runs.items():
        for r in runs:
            for w in r.warnings:
                print(f"warning ({method}): {w}")
    if args.out:
        print(f"\nrun folders: {args.out}/<method>-seed<seed>  (python -m r1lab summary ...)")
    return 0


def _check_flags(args) -> None:
    if getattr(args, "overwrite", False) and not getattr(args, "no_resume", False):
        raise ConfigError("--overwrite applies with --no-resume only (it moves the old run aside "
                          "before starting over); add --no-resume, or drop --overwrite to resume")


def cmd_run(args) -> int:
    _check_flags(args)
    from r1lab.engine import distributed
    from r1lab.engine.metrics import format_table
    from r1lab.engine.models import load_clip
    from r1lab.engine.run import run_stream
    cfg = config_from_args(args)
    # under torchrun: join the process group; each process gets its device (cuda:LOCAL_RANK)
    device = distributed.init(args.device, args.dist_timeout)
    bm = benchmark_from_args(args)
    main = distributed.is_main()
    if not args.quiet and main:
        print(bm.describe())
        if distributed.world_size() > 1:
            print(f"data-parallel over {distributed.world_size()} processes: global batch "
                  f"{cfg.batch_size} ({cfg.batch_size // distributed.world_size()} per process)")
    res = run_stream(bm, load_clip(args.model, args.pretrained, device), cfg, args.method,
                     args.out, resume=not args.no_resume, device=device,
                     progress=not args.quiet, zeroshot_row=args.zeroshot_row,
                     num_workers=args.workers, eval_bf16=args.bf16, overwrite=args.overwrite,
                     fallback=args.fallback)
    if not main:                   # rank 0 prints the results
        return 0
    if res.metrics is None:
        print(f"stopped after {len(res.logs)} of {len(res.task_names)} tasks; resume with the same command")
        return 0
    print(format_table(res.accuracy, res.task_names))
    print(res.summary())
    for w in res.warnings:
        print(f"warning: {w}")
    if args.out:
        print(f"written to {args.out}")
    return 0


def cmd_summary(args) -> int:
    from r1lab.engine.metrics import format_table
    from r1lab.engine.run import load_run
    from r1lab.engine.comparison import grid_table, is_sweep
    for d in args.runs:
        if is_sweep(d):          # a sweep folder: mean ± std over seeds per grid cell
            print(f"== {d}")
            print(grid_table(d))
            print()
            continue
        res = load_run(d)
        print(f"== {d}")
        print(format_table(res.accuracy, res.task_names))
        print(res.summary())
        for w in res.warnings:
            print(f"warning: {w}")
        print()
    return 0


def _common_argv(args) -> list:
    """The options of ``add_common_arguments`` that differ from their defaults, as ``run`` arguments
    (--set and --order are the sweep's own: fixed settings, grid axes, orders)."""
    p = argparse.ArgumentParser(add_help=False)
    add_common_arguments(p)
    argv = []
    for a in p._actions:
        if not a.option_strings or a.dest in ("set", "order", "help"):
            continue
        v = getattr(args, a.dest, a.default)
        if v == a.default:
            continue
        opt = max(a.option_strings, key=len)
        if a.nargs == 0:
            argv.append(opt)
        else:
            argv += [opt, *map(str, v if isinstance(v, (list, tuple)) else [v])]
    return argv


def cmd_sweep(args) -> int:
    from r1lab.scale.sweep import expand, parse_sets, run_sweep
    fixed, grid = parse_sets(args.set)
    orders = args.orders
    common = _common_argv(args)
    if orders is None and args.order is not None:
        common += ["--order", args.order]
    points = expand(args.methods, args.seeds, orders, grid)
    rep = run_sweep(points, args.out, common, fixed, args.cluster, args.partition,
                    args.timeout_min, args.gpus_per_node, args.threads, not args.quiet,
                    runner=run_argv)
    print(f"sweep {args.out}: {len(rep.points)} points, {len(rep.skipped)} skipped (finished), "
          f"{len(rep.done)} finished now, {len(rep.failed)} failed")
    for p, why, err in rep.failed:
        print(f"failed: {p.name}: {why}\n  stderr: {err}", file=sys.stderr)
    if rep.ok:
        print(f"table: python -m r1lab summary {args.out}")
    return 1 if rep.failed else 0


def cmd_zeroshot(args) -> int:
    from r1lab.engine.evaluate import zeroshot_table
    from r1lab.engine.models import load_clip
    bm = benchmark_from_args(args)
    b = load_clip(args.model, args.pretrained, args.device)
    for name, acc in zeroshot_table(b.model, b.tokenizer, bm, args.device).items():
        print(f"{name:<16}{acc:6.1f}  (chance {100 / bm[name].num_classes:.1f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m r1lab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("compare", help="several methods x seeds, mean and spread side by side")
    add_common_arguments(p)
    p.add_argument("--methods", nargs="+", default=["dac", "lora"], choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", default="runs/compare", help="parent folder of the run folders")
    p.add_argument("--no-resume", action="store_true",
                   help="start over in run folders that hold a run (needs --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --no-resume: move old runs aside to <folder>.old-<time>")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("run", help="one method over one benchmark stream (resumable)")
    add_run_arguments(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sweep", help="a grid of runs, one scheduler job per point (submitit)")
    add_common_arguments(p)
    p.add_argument("--methods", nargs="+", default=["dac"], choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--orders", nargs="+", default=None,
                   help="grid over orders (MTIL I II; world: comma-separated domains per order)")
    p.add_argument("--out", default="runs/sweep", help="parent folder of the run folders")
    p.add_argument("--cluster", default="local", choices=("local", "slurm", "debug"),
                   help="submitit executor: local processes, SLURM, or in this process (debug)")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--timeout-min", type=int, default=None, help="time limit of each job (minutes)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="GPUs of each job")
    p.add_argument("--threads", type=int, default=0, help="torch threads per job (0: torch's choice)")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("summary", help="print the metrics of finished run folders or of a sweep")
    p.add_argument("runs", nargs="+")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("zeroshot", help="zero-shot accuracy per dataset")
    add_common_arguments(p)
    p.set_defaults(func=cmd_zeroshot)
    return ap


def run_argv(argv) -> int:
    """One command in this process with its errors raised, not printed: a sweep's job (the
    scheduler records a failed job with its traceback)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    from r1lab.engine import distributed
    args = build_parser().parse_args(argv)
    try:
        if distributed.launched_world_size() > 1 and args.cmd != "run":
            raise ConfigError(f"only `run` is data-parallel; start `{args.cmd}` without torchrun "
                              f"(WORLD_SIZE is {distributed.launched_world_size()})")
        return args.func(args)
    except KeyboardInterrupt:
        if distributed.is_main():
            out = getattr(args, "out", None)
            print("r1lab: interrupted" + (f"; {out} keeps every finished task: run the same "
                                          f"command again to resume" if out else ""),
                  file=sys.stderr)
        return 130
    except R1labError as e:        # includes the dataset errors (r1lab.data.mtil.checks)
        # under torchrun an error that every process raises alike is printed once, by rank 0
        alike = getattr(e, "r1lab_every_rank", False)
        if distributed.is_main() or not alike:
            who = f"({distributed.describe()}) " if distributed.world_size() > 1 and not alike else ""
            print(f"r1lab: error: {who}{e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
