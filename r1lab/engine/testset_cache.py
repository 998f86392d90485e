"""Preprocess each test set once per run and reuse it across every evaluation.

Evaluation dominates a real MTIL run: 11 evaluations x 97,209 test images (about 1.07 M
image forwards). Decoding and resizing JPEGs each time would cost more than the forwards, so
the first evaluation writes every test set, already resized and cropped, to
``<run>/cache/<task>.npy`` and later ones read it back through a memory map.

Storage: the test transform ends in CLIP's normalisation of 8-bit pixels, so the tensor is
stored as the uint8 pixels it came from (3 x 224 x 224 bytes = 147 KiB per image; all 11 MTIL
test sets = 97,209 x 150,528 B = 14.6 GB) and normalised again on the fly. When the round trip
is not exact (another transform), the normalised tensor is stored as float16 instead (2x the
size). TensorDatasets (the generated world) are already in memory and are not cached.

Concurrency: each test set is built under its own lock (``<task>.npy.lock``, a blocking
``flock``) into a uniquely named temporary file, then published atomically: the metadata
first, the array last, so an existing ``<task>.npy`` always has its metadata beside it. A
second process that wants the same cache waits for the first and then reads its result;
two processes never write one file. The metadata records a fingerprint of the test set
(length, transform, files, split indices) and the SHA-256 of the array's bytes: a cache built
from other data, or whose bytes changed since, is rebuilt (saying so). Temporary files of a
killed build (``.<task>.npy.<random>.tmp``) are removed the next time the cache is opened,
under that test set's lock.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from r1lab.data.stream import Benchmark
from r1lab.engine import report
from r1lab.engine.atomic import FILE_MODE, FileLock, sha256_file, write_json

try:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
except ImportError:  # pragma: no cover
    OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
    OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


class CachedImages(Dataset):
    """A cached test set: (normalised float32 image, label) per item, read from a memmap."""

    def __init__(self, path: Path):
        meta = json.loads(Path(str(path) + ".json").read_text())
        self.images = np.load(path, mmap_mode="r")
        self.labels = torch.tensor(meta["labels"], dtype=torch.long)
        self.mode = meta["mode"]
        self.mean = torch.tensor(meta["mean"]).view(3, 1, 1)
        self.std = torch.tensor(meta["std"]).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(np.array(self.images[i]))
        if self.mode == "uint8":
            x = (x.float() / 255.0 - self.mean) / self.std
        else:
            x = x.float()
        return x, self.labels[i]


def _to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Optional[torch.Tensor]:
    """The 8-bit pixels behind a normalised batch, or None when that is not lossless."""
    pix = (x * std + mean) * 255.0
    q = pix.round()
    if (pix - q).abs().max() > 1e-2 or q.min() < 0 or q.max() > 255:
        return None
    return q.to(torch.uint8)


def _describe(fn) -> str:
    """A transform as text that does not change between processes (no object addresses)."""
    if fn is None or not hasattr(fn, "__qualname__"):
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(fn))
    return f"{getattr(fn, '__module__', '')}.{fn.__qualname__}"


def fingerprint(ds: Dataset) -> str:
    """What a cached test set was built from: length, type, transform, root, split indices."""
    base = getattr(ds, "dataset", None)
    parts = [type(ds).__name__, str(len(ds)), _describe(getattr(ds, "transform", None)),
             str(getattr(base, "root", "")), type(base).__name__ if base is not None else ""]
    idx = getattr(ds, "indices", None)
    if idx is not None:
        parts.append(hashlib.sha256(np.asarray(list(idx), dtype=np.int64).tobytes()).hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def build_cache(ds: Dataset, path: Path, batch_size: int = 256, num_workers: int = 0,
                desc: str = "cache") -> CachedImages:
    """Run the test transform once over ``ds`` and store the result at ``path`` (.npy),
    under the path's lock, published atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(Path(str(path) + ".lock"), blocking=True):
        return _build(ds, path, batch_size, num_workers, desc)


def _build(ds: Dataset, path: Path, batch_size: int, num_workers: int, desc: str) -> CachedImages:
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    loader = report.bar(DataLoader(ds, batch_size=batch_size, shuffle=False,
                                   num_workers=num_workers), desc=desc)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        mode, labels = _fill(loader, ds, path, tmp, mean, std)
        os.chmod(tmp, FILE_MODE)
        if path.exists():
            path.unlink()                               # a stale array never meets new metadata
        meta = dict(mode=mode, labels=labels, mean=list(OPENAI_DATASET_MEAN),
                    std=list(OPENAI_DATASET_STD), fingerprint=fingerprint(ds),
                    sha256=sha256_file(Path(tmp)))
        write_json(Path(str(path) + ".json"), meta)     # metadata first, the array last
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return CachedImages(path)


def _fill(loader, ds, path, tmp, mean, std):
    """Write every batch into the memmap ``tmp``; returns (mode, labels)."""
    arr, mode, labels, n = None, None, [], 0
    for x, y in loader:
        if arr is None:
            mode = "uint8" if _to_uint8(x, mean, std) is not None else "float16"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8 if mode == "uint8" else np.float16,
                                            shape=(len(ds), *x.shape[1:]))
        q = _to_uint8(x, mean, std) if mode == "uint8" else None
        if mode == "uint8" and q is None:
            raise RuntimeError(f"{path.name}: a batch is not 8-bit pixels after all; delete the cache "
                               f"and run again (it will be stored as float16)")
        arr[n:n + len(x)] = (q if q is not None else x.half()).numpy()
        labels += [int(v) for v in y]
        n += len(x)
    if arr is None:
        raise RuntimeError(f"{path.name}: the test set is empty; nothing to cache")
    arr.flush()
    del arr
    return mode, labels


def _ready(path: Path, ds: Dataset) -> Optional[CachedImages]:
    """The published cache at ``path`` when it was built from ``ds``, else None."""
    meta = Path(str(path) + ".json")
    if not (path.exists() and meta.exists()):
        return None
    try:
        record = json.loads(meta.read_text())
        if record.get("fingerprint") != fingerprint(ds):
            return None
        if record.get("sha256") != sha256_file(path):
            report.warn(f"the test-set cache {path} does not match its checksum (damaged, or "
                        f"written by an older r1lab): building it again")
            return None
        cached = CachedImages(path)
    except (OSError, ValueError):
        return None
    return cached if len(cached) == len(ds) else None


def cached_test_sets(benchmark: Benchmark, cache_dir, batch_size: int = 256,
                     num_workers: int = 0) -> List[Dataset]:
    """Each task's test set, from ``cache_dir`` when cached there from the same data (built on
    first use, under a lock: see the module docstring). In-memory TensorDatasets are returned
    as they are."""
    out: List[Dataset] = []
    for task in benchmark.tasks:
        if isinstance(task.test, TensorDataset):
            out.append(task.test)
            continue
        path = Path(cache_dir) / f"{task.name}.npy"
        ds = _ready(path, task.test)
        litter = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
        if ds is None or litter:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(Path(str(path) + ".lock"), blocking=True):
                for f in path.parent.glob(f".{path.name}.*.tmp"):   # a killed build's, never
                    f.unlink()                                       # a live one: we hold the lock
                ds = ds or _ready(path, task.test)    # another process may have built it
                if ds is None:
                    ds = _build(task.test, path, batch_size, num_workers, f"cache {task.name}")
        out.append(ds)
    return out


def cache_size_bytes(n_images: int, image_size: int = 224, mode: str = "uint8") -> int:
    return n_images * 3 * image_size * image_size * (1 if mode == "uint8" else 2)
