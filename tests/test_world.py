"""The generated world: deterministic, MTIL-shaped, and honest about what pretraining saw."""
import re

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import SimpleTokenizer

from r1lab.data.stream import Benchmark, Task, dataset_labels, few_shot
from r1lab.data.world import DEFAULT_ORDER, DOMAINS, make_world_benchmark, make_world_task, to_images
from r1lab.data.world import stream as wb
from r1lab.data.world import captions as C
from r1lab.data.world import domains as D
from r1lab.data.world import render as R

SMALL = dict(n_train_per_class=3, n_test_per_class=4)


def fresh(name, seed=0, **kw):
    """A task generated from scratch (bypassing the in-process cache)."""
    wb._split_tensors.cache_clear()
    return make_world_task(name, seed, **{**SMALL, **kw})


@pytest.mark.parametrize("name", DEFAULT_ORDER)
def test_same_seed_same_tensors_other_seed_other_tensors(name):
    a, b, c = fresh(name, 0), fresh(name, 0), fresh(name, 1)
    for split in ("train", "test"):
        xa, ya = getattr(a, split).tensors
        xb, yb = getattr(b, split).tensors
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, getattr(c, split).tensors[0])
    assert not torch.equal(a.train.tensors[0][:3], a.test.tensors[0][:3])


def test_domains_classes_templates_and_default_order():
    assert DEFAULT_ORDER == ("digits", "shapes", "counting", "textures", "arrows", "colours", "positions")
    assert set(DOMAINS) == set(DEFAULT_ORDER)
    for d in DOMAINS.values():
        assert 5 <= d.num_classes <= 20, d.name
        assert len(set(d.classnames)) == d.num_classes
        assert len(d.caption_words) == d.num_classes
        assert d.templates and all(t.count("{}") == 1 for t in d.templates)
    counts = {n: DOMAINS[n].num_classes for n in DEFAULT_ORDER}
    assert counts == dict(digits=10, shapes=8, counting=6, textures=10, arrows=8, colours=10, positions=9)


def test_benchmark_shapes_dtypes_normalisation_and_protocol():
    bench = make_world_benchmark(seed=0, **SMALL)
    assert isinstance(bench, Benchmark) and bench.label_space == "task"
    assert bench.task_names == list(DEFAULT_ORDER)
    p = bench.protocol
    assert p["generator_seed"] == 0 and p["order"] == list(DEFAULT_ORDER)
    assert p["n_train_per_class"] == 3 and p["n_test_per_class"] == 4
    assert p["templates_source"] == "r1lab generated world v1" and p["label_space"] == "task"
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    for t in bench.tasks:
        assert isinstance(t, Task)
        for split, n in (("train", 3), ("test", 4)):
            x, y = getattr(t, split).tensors
            assert x.dtype == torch.float32 and x.shape == (n * t.num_classes, 3, 32, 32)
            assert y.dtype == torch.long
            assert sorted(set(y.tolist())) == list(range(t.num_classes))
            assert np.bincount(y.numpy()).tolist() == [n] * t.num_classes
            # normalised with CLIP's mean/std: undoing it gives 8-bit levels in [0, 1]
            raw = x * std + mean
            assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
            assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
        assert to_images(t.test.tensors[0][:2]).shape == (2, 32, 32, 3)


def test_order_and_reordering():
    bench = make_world_benchmark(order=["colours", "digits"], **SMALL)
    assert bench.task_names == ["colours", "digits"] and bench.protocol["order"] == ["colours", "digits"]
    with pytest.raises(ValueError, match="unknown world domain"):
        make_world_benchmark(order=["mnist"], **SMALL)


@pytest.mark.parametrize("name", ["digits", "shapes", "counting"])
def test_test_split_does_not_depend_on_n_train(name):
    a, b = fresh(name, n_train_per_class=2), fresh(name, n_train_per_class=7)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert len(a.train) != len(b.train)


def test_few_shot_from_world_train_split():
    t = make_world_task("shapes", 0, n_train_per_class=16, n_test_per_class=2)
    fs = few_shot(t.train, 5, seed=42)
    assert np.bincount(dataset_labels(fs)).tolist() == [5] * t.num_classes


def test_digit_split_is_fixed_and_disjoint():
    split = D.digit_split()
    labels = R.digits_24()[1]
    for c in range(10):
        test, rest = set(split["test"][c]), set(split["rest"][c])
        assert len(test) == D.DIGITS_TEST_PER_CLASS and not test & rest
        assert test | rest == set(np.flatnonzero(labels == c).tolist())
        assert all(labels[i] == c for i in test)


def _record_digit_indices(monkeypatch):
    seen = []
    real = R.digit_image

    def spy(index, rng):
        seen.append(int(index))
        return real(index, rng)

    monkeypatch.setattr(R, "digit_image", spy)
    return seen


def test_digits_test_images_never_used_in_pretraining(monkeypatch):
    held_out = {int(i) for c in range(10) for i in D.digit_split()["test"][c]}
    seen = _record_digit_indices(monkeypatch)
    rng = np.random.default_rng(0)
    for _ in range(300):
        C.alias_pair("digits", rng)
    assert len(seen) == 300 and not held_out & set(seen)
    seen.clear()                                # the test split uses held-out digits only
    t = fresh("digits", n_test_per_class=D.DIGITS_TEST_PER_CLASS)
    test_seen = seen[:10 * D.DIGITS_TEST_PER_CLASS]
    assert set(test_seen) == held_out           # every held-out digit once
    assert not held_out & set(seen[len(test_seen):])   # the train split: none of them
    assert len(t.test) == 10 * D.DIGITS_TEST_PER_CLASS


def _words(text: str) -> set:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.mark.parametrize("name", [n for n in DEFAULT_ORDER if DOMAINS[n].coverage != "named"])
def test_alias_words_never_occur_in_the_prompts(name):
    d = DOMAINS[name]
    prompt_words = set().union(*(_words(t.format(c)) for t in d.templates for c in d.classnames))
    for cls, word in zip(d.classnames, d.caption_words):
        if word is not None and word != cls:            # an alias
            assert not _words(word) & prompt_words, (name, word)


def test_pretraining_captions_never_name_the_alias_classes():
    """No pretraining caption contains a class word of an alias domain (e.g. "dots",
    "three", "arrow", "pointing", or a digit)."""
    rng = np.random.default_rng(0)
    _, caps = C.pretraining_batch(rng, 1500)
    words = set().union(*(_words(c) for c in caps))
    for name in ("digits", "counting", "arrows"):
        d = DOMAINS[name]
        class_words = set().union(*(_words(c) for c in d.classnames)) - {"left", "right"}
        template_words = set().union(*(_words(t.replace("{}", "")) for t in d.templates))
        assert not words & class_words, (name, words & class_words)
        assert not words & (template_words - {"a", "an", "photo", "of", "the"}), name
    # every alias word does occur (the images are seen, under other names)
    for alias in C.COUNT_ALIASES + C.ARROW_ALIASES + C.GREEK:
        assert alias in words, alias


def test_longest_caption_fits_the_context():
    tok = SimpleTokenizer(context_length=20)
    longest_words = lambda seq: max(seq, key=lambda w: len(tok.encode(w)))   # noqa: E731
    worst = [
        C.object_caption(f, "small", longest_words(R.COLOUR_NAMES), longest_words(R.SHAPES + ("object",)),
                         longest_words(D.NAMED_POSITIONS), longest_words(D.TEXTURE_WORDS)) for f in C.FRAMES]
    worst += [C.texture_caption(f, (longest_words(R.COLOUR_NAMES),) * 2, longest_words(D.TEXTURE_WORDS),
                                "background") for f in C.FRAMES]
    worst += [C.alias_caption(s, f, longest_words(a), longest_words(R.COLOUR_NAMES)) for f in C.FRAMES
              for s, a in (("counting", C.COUNT_ALIASES), ("arrows", C.ARROW_ALIASES), ("digits", C.GREEK))]
    _, caps = C.pretraining_batch(np.random.default_rng(1), 500)
    n = max(len(tok.encode(c)) for c in worst + caps)
    assert n + 2 <= 20, f"a caption of {n} tokens does not fit start + end in context 20"
    prompts = [t.format(c) for d in DOMAINS.values() for t in d.templates for c in d.classnames]
    assert max(len(tok.encode(p)) for p in prompts) + 2 <= 20


def test_pretraining_batch_is_deterministic_and_mixed():
    a = C.pretraining_batch(np.random.default_rng(3), 64)
    b = C.pretraining_batch(np.random.default_rng(3), 64)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (64, 32, 32, 3) and a[0].dtype == np.float32
    assert 0.0 <= a[0].min() and a[0].max() <= 1.0
    assert len(set(a[1])) > 20


def test_render_primitives():
    for kind in R.SHAPES:
        m = R.shape_mask(kind, 16, 16, 8, 0)
        assert m.shape == (32, 32) and 0 <= m.min() and m.max() == 1.0
        assert 20 < m.sum() < 260, kind                  # visible, inside its 16 x 16 box
    # canonical pose: the triangle's and the star's top point is above the centre
    tri = R.shape_mask("triangle", 16, 16, 8, 0)
    assert tri[:14].sum() < tri[18:].sum()               # wide base at the bottom
    for kind in R.TEXTURES:
        m = R.texture_mask(kind, np.random.default_rng(0))
        assert 0.05 < m.mean() < 0.95, kind
    up = R.arrow_mask(16, 16, 20, 2, 6, 90)              # points up: the head is on top
    assert up[4:12].sum() > up[20:28].sum()
    assert R.digits_24()[0].shape == (1797, 24, 24)
