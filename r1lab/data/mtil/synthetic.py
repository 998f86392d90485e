"""A synthetic MTIL-shaped benchmark: the full-size run, timed without any dataset.

``make_mtil_synthetic`` builds the 11 MTIL tasks of Order I or II with the real class counts,
the real test-set sizes (97,209 images in all, docs/protocol.md; r1lab/assets/mtil_datasets.json),
training sets of exactly ``shots`` images per class, the real templates and the real class
names where r1lab bundles them (Caltech101, EuroSAT, Flowers: ZSCL's lists; MNIST: torchvision's).
The other seven datasets' names are read from the dataset files by torchvision and are not
bundled, so they are placeholders ("Aircraft class 17"); a name changes only the prompt text,
never the cost (every prompt is padded to the tokenizer's context length).

Images are random 8-bit pixels, generated on the fly from (seed, dataset, split, index) and
normalised like CLIP input, so nothing is held in memory and the same index always gives the
same tensor. Accuracies on it are meaningless (chance): it exists to time a complete run
(training, 11 evaluations, the test-set cache, checkpoints) on any machine.

    python -m r1lab run --benchmark mtil-synthetic --order I --model ViT-B-16-quickgelu \\
        --preset paper --device cuda --out runs/mtil-synthetic
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from r1lab.data.stream import Benchmark, Task
from r1lab.data.mtil.folders import CLASSNAMES, CLIP_MEAN, CLIP_STD, ORDERS, TEMPLATES, _order

_SPECS = json.loads(resources.files("r1lab").joinpath("assets/mtil_datasets.json").read_text())["datasets"]
MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
                 "7 - seven", "8 - eight", "9 - nine"]   # torchvision.datasets.MNIST.classes
SYNTHETIC_NOTE = ("SYNTHETIC: random images, no dataset read; accuracies are meaningless (chance), "
                  "the run is for timing only")


def real_counts(name: str) -> dict:
    """{'classes', 'train', 'test'} of the real dataset (r1lab/assets/mtil_datasets.json)."""
    s = _SPECS[name]
    return {"classes": int(s["classes"]), "train": int(s["train"]), "test": int(s["test"])}


def synthetic_classnames(name: str) -> List[str]:
    """The real class names where bundled, else '<dataset> class <i>' placeholders."""
    if name in CLASSNAMES:
        return list(CLASSNAMES[name])
    if name == "MNIST":
        return list(MNIST_CLASSES)
    return [f"{name} class {i}" for i in range(real_counts(name)["classes"])]


class _Labels(Sequence):
    """Label i = i mod classes, without a list (so ``dataset_labels`` reads them cheaply)."""

    def __init__(self, n: int, classes: int):
        self.n, self.classes = n, classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i % self.classes


class _Generated:
    """The transform slot of a synthetic split: applies the caller's transform (if any); its
    repr names everything the images depend on, so the test-set cache tells them apart."""

    def __init__(self, key: str, transform: Optional[Callable]):
        self.key, self.inner = key, transform

    def __call__(self, x):
        return self.inner(x) if self.inner is not None else x

    def __repr__(self) -> str:
        inner = "" if self.inner is None else f", then {self.inner!r}"
        return f"SyntheticImages({self.key}{inner})"


class SyntheticImages(Dataset):
    """``n`` random images of ``classes`` classes, made on the fly: image i is uint8-range noise
    from a generator seeded by (seed, dataset, split, i), normalised with CLIP's mean / std."""

    def __init__(self, name: str, split: str, n: int, classes: int, image_size: int = 224,
                 seed: int = 0, transform: Optional[Callable] = None):
        self.name, self.split, self.n, self.image_size, self.seed = name, split, n, image_size, seed
        self.targets = _Labels(n, classes)
        self.transform = _Generated(f"seed {seed}, {name} {split}, {n} images, {image_size} px", transform)
        digest = hashlib.sha256(f"{seed}|{name}|{split}".encode()).digest()
        self._key = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng(self._key + [i])    # numpy's PCG64: about 0.3 ms a 224-px image
        side = self.image_size
        pix = torch.from_numpy(np.frombuffer(rng.bytes(3 * side * side), dtype=np.uint8).reshape(3, side, side).copy())
        return (pix.float() / 255.0 - self._mean) / self._std

    def __getitem__(self, i):
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"{self.name} {self.split}: index {i} outside 0..{self.n - 1}")
        return self.transform(self.image(i)), self.targets[i]


def make_mtil_synthetic(order="I", image_size: int = 224, test_scale: float = 1.0, shots: int = 5,
                        seed: int = 0, names: Optional[Sequence[str]] = None,
                        train_transform: Optional[Callable] = None,
                        test_transform: Optional[Callable] = None) -> Benchmark:
    """MTIL Order I or II with random images (see the module docstring).

    test_scale  < 1 shrinks every test set to round(test_scale * size) images, at least one per
                class (for CPU tests); 1.0 keeps the real sizes (97,209 images in all)
    shots       training images per class (the training set holds exactly shots x classes)
    names       a subset of the order's tasks, kept in the order's order
    """
    key = _order(order)
    if not 0 < test_scale <= 1:
        raise ValueError(f"test_scale must be in (0, 1], got {test_scale!r}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots!r}")
    chosen = ORDERS[key]
    if names is not None:
        unknown = [n for n in names if n not in chosen]
        if unknown:
            raise ValueError(f"{unknown} not in MTIL's tasks {chosen}")
        chosen = [n for n in chosen if n in names]
    tasks = []
    for i, name in enumerate(chosen):
        c = real_counts(name)
        n_test = c["test"] if test_scale == 1 else max(c["classes"], round(test_scale * c["test"]))
        info = {"dataset": name, "synthetic": True, "split": "synthetic (random images)",
                "counts": {"classes": c["classes"], "train": shots * c["classes"], "test": n_test},
                "real_counts": c, "image_size": image_size,
                "classnames_source": ("ZSCL hand-written list" if name in CLASSNAMES else
                                      "torchvision MNIST.classes" if name == "MNIST" else
                                      "placeholders (the real names come from the dataset files)"),
                "templates_source": "ZSCL mtil/src/datasets/collections.py"}
        tasks.append(Task(name, synthetic_classnames(name), list(TEMPLATES[name]),
                          SyntheticImages(name, "train", shots * c["classes"], c["classes"], image_size,
                                          seed, train_transform),
                          SyntheticImages(name, "test", n_test, c["classes"], image_size, seed,
                                          test_transform), info))
    protocol = {"benchmark": "MTIL-synthetic", "synthetic": True, "note": SYNTHETIC_NOTE,
                "stream_of": "MTIL", "order": key, "tasks": [t.name for t in tasks],
                "subset": names is not None, "label_space": "task", "image_size": image_size,
                "shots_per_class": shots, "test_scale": test_scale, "seed": seed,
                "test_images": sum(len(t.test) for t in tasks),
                "template_source": "ZSCL mtil/src/datasets/collections.py"}
    return Benchmark("MTIL-synthetic", tasks, "task", protocol)
