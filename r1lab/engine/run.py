"""The continual-learning engine: one method over one benchmark stream, resumable.

For each task t of the stream (docs/method.md sec. 4-10), with seed_t = seed + 1000 t:

    torch.manual_seed(seed_t); fresh pools               # A ~ Kaiming, B = 0, new router
    D_t = few_shot(train_t, shots, seed)                 # frozen augmentation
    train the pools on D_t                               # L_task + the method's penalty
                                                         # (DAC: lambda L_AGO, t >= 2)
    acc_before[t] = accuracy on task t, un-merged pool   # what the task reached
    merge (the method's end_task)                        # DAC: W0 += s B[:, T] A[T, :]
    A[t, :] = accuracy of the merged model on every test set (one row)
    checkpoint (adapter state, row, counts, losses, elapsed time), atomically

The method (``r1lab/methods/``) is called at its named points: ``configure`` the configuration,
``attach`` the layers, ``penalty`` / ``before_step`` / ``after_step`` in training (train.py),
``end_task`` the merge; a method that does not train (zero-shot) is only evaluated.

Before any of it, everything that can be checked is checked (checks.py). The run folder's
files, and what a folder must hold to be resumed, are runfolder.py's. A run killed at any
point resumes from its last finished task (``resume=True``) and ends with the same accuracy
matrix as an uninterrupted run: every task reseeds all randomness, and merged weights are
rebuilt by replaying the stored merge factors in order. A finished folder is reloaded the same
way, without training. A corrupt checkpoint is reported by path; ``fallback=True`` moves it
(and any later one) aside as ``*.corrupt`` and trains again from the last readable one.

Data-parallel under torchrun (distributed.py): every process runs this same loop on its slice
of each global batch and of each test set; rank 0 alone opens, locks and writes the run
folder, reads the checkpoints and broadcasts what it read, so every process resumes from the
same adapter state.

A non-finite loss or parameter stops the run (``RunDiverged``: task, step, lr); a finished run
at chance, or whose loss rose tenfold within a task, carries ``warnings`` (result.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from r1lab.config import DACConfig
from r1lab.data.stream import Benchmark, as_tensors, few_shot
from r1lab.engine import distributed, report
from r1lab.engine.checks import preflight, verify_data
from r1lab.engine.evaluate import accuracy_row
from r1lab.engine.identity import protocol_record, run_identity
from r1lab.engine.metrics import summarize
from r1lab.engine.result import RunResult, chance_levels, run_warnings
from r1lab.engine.runfolder import RunFolder, load_run, read_accuracy_csv  # noqa: F401 (API)
from r1lab.engine.testset_cache import cached_test_sets
from r1lab.engine.train import TaskLog, task_seed, train_task
from r1lab.errors import RunDamaged, RunDiverged
from r1lab.methods import get_method

PathLike = Union[str, Path, None]


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (none of it changes the numbers, except ``stop_after``).

    out_dir      the run folder (None: nothing is written and nothing can resume); locked
                 for the run, and resumed only when it holds this very run (identity.json)
    resume       continue from the last finished task found in ``out_dir`` (a finished
                 folder is reloaded without training); False on a folder holding a run
                 refuses, unless ``overwrite``
    overwrite    with resume=False: move the old run to ``<out_dir>.old-<time>`` first
    fallback     on a corrupt checkpoint, resume from the last readable one
    device       where the model runs
    progress     messages and (on a terminal) progress bars (report.py)
    zeroshot_row also evaluate the untouched model first (recorded, not part of the matrix)
    stop_after   stop after this many tasks (the run stays resumable)
    cache_dir    where preprocessed test sets live (default ``out_dir/cache``)
    num_workers  data-loader workers for evaluation and caching
    eval_bf16    evaluate under bf16 autocast (GPU speed option; fp32 reproduces the paper)
    """
    out_dir: PathLike = None
    resume: bool = True
    overwrite: bool = False
    fallback: bool = False
    device: Union[str, torch.device] = "cpu"
    progress: bool = True
    zeroshot_row: bool = False
    stop_after: Optional[int] = None
    cache_dir: PathLike = None
    num_workers: int = 0
    eval_bf16: bool = False


def run_stream(benchmark: Benchmark, bundle, cfg: DACConfig, method: str = "dac",
               out_dir: PathLike = None, **options) -> RunResult:
    """Run ``method`` (a name in ``r1lab.METHODS``) over the benchmark's task stream.

    ``bundle`` is a ``ClipBundle`` (model, tokenizer, name); the model is modified in place.
    ``options`` are ``RunOptions`` fields (resume, overwrite, device, progress, ...). Under
    torchrun every process calls this with the same arguments; only rank 0 speaks and writes.
    """
    opts = RunOptions(out_dir=out_dir, **options)
    with report.speaking(opts.progress):
        return _StreamRun(benchmark, bundle, cfg, method, opts).run()


class _StreamRun:
    """One call of ``run_stream``: the folder, the test sets, and the task loop."""

    def __init__(self, benchmark: Benchmark, bundle, cfg: DACConfig, method: str, opts: RunOptions):
        self.t_start = time.time()
        self.benchmark, self.bundle, self.name, self.opts = benchmark, bundle, method, opts
        self.method = get_method(method)
        self.cfg = self.method.configure(cfg)
        self.out = None if opts.out_dir is None else Path(opts.out_dir)
        self.device = torch.device(opts.device)
        self.folder: Optional[RunFolder] = None

    def run(self) -> RunResult:
        with distributed.raised_everywhere():
            preflight(self.benchmark, self.bundle, self.cfg, self.method.trains,
                      self.opts.num_workers, self.opts.stop_after)
        if self.out is not None:   # rank 0 alone holds the folder; its errors stop every process
            self.folder = distributed.main_only(self.open_folder)
        try:
            return self.stream()
        finally:
            if self.folder is not None:
                try:
                    self.folder.ensure_record()   # the record stays with the checkpoints
                except OSError:                   # (a full disk: the error raised says so)
                    pass
                self.folder.close()

    def open_folder(self) -> RunFolder:
        b, cfg, o = self.bundle, self.cfg, self.opts
        identity = run_identity(self.benchmark, b, cfg, self.name, o.device, o.eval_bf16)
        record = dict(method=self.name, config=cfg.to_dict(), model=b.name)
        protocol = protocol_record(self.benchmark, cfg, self.name, b.name, o.device)
        return RunFolder(self.out, identity, record, protocol).open(o.resume, o.overwrite)

    def read_folder(self):
        """(finished tasks' checkpoints, metrics.json if finished, zero-shot row if stored).
        Final files that do not match the completion record are rebuilt from the checkpoints;
        without all of them, ``RunDamaged`` names the file."""
        f, o = self.folder, self.opts
        if f is None or not o.resume:
            return [], None, None
        want_zs = o.zeroshot_row or not self.method.trains
        T = len(self.benchmark.tasks)
        done, finished = f.read_checkpoints(T, o.fallback), f.finished()
        damaged = f.damaged() if finished is None else []
        if damaged and self.method.trains and len(done) < T:
            raise RunDamaged(f"{'; '.join(damaged)}, and the checkpoints to rebuild it are missing "
                             f"({len(done)} of {T}). Restore the file, or start the run over "
                             f"with --no-resume --overwrite (python: resume=False, overwrite=True)")
        if damaged:
            report.warn(f"{'; '.join(damaged)}: writing the final files again from the checkpoints")
        return done, finished, f.read_zeroshot() if want_zs else None

    def test_sets(self, needed: bool):
        """The preprocessed test sets, built on first use by rank 0 while the others wait."""
        o = self.opts
        cache_dir = o.cache_dir if o.cache_dir is not None or self.out is None else self.out / "cache"
        if cache_dir is None or not needed:
            return None

        def cache():
            return cached_test_sets(self.benchmark, cache_dir, self.cfg.eval_batch_size, o.num_workers)
        sets = distributed.main_only(cache)
        if sets is None:     # a process other than rank 0: read what rank 0 built
            sets = cache()
        distributed.wait_for_all()
        return sets

    def evaluate(self, test_sets, only=None):
        """One row of accuracies (%) of the model as it is now (``only``: these tasks)."""
        b, o = self.bundle, self.opts
        return accuracy_row(b.model, b.tokenizer, self.benchmark, self.device,
                            self.cfg.eval_batch_size, test_sets=test_sets, only=only,
                            num_workers=o.num_workers,
                            amp_dtype=torch.bfloat16 if o.eval_bf16 else None)

    # ------------------------------------------------------------------ the task loop
    def stream(self) -> RunResult:
        bench, cfg, method, model = self.benchmark, self.cfg, self.method, self.bundle.model
        names, T = bench.task_names, len(bench.tasks)
        done, finished, zs = distributed.main_only(self.read_folder, share=True)
        start = len(done)
        if method.trains and start < T:
            distributed.main_only(lambda: verify_data(bench, cfg, range(start, T)))
        model.to(self.device)
        distributed.broadcast_model(model)      # every process starts from rank 0's weights

        # a finished folder is reloaded without evaluating anything (but a missing zero-shot
        # row, which is then added to its results); an unfinished one whose tasks all have
        # checkpoints only has its final files written again
        reload = finished is not None and (not method.trains or start == T)
        need_zs = (self.opts.zeroshot_row or not method.trains) and zs is None
        test_sets = self.test_sets(needed=need_zs or (method.trains and start < T))
        if need_zs:
            zs = self.evaluate(test_sets)
            if self.folder is not None:
                self.folder.write_zeroshot(zs)
                finished = None if reload else finished
        if not method.trains:
            A = np.tile(np.asarray(zs), (T, 1))
            return self.conclude(RunResult(
                method=self.name, task_names=names, accuracy=A, metrics=summarize(A),
                before_merge=[None] * T, counts=[{}] * T, merged=[{}] * T, logs=[],
                seconds=time.time() - self.t_start, out_dir=self.out, zeroshot=zs), finished)

        pools = method.attach(model, cfg)
        if distributed.is_active():
            pools.use_collective(distributed.COLLECTIVE)
        rows = [c["row"] for c in done]
        before = [c["before_merge"] for c in done]
        counts = [c["counts"] for c in done]
        merged = [c["merged"] for c in done]
        logs = [TaskLog(**c["log"]) for c in done]
        elapsed = 0.0         # wall time of the run so far, over every process and resume
        if done:
            pools.load_adapter_state(done[-1]["adapter"], replay_merges=True)
            elapsed = float(done[-1].get("elapsed", sum(log.seconds for log in logs)))
            done[-1]["adapter"] = None
            if start < T:
                report.say(f"resuming {self.out} after task {start}/{T} ({names[start - 1]})")
            elif finished is None:
                report.say(f"{self.out}: every task has its checkpoint; writing the final files")

        for t in range(start, T):
            task = bench.tasks[t]
            torch.manual_seed(task_seed(cfg, t))
            pools.reset()
            distributed.seed_rank(task_seed(cfg, t))   # rank q > 0: its own dropout masks
            data = few_shot(task.train, cfg.shots, seed=cfg.seed) if cfg.shots else as_tensors(task.train)
            try:
                log = train_task(model, self.bundle.tokenizer, pools, task, data, cfg, t,
                                 self.device, method=method)
            except RunDiverged as e:   # every process sees the same loss and stops alike
                kept = e.with_kept(str(self.out)) if self.out is not None and t > 0 else e
                raise distributed.mark_everywhere(kept) from None
            b = self.evaluate(test_sets, only=[t])[0] if cfg.eval_before_merge else None
            counts.append(pools.counts())
            merged.append({k: v.cpu() for k, v in method.end_task(pools).items()})
            with method.evaluation(pools):   # merged weights only, unless the method keeps its layers
                row = self.evaluate(test_sets)
            rows.append(row)
            before.append(b)
            logs.append(log)
            now = elapsed + time.time() - self.t_start
            if self.folder is not None:
                self.folder.checkpoint(t, pools, row, b, counts[-1], merged[-1], log, now)
            bm = "" if b is None else f" (before merge {b:.1f})"
            report.say(f"{self.name} task {t + 1}/{T} {task.name}: own {row[t]:.1f}{bm}, "
                       f"mean {np.mean(row):.1f}, {log.seconds:.0f} s")
            if self.opts.stop_after is not None and t + 1 >= self.opts.stop_after and t + 1 < T:
                break

        A = np.full((T, T), np.nan)
        A[:len(rows)] = np.asarray(rows)
        complete = len(rows) == T
        # seconds: as the last checkpoint says, so that final files rebuilt from checkpoints
        # equal those of an uninterrupted run
        res = RunResult(method=self.name, task_names=names, accuracy=A,
                        metrics=summarize(A) if complete else None, before_merge=before,
                        counts=counts, merged=merged, logs=logs,
                        seconds=now if start < len(rows) else elapsed, out_dir=self.out,
                        zeroshot=zs, pools=pools)
        if not complete:
            return res
        return self.conclude(res, finished if start == T else None)

    def conclude(self, res: RunResult, finished) -> RunResult:
        """A finished run: its warnings, its files (unless reloaded from a finished folder)."""
        if finished is not None:                       # reloaded: the original time and warnings
            res.seconds = float(finished["seconds"])
            res.warnings = list(finished.get("warnings", []))
        else:
            res.warnings = run_warnings(res.accuracy, chance_levels(self.benchmark), res.logs)
        if self.folder is not None:
            res.warnings += [w for w in self.folder.warnings if w not in res.warnings]
            if finished is None:
                self.folder.write_results(res)
        for w in res.warnings:
            report.warn(w)
        return res
