"""The activation-guided orthogonal loss (docs/method.md sec. 7) on examples computed by hand."""
import pytest
import torch
import torch.nn as nn

from r1lab import DACConfig, ExpertPoolLinear, ago_loss, cross_gram, pool_ago

# One pool with d_out = 3, r = 4 experts, k = m = 2, through two tasks.
# Task 1: B columns p1..p4, counts -> T1 = TopK_2 = {0, 3}.
B1 = torch.tensor([[1., 0., 0., 1.],
                   [0., 2., 0., 1.],
                   [0., 0., 0., 0.]])
COUNTS1 = [5, 3, 0, 4]
# Task 2 (current): columns c1..c4, counts -> C = TopK_2 = {1, 3} (a tie at 6, both kept).
B2 = torch.tensor([[1., 2., 0., -1.],
                   [1., 0., 0., 0.5],
                   [1., -1., 3., 0.]])
COUNTS2 = [1, 6, 0, 6]
# Hand-computed |c_i . p_j| (rows: current c1..c4, columns: past p1..p4):
#   c1 = ( 1, 1, 1):  1, 2, 0, 2
#   c2 = ( 2, 0,-1):  2, 0, 0, 2
#   c3 = ( 0, 0, 3):  0, 0, 0, 0
#   c4 = (-1,.5, 0):  1, 1, 0, .5
EXPECTED = {
    # ago_past="all": P = p1..p4 (n = 4)
    ("all", "code"): (2 + 0 + 0 + 2) + (1 + 1 + 0 + 0.5),                  # rows c2, c4: 6.5
    ("all", "paper"): 6.5 / (2 * 4),                                       # mean over m x n pairs
    ("all", "dense"): 6.5 + (1 + 2 + 0 + 2) + 0,                            # every current column: 11.5
    # ago_past="merged": P = p1, p4 (task 1's merged T1 = {0, 3})
    ("merged", "code"): (2 + 2) + (1 + 0.5),                                # 5.5
    ("merged", "paper"): 5.5 / (2 * 2),
    ("merged", "dense"): 5.5 + (1 + 2) + 0,                                 # 8.5
}


def two_task_pool(ago_past="all", d_in=5, seed=0):
    torch.manual_seed(seed)
    pool = ExpertPoolLinear(nn.Linear(d_in, 3), DACConfig(rank=4, top_k=2, merge_k=2, dropout=0.0,
                                                          ago_past=ago_past))
    assert pool_ago(pool).item() == 0.0                  # first task: no past, no AGO
    with torch.no_grad():
        pool.B.copy_(B1)
        pool.counts.copy_(torch.tensor(COUNTS1))
    assert pool.end_task().tolist() == [0, 3]
    with torch.no_grad():
        pool.B.copy_(B2)
        pool.counts.copy_(torch.tensor(COUNTS2))
    assert pool.critical().tolist() == [1, 3]
    return pool


@pytest.mark.parametrize("ago_past", ["all", "merged"])
@pytest.mark.parametrize("form", ["code", "paper", "dense"])
def test_hand_computed_values(ago_past, form):
    pool = two_task_pool(ago_past)
    assert pool_ago(pool, form).item() == pytest.approx(EXPECTED[(ago_past, form)], abs=1e-6)


def test_end_task_keeps_all_or_merged_columns():
    pool = two_task_pool("all")
    assert torch.equal(pool.past_B, B1)                  # all r columns, zero ones included
    pool.end_task()
    assert pool.past_B.shape == (3, 8)
    assert torch.equal(pool.past_B[:, 4:], B2)
    pool = two_task_pool("merged")
    assert torch.equal(pool.past_B, B1[:, [0, 3]])       # only the merged top-m
    pool.end_task()
    assert torch.equal(pool.past_B, torch.cat([B1[:, [0, 3]], B2[:, [1, 3]]], dim=1))
    assert "past_B" in dict(pool.named_buffers())
    assert "past_B" not in dict(pool.named_parameters())


@pytest.mark.parametrize("form", ["code", "paper", "dense"])
def test_zero_for_orthogonal_columns(form):
    torch.manual_seed(0)
    pool = ExpertPoolLinear(nn.Linear(4, 8), DACConfig(dropout=0.0))      # r = 12, m = 4
    Q, _ = torch.linalg.qr(torch.randn(8, 8))
    with torch.no_grad():
        pool.B.copy_(Q[:, :4] @ torch.randn(4, 12))      # task 1 lives in span(Q[:, :4])
        pool.counts.copy_(torch.arange(12))
    pool.end_task()
    with torch.no_grad():
        pool.B.copy_(Q[:, 4:] @ torch.randn(4, 12))      # task 2 in the orthogonal complement
        pool.counts.copy_(torch.arange(12).flip(0))
    # zero up to float32 round-off, relative to sum |c| |p| (what non-orthogonal columns give)
    scale = pool.B.detach().norm(dim=0).sum() * pool.past_B.norm(dim=0).sum()
    assert pool_ago(pool, form).item() <= 1e-6 * scale.item()
    # axis-aligned columns: exactly zero
    with torch.no_grad():
        pool.past_B.zero_()
        pool.past_B[:4] = torch.randn(4, 12)
        pool.B.zero_()
        pool.B[4:] = torch.randn(4, 12)
    assert pool_ago(pool, form).item() == 0.0
    assert cross_gram(pool.B.detach(), pool.past_B).abs().max() == 0


def test_ago_loss_is_the_mean_over_pools():
    a = two_task_pool("all")
    b = two_task_pool("all", seed=1)
    with torch.no_grad():
        b.B.mul_(2)                                      # every dot product doubles
    torch.manual_seed(2)
    fresh = ExpertPoolLinear(nn.Linear(5, 3), a.cfg)    # no past columns: contributes 0
    assert ago_loss([a, b, fresh]).item() == pytest.approx((6.5 + 13.0 + 0.0) / 3)
    assert ago_loss([a, b], "paper").item() == pytest.approx((6.5 / 8 + 13.0 / 8) / 2)
    with pytest.raises(ValueError):
        ago_loss([])
    with pytest.raises(ValueError, match="unknown AGO form"):
        pool_ago(a, "cosine")


@pytest.mark.parametrize("form", ["code", "paper"])
def test_gradient_reaches_only_the_selected_current_columns(form):
    pool = two_task_pool("all")
    loss = pool_ago(pool, form)
    loss.backward()
    assert pool.A.grad is None and pool.router.weight.grad is None
    assert not pool.past_B.requires_grad                 # past columns are constants
    C, others = [1, 3], [0, 2]
    assert torch.count_nonzero(pool.B.grad[:, others]) == 0
    for i in C:
        assert pool.B.grad[:, i].abs().sum() > 0
    # d/dc sum_j |c . p_j| = sum_j sign(c . p_j) p_j, by hand for c2 = (2, 0, -1):
    # dots with p1..p4 are 2, 0, 0, 2 -> p1 + p4 (sign(0) = 0)
    expected_c2 = B1[:, 0] + B1[:, 3]
    scale = 1.0 if form == "code" else 1 / 8
    assert torch.allclose(pool.B.grad[:, 1], scale * expected_c2)


def test_dense_form_reaches_every_current_column():
    pool = two_task_pool("all")
    pool_ago(pool, "dense").backward()
    # c3 = (0, 0, 3) is orthogonal to every past column: sign 0, no gradient
    assert [bool(pool.B.grad[:, i].abs().sum() > 0) for i in range(4)] == [True, True, False, True]


def test_cross_gram_is_cosine():
    cur = torch.tensor([[1., 0.], [0., 3.]])
    past = torch.tensor([[2., 1.], [0., 1.]])
    expected = torch.tensor([[1.0, 2 ** -0.5], [0.0, 2 ** -0.5]])
    assert torch.allclose(cross_gram(cur, past), expected)
    assert torch.allclose(cross_gram(cur, past, normalize=False), torch.tensor([[2., 1.], [0., 3.]]))
