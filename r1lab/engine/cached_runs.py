"""Runs computed once and reloaded: ``cached_run`` (what the notebooks call).

    res = cached_run(benchmark, bundle, cfg, "dac")    # trains the first time, reloads after

The folder of a run is named by its identity (identity.py: method, resolved configuration,
benchmark and task list, data record, model name and the content hash of its weights):

    <root>/<method>-<first 12 hex of the hash of (identity, code_fingerprint)>

and the run goes through ``run_stream(..., out_dir=folder, resume=True)``: a finished folder
is reloaded without training (its merges replayed onto ``bundle.model``, live ``pools``
returned, ``seconds`` = the original training time summed over its processes), an unfinished
one resumes, a missing one trains. A reloaded ``RunResult`` equals the fresh one: accuracy
matrix, counts, merged experts, accuracies before merging, logs, seconds, and the weights of
``bundle.model`` afterwards.

root: the argument, else $R1LAB_RUNS, else ``runs/cache`` in the nearest folder at or above
the working directory that holds a pyproject.toml, else ``./runs/cache``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from r1lab.config import DACConfig
from r1lab.methods import method_config
from r1lab.engine.identity import compared, identity_hash, run_identity
from r1lab.engine.run import RunResult, run_stream

ENV = "R1LAB_RUNS"


def default_root() -> Path:
    """$R1LAB_RUNS, else <nearest ancestor of the working directory with pyproject.toml>/runs/cache,
    else ./runs/cache."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file():
            return d / "runs" / "cache"
    return Path("runs") / "cache"


def code_fingerprint() -> str:
    """SHA-256 of the r1lab package's own source files (every ``*.py`` below it, by relative
    path and content). Part of a cached run's folder name, so that editing the library (a
    student changing the AGO loss, say) trains anew instead of reloading a result that the
    old code produced."""
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run_folder(benchmark, bundle, cfg: DACConfig, method: str = "dac",
               root: Union[str, Path, None] = None, device="cpu", eval_bf16: bool = False) -> Path:
    """The folder ``cached_run`` uses for this run: the run's identity (which hashes the
    model's weights) plus the library's ``code_fingerprint``."""
    ident = run_identity(benchmark, bundle, method_config(method, cfg), method, device, eval_bf16)
    key = identity_hash(dict(identity=compared(ident), code=code_fingerprint()))
    return Path(root if root is not None else default_root()) / f"{method}-{key[:12]}"


def cached_run(benchmark, bundle, cfg: DACConfig, method: str = "dac",
               root: Union[str, Path, None] = None, device="cpu", progress: bool = False,
               **run_kw) -> RunResult:
    """``run_stream`` into the run's own folder under ``root``: trained once, then reloaded.

    run_kw: the other ``run_stream`` options (zeroshot_row, stop_after, cache_dir,
    num_workers, eval_bf16, fallback); ``out_dir`` and ``resume`` are set here.
    """
    for k in ("out_dir", "resume", "overwrite"):
        if k in run_kw:
            raise TypeError(f"cached_run sets {k} itself; call run_stream to choose it")
    folder = run_folder(benchmark, bundle, cfg, method, root, device, run_kw.get("eval_bf16", False))
    return run_stream(benchmark, bundle, cfg, method, out_dir=folder, resume=True, device=device,
                      progress=progress, **run_kw)
