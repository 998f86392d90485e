"""Is the data root complete? Expected counts, the errors a user can act on, and ``check_root``.

The peers' users lose days to half-extracted archives and dead links (docs/protocol.md, "What users
of the peers' repositories struggle with"). So every problem is reported with

    the dataset, the path looked at, what is missing (a file / folder, or a count found vs
    expected), the folder tree torchvision expects, and where to get the data,

and ``check_root`` lists every problem of a benchmark order before any training starts.

Expected counts live in ``r1lab/assets/mtil_datasets.json`` (with their sources). Check modes:

    check="full"     classes, train size and test size equal the expected counts, md5 of the
                     files torchvision hashes (CIFAR100, Flowers), every listed image exists
                     and is not empty; with ``shots`` (``check_root``, and always before a
                     run trains) every image of the few-shot subsets is decoded
    check="classes"  only the class count (and that listed images exist and are not empty):
                     fixtures, subsets
    check=False      nothing beyond what torchvision itself needs to open the dataset

Both checking modes read every annotation file first (json parsed, .mat loaded, CIFAR's
pickles end in their STOP opcode, MNIST's idx files are as long as their headers say), so a
truncated one is reported by path instead of crashing inside torchvision. Every corrupt file
is reported by path with the archive to extract again; ``check_root`` reports, never raises.
"""
from __future__ import annotations

import json
import math
import os
import struct
from importlib import resources
from typing import Dict, Iterable, List, Optional, Sequence

from torchvision.datasets import CIFAR100, Flowers102

from r1lab.errors import R1labError
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


class DatasetError(R1labError):
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
    """Images an annotation file lists but the disk does not have, or has empty (the first
    ``show`` of each named)."""
    gone, empty = [], []
    for p in paths:
        try:
            if os.stat(p).st_size == 0:
                empty.append(str(p))
        except OSError:
            gone.append(str(p))
    out = []
    if gone:
        out.append(f"{len(gone):,} image file(s) listed by the annotations are missing, e.g. " + ", ".join(gone[:show]))
    if empty:
        out.append(f"{len(empty):,} image file(s) are empty (0 bytes), e.g. " + ", ".join(empty[:show]))
    return out


def reextract(name: str) -> str:
    """The fix for a corrupt file of ``name``: which archive to extract again."""
    return f"extract it again from the original archive ({DATASETS[name]['get']})"


def _annotation_problem(path: str) -> Optional[str]:
    """Why the annotation file at ``path`` is unreadable or truncated (None when fine)."""
    base = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty (0 bytes)"
        if base.endswith(".json"):
            with open(path) as f:
                json.load(f)
        elif base.endswith(".mat"):
            from scipy.io import loadmat
            loadmat(path)
        elif base.endswith(".txt"):
            with open(path, "rb") as f:
                f.read().decode("utf-8")
        elif "idx" in base and "ubyte" in base:
            with open(path, "rb") as f:
                head = f.read(4)
                ndim = head[3]
                dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            want = 4 + 4 * ndim + int(math.prod(dims))
            if size != want:
                return f"truncated: {size:,} bytes, its header says {want:,}"
        elif "." not in base:              # CIFAR's pickles: a pickle stream ends with STOP (b".")
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b".":
                    return "truncated: the pickle does not end with its STOP opcode"
    except Exception as e:  # noqa: BLE001 - any failure to read is the finding
        return f"unreadable: {type(e).__name__}: {e}"
    return None


def annotation_problems(name: str, root) -> List[str]:
    """Every annotation file ``name`` needs, read in full: one line per bad file, by path."""
    folder = os.path.join(str(root), DATASETS[name]["folder"])
    out = []
    for rel, kind in DATASETS[name]["required"]:
        p = os.path.join(folder, rel)
        if kind == "file" and os.path.isfile(p):
            why = _annotation_problem(p)
            if why:
                out.append(f"corrupt annotation file {p}: {why}; {reextract(name)}")
    return out


def image_problem(path) -> Optional[str]:
    """Why the image at ``path`` cannot be used (missing, empty, not an image, truncated:
    decoded in full), or None."""
    from PIL import Image
    try:
        if os.path.getsize(path) == 0:
            return f"{path}: empty file (0 bytes)"
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        return f"{path}: {type(e).__name__}: {e}"
    return None
