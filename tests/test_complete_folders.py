"""A run folder is complete or it is not (issue 17): the final files are published under one
completion record, damage is detected, sweeps are keyed by the whole run, every user error is
one line. Each test below failed on r1lab 1b0a0c8 (before completion records)."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from r1lab.cli import main
from r1lab.engine import runfolder
from r1lab.engine.run import load_run, run_stream
from r1lab.engine.testset_cache import cached_test_sets
from r1lab.errors import RunDamaged, RunUnfinished, RunWriteError

sys.path.insert(0, str(Path(__file__).parent))
from engine_setup import CFG, _task, fake_benchmark, random_bundle  # noqa: E402

FAST = CFG.replace(iterations=3)
FINAL = ("accuracy.csv", "metrics.json", "counts.pt", "losses.csv", "complete.json")
WORLD = ["run", "--tasks", "digits,shapes", "--set", "iterations=2", "--set", "shots=2", "--quiet"]


def run(out, **kw):
    return run_stream(fake_benchmark(), random_bundle(), FAST, "dac", out, progress=False, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run's folder: what every repaired folder must equal, byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run(out)
    return out


def same_files(a: Path, b: Path, same_run: bool = True):
    """Every final file equal: byte for byte, except counts.pt, whose content is compared
    (torch.save writes a random serialization id into every file), and, for two separate runs
    (``same_run=False``), metrics.json's wall time."""
    if not same_run:
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert ma.pop("seconds") > 0 and mb.pop("seconds") > 0 and ma == mb
    for name in FINAL:
        if name == "metrics.json" and not same_run:
            continue
        if name == "counts.pt":
            x, y = (torch.load(d / name, weights_only=False) for d in (a, b))
            assert x.keys() == y.keys()
            for key in x:
                assert [sorted(t) for t in x[key]] == [sorted(t) for t in y[key]]
                assert all(torch.equal(t[k], u[k]) for t, u in zip(x[key], y[key]) for k in t)
        elif name != "complete.json":                 # names counts.pt's bytes
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ------------------------------------------------------------------ 1. the end of a run
def test_a_run_killed_after_metrics_json_is_completed_on_resume(finished, tmp_path):
    """SIGKILL right after metrics.json: counts.pt, losses.csv and the record are missing."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    for name in ("counts.pt", "losses.csv", "complete.json"):
        (out / name).unlink()
    with pytest.raises(RunUnfinished):
        load_run(out)                      # not "finished with empty counts"
    assert not runfolder.is_finished(out)
    res = run(out)
    same_files(finished, out)
    assert res.counts and all(len(c) for c in res.counts)


def test_a_full_disk_at_the_end_resumes_to_the_same_files(finished, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = runfolder.write_torch

    def full(path, obj):
        if Path(path).name == "counts.pt":
            raise RunWriteError(f"could not write {path}: No space left on device")
        real(path, obj)
    monkeypatch.setattr(runfolder, "write_torch", full)
    with pytest.raises(RunWriteError):
        run(out)
    assert (out / "metrics.json").exists() and not runfolder.is_finished(out)
    monkeypatch.setattr(runfolder, "write_torch", real)
    run(out)
    same_files(finished, out, same_run=False)


# ------------------------------------------------------------------ 3. damaged result files
def test_a_damaged_result_is_rebuilt_from_the_checkpoints(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    csv = (out / "accuracy.csv").read_text()
    (out / "accuracy.csv").write_text(csv[:-3] + "\n")          # last cell cut short
    with pytest.raises(RunDamaged, match="accuracy.csv does not match"):
        load_run(out)
    run(out)
    same_files(finished, out)


def test_a_damaged_result_without_checkpoints_is_named(finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "checkpoints")
    (out / "accuracy.csv").write_text("")
    with pytest.raises(RunDamaged, match="accuracy.csv"):
        run(out)
    assert main(["summary", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1lab: error:") and "accuracy.csv" in err and "Traceback" not in err


def test_summary_reads_full_precision(finished, capsys):
    assert main(["summary", str(finished)]) == 0
    printed = capsys.readouterr().out
    m = json.loads((finished / "metrics.json").read_text())
    assert f"Last {m['last']:.1f}" in printed
    assert np.allclose(load_run(finished).accuracy, np.asarray(m["accuracy"]), rtol=0, atol=0)


# ------------------------------------------------------------------ 4. the test-set cache
class Images(Dataset):
    """A test set that is not in memory (so it is cached), in the random CLIP's input size."""

    def __init__(self, n=6):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, 16, 16), generator=g).float() / 255.0
        self.y = torch.arange(n) % 3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_a_damaged_cache_of_the_same_size_is_rebuilt(tmp_path, capsys):
    task = _task("alpha", 3, 1)
    task.test = Images()
    from r1lab.data.stream import Benchmark
    bm = Benchmark("one", [task])
    first = cached_test_sets(bm, tmp_path)[0]
    want = torch.stack([first[i][0] for i in range(len(first))])
    path = tmp_path / "alpha.npy"
    raw = bytearray(path.read_bytes())
    raw[-5:] = bytes(255 - b for b in raw[-5:])                  # same size, other bytes
    path.write_bytes(bytes(raw))
    again = cached_test_sets(bm, tmp_path)[0]
    assert torch.equal(torch.stack([again[i][0] for i in range(len(again))]), want)
    assert "does not match its checksum" in capsys.readouterr().out


# ------------------------------------------------------------------ 5, 6. user errors
@pytest.mark.parametrize("args,needle", [
    (["--tasks", "digits,nope"], "nope"),
    (["--tasks", "digits,digits"], "twice"),
    (["--tasks", ","], "names no task"),
    (["--tasks", ""], "names no task"),
    (["--order", "III"], "III"),
    (["--benchmark", "mtil"], "--data-root"),
    (["--set", "blocks=0,99"], "blocks"),
    (["--set", "towers=image,image"], "twice"),
    (["--set", "targets=q,q"], "twice"),
])
def test_user_errors_are_one_line_before_any_folder(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    argv = [a for a in WORLD if a != "digits,shapes" and a != "--tasks"] + args
    if "--tasks" not in args:
        argv += ["--tasks", "digits"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1lab: error:") and needle in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 or needle == "blocks"
    assert not out.exists()


@pytest.mark.parametrize("kind", ["file", "below-a-file", "too-long"])
def test_an_out_that_cannot_hold_a_run_is_one_line(tmp_path, capsys, kind):
    f = tmp_path / "f"
    f.write_text("x")
    out = {"file": f, "below-a-file": f / "run", "too-long": tmp_path / ("r" * 240)}[kind]
    assert main([*WORLD, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1lab: error:") and "--out" in err and "Traceback" not in err


def test_a_corrected_configuration_replaces_a_failed_start(tmp_path, capsys):
    out = tmp_path / "run"
    run_folder_only = main([*WORLD, "--set", "lr=1e30", "--out", str(out)])   # diverges in task 1
    assert run_folder_only == 2 and not runfolder.holds_results(out)
    capsys.readouterr()
    assert main([*WORLD, "--out", str(out)]) == 0
    assert runfolder.is_finished(out)


def test_sigint_is_one_line_saying_the_run_resumes(tmp_path, capsys, monkeypatch):
    import r1lab.engine.run as run_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_mod, "train_task", interrupted)
    assert main([*WORLD, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "resume" in err and "Traceback" not in err


def test_overwrite_without_no_resume_is_refused(tmp_path, capsys):
    assert main([*WORLD, "--overwrite", "--out", str(tmp_path / "run")]) == 2
    assert "--no-resume" in capsys.readouterr().err


# ------------------------------------------------------------------ 8. litter
def test_temporary_files_of_killed_writes_are_removed_on_open(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    litter = [out / ".counts.pt.k3j9x0ab", out / "checkpoints" / ".task_01.pt.zz81mmq0",
              out / ".metrics.json.q1w2e3r4"]
    keep = [out / ".notes", out / "mine.tmp"]
    for f in litter + keep:
        f.write_text("x")
    run(out)
    assert not any(f.exists() for f in litter) and all(f.exists() for f in keep)


def test_temporary_files_of_a_killed_cache_build_are_removed(tmp_path):
    task = _task("alpha", 3, 1)
    task.test = Images()
    from r1lab.data.stream import Benchmark
    cached_test_sets(Benchmark("one", [task]), tmp_path)
    stale = tmp_path / ".alpha.npy.a1b2c3d4.tmp"
    stale.write_bytes(b"0" * 1000)
    cached_test_sets(Benchmark("one", [task]), tmp_path)
    assert not stale.exists()


# ------------------------------------------------------------------ 9. the zero-shot row
def test_zeroshot_row_on_a_finished_folder_reaches_metrics_json(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    assert json.loads((out / "metrics.json").read_text())["zeroshot"] is None
    res = run(out, zeroshot_row=True)
    m = json.loads((out / "metrics.json").read_text())
    assert m["zeroshot"] == res.zeroshot and len(m["zeroshot"]) == 3
    assert runfolder.is_finished(out)


def test_folders_written_before_completion_records_still_load():
    """The committed results of notebook 06 were written by r1lab 0.1.0 at 1b0a0c8."""
    root = Path(__file__).resolve().parents[1] / "data" / "results" / "beyond-the-paper" / "mtil"
    res = load_run(root / "dac-seed0")
    assert res.accuracy.shape == (7, 7) and res.metrics is not None
