"""The generated world as an MTIL-shaped ``Benchmark``: seven small domains, each classified
in its own label space, deterministic from one seed.

    bench = make_world_benchmark(seed=0)          # 7 tasks, 16 train / 50 test images per class
    bench.tasks[0].test.tensors[0].shape          # (500, 3, 32, 32), already normalised

Images are float32 tensors 3 x 32 x 32, normalised with CLIP's OPENAI_DATASET_MEAN / STD, so
the tiny CLIP's transforms are the identity. Labels are int64.

Determinism: every (domain, split, class) has its own numpy stream,
``SeedSequence([seed, domain index, split, class])``. The test split is generated first and
never depends on ``n_train_per_class``; digits test images come from a fixed held-out part of
scikit-learn's digits that pretraining never uses (``domains.digit_split``). Samples are
stored class by class (all of class 0, then class 1, ...).
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import TensorDataset

from r1lab.data.stream import Benchmark, Task
from r1lab.data.world.domains import DEFAULT_ORDER, DIGITS_TEST_PER_CLASS, DOMAINS

SOURCE = "r1lab generated world v1"
_SPLIT_IDS = {"test": 0, "train": 1, "val": 2}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 32, 32, 3) float images in [0, 1] -> (N, 3, 32, 32) float32, CLIP-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def to_images(x: torch.Tensor) -> np.ndarray:
    """The inverse of ``to_tensor``, for plotting: (N, 3, H, W) -> (N, H, W, 3) in [0, 1]."""
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x.detach().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@lru_cache(maxsize=32)
def _split_tensors(seed: int, domain: str, split: str, n_per_class: int):
    d = DOMAINS[domain]
    did = DEFAULT_ORDER.index(domain)
    xs, ys = [], []
    for label in range(d.num_classes):
        rng = np.random.default_rng(np.random.SeedSequence([seed, did, _SPLIT_IDS[split], label]))
        xs.append(d.sample(rng, label, n_per_class, split=split))
        ys.append(np.full(n_per_class, label, dtype=np.int64))
    return to_tensor(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def make_world_task(name: str, seed: int = 0, n_train_per_class: int = 16,
                    n_test_per_class: int = 50, eval_split: str = "test") -> Task:
    """One domain of the world as a ``Task`` (test split generated before train).

    ``eval_split="val"`` scores the task on a validation split instead of the test split:
    images drawn from the training distribution (for digits: the training digits, never the
    held-out test digits) by their own random streams, disjoint from the few-shot training
    images. Choose hyper-parameters on it; report on "test"."""
    if eval_split not in ("test", "val"):
        raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    if name not in DOMAINS:
        raise ValueError(f"unknown world domain {name!r}; choose from {list(DEFAULT_ORDER)}")
    if n_train_per_class < 1 or n_test_per_class < 1:
        raise ValueError("n_train_per_class and n_test_per_class must be >= 1")
    d = DOMAINS[name]
    # test first; clones, so that no caller can edit the cached tensors in place
    test = TensorDataset(*(t.clone() for t in _split_tensors(seed, name, eval_split, n_test_per_class)))
    train = TensorDataset(*(t.clone() for t in _split_tensors(seed, name, "train", n_train_per_class)))
    info = {"source": SOURCE, "coverage": d.coverage, "chance": 100.0 / d.num_classes,
            "caption_words": list(d.caption_words), "n_train_per_class": n_train_per_class,
            "n_test_per_class": n_test_per_class}
    if eval_split != "test":
        info["eval_split"] = eval_split
    if name == "digits" and eval_split == "test":
        info["test_digits"] = (f"sklearn load_digits, {DIGITS_TEST_PER_CLASS} held-out images per "
                               "class (fixed, never used in pretraining)")
        if n_test_per_class > DIGITS_TEST_PER_CLASS:
            info["test_digits"] += f"; each re-drawn {n_test_per_class / DIGITS_TEST_PER_CLASS:.1f}x"
    return Task(name, list(d.classnames), list(d.templates), train, test, info)


def make_world_benchmark(seed: int = 0, n_train_per_class: int = 16, n_test_per_class: int = 50,
                         order: Optional[Sequence[str]] = None, eval_split: str = "test",
                         label_space: str = "task") -> Benchmark:
    """The generated world: digits, shapes, counting, textures, arrows, colours, positions
    (or ``order``), 6-10 classes each, task label space (MTIL-like).

    Zero-shot with the bundled tiny CLIP ranges from chance (digits, counting, arrows: their
    class words never appeared in pretraining; see ``domains``) to near 100 % (colours).

    ``eval_split="val"``: every task is scored on its validation split (``make_world_task``).
    ``label_space="union"``: the X-TAIL form, every test image classified among the classes
    of all seven domains (63 names), with no task identity at test time."""
    order: List[str] = list(DEFAULT_ORDER if order is None else order)
    tasks = [make_world_task(n, seed, n_train_per_class, n_test_per_class, eval_split) for n in order]
    protocol = {
        "benchmark": "world", "source": SOURCE, "templates_source": SOURCE,
        "generator_seed": seed, "n_train_per_class": n_train_per_class,
        "n_test_per_class": n_test_per_class, "order": order, "label_space": label_space,
        "eval_split": eval_split,
        "image_size": 32, "normalisation": "open_clip OPENAI_DATASET_MEAN / OPENAI_DATASET_STD",
        "classes": {t.name: t.num_classes for t in tasks},
    }
    return Benchmark("world", tasks, label_space, protocol)
