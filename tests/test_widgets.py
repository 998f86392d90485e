"""Views of r1lab.widgets: each draws and prints, and ``interact`` stores no repr."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from engine_setup import fake_benchmark, random_bundle  # noqa: E402
from r1lab import DACConfig, attach_pools  # noqa: E402
from r1lab.diagnostics import routing_profile  # noqa: E402
from r1lab.widgets import heatmap_view, interact  # noqa: E402


def _profile():
    b = random_bundle(0)
    torch.manual_seed(0)
    pools = attach_pools(b.model, DACConfig(rank=6, top_k=3, merge_k=2, dropout=0.0))
    return routing_profile(b.model, b.tokenizer, pools, fake_benchmark(), n_per_task=8, batch_size=4)


def test_heatmap_view_draws_own_k_and_replayed_k(capsys):
    prof = _profile()
    fig = heatmap_view(prof, "image", 1, "c_fc")
    assert fig is not None and "specialisation" in capsys.readouterr().out
    fig = heatmap_view(prof, "text", 0, "q", which="active", top_k=5)
    data = fig.axes[0].collections[0].get_array()
    # at k = 5 of 6 experts, each domain's active set holds 5 experts in every batch
    assert abs(float(data.reshape(3, 6).sum(1).mean()) - 5.0) < 1e-6


def test_heatmap_view_missing_pool(capsys):
    assert heatmap_view(_profile(), "image", 7, "q") is None
    assert "no q pool in block 7" in capsys.readouterr().out


def test_interact_returns_nothing_and_calls_the_view():
    calls = []

    def view(k: int = 2):
        calls.append(k)
        return object()

    assert interact(view, k=(1, 4)) is None
    assert calls == [2]


# ---------------------------------------------------------------- 04_ago_orthogonality
def _grid_result():
    """A finished 2-task RunResult whose single pool merged e1, then e2 (orthogonal)."""
    import numpy as np
    import torch.nn as nn
    from r1lab import ExpertPoolLinear, PoolSet, RunResult, summarize
    cfg = DACConfig(rank=2, top_k=2, merge_k=1, dropout=0.0)
    torch.manual_seed(0)
    pool = ExpertPoolLinear(nn.Linear(4, 3), cfg)
    for col in (torch.tensor([1., 0., 0.]), torch.tensor([0., 1., 0.])):
        with torch.no_grad():
            pool.B[:, 0] = col
            pool.counts.copy_(torch.tensor([5, 1]))
        pool.end_task()
    A = np.array([[80.0, 20.0], [70.0, 90.0]])
    return RunResult("dac", ["one", "two"], A, summarize(A), [None, None], [{}, {}], [{}, {}], [], 0.0,
                     pools=PoolSet({"visual.transformer.resblocks.0.attn.q": pool}, cfg))


def test_sweep_view_reads_the_grid(capsys):
    from r1lab.widgets import sweep_view
    runs = {(0.1, 4): _grid_result()}
    fig = sweep_view(runs, 0.1, 4)
    out = capsys.readouterr().out
    assert fig is not None and len(fig.axes) == 2
    assert "forgetting 10.0" in out and "collision rate 0.00" in out
    gram = fig.axes[1].collections[0].get_array().reshape(2, 2)
    assert abs(float(gram[0, 1])) < 1e-6 and abs(float(gram[0, 0]) - 1.0) < 1e-6
    assert sweep_view(runs, 1.0, 4) is None
    assert "no run for lambda = 1.0" in capsys.readouterr().out


def test_examples_grid_has_a_row_per_task_and_a_title_per_class():
    from r1lab import plots
    bm = fake_benchmark()
    fig = plots.examples(bm, n=4)
    axes = fig.axes
    assert len(axes) == len(bm.tasks) * 4
    titles = [ax.get_title() for ax in axes[:4]]
    assert titles == ["thing 0", "thing 1", "thing 2", "thing 3"]   # alpha has 4 classes
    beta = [ax.get_title() for ax in axes[4:8]]
    assert beta == ["thing 0", "thing 1", "thing 2", ""]             # beta has 3: one empty slot
