"""Is the data root complete? Expected counts, the errors a user can act on, and ``check_root``.

The peers' users lose days to half-extracted archives and dead links (PROTOCOL.md, "What users
of the peers' repositories struggle with"). So every problem is reported with

    the dataset, the path looked at, what is missing (a file / folder, or a count found vs
    expected), the folder tree torchvision expects, and where to get the data,

and ``check_root`` lists every problem of a benchmark order before any training starts.

Expected counts live in ``r1lab/assets/mtil_datasets.json`` (with their sources). Check modes:

    check="full"     classes, train size and test size equal the expected counts, md5 of the
                     files torchvision hashes (CIFAR100, Flowers), every listed image exists
    check="classes"  only the class count (and that listed images exist): fixtures, subsets
    check=False      nothing beyond what torchvision itself needs to open the dataset
"""
from __future__ import annotations

import json
import os
from importlib import resources
from typing import Dict, Iterable, List, Optional, Sequence

from torchvision.datasets import CIFAR100, Flowers102
from torchvision.datasets.utils import check_md5

_SPEC = json.loads(resources.files("r1lab").joinpath("assets/mtil_datasets.json").read_text())
DATASETS: Dict[str, dict] = _SPEC["datasets"]
CHECK_MODES = ("full", "classes", False)

# The files torchvision 0.29.1 hashes before it opens a dataset (relative to the dataset folder).
# r1lab opens them without the hash (so fixtures load) and checks the hash itself in "full" mode.
MD5 = {
    "CIFAR100": {name: md5 for name, md5 in CIFAR100.train_list + CIFAR100.test_list}
                | {CIFAR100.meta["filename"]: CIFAR100.meta["md5"]},
    "Flowers": {fname: md5 for key, (fname, md5) in Flowers102._file_dict.items() if key != "image"},
}


class DatasetError(Exception):
    """Base class: something in the data root stops a dataset from loading as expected."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """A dataset folder, or a file / folder torchvision needs inside it, is missing."""


class DatasetIncomplete(DatasetError, ValueError):
    """The dataset opens, but counts, hashes or listed images do not match what is expected."""


class DataRootProblems(DatasetError, FileNotFoundError, ValueError):
    """Several datasets of one benchmark have problems; ``problems`` holds one message each."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} datasets have problems:\n\n" + "\n\n".join(self.problems))


def canonical_name(name: str) -> str:
    """'aircraft' -> 'Aircraft'; unknown names raise with the list of known ones."""
    for known in DATASETS:
        if known.lower() == str(name).lower():
            return known
    raise ValueError(f"unknown MTIL dataset {name!r}; known: {list(DATASETS)}")


def expected_counts(name: str, expected: Optional[dict] = None) -> Dict[str, int]:
    """{'classes', 'train', 'test'}: the real dataset's counts, or ``expected`` (a fixture's)."""
    spec = DATASETS[name]
    src = expected if expected is not None else spec
    return {k: int(src[k]) for k in ("classes", "train", "test")}


def expected_tree(name: str, root) -> str:
    return "\n".join(f"    {line}" for line in [f"{root}/"] + ["  " + t for t in DATASETS[name]["tree"]])


def how_to_get(name: str) -> str:
    spec = DATASETS[name]
    dl = ("make_task(..., download=True) or make_mtil(..., download=True) lets torchvision "
          "download it (off by default)" if spec["download"] else
          "torchvision cannot download it (download=True does not work for this dataset)")
    return f"  where to get it: {spec['get']}\n  {dl}; see {_SPEC['readme']} ({name})."


def _message(kind: str, name: str, root, what: List[str]) -> str:
    spec = DATASETS[name]
    folder = os.path.join(str(root), spec["folder"])

    def at(rel):
        return rel is not None and os.path.exists(os.path.join(str(root), rel))
    hints = [h["say"] for h in spec.get("hints", []) if at(h["exists"]) and not at(h.get("unless"))]
    lines = [f"MTIL dataset '{name}' ({spec['torchvision']}) is {kind}.",
             f"  looked in: {folder}"]
    if os.path.isdir(folder):
        entries = sorted(os.listdir(folder))
        lines.append(f"  it contains: {', '.join(entries[:12]) or '(nothing)'}"
                     + (f" ... ({len(entries)} entries)" if len(entries) > 12 else ""))
    lines += [f"  {w}" for w in what]
    lines += [f"  hint: {h}" for h in hints]
    lines += [f"  expected layout under the data root {root}:", expected_tree(name, root),
              f"  real dataset: {spec['classes']} classes, train {spec['train']:,}, test {spec['test']:,} "
              f"({spec['splits']})", how_to_get(name)]
    return "\n".join(lines)


def not_found(name: str, root, missing: List[str]) -> DatasetNotFound:
    return DatasetNotFound(_message("missing or not where torchvision looks", name, root,
                                    [f"missing: {m}" for m in missing]))


def incomplete(name: str, root, problems: List[str]) -> DatasetIncomplete:
    return DatasetIncomplete(_message("incomplete or not as expected", name, root, problems))


def missing_paths(name: str, root) -> List[str]:
    """The files / folders torchvision needs for ``name`` that are absent under ``root``."""
    spec = DATASETS[name]
    folder = os.path.join(str(root), spec["folder"])
    if not os.path.isdir(folder):
        return [f"{folder}/ (folder)"]
    out = []
    for rel, kind in spec["required"]:
        p = os.path.join(folder, rel)
        ok = os.path.isdir(p) if kind == "folder" else os.path.isfile(p)
        if not ok:
            out.append(f"{spec['folder']}/{rel}{'/' if kind == 'folder' else ''} ({kind})")
    return out


def md5_problems(name: str, root) -> List[str]:
    """Hash mismatches of the files torchvision would hash (CIFAR100, Flowers)."""
    folder = os.path.join(str(root), DATASETS[name]["folder"])
    return [f"corrupted: {DATASETS[name]['folder']}/{f} has the wrong md5 (expected {md5}); download it again"
            for f, md5 in MD5.get(name, {}).items()
            if os.path.isfile(os.path.join(folder, f)) and not check_md5(os.path.join(folder, f), md5)]


def count_problems(found: Dict[str, int], want: Dict[str, int], check) -> List[str]:
    """'found N, expected M' for every count the check mode compares."""
    keys = {"full": ("classes", "train", "test"), "classes": ("classes",)}.get(check, ())
    return [f"{k}: found {found[k]:,}, expected {want[k]:,}" for k in keys if found[k] != want[k]]


def missing_images(paths: Iterable, show: int = 5) -> List[str]:
    """Images an annotation file lists but the disk does not have (the first ``show`` named)."""
    gone = [str(p) for p in paths if not os.path.isfile(p)]
    if not gone:
        return []
    return [f"{len(gone):,} image file(s) listed by the annotations are missing, e.g. " + ", ".join(gone[:show])]


def check_root(root, names: Optional[Sequence[str]] = None, check="full",
               expected: Optional[Dict[str, dict]] = None) -> List[str]:
    """Every problem of the datasets ``names`` (default: all 11) under ``root``, one message
    each; an empty list means every dataset opens and matches its expected counts.

    Run it before training: it opens each dataset the way ``make_task`` does (without
    decoding images), so a broken folder is found in seconds, not after ten tasks.
    """
    from .mtil import load_dataset  # here, to keep checks.py importable on its own

    if isinstance(names, str):
        names = [names]
    problems = []
    for name in (names or list(DATASETS)):
        try:
            name = canonical_name(name)
            load_dataset(name, root, check=check, expected=(expected or {}).get(name))
        except (DatasetError, ValueError) as e:
            problems.append(str(e))
    return problems
