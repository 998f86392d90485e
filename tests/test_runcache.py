"""cached_run: a run trained once into a folder named by its identity, then reloaded, and the
reloaded RunResult (and the model it leaves behind) equal to the fresh one."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import r1lab.engine.run as run_mod
from r1lab import cached_run, run_stream
from r1lab.engine.cached_runs import ENV, default_root, run_folder

sys.path.insert(0, str(Path(__file__).parent))
from engine_setup import CFG, fake_benchmark, random_bundle  # noqa: E402

FAST = CFG.replace(iterations=3)


def same_result(a, b):
    assert a.method == b.method and a.task_names == b.task_names
    assert np.array_equal(a.accuracy, b.accuracy) and a.metrics == b.metrics
    assert a.before_merge == b.before_merge and a.logs == b.logs and a.seconds == b.seconds
    assert a.warnings == b.warnings and a.out_dir == b.out_dir
    for x, y in ((a.counts, b.counts), (a.merged, b.merged)):
        assert len(x) == len(y)
        for dx, dy in zip(x, y):
            assert dx.keys() == dy.keys() and all(torch.equal(dx[k], dy[k]) for k in dx)


def test_a_cached_run_equals_the_fresh_one_and_does_not_train(tmp_path, monkeypatch):
    b1 = random_bundle()
    fresh = cached_run(fake_benchmark(), b1, FAST, root=tmp_path)
    assert re.fullmatch(r"dac-[0-9a-f]{12}", fresh.out_dir.name) and fresh.out_dir.parent == tmp_path
    assert np.array_equal(fresh.accuracy,
                          run_stream(fake_benchmark(), random_bundle(), FAST, "dac", None, progress=False).accuracy)

    def no_training(*a, **k):
        raise AssertionError("a finished folder must be reloaded, not trained")
    monkeypatch.setattr(run_mod, "train_task", no_training)
    b2 = random_bundle()
    again = cached_run(fake_benchmark(), b2, FAST, root=tmp_path)
    same_result(fresh, again)
    assert again.pools is not None and list(again.pools) == list(fresh.pools)
    s1, s2 = b1.model.state_dict(), b2.model.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_an_unfinished_cached_run_resumes(tmp_path, monkeypatch):
    part = cached_run(fake_benchmark(), random_bundle(), FAST, root=tmp_path, stop_after=1)
    assert part.metrics is None
    calls = []
    train = run_mod.train_task
    monkeypatch.setattr(run_mod, "train_task", lambda *a, **k: calls.append(1) or train(*a, **k))
    done = cached_run(fake_benchmark(), random_bundle(), FAST, root=tmp_path)
    assert len(calls) == 2 and done.out_dir == part.out_dir
    ref = run_stream(fake_benchmark(), random_bundle(), FAST, "dac", None, progress=False)
    assert np.array_equal(done.accuracy, ref.accuracy)


def test_the_folder_is_named_by_the_identity(tmp_path):
    bm, b = fake_benchmark(), random_bundle()
    base = run_folder(bm, b, FAST, "dac", tmp_path)
    assert run_folder(bm, b, FAST, "dac", tmp_path) == base
    assert run_folder(bm, b, FAST.replace(lr=5e-3), "dac", tmp_path) != base
    assert run_folder(bm, b, FAST, "lora", tmp_path).name.startswith("lora-")
    assert run_folder(bm.reordered(["beta", "alpha", "gamma"]), b, FAST, "dac", tmp_path) != base
    other = random_bundle(seed=1)
    assert run_folder(bm, other, FAST, "dac", tmp_path) != base
    with pytest.raises(TypeError, match="out_dir"):
        cached_run(bm, b, FAST, root=tmp_path, out_dir=tmp_path)


def test_default_root(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert default_root() == (tmp_path / "repo" / "runs" / "cache").resolve()
    monkeypatch.setenv(ENV, str(tmp_path / "elsewhere"))
    assert default_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(ENV)
    (tmp_path / "bare").mkdir()
    monkeypatch.chdir(tmp_path / "bare")
    if not any((d / "pyproject.toml").is_file() for d in (tmp_path / "bare").resolve().parents):
        assert default_root() == Path("runs") / "cache"


def test_the_folder_changes_with_the_library_code(tmp_path, monkeypatch):
    """Editing r1lab must not reload a result the old code produced."""
    import r1lab.engine.cached_runs as rc
    b = random_bundle()
    before = run_folder(fake_benchmark(), b, FAST, root=tmp_path)
    assert run_folder(fake_benchmark(), b, FAST, root=tmp_path) == before          # stable
    monkeypatch.setattr(rc, "code_fingerprint", lambda: "edited")
    assert run_folder(fake_benchmark(), b, FAST, root=tmp_path) != before
