"""The benchmark interface shared by the generated world and the real MTIL / X-TAIL data.

A ``Benchmark`` is an ordered list of ``Task``s plus the protocol facts a run must record.
The engine treats every benchmark alike; only the datasets differ.

Few-shot subsets (docs/protocol.md, "Few-shot MTIL"): the peers iterate the shuffled, augmented
training loader once and keep the first ``shots`` images of every label, freezing the
augmentation into the subset. ``few_shot`` does the same selection from a seeded permutation
(the order a seeded shuffled loader visits) and applies the train transform once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset, TensorDataset


@dataclass
class Task:
    """One dataset of a continual-learning stream.

    name        short name ("Aircraft", "shapes", ...)
    classnames  readable class names, index = label
    templates   prompt templates with one "{}" (all are averaged into the zero-shot head)
    train       Dataset of (image tensor, int label), train transform applied
    test        Dataset of (image tensor, int label), test transform applied
    info        facts for the protocol record (source, split, expected counts, ...)
    """
    name: str
    classnames: List[str]
    templates: List[str]
    train: Dataset
    test: Dataset
    info: Dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.classnames:
            raise ValueError(f"task {self.name}: no class names")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            raise ValueError(f"task {self.name}: every template needs exactly one '{{}}', got {bad or '[]'}")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, label: int) -> List[str]:
        return [t.format(self.classnames[label]) for t in self.templates]


@dataclass
class Benchmark:
    """An ordered stream of tasks.

    label_space  "task": each test set is classified within its own classes (MTIL);
                 "union": over the union of every task's classes (X-TAIL)
    protocol     facts recorded in every run folder (splits, split source, templates, ...)
    """
    name: str
    tasks: List[Task]
    label_space: str = "task"
    protocol: Dict = field(default_factory=dict)

    def __post_init__(self):
        if self.label_space not in ("task", "union"):
            raise ValueError(f"label_space must be 'task' or 'union', got {self.label_space!r}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark {self.name}: duplicate task names {names}")

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i) -> Task:
        if isinstance(i, str):
            return self.tasks[self.task_names.index(i)]
        return self.tasks[i]

    def reordered(self, order: Sequence[str]) -> "Benchmark":
        """The same tasks in another training order."""
        unknown = [n for n in order if n not in self.task_names]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; this benchmark has {self.task_names}")
        return Benchmark(self.name, [self[n] for n in order], self.label_space,
                         {**self.protocol, "order": list(order)})

    def with_label_space(self, label_space: str) -> "Benchmark":
        return Benchmark(self.name, self.tasks, label_space, {**self.protocol, "label_space": label_space})

    def describe(self) -> str:
        rows = [f"{self.name}: {len(self.tasks)} tasks, label space '{self.label_space}'"]
        for t in self.tasks:
            rows.append(f"  {t.name:<14}{t.num_classes:>5} classes  train {len(t.train):>6}  "
                        f"test {len(t.test):>6}  templates {len(t.templates)}")
        return "\n".join(rows)


def dataset_labels(ds: Dataset) -> List[int]:
    """Labels of a dataset without decoding images where the dataset keeps them
    (torchvision's ``targets`` / ``_labels`` / ``labels``, ``TensorDataset``, ``Subset``)."""
    if isinstance(ds, Subset):
        inner = dataset_labels(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, TensorDataset):
        return [int(y) for y in ds.tensors[1]]
    for attr in ("targets", "_labels", "labels", "y", "_samples_labels"):
        ys = getattr(ds, attr, None)
        if ys is not None and not callable(ys) and len(ys) == len(ds):
            return [int(y) for y in ys]
    return [int(ds[i][1]) for i in range(len(ds))]


def few_shot(ds: Dataset, shots: int, seed: int = 42,
             transform: Optional[Callable] = None) -> TensorDataset:
    """The first ``shots`` samples of every label in a seeded shuffled order, materialised
    once (so any random augmentation in ``ds`` is frozen into the subset).

    Returns a ``TensorDataset`` (images, labels) whose rows follow the shuffled order.
    Labels with fewer than ``shots`` samples keep all they have.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    labels = dataset_labels(ds)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g).tolist()
    taken: Dict[int, int] = {}
    keep = []
    for i in order:
        y = labels[i]
        if taken.get(y, 0) < shots:
            taken[y] = taken.get(y, 0) + 1
            keep.append(i)
    # seeded augmentation, so the frozen subset is reproducible
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        xs, ys = [], []
        for i in keep:
            x, y = ds[i]
            xs.append(transform(x) if transform is not None else x)
            ys.append(int(y))
    finally:
        torch.random.set_rng_state(state)
    return TensorDataset(torch.stack(xs), torch.tensor(ys, dtype=torch.long))


def as_tensors(ds: Dataset) -> TensorDataset:
    """The whole dataset as one ``TensorDataset`` (images stacked, labels as a tensor): the
    training set when ``shots`` is None."""
    if isinstance(ds, TensorDataset):
        return ds
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return TensorDataset(torch.stack(xs), torch.tensor(ys))
