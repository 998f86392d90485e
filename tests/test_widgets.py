"""r1lab.teach.widgets: views draw and print, reject bad values in one line; factories bound their
controls and carry a static picture; ``interact`` stores no repr."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from engine_setup import fake_benchmark, random_bundle  # noqa: E402
from r1lab import DACConfig, attach_pools  # noqa: E402
from r1lab.analysis.diagnostics import routing_profile  # noqa: E402
from r1lab.teach.widgets import heatmap_view, interact  # noqa: E402


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
    from r1lab.teach.widgets import sweep_view
    runs = {(0.1, 4): _grid_result()}
    fig = sweep_view(runs, 0.1, 4)
    out = capsys.readouterr().out
    assert fig is not None and len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 2
    assert "forgetting 10.0" in out and "collision rate 0.00" in out
    gram = fig.axes[1].collections[0].get_array().reshape(2, 2)
    assert abs(float(gram[0, 1])) < 1e-6 and abs(float(gram[0, 0]) - 1.0) < 1e-6
    assert sweep_view(runs, 1.0, 4) is None
    assert "no run for lambda = 1, m = 4: the grid has (lambda, m) = (0.1, 4)" in capsys.readouterr().out


def test_examples_grid_has_a_row_per_task_and_a_title_per_class():
    from r1lab.teach import plots
    bm = fake_benchmark()
    fig = plots.examples(bm, n=4)
    axes = fig.axes
    assert len(axes) == len(bm.tasks) * 4
    titles = [ax.get_title() for ax in axes[:4]]
    assert titles == ["thing 0", "thing 1", "thing 2", "thing 3"]   # alpha has 4 classes
    beta = [ax.get_title() for ax in axes[4:8]]
    assert beta == ["thing 0", "thing 1", "thing 2", ""]             # beta has 3: one empty slot


# ---------------------------------------------------------------- bad values: one line, no traceback
def _one_line(capsys):
    out = capsys.readouterr().out.strip()
    assert out and "\n" not in out and "Traceback" not in out, out
    return out


def test_views_reject_bad_values_in_one_line(capsys):
    from r1lab.teach.widgets import decomposition_view, sweep_view
    assert decomposition_view(rank=5, k=9) is None
    assert "k is at most the rank r = 5" in _one_line(capsys)
    assert decomposition_view(rank=12, k=0) is None
    assert "k = 0" in _one_line(capsys)
    assert decomposition_view(d=-5) is None                      # was a RuntimeError traceback
    assert "d (layer size) = -5" in _one_line(capsys)
    assert decomposition_view(rank=60, d=48) is None
    assert "from 1 to 48" in _one_line(capsys)
    prof = _profile()
    assert heatmap_view(prof, "image", 1, "c_fc", top_k=7) is None   # rank is 6
    assert "top_k = 7" in _one_line(capsys)
    assert heatmap_view(prof, "audio", 0, "q") is None
    assert "tower = 'audio'" in _one_line(capsys)
    assert heatmap_view(prof, "image", 0, "q", which="both") is None
    assert "which = 'both'" in _one_line(capsys)
    runs = {(0.1, 4): _grid_result()}
    assert sweep_view(runs, 0.1, 4, threshold=1.5) is None
    assert "choose a number between 0 and 1" in _one_line(capsys)


def test_sweep_view_rounds_the_threshold(capsys):
    from r1lab.teach.widgets import sweep_view
    sweep_view({(0.1, 4): _grid_result()}, 0.1, 4, threshold=0.1 + 0.2 + 0.1)   # 0.4000000000000001
    assert "(|cos| > 0.40)" in capsys.readouterr().out


# ---------------------------------------------------------------- factories
def test_decomposition_widget_links_k_to_rank_and_keeps_a_picture():
    from r1lab.teach.widgets import EXPECT, WIDGET_MIME, decomposition_widget
    p = decomposition_widget(show=False)
    assert list(p.controls) == ["rank", "k"] == list(EXPECT["decomposition"])   # no d, no seed
    rank, k = p.controls["rank"], p.controls["k"]
    assert (rank.min, rank.max, k.min, k.max, k.value) == (1, 32, 1, 12, 8)
    assert "energy kept by these 8 experts" in p.last[0]
    k.value = 3
    assert "energy kept by these 3 experts" in p.last[0]
    rank.value = 2                                   # k follows the rank down...
    assert (k.max, k.value) == (2, 2) and "energy kept by these 2 experts" in p.last[0]
    rank.value = 20                                  # ...and may go up again, but stays put
    assert (k.max, k.value) == (20, 2)
    k.value = 99                                     # a typed value beyond the range clamps
    assert k.value == 20 and "energy kept by these 20 experts" in p.last[0]
    bundle = p._repr_mimebundle_()
    assert set(bundle) == {WIDGET_MIME, "image/png", "text/plain"}
    import base64
    png = base64.b64decode(bundle["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == p.png
    assert "energy kept by these 8 experts" in bundle["text/plain"]      # the default view, kept
    assert "interactive(" not in bundle["text/plain"]
    assert p.widget._dom_classes[-2:] == ("r1lab-widget", "r1lab-decomposition")


def test_decomposition_widget_rejects_bad_defaults(capsys):
    from r1lab.teach.widgets import decomposition_widget
    assert decomposition_widget(rank=4, k=6, show=False) is None
    assert "k = 6" in _one_line(capsys)


def test_routing_widget_controls_are_the_profiles_own(capsys):
    from r1lab.teach.widgets import EXPECT, routing_widget
    prof = _profile()                               # 2 blocks per tower, rank 6, pools' own k = 3
    p = routing_widget(prof, show=False)
    assert list(p.controls) == list(EXPECT["routing"])
    c = p.controls
    assert (c["block"].min, c["block"].max, c["block"].value) == (0, 1, 1)
    assert (c["top_k"].min, c["top_k"].max, c["top_k"].value) == (1, 6, 3)
    assert set(c["target"].options) == {"q", "k", "v", "o", "c_fc", "c_proj"} and c["target"].value == "c_fc"
    assert list(c["tower"].options) == ["image", "text"]
    assert p.last[0].startswith("image tower, block 1, c_fc (visual.transformer.resblocks.1.mlp.c_fc): "
                                "chosen frequency at k = 3")
    c["top_k"].value = 5
    assert "at k = 5" in p.last[0] and "at k = 5 (0 =" in p.last[1]
    c["tower"].value = "text"
    c["block"].value = 0
    c["which"].value = "active"
    assert p.last[0].startswith("text tower, block 0, c_fc") and "active frequency" in p.last[0]
    DACConfig_like = type("C", (), {"top_k": 2})
    assert routing_widget(prof, DACConfig_like, show=False).controls["top_k"].value == 2


def test_sweep_widget_offers_the_grids_values():
    from r1lab.teach.widgets import EXPECT, sweep_widget
    runs = {(0.1, 4): _grid_result(), (0.0, 4): _grid_result(), (0.1, 8): _grid_result()}
    p = sweep_widget(runs, threshold=0.4, show=False)
    assert list(p.controls) == list(EXPECT["sweep"])
    c = p.controls
    assert list(c["lambda"].options) == [("0", 0.0), ("0.1", 0.1)] and c["lambda"].value == 0.1
    assert [v for _, v in c["merge_k"].options] == [4, 8]
    assert c["threshold"].readout_format == ".2f" and "(|cos| > 0.40)" in p.last[1]
    c["lambda"].value = 0.0
    c["merge_k"].value = 8                          # (0, 8) was not run: one line, no figure
    assert p.last.startswith("no run for lambda = 0, m = 8:")
    c["lambda"].value = 0.1
    assert p.last[0].startswith("lambda = 0.1, m = 8:")


def test_expect_matches_what_the_views_print():
    """Every EXPECT pattern, filled with the default value as its control shows it, is in the
    default readout (the browser test relies on this)."""
    from r1lab.teach.widgets import EXPECT, decomposition_widget, routing_widget, sweep_widget
    panels = {"decomposition": decomposition_widget(show=False),
              "routing": routing_widget(_profile(), show=False),
              "sweep": sweep_widget({(0.1, 4): _grid_result()}, show=False)}
    for kind, p in panels.items():
        text = "\n".join(p.last)
        for label, pattern in EXPECT[kind].items():
            c = p.controls[label]
            shown = (c._options_labels[c.index] if hasattr(c, "_options_labels") else
                     format(c.value, c.readout_format) if hasattr(c, "readout_format") else str(c.value))
            assert pattern.format(shown) in text, (kind, label, pattern.format(shown), text)
