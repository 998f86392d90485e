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

from r1lab.data.stream import few_shot
from r1lab.engine.run import load_run, read_accuracy_csv, run_stream
from r1lab.engine.train import contrastive_loss, soft_targets

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


@pytest.mark.slow
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


# ---- the training recipe (docs/method.md sec. 7-9): each test fails on one planted bug ----------

def test_total_loss_is_task_loss_plus_lambda_ago_from_the_second_task(finished_run):
    _, res = finished_run
    first = res.logs[0]
    assert first.loss == first.task_loss and all(a == 0.0 for a in first.ago)
    for log in res.logs[1:]:
        assert any(a > 0 for a in log.ago)
        for total, task, ago in zip(log.loss, log.task_loss, log.ago):
            assert total == pytest.approx(task + CFG.ago_weight * ago, rel=1e-5, abs=1e-6)
            assert abs(total - (task + ago)) > 1e-6 or ago == 0.0     # lambda is applied


def test_learning_rate_follows_the_cosine_over_exactly_the_tasks_iterations(finished_run):
    """lr_s = lr_min + (lr - lr_min)(1 + cos(pi s / T)) / 2 at steps s = 0..T-1 of every task."""
    import math
    _, res = finished_run
    T = CFG.iterations
    want = [CFG.lr_min + (CFG.lr - CFG.lr_min) * (1 + math.cos(math.pi * s / T)) / 2 for s in range(T)]
    for log in res.logs:
        assert log.lr == CFG.lr and len(log.lrs) == T
        assert log.lrs == pytest.approx(want, rel=1e-6)


def test_each_task_reseeds_template_batches_and_fresh_pool(monkeypatch):
    """seed_t = seed + 1000 t (run.py): the fresh pool, the template and the batch order."""
    import random
    import r1lab.engine.run as run_mod
    import r1lab.engine.train as train_mod
    from r1lab import attach_pools, method_config
    cfg = CFG.replace(iterations=2)
    seen_A, gen_seeds = [], []
    train, batches = run_mod.train_task, train_mod._batches

    def spy_train(model, tokenizer, pools, *a, **k):
        seen_A.append(next(iter(pools.values())).A.detach().clone())
        return train(model, tokenizer, pools, *a, **k)

    def spy_batches(n, batch_size, steps, gen):
        gen_seeds.append(gen.initial_seed())
        return batches(n, batch_size, steps, gen)
    monkeypatch.setattr(run_mod, "train_task", spy_train)
    monkeypatch.setattr(train_mod, "_batches", spy_batches)
    bm = fake_benchmark()
    res = run_stream(bm, random_bundle(), cfg, "dac", None, progress=False)
    seeds = [cfg.seed + 1000 * t for t in range(3)]
    assert gen_seeds == seeds
    assert [log.template for log in res.logs] == \
        [random.Random(s).choice(task.templates) for s, task in zip(seeds, bm.tasks)]
    pools = attach_pools(random_bundle().model, method_config("dac", cfg))
    first = next(iter(pools.values()))
    for s, A in zip(seeds, seen_A):
        torch.manual_seed(s)
        pools.reset()
        assert torch.equal(first.A, A)
    assert not torch.equal(seen_A[0], seen_A[1])
