"""The teaching helpers the notebooks call: exercise checks, lesson checks, the method diagram,
the confusion matrix and pool titles."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from r1lab import plots  # noqa: E402
from r1lab.teach import diagram
from r1lab.teach import exercises
from r1lab.teach import notebook


def test_check_tells_right_from_wrong_and_never_raises(capsys):
    assert exercises.check("x", ..., 1.0) is False
    assert "not answered yet" in capsys.readouterr().out
    assert exercises.check("x", [1.0, ...], [1.0, 2.0]) is False          # a half-finished list
    assert "not answered yet" in capsys.readouterr().out
    assert exercises.check("x", torch.tensor([1.0, 2.0]), np.array([1.0, 2.0])) is True
    assert "correct" in capsys.readouterr().out
    assert exercises.check("x", [1.0, 2.5], [1.0, 2.0], hint="look again") is False
    out = capsys.readouterr().out
    assert "not yet" in out and "5.0e-01" in out and "look again" in out
    assert exercises.check("x", [1.0], [1.0, 2.0]) is False
    assert "shape" in capsys.readouterr().out
    assert exercises.check("x", "abc", 1.0) is False
    assert exercises.check("x", float("nan"), 1.0) is False
    assert exercises.check("x", 1.05, 1.0, atol=0.1) is True


def test_expect_prints_the_range_and_raises_outside(capsys):
    assert notebook.expect("gap", 3.0, low=0, why="DAC forgets less") == 3.0
    out = capsys.readouterr().out
    assert "gap: 3.00" in out and ">= 0" in out and "DAC forgets less" in out
    with pytest.raises(AssertionError, match="outside"):
        notebook.expect("gap", -1.0, low=0)
    with pytest.raises(AssertionError):
        notebook.expect("rate", 20.0, high=100 / 6)
    capsys.readouterr()
    notebook.expect("rate", 0.7, high=100 / 6)
    assert "<= 16.67" in capsys.readouterr().out


def test_setup_sets_lecture_dpi_and_silences_the_random_weights_line(capsys, caplog):
    import logging
    notebook.setup(quiet=True)
    assert plt.rcParams["figure.dpi"] == notebook.LECTURE_DPI
    logging.getLogger().warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    logging.getLogger().warning("something else")
    msgs = [r.getMessage() for r in caplog.records]
    assert "something else" in msgs and not any("No pretrained" in m for m in msgs)
    assert "tiny" in notebook.where("world", "tiny", "world", "cpu")


@pytest.mark.parametrize("highlight", [None, *diagram.STAGES])
def test_method_diagram_names_every_stage(highlight):
    fig = diagram.method_diagram(highlight=highlight)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for word in ("router on token 0", "per-sample top-k", "batch vote", "0/1 mask", "counts",
                 "AGO loss", "merge the critical experts", "plain CLIP", "r = 12"):
        assert word in texts, word
    red = [p.get_gid() for p in fig.axes[0].patches if p.get_gid() and p.get_edgecolor()[0] > 0.8]
    assert (not red) if highlight is None else all(g == f"box:{highlight}" for g in red) and red
    plt.close(fig)


def test_method_diagram_rejects_bad_sizes():
    with pytest.raises(ValueError, match="merge_k"):
        diagram.method_diagram(rank=4, top_k=8, merge_k=4)
    with pytest.raises(ValueError, match="highlight"):
        diagram.method_diagram(highlight="nope")


def test_pool_title_in_words():
    assert plots.pool_title("visual.transformer.resblocks.3.mlp.c_fc") == "image tower, block 3, c_fc"
    assert plots.pool_title("transformer.resblocks.0.attn.q") == "text tower, block 0, q"


def test_confusion_counts_match_accuracy(tiny_clip_and_world):
    import r1lab
    bundle, bench = tiny_clip_and_world
    task = bench["colours"]
    M = r1lab.analysis.diagnostics.confusion(bundle.model, bundle.tokenizer, task)
    assert M.shape == (task.num_classes, task.num_classes) and int(M.sum()) == len(task.test)
    acc = r1lab.zeroshot_table(bundle.model, bundle.tokenizer, bench.reordered(["colours"]))["colours"]
    assert abs(100 * M.trace().item() / M.sum().item() - acc) < 1e-6
    plt.close(plots.confusion_matrix(M.numpy(), task.classnames))


@pytest.fixture(scope="module")
def tiny_clip_and_world():
    import r1lab
    return r1lab.load_clip("tiny"), r1lab.make_benchmark("world")
