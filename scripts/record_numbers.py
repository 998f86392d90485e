"""Record (or check) the numbers every method produces, so that a refactor can prove it changed
none of them.

    python scripts/record_numbers.py record tests/golden/methods.json          # short runs
    python scripts/record_numbers.py check  tests/golden/methods.json
    python scripts/record_numbers.py record tests/golden/main_job.json --main-job
    python scripts/record_numbers.py record tests/golden/methods-2x6.json --tasks 2 \
        --iterations 6 --methods o-lora codyra      # add new methods, keep the recorded ones

Short runs: every registered method on the first ``--tasks`` domains of the generated world,
``--iterations`` steps per task, seed 0, the bundled tiny CLIP, on one CPU thread. The main
job: ``python -m r1lab compare``'s runs (dac and lora, seed 0, the world preset, all seven
tasks) read back from their run folders.

What is recorded for each run, exactly (floats by ``repr``, tensors by SHA-256 of their bytes):
the accuracy matrix, the accuracy before each merge, every pool's counts and merged experts
per task, the per-step losses, and the merged weights of the model after the stream.
``tests/test_same_numbers.py`` runs the short version in CI.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def fingerprint(res, model=None) -> dict:
    """Everything a run computed, as exact text."""
    out = dict(
        accuracy=[[repr(float(v)) for v in row] for row in res.accuracy],
        before_merge=[None if b is None else repr(float(b)) for b in res.before_merge],
        counts=[{k: v.tolist() for k, v in sorted(c.items())} for c in res.counts],
        merged=[{k: v.tolist() for k, v in sorted(m.items())} for m in res.merged],
        losses=hashlib.sha256(json.dumps(
            [[log.task, log.template, repr(float(log.lr))] + [repr(float(x)) for x in
             (log.loss + log.task_loss + log.ago + log.lrs)] for log in res.logs]
        ).encode()).hexdigest(),
    )
    if model is not None:
        import r1lab
        from r1lab.pool import ExpertPoolLinear
        folds = all(m.mergeable for m in model.modules() if isinstance(m, ExpertPoolLinear))
        # the merged weights; a method that keeps its layers (LoRAMoE): the weights with them
        state = r1lab.merged_state_dict(model) if folds else model.state_dict()
        out["weights"] = hashlib.sha256("".join(
            f"{k}:{digest(v)}" for k, v in sorted(state.items())).encode()).hexdigest()
    return out


def short_runs(methods=None, tasks: int = 3, iterations: int = 12) -> dict:
    import r1lab
    torch.set_num_threads(1)
    bench = r1lab.make_benchmark("world")
    bench = bench.reordered(bench.task_names[:tasks])
    cfg = r1lab.preset("world").replace(iterations=iterations, seed=0)
    out = {}
    for method in (methods or r1lab.METHODS):
        bundle = r1lab.load_clip("tiny")
        res = r1lab.run_stream(bench, bundle, cfg, method, None, progress=False)
        out[method] = fingerprint(res, bundle.model)
    return dict(kind="short", tasks=tasks, iterations=iterations, runs=out)


def main_job(folder: Path) -> dict:
    import r1lab
    runs = {}
    for name in ("dac-seed0", "lora-seed0", "zeroshot"):
        res = r1lab.load_run(folder / name)
        runs[name] = fingerprint(res)
    return dict(kind="main_job", runs=runs)


def dump(record: dict) -> str:
    """The record as JSON text with one line per run (small diffs when a golden changes)."""
    runs = {k: v for k, v in record.items() if k == "runs"}["runs"]
    head = ",".join(f"{json.dumps(k)}:{json.dumps(v, sort_keys=True)}"
                    for k, v in sorted(record.items()) if k != "runs")
    body = ",\n".join(f"{json.dumps(k)}:{json.dumps(v, sort_keys=True, separators=(',', ':'))}"
                       for k, v in sorted(runs.items()))
    return "{" + head + ',"runs":{\n' + body + "\n}}\n"


def compare_records(want: dict, got: dict) -> list:
    """Paths at which two records differ (empty: identical)."""
    diffs = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k not in a or k not in b:
                    diffs.append(f"{path}/{k}: only in {'recorded' if k in a else 'new'}")
                else:
                    walk(a[k], b[k], f"{path}/{k}")
        elif a != b:
            diffs.append(f"{path}: recorded {str(a)[:80]} != now {str(b)[:80]}")
    walk(want, got, "")
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["record", "check"])
    p.add_argument("file", type=Path)
    p.add_argument("--main-job", type=Path, metavar="COMPARE_OUT", nargs="?", const=Path("runs/compare"),
                   help="read the main job's run folders (python -m r1lab compare's --out)")
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--methods", nargs="+", help="short runs of these methods only; `record` adds "
                   "them to the file and keeps every run already recorded there")
    a = p.parse_args(argv)
    got = main_job(a.main_job) if a.main_job else short_runs(a.methods, tasks=a.tasks, iterations=a.iterations)
    if a.action == "record":
        if a.methods and a.file.exists():
            old = json.loads(a.file.read_text())
            if (old["tasks"], old["iterations"]) != (a.tasks, a.iterations):
                raise SystemExit(f"{a.file} holds {old['tasks']} tasks x {old['iterations']} iterations; "
                                 f"pass the same --tasks / --iterations")
            got = dict(old, runs={**old["runs"], **got["runs"]})
        a.file.parent.mkdir(parents=True, exist_ok=True)
        a.file.write_text(dump(got))
        print(f"recorded {len(got['runs'])} runs in {a.file}")
        return 0
    want = json.loads(a.file.read_text())
    if a.methods:
        want = dict(want, runs={m: want["runs"][m] for m in a.methods})
    diffs = compare_records(want, got)
    for d in diffs[:40]:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} differences")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
