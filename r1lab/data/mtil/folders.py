"""The 11 MTIL datasets, the two MTIL orders and X-TAIL, as ``Task`` / ``Benchmark`` objects.

MTIL (ZSCL, ICCV 2023; docs/protocol.md) reads every dataset through torchvision's own class, from
one data root with one folder per dataset in torchvision's layout, and uses no split files:

    official train / test splits   Aircraft (variant), CIFAR100, DTD (partition 1), Flowers,
                                   Food, MNIST, OxfordPet (trainval / test), StanfordCars
    random 80/20 split, seed 42    Caltech101, EuroSAT, SUN397:
        train, test = random_split(ds, [int(0.8 n), n - int(0.8 n)],
                                   generator=torch.Generator().manual_seed(42))

Class names are torchvision's ``.classes`` with "_" -> " ", except ZSCL's hand-written lists
for Caltech101, EuroSAT and Flowers; templates are ZSCL's per-dataset lists (both in
``r1lab/assets``). Every image is converted to RGB before the caller's transform (MNIST and
some Caltech101 images are grey).

X-TAIL (RAIL, NeurIPS 2024) is MTIL without CIFAR100, tested over the union of all 10 domains'
class names (label_space="union"). Here it runs on the torchvision splits above, not RAIL's
CoOp split files: a protocol variant, and the protocol record says so.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset, random_split
from torchvision import datasets as tvd
from torchvision import transforms as T

from r1lab.data.stream import Benchmark, Task, dataset_labels
from r1lab.data.mtil import checks
from r1lab.data.mtil.checks import DATASETS, DataRootProblems, DatasetError

ORDERS = {
    "I": ["Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers", "Food", "MNIST",
          "OxfordPet", "StanfordCars", "SUN397"],
    "II": ["StanfordCars", "Food", "MNIST", "OxfordPet", "Flowers", "SUN397", "Aircraft",
           "Caltech101", "DTD", "EuroSAT", "CIFAR100"],
}
XTAIL_ORDER = [n for n in ORDERS["I"] if n != "CIFAR100"]
SPLIT_SEED = 42
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_ASSETS = resources.files("r1lab").joinpath("assets")
_NAMES = json.loads(_ASSETS.joinpath("mtil_classnames.json").read_text())
_TEMPLATES = json.loads(_ASSETS.joinpath("mtil_templates.json").read_text())
CLASSNAMES: Dict[str, List[str]] = _NAMES["classnames"]
TEMPLATES: Dict[str, List[str]] = _TEMPLATES["templates"]
SPLIT_SOURCE = ("torchvision dataset classes, official splits; random 80/20 splits with seed 42 "
                "(torch.utils.data.random_split) for Caltech101, EuroSAT, SUN397 (ZSCL)")
XTAIL_SPLIT_SOURCE = ("torchvision (ZSCL seed-42 random splits), not CoOp split files: "
                      "a protocol variant of RAIL's X-TAIL")


class Transforms(NamedTuple):
    train: Callable
    test: Callable


def mtil_transforms(image_size: int = 224) -> Transforms:
    """docs/protocol.md preprocessing: train RandomResizedCrop(scale 0.9-1.0, bicubic), test
    Resize(bicubic) + CenterCrop; both ToTensor + CLIP mean / std normalisation."""
    bicubic = T.InterpolationMode.BICUBIC
    norm = [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
    return Transforms(
        train=T.Compose([T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=bicubic)] + norm),
        test=T.Compose([T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)] + norm))


class TaskSplit(Subset):
    """``indices`` of a torchvision dataset, each image converted to RGB, then ``transform``.

    A ``Subset``, so ``benchmark.dataset_labels`` reads labels without decoding images. An
    image that cannot be read raises ``DatasetIncomplete`` naming its file and the fix.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Optional[Callable],
                 name: Optional[str] = None):
        super().__init__(dataset, list(indices))
        self.transform = transform
        self.name = name

    def __getitem__(self, i):
        j = self.indices[i]
        try:
            img, y = self.dataset[j]
            if getattr(img, "mode", "RGB") != "RGB":
                img = img.convert("RGB")
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
            raise self._corrupt(j, e) from e
        return (self.transform(img) if self.transform is not None else img), int(y)

    def _corrupt(self, j: int, e: Exception) -> Exception:
        paths = listed_images(self.dataset)
        path = paths[j] if j < len(paths) else f"item {j} of {type(self.dataset).__name__}"
        fix = (checks.reextract(self.name) if self.name in DATASETS
               else "extract the dataset again from its original archive")
        return checks.DatasetIncomplete(f"cannot read the image {path} ({type(e).__name__}: {e}); "
                                        f"the file is corrupt or truncated: {fix}")

    def __getitems__(self, idx):  # DataLoader's batched fetch would bypass __getitem__
        return [self[i] for i in idx]


class _CIFAR100(tvd.CIFAR100):
    """torchvision's CIFAR100 without its md5 gate (r1lab hashes the files in check="full")."""
    train_list = [[f, None] for f, _ in tvd.CIFAR100.train_list]
    test_list = [[f, None] for f, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, "md5": None}


class _Flowers102(tvd.Flowers102):
    """torchvision's Flowers102 without its md5 gate on the .mat files (as above)."""
    _file_dict = {k: (f, None) for k, (f, _) in tvd.Flowers102._file_dict.items()}


def _readable(names) -> List[str]:
    return [str(n).replace("_", " ") for n in names]


def _by_folder(name: str, folders: List[str]) -> List[str]:
    """ZSCL's hand-written names, looked up by torchvision's class folder."""
    table = dict(zip(_NAMES["folders"][name], CLASSNAMES[name]))
    unknown = [f for f in folders if f not in table]
    if unknown:
        raise ValueError(f"unexpected class folders {unknown[:5]}; expected names such as {list(table)[:4]}")
    return [table[f] for f in folders]


def _n_labels(*dss) -> int:
    return 1 + max(max(dataset_labels(d)) for d in dss)


def _open(name: str, root: str, dl: bool):
    """(train dataset, test dataset or None for a random split, class names) as torchvision reads them."""
    if name == "Aircraft":
        tr, te = (tvd.FGVCAircraft(root, split=s, annotation_level="variant", download=dl) for s in ("train", "test"))
        return tr, te, _readable(tr.classes)
    if name == "Caltech101":
        ds = tvd.Caltech101(root, target_type="category", download=dl)
        return ds, None, _by_folder(name, ds.categories)
    if name == "CIFAR100":
        cls = tvd.CIFAR100 if dl else _CIFAR100
        tr, te = (cls(root, train=t, download=dl) for t in (True, False))
        return tr, te, _readable(tr.classes)
    if name == "DTD":
        tr, te = (tvd.DTD(root, split=s, partition=1, download=dl) for s in ("train", "test"))
        if tr.classes != te.classes:
            raise ValueError(f"train1.txt and test1.txt list different classes: {len(tr.classes)} vs {len(te.classes)}")
        return tr, te, _readable(tr.classes)
    if name == "EuroSAT":
        ds = tvd.EuroSAT(root, download=dl)
        return ds, None, _by_folder(name, ds.classes)
    if name == "Flowers":
        cls = tvd.Flowers102 if dl else _Flowers102
        tr, te = (cls(root, split=s, download=dl) for s in ("train", "test"))
        return tr, te, CLASSNAMES["Flowers"][:_n_labels(tr, te)]
    if name == "Food":
        tr, te = (tvd.Food101(root, split=s, download=dl) for s in ("train", "test"))
        if tr.classes != te.classes:
            raise ValueError("meta/train.json and meta/test.json list different classes")
        return tr, te, _readable(tr.classes)
    if name == "MNIST":
        tr, te = (tvd.MNIST(root, train=t, download=dl) for t in (True, False))
        return tr, te, _readable(tvd.MNIST.classes[:_n_labels(tr, te)])
    if name == "OxfordPet":
        tr, te = (tvd.OxfordIIITPet(root, split=s, download=dl) for s in ("trainval", "test"))
        if tr.classes != te.classes:
            raise ValueError("annotations/trainval.txt and test.txt list different breeds")
        return tr, te, _readable(tr.classes)
    if name == "StanfordCars":
        tr, te = (tvd.StanfordCars(root, split=s) for s in ("train", "test"))
        for d in (tr, te):
            d._samples_labels = [y for _, y in d._samples]  # labels without decoding (dataset_labels)
        return tr, te, _readable(tr.classes)
    if name == "SUN397":
        ds = tvd.SUN397(root, download=dl)
        # torchvision lists files in file-system order (rglob), which differs between machines;
        # sorting by path makes the seed-42 split the same everywhere.
        pairs = sorted(zip(map(str, ds._image_files), ds._labels))
        ds._image_files = [p for p, _ in pairs]
        ds._labels = [y for _, y in pairs]
        return ds, None, _readable(ds.classes)
    raise ValueError(name)


def listed_images(ds) -> List[str]:
    """Image paths of a torchvision dataset, item by item (empty for in-memory datasets)."""
    if isinstance(ds, tvd.Caltech101):
        return [os.path.join(ds.root, "101_ObjectCategories", ds.categories[y], f"image_{i:04d}.jpg")
                for i, y in zip(ds.index, ds.y)]
    if isinstance(ds, tvd.StanfordCars):
        return [p for p, _ in ds._samples]
    if isinstance(ds, tvd.ImageFolder):
        return [p for p, _ in ds.samples]
    return [str(p) for p in (getattr(ds, "_image_files", None) or getattr(ds, "_images", None) or [])]


@dataclass
class Loaded:
    """One dataset as loaded: base datasets, split indices, class names and what was checked."""
    name: str
    train: Dataset
    train_indices: List[int]
    test: Dataset
    test_indices: List[int]
    classnames: List[str]
    info: Dict


def load_dataset(name: str, root, download: bool = False, check="full",
                 expected: Optional[dict] = None) -> Loaded:
    """Open ``name`` under ``root`` with torchvision, split it, and check it (see checks.py).

    ``expected``: {'classes', 'train', 'test'} to compare with instead of the real counts
    (``write_fixtures`` returns these for its tiny datasets). Raises ``DatasetNotFound`` or
    ``DatasetIncomplete`` with a message that says how to fix the folder.
    """
    name = checks.canonical_name(name)
    if check not in checks.CHECK_MODES and check is not None:
        raise ValueError(f"check must be one of {checks.CHECK_MODES}, got {check!r}")
    spec, root = DATASETS[name], os.path.expanduser(str(root))
    dl = bool(download) and spec["download"]
    if not dl:
        missing = checks.missing_paths(name, root)
        if missing:
            raise checks.not_found(name, root, missing)
        if check:
            bad = checks.annotation_problems(name, root)
            if bad:
                raise checks.incomplete(name, root, bad)
    try:
        train, test, classnames = _open(name, root, dl)
    except Exception as e:  # noqa: BLE001 - whatever torchvision raises, name the file if we can
        what = "download or open" if dl else "open"
        bad = checks.annotation_problems(name, root)
        raise checks.incomplete(name, root, bad or [
            f"torchvision could not {what} it: {type(e).__name__}: {e}",
            f"if a file there is damaged, {checks.reextract(name)}"]) from e
    if check == "full" and expected is None:
        bad = checks.md5_problems(name, root)
        if bad:
            raise checks.incomplete(name, root, bad)
    if test is None:  # random 80/20 split, seed 42 (ZSCL)
        n = len(train)
        g = torch.Generator().manual_seed(SPLIT_SEED)
        tr, te = random_split(train, [int(0.8 * n), n - int(0.8 * n)], generator=g)
        test, train_idx, test_idx = train, list(tr.indices), list(te.indices)
    else:
        train_idx, test_idx = list(range(len(train))), list(range(len(test)))
    found = {"classes": len(classnames), "train": len(train_idx), "test": len(test_idx)}
    want = checks.expected_counts(name, expected)
    problems = checks.count_problems(found, want, check) if check else []
    if check:
        labels = set(dataset_labels(train)) | set(dataset_labels(test))
        if labels and (min(labels) < 0 or max(labels) >= len(classnames)):
            problems.append(f"labels {min(labels)}..{max(labels)} outside 0..{len(classnames) - 1}")
        problems += checks.missing_images(listed_images(train) + (listed_images(test) if test is not train else []))
    if problems:
        raise checks.incomplete(name, root, problems)
    info = {"dataset": name, "torchvision": spec["torchvision"], "path": os.path.join(root, spec["folder"]),
            "split": spec["splits"], "counts": found, "expected": want,
            "expected_source": "write_fixtures / caller" if expected is not None else spec["counts_source"],
            "check": check or False,
            "classnames_source": ("ZSCL hand-written list" if name in CLASSNAMES else
                                  "torchvision .classes with '_' -> ' '"),
            "templates_source": "ZSCL mtil/src/datasets/collections.py"}
    return Loaded(name, train, train_idx, test, test_idx, classnames, info)


def make_task(name: str, root, train_transform: Optional[Callable] = None,
              test_transform: Optional[Callable] = None, download: bool = False, check="full",
              expected: Optional[dict] = None, templates: Optional[List[str]] = None) -> Task:
    """One MTIL dataset as a ``Task``; transforms default to ``mtil_transforms(224)``."""
    d = load_dataset(name, root, download=download, check=check, expected=expected)
    if train_transform is None or test_transform is None:
        default = mtil_transforms(224)
        train_transform = default.train if train_transform is None else train_transform
        test_transform = default.test if test_transform is None else test_transform
    if templates is not None:
        d.info["templates_source"] = "given by the caller"
    return Task(d.name, d.classnames, list(templates or TEMPLATES[d.name]),
                TaskSplit(d.train, d.train_indices, train_transform, d.name),
                TaskSplit(d.test, d.test_indices, test_transform, d.name), d.info)


def _order(order) -> str:
    key = {"1": "I", "2": "II", "i": "I", "ii": "II"}.get(str(order).strip().lower())
    if key is None:
        raise ValueError(f"MTIL order must be 'I' or 'II', got {order!r}")
    return key


def _tasks(order_names, names, root, train_transform, test_transform, download, check, expected,
           templates=None) -> List[Task]:
    """Load every selected task; report the problems of all of them at once."""
    chosen = order_names
    if names is not None:
        wanted = [checks.canonical_name(n) for n in names]
        unknown = [n for n in wanted if n not in order_names]
        if unknown:
            raise ValueError(f"{unknown} not in this benchmark's tasks {order_names}")
        chosen = [n for n in order_names if n in wanted]
    tasks, errors = [], []
    for n in chosen:
        try:
            tasks.append(make_task(n, root, train_transform, test_transform, download, check,
                                   (expected or {}).get(n), templates))
        except DatasetError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise DataRootProblems([str(e) for e in errors])
    return tasks


def make_mtil(root, order="I", train_transform=None, test_transform=None, download=False,
              check="full", names=None, expected=None) -> Benchmark:
    """MTIL Order I or II (docs/protocol.md); ``names`` keeps a subset, in the order's order."""
    key = _order(order)
    tasks = _tasks(ORDERS[key], names, root, train_transform, test_transform, download, check, expected)
    protocol = {"benchmark": "MTIL", "order": key, "tasks": [t.name for t in tasks],
                "subset": names is not None, "label_space": "task", "split_source": SPLIT_SOURCE,
                "splits": {t.name: t.info["split"] for t in tasks},
                "template_source": _TEMPLATES["source"], "classname_source": _NAMES["source"],
                "data_root": str(root), "check": check or False}
    return Benchmark("MTIL", tasks, "task", protocol)


class UnionLabels(NamedTuple):
    """The X-TAIL label space: all tasks' class names concatenated, task t at offsets[t]."""
    classnames: List[str]
    offsets: Dict[str, int]
    duplicates: List[str]


def union_label_space(bench: Benchmark) -> UnionLabels:
    """Concatenate the tasks' class names (a global label = offset of its task + local label).
    Names shared by two domains (e.g. 'sunflower' in Caltech101 and Flowers) stay two labels."""
    names, offsets = [], {}
    for t in bench.tasks:
        offsets[t.name] = len(names)
        names += t.classnames
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    return UnionLabels(names, offsets, dup)


def make_xtail(root, train_transform=None, test_transform=None, download=False, check="full",
               names=None, prompt: Optional[str] = "a photo of a {}.", expected=None) -> Benchmark:
    """X-TAIL Order I: 10 domains, tested over the union of their class names.

    ``prompt``: RAIL's single prompt by default; ``None`` uses ZSCL's per-dataset templates
    (other papers do; it changes even the zero-shot row, so the choice is recorded).
    """
    templates = [prompt] if prompt is not None else None
    tasks = _tasks(XTAIL_ORDER, names, root, train_transform, test_transform, download, check,
                   expected, templates)
    bench = Benchmark("X-TAIL", tasks, "union")
    union = union_label_space(bench)
    bench.protocol = {
        "benchmark": "X-TAIL", "order": "I", "tasks": [t.name for t in tasks], "subset": names is not None,
        "label_space": "union", "union_classes": len(union.classnames),
        "union_note": "1,100 in RAIL (CoOp's Caltech101 has 100 classes); 1,101 with torchvision's Caltech101",
        "duplicate_classnames": union.duplicates, "split_source": XTAIL_SPLIT_SOURCE,
        "splits": {t.name: t.info["split"] for t in tasks},
        "prompt": prompt if prompt is not None else "per-dataset ZSCL templates",
        "template_source": "RAIL single prompt" if prompt is not None else _TEMPLATES["source"],
        "classname_source": _NAMES["source"], "shots_per_class": 16,
        "data_root": str(root), "check": check or False}
    return bench
