"""Tiny on-disk copies of the 11 MTIL datasets, in the exact layouts torchvision 0.29.1 reads.

Nothing can be downloaded in tests, so ``write_fixtures`` writes a few small images per class
in each dataset's real format: JPEG folders with their annotation files (txt, json, MATLAB
.mat written with scipy.io.savemat), CIFAR's pickles and MNIST's idx files. The loaders then
run unchanged on them. Classes are few (``n_classes``, default 3); the real folder names are
used where r1lab maps folders to names (Caltech101, EuroSAT), the others are made up.

torchvision hashes some files before opening them (CIFAR100's pickles, Flowers' .mat files);
r1lab opens those two through subclasses without the hash and checks it itself only for real
data (mtil.py), so fixtures load. Every other class only checks that files exist.

Returns {name: {"classes", "train", "test", "path"}}: the counts to pass as ``expected`` with
``check="classes"`` (or "full") to ``make_task`` / ``make_mtil`` / ``check_root``.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
from importlib import resources
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

from r1lab.data.mtil.checks import DATASETS, canonical_name

_FOLDERS = json.loads(resources.files("r1lab").joinpath("assets/mtil_classnames.json").read_text())["folders"]


class _Writer:
    """Class-coloured noise images, so a fixture is (weakly) learnable."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng = size, np.random.default_rng(seed)

    def pixels(self, label: int, size: Optional[int] = None, grey: bool = False) -> np.ndarray:
        s = size or self.size
        base = np.array([(37 * label) % 256, (91 * label + 60) % 256, (151 * label + 120) % 256])
        img = np.clip(base + self.rng.integers(-40, 40, (s, s, 3)), 0, 255).astype(np.uint8)
        return img.mean(axis=2).astype(np.uint8) if grey else img

    def jpg(self, path: str, label: int, grey: bool = False) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(self.pixels(label, grey=grey)).save(path, quality=90)


def _lines(path: str, lines) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{x}\n" for x in lines))


def _aircraft(d, w, k, pc):
    names = [f"Fixture-{i}00" for i in range(k)]
    _lines(f"{d}/data/variants.txt", names)
    n = 0
    for split in ("train", "val", "test"):
        rows = []
        for y in range(k):
            for _ in range(pc):
                n += 1
                w.jpg(f"{d}/data/images/{1000000 + n:07d}.jpg", y)
                rows.append(f"{1000000 + n:07d} {names[y]}")
        _lines(f"{d}/data/images_variant_{split}.txt", rows)
    return pc * k, pc * k


def _caltech101(d, w, k, pc):
    for y, c in enumerate(_FOLDERS["Caltech101"][:k] + ["BACKGROUND_Google"]):
        for i in range(2 * pc):  # the first image of every class is grey, as some real ones are
            w.jpg(f"{d}/101_ObjectCategories/{c}/image_{i + 1:04d}.jpg", y, grey=(i == 0))
    return 2 * pc * k


def _cifar100(d, w, k, pc):
    os.makedirs(d, exist_ok=True)
    names = ["apple", "aquarium_fish", "baby", "bear", "beaver"] + [f"fixture_{i}" for i in range(5, k)]
    with open(f"{d}/meta", "wb") as f:
        pickle.dump({"fine_label_names": names[:k], "coarse_label_names": ["fixture"]}, f)
    for split in ("train", "test"):
        ys = [y for y in range(k) for _ in range(pc)]
        data = np.stack([w.pixels(y, 32).transpose(2, 0, 1).reshape(-1) for y in ys])  # (N, 3*32*32), CHW
        with open(f"{d}/{split}", "wb") as f:
            pickle.dump({"data": data, "fine_labels": ys, "coarse_labels": [0] * len(ys),
                         "filenames": [f"f{i}.png" for i in range(len(ys))], "batch_label": split}, f)
    return pc * k, pc * k


def _dtd(d, w, k, pc):
    names = ["banded", "blotchy", "braided"] + [f"fixture{i}" for i in range(3, k)]
    for split in ("train", "val", "test"):
        rows = []
        for y in range(k):
            for i in range(pc):
                f = f"{names[y]}_{split}_{i:04d}.jpg"
                w.jpg(f"{d}/dtd/images/{names[y]}/{f}", y)
                rows.append(f"{names[y]}/{f}")
        _lines(f"{d}/dtd/labels/{split}1.txt", rows)
    return pc * k, pc * k


def _eurosat(d, w, k, pc):
    for y, c in enumerate(_FOLDERS["EuroSAT"][:k]):
        for i in range(2 * pc):
            w.jpg(f"{d}/2750/{c}/{c}_{i + 1}.jpg", y)
    return 2 * pc * k


def _flowers(d, w, k, pc):
    from scipy.io import savemat
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for key in ids:
        for y in range(k):
            for _ in range(pc):
                labels.append(y + 1)  # 1-based, as in imagelabels.mat
                ids[key].append(len(labels))
                w.jpg(f"{d}/jpg/image_{len(labels):05d}.jpg", y)
    savemat(f"{d}/imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(f"{d}/setid.mat", {key: np.array([v], dtype=np.uint16) for key, v in ids.items()})
    return pc * k, pc * k


def _food(d, w, k, pc):
    names = ["apple_pie", "baby_back_ribs", "baklava"] + [f"fixture_dish_{i}" for i in range(3, k)]
    _lines(f"{d}/meta/classes.txt", names[:k])
    for split in ("train", "test"):
        meta = {names[y]: [] for y in range(k)}
        for y in range(k):
            for i in range(pc):
                rel = f"{names[y]}/{split}{i}"
                w.jpg(f"{d}/images/{rel}.jpg", y)
                meta[names[y]].append(rel)
        with open(f"{d}/meta/{split}.json", "w") as f:
            json.dump(meta, f)
    return pc * k, pc * k


def _idx(path: str, arr: np.ndarray) -> None:
    """MNIST's idx format: 0, 0, type 0x08 (ubyte), ndim, big-endian int32 sizes, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def _mnist(d, w, k, pc):
    os.makedirs(f"{d}/raw", exist_ok=True)
    for split in ("train", "t10k"):
        ys = np.array([y for y in range(k) for _ in range(pc)])
        _idx(f"{d}/raw/{split}-images-idx3-ubyte", np.stack([w.pixels(y, 28, grey=True) for y in ys]))
        _idx(f"{d}/raw/{split}-labels-idx1-ubyte", ys)
    return pc * k, pc * k


def _pets(d, w, k, pc):
    breeds = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier"] + \
             [f"fixture_breed_{i}" for i in range(3, k)]
    n = 0
    for split in ("trainval", "test"):
        rows = []
        for y in range(k):
            for _ in range(pc):
                n += 1
                w.jpg(f"{d}/images/{breeds[y]}_{n}.jpg", y)
                species = 1 if breeds[y][0].isupper() else 2  # cats are capitalised
                rows.append(f"{breeds[y]}_{n} {y + 1} {species} {y + 1}")
        _lines(f"{d}/annotations/{split}.txt", rows)
    return pc * k, pc * k


def _cars(d, w, k, pc):
    from scipy.io import savemat
    names = np.empty((1, k), dtype=object)
    names[0, :] = [f"Fixture Make Model {2000 + i}" for i in range(k)]
    os.makedirs(f"{d}/devkit", exist_ok=True)
    savemat(f"{d}/devkit/cars_meta.mat", {"class_names": names})
    fields = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    for split, mat in (("train", "devkit/cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        ann = np.zeros((1, k * pc), dtype=fields)
        for j in range(k * pc):
            y, fname = j // pc, f"{j + 1:05d}.jpg"
            w.jpg(f"{d}/cars_{split}/{fname}", y)
            ann[0, j] = (1, 1, w.size, w.size, y + 1, fname)
        savemat(f"{d}/{mat}", {"annotations": ann})
    return pc * k, pc * k


def _sun397(d, w, k, pc):
    names = ["/a/abbey", "/a/airplane_cabin", "/b/bakery/shop"] + [f"/f/fixture_scene_{i}" for i in range(3, k)]
    _lines(f"{d}/ClassName.txt", names[:k])
    for y in range(k):
        for i in range(2 * pc):
            w.jpg(f"{d}{names[y]}/sun_fixture{y:03d}{i:03d}.jpg", y)
    return 2 * pc * k


_WRITERS = {"Aircraft": _aircraft, "Caltech101": _caltech101, "CIFAR100": _cifar100, "DTD": _dtd,
            "EuroSAT": _eurosat, "Flowers": _flowers, "Food": _food, "MNIST": _mnist,
            "OxfordPet": _pets, "StanfordCars": _cars, "SUN397": _sun397}
_MAX_CLASSES = {"Caltech101": 101, "EuroSAT": 10, "Flowers": 102, "MNIST": 10}


def write_fixtures(root, names: Optional[Sequence[str]] = None, per_class: int = 2,
                   n_classes: Optional[int] = None, image_size: int = 16, seed: int = 0) -> Dict[str, dict]:
    """Write tiny datasets under ``root`` (default: all 11) and return their expected counts.

    per_class   images per class in each official split (train, val where one exists, test);
                the randomly split datasets (Caltech101, EuroSAT, SUN397) get 2 * per_class per
                class in total before their 80/20 split
    n_classes   classes per dataset (default 3; at most 10 for EuroSAT / MNIST, 101 / 102 for
                Caltech101 / Flowers)
    image_size  side of the JPEG images (CIFAR100 is always 32 x 32, MNIST 28 x 28: their formats)
    """
    if per_class < 1:
        raise ValueError("per_class must be >= 1")
    out = {}
    for name in [canonical_name(n) for n in (names or list(DATASETS))]:
        k = min(n_classes or 3, _MAX_CLASSES.get(name, 10 ** 6))
        if k < 2 and per_class < 2:
            raise ValueError("write at least 2 images per split (the .mat readers squeeze 1-element arrays)")
        d = os.path.join(str(root), DATASETS[name]["folder"])
        sizes = _WRITERS[name](d, _Writer(image_size, seed + len(out)), k, per_class)
        if isinstance(sizes, int):  # a random 80/20 split of `sizes` images
            sizes = (int(0.8 * sizes), sizes - int(0.8 * sizes))
        out[name] = {"classes": k, "train": sizes[0], "test": sizes[1], "path": d}
    return out
