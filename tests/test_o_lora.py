"""O-LoRA (r1lab/methods/o_lora.py): the orthogonality penalty and its gradient on a two-task
toy, checked against formulas written here; a planted bug is caught."""
import pytest
import torch
import torch.nn as nn

import r1lab.methods.o_lora as o_lora
from engine_setup import CFG, fake_benchmark, random_bundle
from r1lab import DACConfig, get_method
from r1lab.engine.train import train_task
from r1lab.methods.lora import DensePool


def two_task_pool(seed=0, d_in=7, d_out=5, r=3):
    """A plain-LoRA pool after one merged task (A_1 kept in merged_A), training task 2."""
    torch.manual_seed(seed)
    cfg = DACConfig.plain_lora(DACConfig(rank=r, top_k=r, merge_k=r, dropout=0.0))
    pool = DensePool(nn.Linear(d_in, d_out), cfg)
    with torch.no_grad():
        pool.B.normal_()
    A1 = pool.A.detach().clone()
    pool.end_task()                     # folds B A_1, keeps A_1, fresh A_2 (Kaiming), B = 0
    return pool, A1


def penalty_by_hand(A1, A2):
    return sum(float(A1[j] @ A2[k]) ** 2 for j in range(A1.shape[0]) for k in range(A2.shape[0]))


def test_penalty_is_the_sum_of_squared_cross_products():
    pool, A1 = two_task_pool()
    assert torch.equal(pool.merged_A, A1)
    loss = o_lora.orthogonality_loss([pool])
    assert loss.item() == pytest.approx(penalty_by_hand(A1, pool.A.detach()), rel=1e-5)


def test_penalty_gradient_reaches_A_only_and_is_2_A2_A1T_A1():
    pool, A1 = two_task_pool(seed=1)
    o_lora.orthogonality_loss([pool]).backward()
    A2 = pool.A.detach()
    by_hand = torch.stack([sum(2 * float(A1[j] @ A2[k]) * A1[j] for j in range(A1.shape[0]))
                           for k in range(A2.shape[0])])
    assert torch.allclose(pool.A.grad, by_hand, atol=1e-6)
    assert pool.B.grad is None


def test_no_penalty_on_the_first_task_and_its_weight_is_lambda_1():
    m = get_method("o-lora")
    bundle = random_bundle()
    cfg = m.configure(CFG)
    pools = m.attach(bundle.model, cfg)
    assert m.penalty(pools, cfg, 0) is None
    assert m.penalty_weight(cfg) == cfg.olora_weight == 0.5
    assert (cfg.top_k, cfg.merge_k, cfg.ago_weight) == (cfg.rank, cfg.rank, 0.0)


def test_training_task_2_makes_A_more_orthogonal_to_A_1_than_plain_lora():
    """The defining effect: after the second task the cross products with the first task's
    rows are smaller under O-LoRA than under plain LoRA from the same start."""
    bench = fake_benchmark()
    overlaps = {}
    for name in ("lora", "o-lora"):
        m, bundle = get_method(name), random_bundle()
        cfg = m.configure(CFG).replace(olora_weight=50.0)
        pools = m.attach(bundle.model, cfg)
        for t in range(2):
            torch.manual_seed(t)
            pools.reset()
            train_task(bundle.model, bundle.tokenizer, pools, bench.tasks[t], bench.tasks[t].train,
                       cfg, t, progress=False, method=m)
            if t == 0:
                pools.end_task()
        overlaps[name] = sum(penalty_by_hand(p.merged_A, p.A.detach()) for p in pools.values())
    assert overlaps["o-lora"] < 0.5 * overlaps["lora"]


def test_a_planted_bug_is_caught(monkeypatch):
    """A penalty on |A_1 A_2^T| (not squared) no longer matches the hand computation."""
    monkeypatch.setattr(o_lora, "orthogonality_loss", lambda pools: torch.stack(
        [(p.merged_A @ p.A.T).abs().sum() for p in pools]).sum())
    pool, A1 = two_task_pool()
    assert o_lora.orthogonality_loss([pool]).item() != pytest.approx(
        penalty_by_hand(A1, pool.A.detach()), rel=1e-5)
