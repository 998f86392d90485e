"""LoRAMoE (r1lab/methods/loramoe.py): per-token soft routing over E LoRA experts, the localized
balancing constraint, experts that persist across tasks and are never merged, by hand."""
import math

import numpy as np
import pytest
import torch
from engine_setup import CFG, fake_benchmark, random_bundle
from torch import nn

import r1lab
from r1lab import DACConfig
from r1lab.errors import ConfigError
from r1lab.methods import loramoe
from r1lab.poolset import PoolSet

# rank 6 in 3 experts of rank 2 (odd E: world group {0}, task group {1, 2}); a short run
MOE = CFG.replace(moe_experts=3, iterations=4)


def small_pool(seed: int = 0, d_in: int = 8, d_out: int = 5, experts: int = 3) -> loramoe.LoRAMoEPool:
    """A pool on a random linear, no dropout, A and B random (so that the experts matter)."""
    torch.manual_seed(seed)
    cfg = DACConfig.plain_lora(CFG.replace(moe_experts=experts, dropout=0.0, alpha=2.0))
    pool = loramoe.LoRAMoEPool(nn.Linear(d_in, d_out), cfg)
    pool.reset()
    with torch.no_grad():
        pool.B.normal_()
        pool.gate.weight.normal_()
    return pool.train()


def hand_softmax_over_experts(pool, x: torch.Tensor) -> torch.Tensor:
    """w_j(x) = exp(g_j . x) / sum_k exp(g_k . x), token by token, written out."""
    G = pool.gate.weight.detach()
    N, L, _ = x.shape
    w = torch.empty(N, L, G.shape[0])
    for n in range(N):
        for t in range(L):
            e = [math.exp(float(G[j] @ x[n, t])) for j in range(G.shape[0])]
            w[n, t] = torch.tensor([v / sum(e) for v in e])
    return w


def check_routing_is_a_softmax_per_token(pool, x: torch.Tensor) -> None:
    """The defining property: per token, the weights over the experts are a distribution
    (sum to one), they differ between two tokens of one sample, and equal the hand softmax."""
    pool(x)
    w = pool.gate_w.detach()
    assert w.shape == (*x.shape[:2], pool.experts)
    assert torch.allclose(w.sum(-1), torch.ones(x.shape[:2]), atol=1e-6), "weights must sum to one per token"
    assert not torch.allclose(w[0, 0], w[0, 1]), "two tokens of one sample must be routed apart"
    assert torch.allclose(w, hand_softmax_over_experts(pool, x), atol=1e-6)


def test_routing_weights_are_a_softmax_over_experts_per_token():
    pool = small_pool()
    x = torch.randn(3, 5, 8)
    check_routing_is_a_softmax_per_token(pool, x)


def test_a_planted_bug_is_caught(monkeypatch):
    """The check above can fail: a softmax over the tokens instead of the experts is caught."""
    monkeypatch.setattr(loramoe.LoRAMoEPool, "gate_weights",
                        lambda self, x: torch.softmax(self.gate(x), dim=-2))
    pool = small_pool()
    with pytest.raises(AssertionError, match="sum to one per token"):
        check_routing_is_a_softmax_per_token(pool, torch.randn(3, 5, 8))


def test_output_is_the_gate_weighted_sum_of_the_experts_by_hand():
    """y = W0 x + b + sum_j w_j(x) s B_j A_j x, expert j = directions [2j, 2j + 2)."""
    pool = small_pool(seed=1)
    x = torch.randn(2, 4, 8)
    w = hand_softmax_over_experts(pool, x)
    W0, b, A, B = (t.detach() for t in (pool.base.weight, pool.base.bias, pool.A, pool.B))
    s = 2.0 / 6
    want = torch.empty(2, 4, 5)
    for n in range(2):
        for t in range(4):
            v = W0 @ x[n, t] + b
            for j in range(3):
                J = slice(2 * j, 2 * j + 2)
                v = v + w[n, t, j] * s * (B[:, J] @ (A[J] @ x[n, t]))
            want[n, t] = v
    assert torch.allclose(pool(x), want, atol=1e-5)
    pool.eval()                                    # inference runs through the experts too
    assert torch.allclose(pool(x), want, atol=1e-5)


def test_lbc_by_hand_equals_the_penalty():
    """Z_nj = Q_j sum_l w_j(x_nl), Q = 1 - delta (world group) or 1 + delta (task group) for
    task samples; L_lbc = Var(Z) / Mean(Z) (unbiased Var), summed over the pools."""
    cfg = DACConfig.plain_lora(CFG.replace(rank=8, moe_experts=4, moe_delta=0.3))
    method = r1lab.get_method("loramoe")
    gen = torch.Generator().manual_seed(5)
    pools, want = {}, 0.0
    for name in ("p0", "p1"):
        w = torch.softmax(torch.randn(3, 4, 4, generator=gen), dim=-1)     # (N=3, L=4, E=4)
        pool = loramoe.LoRAMoEPool(nn.Linear(6, 6), cfg)
        pool.gate_w = w
        pools[name] = pool
        Q = [0.7, 0.7, 1.3, 1.3]
        Z = [Q[j] * sum(float(w[n, t, j]) for t in range(4)) for n in range(3) for j in range(4)]
        mean = sum(Z) / len(Z)
        var = sum((z - mean) ** 2 for z in Z) / (len(Z) - 1)
        want += var / mean
    got = method.penalty(PoolSet(pools, cfg), cfg, task_index=2)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert method.penalty_weight(cfg.replace(moe_balance=0.25)) == 0.25


def test_the_gate_gets_a_gradient_from_the_task_and_from_the_lbc():
    pool = small_pool(seed=2)
    x = torch.randn(2, 3, 8)
    pool(x).sum().backward()
    assert pool.gate.weight.grad is not None and pool.gate.weight.grad.abs().sum() > 0
    fresh = loramoe.LoRAMoEPool(nn.Linear(8, 5), DACConfig.plain_lora(MOE))
    fresh.reset()                                  # B = 0: only the LBC reaches the gate
    fresh.train()(x)
    loramoe.lbc_loss(fresh.gate_w, 0.1).backward()
    assert fresh.gate.weight.grad.abs().sum() > 0
    assert fresh.gate.weight.requires_grad and fresh.A.requires_grad and fresh.B.requires_grad


def test_experts_persist_across_tasks_and_nothing_is_merged():
    method = r1lab.get_method("loramoe")
    assert method.merges is False
    bundle, bench = random_bundle(), fake_benchmark()
    cfg = method.configure(MOE)
    pools = method.attach(bundle.model, cfg)
    assert all(type(p) is loramoe.LoRAMoEPool for p in pools.values())
    gates = {id(p.gate.weight) for p in pools.values()}
    assert gates <= {id(q) for q in pools.trainable_parameters()}
    torch.manual_seed(0)
    pools.reset()                                  # the first task's: A, B, gate initialised

    def snap():
        return {n: [t.detach().clone() for t in (p.A, p.B, p.gate.weight, p.base.weight)]
                for n, p in pools.items()}
    after = snap()
    for t in range(2):
        if t:
            pools.reset()                          # the engine's reset at a new task
            assert all(p.counts.sum() == 0 for p in pools.values())
            assert all(all(torch.equal(a, b) for a, b in zip(after[n], now)) for n, now in snap().items())
        before = snap()
        task = bench.tasks[t]
        r1lab.train_task(bundle.model, bundle.tokenizer, pools, task, task.train, cfg, t,
                         progress=False, method=method)
        trained = snap()
        assert all(not torch.equal(before[n][k], trained[n][k]) for n in pools for k in range(3))
        merged = method.end_task(pools)
        assert set(merged) == set(pools)
        assert all(v.dtype == torch.long and v.numel() == 0 for v in merged.values())
        after = snap()
        # nothing merged: W0 unchanged by training and by end_task, the experts kept as they are
        assert all(torch.equal(before[n][3], after[n][3]) for n in pools)
        assert all(all(torch.equal(a, b) for a, b in zip(trained[n], after[n])) for n in pools)
        with method.evaluation(pools):
            assert all(p.enabled for p in pools.values())


def test_the_engine_runs_it_in_both_label_spaces():
    for bench in (fake_benchmark(), fake_benchmark().with_label_space("union")):
        res = r1lab.run_stream(bench, random_bundle(), MOE, "loramoe", progress=False)
        assert res.accuracy.shape == (3, 3) and not np.isnan(res.accuracy).any()
        assert res.metrics is not None
        assert all(len(m) and all(len(v) == 0 for v in m.values()) for m in res.merged)
        assert all(any(a > 0 for a in log.ago) for log in res.logs)       # the LBC is on


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    full = r1lab.run_stream(fake_benchmark(), random_bundle(), MOE, "loramoe", progress=False)
    part = r1lab.run_stream(fake_benchmark(), random_bundle(), MOE, "loramoe", tmp_path,
                            progress=False, stop_after=2)
    assert np.isnan(part.accuracy[2:]).all() and not np.isnan(part.accuracy[:2]).any()
    rest = r1lab.run_stream(fake_benchmark(), random_bundle(), MOE, "loramoe", tmp_path, progress=False)
    assert np.array_equal(rest.accuracy, full.accuracy)
    for n, p in full.pools.items():                 # the same experts and gates at the end
        q = rest.pools[n]
        assert torch.equal(p.A, q.A) and torch.equal(p.B, q.B)
        assert torch.equal(p.gate.weight, q.gate.weight)


@pytest.mark.parametrize("experts", [4, 1])
def test_bad_expert_counts_are_refused_naming_both_fields(experts):
    cfg = CFG.replace(moe_experts=experts)          # rank 6: 4 does not divide it, 1 is no MoE
    with pytest.raises(ConfigError, match=r"moe_experts.*rank"):
        r1lab.get_method("loramoe").configure(cfg)
    with pytest.raises(ConfigError, match=r"moe_experts.*rank"):
        loramoe.LoRAMoEPool(nn.Linear(4, 4), DACConfig.plain_lora(cfg))
    with pytest.raises(ConfigError, match="moe_experts"):
        r1lab.run_stream(fake_benchmark(), random_bundle(), cfg, "loramoe", progress=False)


def test_exporting_a_plain_clip_is_refused_with_the_fix():
    """The experts cannot be folded into W0: detach_pools / save_merged say so instead of
    silently dropping them."""
    from r1lab.attach import detach_pools
    m = r1lab.get_method("loramoe")
    bundle = random_bundle()
    m.attach(bundle.model, m.configure(CFG.replace(moe_experts=3)))
    with pytest.raises(ValueError, match="keep their layers at inference.*torch.save"):
        detach_pools(bundle.model)
