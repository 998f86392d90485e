"""The continual-learning engine: loss, determinism, run folder, kill and resume."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from r1lab.benchmark import few_shot
from r1lab.run import load_run, read_accuracy_csv, run_stream
from r1lab.train import contrastive_loss, soft_targets

sys.path.insert(0, str(Path(__file__).parent))
from engine_setup import CFG, fake_benchmark, random_bundle  # noqa: E402


def test_soft_targets_and_contrastive_loss_by_hand():
    y = torch.tensor([0, 1, 0])
    T = soft_targets(y)
    assert torch.allclose(T, torch.tensor([[.5, 0, .5], [0, 1., 0], [.5, 0, .5]]))
    torch.manual_seed(0)
    v = F.normalize(torch.randn(3, 4), dim=-1)
    u = F.normalize(torch.randn(3, 4), dim=-1)
    scale = torch.tensor(2.0)
    logits = scale.exp() * u @ v.T
    by_hand = 0.0
    for L in (logits, logits.T):
        p = L.softmax(1)
        by_hand += -(T * p.log()).sum(1).mean() / 2
    assert contrastive_loss(v, u, y, scale).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_few_shot_takes_the_first_shots_of_each_label_in_seeded_order():
    from torch.utils.data import TensorDataset
    ds = TensorDataset(torch.arange(30).float()[:, None], torch.arange(3).repeat(10))
    a, b = few_shot(ds, 4, seed=1), few_shot(ds, 4, seed=1)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert torch.bincount(a.tensors[1]).tolist() == [4, 4, 4]
    order = torch.randperm(30, generator=torch.Generator().manual_seed(1)).tolist()
    first = {}
    for i in order:
        first.setdefault(i % 3, []).append(i)
    want = sorted(i for ids in first.values() for i in ids[:4])
    assert sorted(a.tensors[0][:, 0].long().tolist()) == want


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dac"
    res = run_stream(fake_benchmark(), random_bundle(), CFG, "dac", out, progress=False)
    return out, res


def test_run_folder_contents(finished_run):
    out, res = finished_run
    for f in ("config.json", "protocol.json", "accuracy.csv", "metrics.json", "counts.pt", "losses.csv"):
        assert (out / f).exists(), f
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task_00.pt", "task_01.pt", "task_02.pt"]
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["order"] == ["alpha", "beta", "gamma"] and proto["shots"] == CFG.shots
    assert proto["label_space"] == "task" and "torch" in proto["versions"]
    names, A = read_accuracy_csv(out / "accuracy.csv")
    assert names == res.task_names and np.allclose(A, res.accuracy, atol=1e-4)
    m = json.loads((out / "metrics.json").read_text())
    assert m["transfer"] == pytest.approx(res.metrics.transfer)
    assert len(m["before_merge"]) == 3 and all(b is not None for b in m["before_merge"])
    back = load_run(out)
    assert np.allclose(back.accuracy, res.accuracy, atol=1e-4)
    # counts: per task, per pool, the per-sample hits of every training forward
    n_pools = len(res.counts[0])
    assert n_pools == 2 * 2 * 6   # two towers x two blocks x six targets
    batch = min(CFG.batch_size, CFG.shots * 4)
    c = next(iter(res.counts[0].values()))
    assert int(c.sum()) == CFG.iterations * batch * CFG.top_k
    assert all(len(ix) == CFG.merge_k for ix in res.merged[0].values())


def test_losses_are_recorded_and_ago_starts_at_task_two(finished_run):
    _, res = finished_run
    assert all(len(log.loss) == CFG.iterations for log in res.logs)
    assert all(a == 0.0 for a in res.logs[0].ago)
    assert any(a > 0 for a in res.logs[1].ago)


def test_runs_are_deterministic(finished_run):
    _, res = finished_run
    again = run_stream(fake_benchmark(), random_bundle(), CFG, "dac", None, progress=False)
    assert np.array_equal(again.accuracy, res.accuracy)


def test_stop_and_resume_gives_the_same_matrix(finished_run, tmp_path):
    _, res = finished_run
    part = run_stream(fake_benchmark(), random_bundle(), CFG, "dac", tmp_path, progress=False, stop_after=1)
    assert np.isnan(part.accuracy[1:]).all()
    rest = run_stream(fake_benchmark(), random_bundle(), CFG, "dac", tmp_path, progress=False)
    assert np.array_equal(rest.accuracy, res.accuracy)


def test_a_killed_run_resumes_to_the_same_matrix(finished_run, tmp_path):
    """Kill a real process with SIGKILL right after its first checkpoint, then resume."""
    _, res = finished_run
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "engine_setup.py"), str(tmp_path)], env=env)
    first = tmp_path / "checkpoints" / "task_00.pt"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert first.exists(), "the child process never wrote its first checkpoint"
    assert not (tmp_path / "metrics.json").exists(), "the child finished before it was killed"
    resumed = run_stream(fake_benchmark(), random_bundle(), CFG, "dac", tmp_path, progress=False)
    assert np.array_equal(resumed.accuracy, res.accuracy)


def test_resume_refuses_another_configuration(finished_run):
    out, _ = finished_run
    with pytest.raises(ValueError, match="another configuration"):
        run_stream(fake_benchmark(), random_bundle(), CFG.replace(lr=0.5), "dac", out, progress=False)


@pytest.mark.parametrize("method", ["zeroshot", "lora", "dac-no-ago", "dac-no-route", "dac-merge-all"])
def test_every_method_runs(method):
    res = run_stream(fake_benchmark(), random_bundle(), CFG.replace(iterations=2), method, None, progress=False)
    assert res.accuracy.shape == (3, 3) and not np.isnan(res.accuracy).any()
    if method == "zeroshot":
        assert np.all(res.accuracy == res.accuracy[0])


def test_union_label_space_scores_over_all_classes():
    bm = fake_benchmark().with_label_space("union")
    res = run_stream(bm, random_bundle(), CFG.replace(iterations=2), "zeroshot", None, progress=False)
    res_task = run_stream(fake_benchmark(), random_bundle(), CFG.replace(iterations=2), "zeroshot", None, progress=False)
    # more classes to confuse with: union accuracy can only be lower or equal, cell by cell
    assert np.all(res.accuracy <= res_task.accuracy + 1e-9)
