"""SD-LoRA (r1lab/methods/sd_lora.py): the forward and the merged weight against the formulas
written here, earlier directions fixed bit for bit while their magnitudes train, bit-exact merge
replay, the engine in both label spaces, resume; a planted bug is caught."""
import dataclasses

import numpy as np
import pytest
import torch
from engine_setup import CFG, fake_benchmark, random_bundle
from torch import nn

from r1lab import DACConfig, get_method, run_stream
from r1lab.engine.train import train_task
from r1lab.errors import ConfigError
from r1lab.methods import sd_lora


def toy_pool(seed=0, d_in=6, d_out=4, r=3, alpha=1.5):
    torch.manual_seed(seed)
    cfg = DACConfig.plain_lora(DACConfig(rank=r, top_k=r, merge_k=r, dropout=0.0, alpha=alpha))
    return sd_lora.SDLoRAPool(nn.Linear(d_in, d_out), cfg)


def unit(B, A):
    """B A / ||B A||_F, with the d_out x d_in matrix formed explicitly."""
    M = B.detach().double() @ A.detach().double()
    return M / M.pow(2).sum().sqrt()


def test_forward_and_merges_of_two_tasks_by_hand():
    pool = toy_pool()
    alpha, W_orig = 1.5, pool.base.weight.detach().double().clone()
    with torch.no_grad():
        pool.magnitude.fill_(0.7)
    D1, m1 = unit(pool.B, pool.A), 0.7
    assert pool.end_task().tolist() == [0, 1, 2]
    W1 = W_orig + alpha * m1 * D1
    assert torch.allclose(pool.base.weight.double(), W1, atol=1e-6)
    assert torch.allclose(pool.dir_B.double() @ pool.dir_A.double(), D1, atol=1e-6)
    # task 2: a new direction, its magnitude and the change of the first magnitude
    assert pool.delta.shape == (1,) and pool.delta.requires_grad and pool.magnitude.item() == 0.0
    with torch.no_grad():
        pool.magnitude.fill_(1.3)
        pool.delta.fill_(-0.4)
    D2 = unit(pool.B, pool.A)
    x = torch.randn(5, 6)
    by_hand = x.double() @ (W1 + alpha * (-0.4 * D1 + 1.3 * D2)).T + pool.base.bias.double()
    assert torch.allclose(pool(x).double(), by_hand, atol=1e-5)
    assert torch.allclose(pool.delta_weight().double(), alpha * (-0.4 * D1 + 1.3 * D2), atol=1e-6)
    B, A = pool.B.detach().double(), pool.A.detach().double()
    part = alpha * 1.3 * B[:, [0, 2]] @ A[[0, 2]] / (B @ A).pow(2).sum().sqrt()
    assert torch.allclose(pool.delta_weight([0, 2]).double(), part, atol=1e-6)
    pool.end_task()
    # the merged weight is W_orig + alpha * sum_i (final magnitude_i) D_i
    W2 = W_orig + alpha * ((m1 - 0.4) * D1 + 1.3 * D2)
    assert torch.allclose(pool.base.weight.double(), W2, atol=1e-6)
    assert pool.merged_B.shape == (4, 2 * 3) and pool.dir_B.shape == (4, 2 * 3)   # r columns per task
    assert pool.delta_record.tolist() == pytest.approx([-0.4])                     # task 2 moved D_1 by -0.4


def test_replaying_the_merges_on_the_original_weight_is_bit_exact():
    pool = toy_pool(seed=1)
    W_orig = pool.base.weight.detach().clone()
    for t in range(3):
        with torch.no_grad():
            pool.magnitude.fill_(0.5 + t)
            pool.delta.copy_(torch.linspace(-1.0, 1.0, t))
            pool.A.mul_(1.0 + 0.1 * t)
        pool.end_task()
    fresh = toy_pool(seed=7)
    with torch.no_grad():
        fresh.base.weight.copy_(W_orig)
        fresh.base.bias.copy_(pool.base.bias)
    fresh.load_adapter_state(pool.adapter_state())
    assert torch.equal(fresh.base.weight, pool.base.weight)
    assert torch.equal(fresh.dir_A, pool.dir_A) and torch.equal(fresh.dir_B, pool.dir_B)
    assert fresh.directions() == 3 and fresh.delta.shape == (3,)


def directions_through_task_2():
    """Train task 1, merge, train task 2 (no merge); returns the pools, the direction factors
    before task 2 trained and the hand-made D_1 of every pool."""
    m, bundle, bench = get_method("sd-lora"), random_bundle(), fake_benchmark()
    cfg = m.configure(CFG)
    pools = m.attach(bundle.model, cfg)
    for t in range(2):
        torch.manual_seed(t)
        pools.reset()
        train_task(bundle.model, bundle.tokenizer, pools, bench.tasks[t], bench.tasks[t].train,
                   cfg, t, progress=False, method=m)
        if t == 0:
            D1 = {n: unit(p.B, p.A) for n, p in pools.items()}
            m.end_task(pools)
            kept = {n: (p.dir_A.clone(), p.dir_B.clone()) for n, p in pools.items()}
    return pools, kept, D1, m


def test_earlier_directions_stay_fixed_while_their_magnitudes_train():
    pools, kept, D1, m = directions_through_task_2()
    for n, p in pools.items():
        assert torch.equal(p.dir_A, kept[n][0]) and torch.equal(p.dir_B, kept[n][1])
        assert torch.allclose(p.dir_B.double() @ p.dir_A.double(), D1[n], atol=1e-5)
    trained = {id(q) for q in pools.trainable_parameters()}
    assert all(id(p.delta) in trained and id(p.magnitude) in trained for p in pools.values())
    assert any(p.delta.abs().max().item() > 0 for p in pools.values())
    # merging task 2 adds alpha * (delta_1 D_1 + m_2 D_2): by hand, pool by pool
    before = {n: p.base.weight.detach().double().clone() for n, p in pools.items()}
    added = {n: p.scale * (p.delta.item() * D1[n] + p.magnitude.item() * unit(p.B, p.A))
             for n, p in pools.items()}
    m.end_task(pools)
    for n, p in pools.items():
        assert torch.allclose(p.base.weight.double(), before[n] + added[n], atol=1e-5)


def test_a_planted_bug_is_caught(monkeypatch):
    """A layer that leaves the kept directions trainable: the fixed-direction check fails."""
    reset = sd_lora.SDLoRAPool.reset

    def leaky_reset(self):
        reset(self)
        if "dir_B" in self._buffers and self.directions():
            self.dir_B = nn.Parameter(self._buffers.pop("dir_B").clone())

    monkeypatch.setattr(sd_lora.SDLoRAPool, "reset", leaky_reset)
    pools, kept, _, _ = directions_through_task_2()
    assert not all(torch.equal(p.dir_B, kept[n][1]) for n, p in pools.items())


@pytest.fixture(scope="module")
def whole_run():
    return run_stream(fake_benchmark(), random_bundle(), CFG, "sd-lora", None, progress=False)


@pytest.mark.parametrize("space", ["task", "union"])
def test_the_engine_runs_it_in_both_label_spaces(space, whole_run):
    bench = dataclasses.replace(fake_benchmark(), label_space=space)
    res = whole_run if space == "task" else run_stream(bench, random_bundle(), CFG, "sd-lora",
                                                       None, progress=False)
    assert res.accuracy.shape == (3, 3) and np.isfinite(res.accuracy).all()
    assert res.metrics is not None
    assert all(m and all(v.tolist() == list(range(CFG.rank)) for v in m.values()) for m in res.merged)


def test_a_run_resumes_to_the_same_matrix_and_weights(tmp_path, whole_run):
    run_stream(fake_benchmark(), random_bundle(), CFG, "sd-lora", tmp_path, progress=False, stop_after=2)
    rest = run_stream(fake_benchmark(), random_bundle(), CFG, "sd-lora", tmp_path, progress=False)
    assert np.array_equal(rest.accuracy, whole_run.accuracy)
    assert all(torch.equal(p.base.weight, whole_run.pools[n].base.weight) for n, p in rest.pools.items())


def test_bad_configurations_name_the_field():
    m = get_method("sd-lora")
    for field, value in (("merge_rule", "svd"), ("router", "gate"), ("consolidate", 0.5),
                         ("alpha", 0.0)):
        with pytest.raises(ConfigError, match=field):
            m.configure(CFG.replace(**{field: value}))
    with pytest.raises(ConfigError, match="merge_k"):
        sd_lora.SDLoRAPool(nn.Linear(4, 4), DACConfig(rank=4, top_k=4, merge_k=2))
