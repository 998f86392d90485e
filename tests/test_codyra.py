"""CoDyRA (r1lab/methods/codyra.py): soft thresholding drives importance weights to exact zeros,
the merged update is exactly the kept components, merges of varying size replay bit for bit;
a planted bug is caught."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import r1lab.methods.codyra as codyra
from engine_setup import CFG, fake_benchmark, random_bundle
from r1lab import DACConfig, get_method, run_stream
from r1lab.engine.train import train_task


def toy_pool(seed=0, d_in=6, d_out=4, r=5, **kw):
    torch.manual_seed(seed)
    cfg = DACConfig.plain_lora(DACConfig(rank=r, top_k=r, merge_k=r, dropout=0.0, **kw))
    return codyra.RankSelectivePool(nn.Linear(d_in, d_out), cfg)


def test_forward_is_W0x_plus_s_B_diag_w_A_x_by_hand():
    pool = toy_pool()
    with torch.no_grad():
        pool.B.normal_()
        pool.importance.copy_(torch.tensor([0.5, 0.0, -1.0, 2.0, 0.1]))
    x = torch.randn(3, 6)
    by_hand = x @ pool.base.weight.T + pool.base.bias
    for i in range(5):
        by_hand = by_hand + pool.scale * float(pool.importance[i].detach()) * torch.outer(x @ pool.A[i].detach(), pool.B[:, i].detach())
    assert torch.allclose(pool(x), by_hand, atol=1e-6)


def test_soft_threshold_by_hand():
    pool = toy_pool()
    with torch.no_grad():
        pool.importance.copy_(torch.tensor([0.3, -0.05, 0.02, -0.4, 0.0]))
    pool.shrink(0.1)
    assert pool.importance.tolist() == pytest.approx([0.2, 0.0, 0.0, -0.3, 0.0])
    assert pool.kept().tolist() == [0, 3]


def test_threshold_follows_the_cosine_schedule():
    cfg = DACConfig(lr=4e-3, lr_min=0.0, iterations=10, codyra_sparsity=0.5)
    assert codyra.threshold(cfg, 0) == pytest.approx(2e-3)
    assert codyra.threshold(cfg, 5) == pytest.approx(1e-3)
    assert codyra.threshold(cfg, 10) == pytest.approx(0.0, abs=1e-12)


def test_training_reaches_exact_zeros_and_the_merge_is_the_kept_components():
    m, bundle, task = get_method("codyra"), random_bundle(), fake_benchmark().tasks[0]
    cfg = m.configure(CFG)
    pools = m.attach(bundle.model, cfg)
    torch.manual_seed(0)
    pools.reset()
    train_task(bundle.model, bundle.tokenizer, pools, task, task.train, cfg, 0, progress=False, method=m)
    w = torch.cat([p.importance.detach() for p in pools.values()])
    assert (w == 0).sum() > 0 and (w != 0).sum() > 0        # some pruned, some kept
    name, pool = next((n, p) for n, p in pools.items() if 0 < len(p.kept()) < p.rank)
    K = [i for i in range(pool.rank) if float(pool.importance[i].detach()) != 0.0]
    by_hand = sum(pool.scale * float(pool.importance[i].detach()) * torch.outer(pool.B[:, i], pool.A[i]) for i in K)
    W_before = pool.base.weight.detach().clone()
    merged = m.end_task(pools)[name]
    assert merged.tolist() == K
    assert torch.allclose(pool.base.weight - W_before, by_hand, atol=1e-6)
    assert pool.merged_sizes.tolist() == [len(K)]


def test_merges_of_varying_size_replay_bit_for_bit():
    pool = toy_pool(seed=3)
    W_orig = pool.base.weight.detach().clone()
    for keep in ([0, 2], [1, 2, 3, 4]):
        with torch.no_grad():
            pool.B.normal_()
            pool.importance.copy_(torch.tensor([0.3 if i in keep else 0.0 for i in range(5)]))
        pool.end_task()
    state = pool.adapter_state()
    fresh = toy_pool(seed=9)
    with torch.no_grad():
        fresh.base.weight.copy_(W_orig)
        fresh.base.bias.copy_(pool.base.bias)
    fresh.load_adapter_state(state)
    assert fresh.merged_sizes.tolist() == [2, 4]
    assert torch.equal(fresh.base.weight, pool.base.weight)


def test_a_run_resumes_to_the_same_matrix(tmp_path):
    whole = run_stream(fake_benchmark(), random_bundle(), CFG, "codyra", None, progress=False)
    run_stream(fake_benchmark(), random_bundle(), CFG, "codyra", tmp_path, progress=False, stop_after=2)
    rest = run_stream(fake_benchmark(), random_bundle(), CFG, "codyra", tmp_path, progress=False)
    assert np.array_equal(rest.accuracy, whole.accuracy)
    assert [sorted(len(v) for v in m.values()) for m in rest.merged] == \
           [sorted(len(v) for v in m.values()) for m in whole.merged]


def test_a_planted_bug_is_caught(monkeypatch):
    """A shrink that scales instead of thresholding never reaches zero: caught."""
    monkeypatch.setattr(codyra.RankSelectivePool, "shrink",
                        lambda self, tau: self.importance.data.mul_(1 - tau))
    m, bundle, task = get_method("codyra"), random_bundle(), fake_benchmark().tasks[0]
    cfg = m.configure(CFG)
    pools = m.attach(bundle.model, cfg)
    train_task(bundle.model, bundle.tokenizer, pools, task, task.train, cfg, 0, progress=False, method=m)
    assert all(bool((p.importance != 0).all()) for p in pools.values())


def test_bad_values_name_the_field():
    from r1lab.errors import ConfigError
    with pytest.raises(ConfigError, match="codyra_sparsity"):
        DACConfig(codyra_sparsity=-1.0)
    with pytest.raises(ConfigError, match="codyra_init"):
        DACConfig(codyra_init=math.nan)
