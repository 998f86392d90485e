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
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .benchmark import Benchmark

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


def build_cache(ds: Dataset, path: Path, batch_size: int = 256, num_workers: int = 0,
                progress: bool = False, desc: str = "cache") -> CachedImages:
    """Run the test transform once over ``ds`` and store the result at ``path`` (.npy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=desc, leave=False)
    arr, mode, labels, n = None, None, [], 0
    tmp = path.with_name(f".{path.name}.tmp")
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
    arr.flush()
    del arr
    os.replace(tmp, path)
    meta = dict(mode=mode, labels=labels, mean=list(OPENAI_DATASET_MEAN), std=list(OPENAI_DATASET_STD))
    Path(str(path) + ".json").write_text(json.dumps(meta))
    return CachedImages(path)


def cached_test_sets(benchmark: Benchmark, cache_dir, batch_size: int = 256, num_workers: int = 0,
                     progress: bool = False) -> List[Dataset]:
    """Each task's test set, from ``cache_dir`` when cached there (built on first use).
    In-memory TensorDatasets are returned as they are."""
    out: List[Dataset] = []
    for task in benchmark.tasks:
        if isinstance(task.test, TensorDataset):
            out.append(task.test)
            continue
        path = Path(cache_dir) / f"{task.name}.npy"
        meta = Path(str(path) + ".json")
        if path.exists() and meta.exists():
            ds = CachedImages(path)
            if len(ds) != len(task.test):
                raise RuntimeError(f"the cache {path} holds {len(ds)} images but {task.name}'s test "
                                   f"set has {len(task.test)}: delete {cache_dir} and run again")
            out.append(ds)
        else:
            out.append(build_cache(task.test, path, batch_size, num_workers, progress,
                                   desc=f"cache {task.name}"))
    return out


def cache_size_bytes(n_images: int, image_size: int = 224, mode: str = "uint8") -> int:
    return n_images * 3 * image_size * image_size * (1 if mode == "uint8" else 2)
