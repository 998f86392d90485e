"""Tests of r1lab.analysis.diagnostics (each section names the notebook that relies on it)."""


# ---------------------------------------------------------------- routing profiles (03_routing)
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).parent))
import pytest  # noqa: E402
import torch  # noqa: E402

from engine_setup import fake_benchmark, random_bundle  # noqa: E402
from r1lab import DACConfig, attach_pools  # noqa: E402
from r1lab.analysis.diagnostics import (counts_by_task, routing_profile, top_share,  # noqa: E402
                               top_shares)

_ROUTE_CFG = DACConfig(rank=6, top_k=3, merge_k=2, dropout=0.0)


def _profile(cfg=_ROUTE_CFG, seed=0):
    b = random_bundle(seed)
    torch.manual_seed(seed)
    pools = attach_pools(b.model, cfg)
    return routing_profile(b.model, b.tokenizer, pools, fake_benchmark(), n_per_task=10,
                           batch_size=4), pools


@pytest.mark.parametrize("selection", ["batch", "sample"])
def test_at_k_with_own_k_reproduces_the_recorded_routes(selection):
    prof, pools = _profile(_ROUTE_CFG.replace(selection=selection))
    assert prof.selection == selection
    for name in pools:
        chosen, active = prof.at_k(name, _ROUTE_CFG.top_k)
        assert torch.equal(chosen, prof.chosen[name]), name
        assert torch.equal(active, prof.active[name]), name
        # every sample picks exactly k experts
        assert torch.allclose(chosen.sum(1), torch.full((3,), 3.0))


def test_at_k_extremes_and_range():
    prof, pools = _profile()
    name = next(iter(pools))
    chosen, active = prof.at_k(name, 6)          # k = r: every expert, every time
    assert torch.equal(chosen, torch.ones(3, 6)) and torch.equal(active, torch.ones(3, 6))
    chosen, _ = prof.at_k(name, 1)
    assert torch.allclose(chosen.sum(1), torch.ones(3))
    with pytest.raises(ValueError):
        prof.at_k(name, 7)


def test_profile_stores_one_score_row_per_routed_sample():
    prof, pools = _profile()
    bm = fake_benchmark()
    n_img = sum(min(10, len(t.test)) for t in bm.tasks)
    n_txt = sum(t.num_classes * len(t.templates) for t in bm.tasks)
    for name in pools:
        n = n_img if name.startswith("visual.") else n_txt
        assert prof.scores[name].shape == (n, 6)
        assert prof.domain[name].shape == prof.batch[name].shape == (n,)
        assert torch.allclose(prof.scores[name].sum(1), torch.ones(n), atol=1e-5)


def test_text_routing_on_start_of_text_is_the_same_for_every_prompt():
    """docs/method.md sec. 3: under the causal mask token 0 never sees the prompt."""
    prof, _ = _profile()
    for name in prof.tower("text"):
        s = prof.scores[name]
        assert torch.allclose(s, s[:1].expand_as(s), atol=1e-6), name
        assert prof.specialisation(name) < 1e-6
    prof_eot, _ = _profile(_ROUTE_CFG.replace(text_route_token="eot"))
    spread = max(float((prof_eot.scores[n] - prof_eot.scores[n][:1]).abs().max())
                 for n in prof_eot.tower("text"))
    assert spread > 1e-4


def test_specialisation_table_has_a_row_per_tower_and_block():
    prof, _ = _profile()
    lines = prof.specialisation_table().splitlines()
    assert lines[0].split() == ["tower", "block", "q", "k", "v", "o", "c_fc", "c_proj"]
    assert [l.split()[:2] for l in lines[1:]] == [["image", "0"], ["image", "1"], ["text", "0"], ["text", "1"]]


def test_counts_by_task_and_top_shares():
    counts = [{"visual.transformer.resblocks.0.attn.q": torch.tensor([4, 0, 2, 2]),
               "transformer.resblocks.0.attn.q": torch.tensor([1, 1, 1, 1])},
              {"visual.transformer.resblocks.0.attn.q": torch.tensor([0, 8, 0, 0]),
               "transformer.resblocks.0.attn.q": torch.tensor([3, 0, 0, 1])}]
    C = counts_by_task(counts, "visual.transformer.resblocks.0.attn.q")
    assert torch.equal(C, torch.tensor([[0.5, 0.0, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0]]))
    shares = top_shares(counts, m=2)
    assert shares == {"image": [0.75, 1.0], "text": [0.5, 1.0]}
    assert shares["text"][0] == top_share(torch.tensor([1, 1, 1, 1]), 2)
    with pytest.raises(KeyError):
        counts_by_task([{}, {}], "visual.transformer.resblocks.0.attn.q")


# ---------------------------------------------------------------- orthogonality (04_ago_orthogonality)
import torch.nn as _nn  # noqa: E402

from r1lab import ExpertPoolLinear, PoolSet  # noqa: E402
from r1lab.analysis.diagnostics import (collision_rate, delta_overlap, mean_overlap,  # noqa: E402
                               merged_norms, output_overlap)


def _two_task_pools():
    """Two pools (d_out = 3, r = 2, m = 1) through two tasks. The merged B column of each task
    is set by hand: pool "a" writes e1 then e2 (orthogonal), pool "b" writes e1 then -2 e1
    (the same direction)."""
    cfg = DACConfig(rank=2, top_k=2, merge_k=1, dropout=0.0)
    e1, e2 = torch.tensor([1., 0., 0.]), torch.tensor([0., 1., 0.])
    pools = {}
    for name, cols in (("visual.transformer.resblocks.0.attn.q", (e1, e2)),
                       ("transformer.resblocks.0.attn.q", (e1, -2 * e1))):
        torch.manual_seed(0)
        pool = ExpertPoolLinear(_nn.Linear(4, 3), cfg)
        for col in cols:
            with torch.no_grad():
                pool.B[:, 0] = col
                pool.counts.copy_(torch.tensor([5, 1]))      # expert 0 is merged
            pool.end_task()
        pools[name] = pool
    return PoolSet(pools, cfg)


def test_mean_overlap_by_hand():
    pools = _two_task_pools()
    a, b = pools.values()
    assert torch.allclose(output_overlap(a), torch.eye(2))
    assert torch.allclose(output_overlap(b), torch.ones(2, 2))
    assert torch.allclose(mean_overlap(pools), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    expected = (delta_overlap(a) + delta_overlap(b)) / 2
    assert torch.allclose(mean_overlap(pools, kind="delta"), expected)
    # one cross-task column pair per pool, one of the two collides
    assert collision_rate(pools) == 0.5
    with pytest.raises(ValueError):
        mean_overlap(pools, kind="gram")


def test_merged_norms_by_hand():
    pools = _two_task_pools()
    a, b = pools.values()
    # Delta W_t = s b_t a_t^T with s = 1/2: its norm is |b_t| |a_t| / 2
    by_hand = torch.stack([torch.tensor([p.merged_B[:, t].norm() * p.merged_A[t].norm() / 2
                                         for t in range(2)]) for p in (a, b)]).mean(0)
    assert torch.allclose(merged_norms(pools), by_hand)
    assert merged_norms(pools).shape == (2,)


def test_mean_overlap_before_any_merge_is_empty():
    torch.manual_seed(0)
    cfg = DACConfig(rank=2, top_k=2, merge_k=1)
    pools = PoolSet({"visual.transformer.resblocks.0.attn.q": ExpertPoolLinear(_nn.Linear(4, 3), cfg)}, cfg)
    assert mean_overlap(pools).shape == (0, 0)
    assert merged_norms(pools).shape == (0,)
