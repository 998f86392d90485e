"""Checking a whole data root, and the exact images a run will train on, before training:
every problem comes back as one message naming the dataset and the file (``check_root``,
``few_shot_problems``). The per-dataset checks they use are checks.py's."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from r1lab.data.mtil.checks import (DATASETS, DatasetError, canonical_name, image_problem,
                                    incomplete, reextract)
from r1lab.data.mtil.folders import listed_images, load_dataset, make_task


def check_root(root, names: Optional[Sequence[str]] = None, check="full",
               expected: Optional[Dict[str, dict]] = None, shots: Optional[int] = None,
               seed: int = 42) -> List[str]:
    """Every problem of the datasets ``names`` (default: all 11) under ``root``, one message
    each; an empty list means every dataset opens and matches its expected counts.

    Run it before training: it opens each dataset the way ``make_task`` does (without
    decoding images), so a broken folder is found in seconds, not after ten tasks.

    With ``shots`` (and the training ``seed``), every image of each dataset's few-shot
    training subset is decoded as well (``few_shot_problems``). Never raises on a bad file:
    every problem, whatever it is, comes back as a message naming the dataset and path.
    """

    if isinstance(names, str):
        names = [names]
    problems = []
    for name in (names or list(DATASETS)):
        try:
            name = canonical_name(name)
            exp = (expected or {}).get(name)
            if shots:
                problems += few_shot_problems(make_task(name, root, check=check, expected=exp),
                                              shots, seed)
            else:
                load_dataset(name, root, check=check, expected=exp)
        except (DatasetError, ValueError) as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 - report, never crash
            problems.append(f"MTIL dataset {name!r} could not be checked under {root}: "
                            f"{type(e).__name__}: {e}")
    return problems


class _LabelsOnly:
    """A stand-in dataset for ``few_shot``: labels only, records which items it picks."""

    def __init__(self, labels: List[int]):
        self.targets, self.picked = labels, []

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        import torch
        self.picked.append(i)
        return torch.zeros(()), self.targets[i]


def few_shot_indices(ds, shots: int, seed: int) -> List[int]:
    """The items ``benchmark.few_shot(ds, shots, seed)`` takes, found without decoding any."""
    from r1lab.data.stream import dataset_labels, few_shot
    probe = _LabelsOnly(dataset_labels(ds))
    few_shot(probe, shots, seed=seed)
    return probe.picked


def few_shot_problems(task, shots: int, seed: int = 42) -> List[str]:
    """Decode every image of ``task``'s few-shot training subset; one message per dataset
    listing each corrupt file by path (empty list: all decode). In-memory datasets pass."""
    from torch.utils.data import TensorDataset
    train = task.train
    if isinstance(train, TensorDataset):
        return []
    picks = few_shot_indices(train, shots, seed)
    bad = []
    base, idx = getattr(train, "dataset", None), getattr(train, "indices", None)
    if base is not None and idx is not None:
        paths = listed_images(base)
        if paths:
            bad = [m for m in (image_problem(paths[idx[i]]) for i in picks) if m]
        else:
            bad = _decode_problems(train, picks)
    else:
        bad = _decode_problems(train, picks)
    if not bad:
        return []
    name = task.info.get("dataset", task.name)
    head = f"{len(bad)} image(s) of the {shots}-shot training subset do not decode: "
    if name in DATASETS and task.info.get("path"):
        root = os.path.dirname(str(task.info["path"]).rstrip("/"))
        return [str(incomplete(name, root, [head] + [f"  corrupt: {b}" for b in bad]
                               + [f"fix: {reextract(name)}"]))]
    return [f"task {task.name}: {head}" + "; ".join(bad)]


def _decode_problems(ds, picks) -> List[str]:
    out = []
    for i in picks:
        try:
            ds[i]
        except Exception as e:  # noqa: BLE001
            out.append(f"item {i}: {type(e).__name__}: {e}")
    return out
