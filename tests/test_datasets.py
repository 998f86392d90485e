"""MTIL / X-TAIL loaders on tiny on-disk fixtures in torchvision's real layouts (no download).

Checks: every layout opens through torchvision; counts, labels, transforms and RGB images;
the seed-42 random splits; Orders I / II and X-TAIL's union label space and protocol record;
errors a user can act on (missing and incomplete folders), ``check_root``; the class-name and
template data against docs/protocol.md; ``few_shot`` on a fixture dataset.
"""
import os
import shutil
import time
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

from r1lab.data.stream import dataset_labels, few_shot
from r1lab.data.mtil import (CLASSNAMES, DATASETS, ORDERS, TEMPLATES, XTAIL_ORDER, DataRootProblems,
                            DatasetIncomplete, DatasetNotFound, check_root, load_dataset, make_mtil,
                            make_task, make_xtail, mtil_transforms, union_label_space, write_fixtures)
from r1lab.data.mtil.folders import XTAIL_SPLIT_SOURCE

NAMES = list(DATASETS)
SMALL = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])   # fast stand-in for CLIP's 224


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """(root, expected counts) of all 11 fixture datasets; never modify this root."""
    root = tmp_path_factory.mktemp("mtil")
    t0 = time.perf_counter()
    counts = write_fixtures(root, per_class=3)
    assert time.perf_counter() - t0 < 10, "the fixture set must be written in a few seconds"
    return root, counts


def fresh(tmp_path, names=None):
    """A fixture root a test may break."""
    return tmp_path, write_fixtures(tmp_path, names=names)


# ---- every layout loads -------------------------------------------------------------------

def test_fixtures_use_torchvision_folders(fx):
    root, counts = fx
    assert set(counts) == set(NAMES) and len(NAMES) == 11
    folders = {"Aircraft": "fgvc-aircraft-2013b", "Caltech101": "caltech101", "CIFAR100": "cifar-100-python",
               "DTD": "dtd", "EuroSAT": "eurosat", "Flowers": "flowers-102", "Food": "food-101",
               "MNIST": "MNIST", "OxfordPet": "oxford-iiit-pet", "StanfordCars": "stanford_cars",
               "SUN397": "SUN397"}
    for name, folder in folders.items():
        assert DATASETS[name]["folder"] == folder
        assert os.path.isdir(root / folder), name


@pytest.mark.parametrize("name", NAMES)
def test_loader(fx, name):
    root, counts = fx
    task = make_task(name, root, SMALL, SMALL, check="classes", expected=counts[name])
    c = counts[name]
    assert task.num_classes == c["classes"] and len(task.classnames) == c["classes"]
    assert (len(task.train), len(task.test)) == (c["train"], c["test"])
    assert task.templates == TEMPLATES[name]
    for split in (task.train, task.test):
        labels = dataset_labels(split)
        assert len(labels) == len(split) and 0 <= min(labels) and max(labels) < task.num_classes
        x, y = split[0]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32   # transform applied, RGB
        assert isinstance(y, int) and y == labels[0]
    assert task.info["counts"] == {k: c[k] for k in ("classes", "train", "test")}
    assert all("_" not in n for n in task.classnames)


def test_full_check_against_fixture_counts_and_default_transforms(fx):
    root, counts = fx
    bench = make_mtil(root, check="full", expected=counts, names=["MNIST", "Caltech101"])
    x, _ = bench["MNIST"].test[0]
    assert x.shape == (3, 224, 224)           # mtil_transforms(224) by default
    assert bench.task_names == ["Caltech101", "MNIST"]  # order I's order, not the names' order


def test_grey_images_become_rgb(fx):
    root, counts = fx
    for name in ("MNIST", "Caltech101"):  # MNIST is all grey; the fixture's Caltech has grey images
        task = make_task(name, root, T.ToTensor(), T.ToTensor(), check="classes", expected=counts[name])
        grey = 0
        for split in (task.train, task.test):
            for i in range(len(split)):
                raw, _ = split.dataset[split.indices[i]]
                x, _ = split[i]
                assert x.shape[0] == 3
                if raw.mode == "L":
                    grey += 1
                    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        assert grey >= counts[name]["classes"]
    assert make_task("MNIST", root, T.ToTensor(), T.ToTensor(), check="classes",
                     expected=counts["MNIST"]).train.dataset[0][0].mode == "L"


def test_dataloader_batches(fx):
    root, counts = fx
    task = make_task("Food", root, SMALL, SMALL, check="classes", expected=counts["Food"])
    x, y = next(iter(DataLoader(task.train, batch_size=4, shuffle=True)))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.long


def test_mtil_transforms_match_protocol():
    train, test = mtil_transforms(224)
    rrc = train.transforms[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.scale == (0.9, 1.0)
    assert rrc.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(test.transforms[0], T.Resize) and test.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(test.transforms[1], T.CenterCrop)
    norm = test.transforms[-1]
    assert norm.mean == (0.48145466, 0.4578275, 0.40821073) and norm.std == (0.26862954, 0.26130258, 0.27577711)


# ---- random 80/20 splits ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Caltech101", "EuroSAT", "SUN397"])
def test_random_split_is_seed_42_and_deterministic(fx, name):
    root, counts = fx
    a = load_dataset(name, root, check="classes", expected=counts[name])
    b = load_dataset(name, root, check="classes", expected=counts[name])
    assert a.train_indices == b.train_indices and a.test_indices == b.test_indices
    n = len(a.train)
    assert len(a.train_indices) == int(0.8 * n)
    assert sorted(a.train_indices + a.test_indices) == list(range(n))
    g = torch.Generator().manual_seed(42)
    tr, te = torch.utils.data.random_split(range(n), [int(0.8 * n), n - int(0.8 * n)], generator=g)
    assert a.train_indices == list(tr.indices) and a.test_indices == list(te.indices)


def test_sun397_split_does_not_depend_on_file_system_order(fx, monkeypatch):
    """torchvision lists SUN397 with rglob (file-system order); r1lab sorts before splitting."""
    import pathlib
    root, counts = fx
    a = load_dataset("SUN397", root, check="classes", expected=counts["SUN397"])
    rglob = pathlib.Path.rglob
    monkeypatch.setattr(pathlib.Path, "rglob", lambda self, p: reversed(list(rglob(self, p))))
    b = load_dataset("SUN397", root, check="classes", expected=counts["SUN397"])
    files = lambda d, idx: [d.train._image_files[i] for i in idx]  # noqa: E731
    assert files(a, a.train_indices) == files(b, b.train_indices)
    assert files(a, a.test_indices) == files(b, b.test_indices)


def test_random_split_sizes_of_the_real_datasets():
    for name, total in (("Caltech101", 8677), ("EuroSAT", 27000), ("SUN397", 108754)):
        spec = DATASETS[name]
        assert spec["total"] == total and spec["train"] == int(0.8 * total)
        assert spec["train"] + spec["test"] == total
    assert (DATASETS["Caltech101"]["train"], DATASETS["EuroSAT"]["train"], DATASETS["SUN397"]["train"]) \
        == (6941, 21600, 87003)


# ---- orders and X-TAIL --------------------------------------------------------------------

def test_orders(fx):
    root, counts = fx
    assert ORDERS["I"] == ["Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers", "Food",
                           "MNIST", "OxfordPet", "StanfordCars", "SUN397"]
    assert ORDERS["II"] == ["StanfordCars", "Food", "MNIST", "OxfordPet", "Flowers", "SUN397", "Aircraft",
                            "Caltech101", "DTD", "EuroSAT", "CIFAR100"]
    for order in ("I", "II"):
        bench = make_mtil(root, order=order, train_transform=SMALL, test_transform=SMALL,
                          check="classes", expected=counts)
        assert len(bench) == 11 and bench.task_names == ORDERS[order]
        assert bench.label_space == "task"
        p = bench.protocol
        assert p["benchmark"] == "MTIL" and p["order"] == order and p["label_space"] == "task"
        assert "seed 42" in p["split_source"] and "ZSCL" in p["template_source"]
        assert set(p["splits"]) == set(ORDERS[order])
    assert make_mtil(root, order=2, check="classes", expected=counts, names=["food", "MNIST"]).task_names \
        == ["Food", "MNIST"]
    with pytest.raises(ValueError):
        make_mtil(root, order="III")
    with pytest.raises(ValueError):
        make_mtil(root, names=["ImageNet"])


def test_xtail_union_label_space_and_protocol(fx):
    root, counts = fx
    bench = make_xtail(root, SMALL, SMALL, check="classes", expected=counts)
    assert bench.task_names == XTAIL_ORDER and len(bench) == 10 and "CIFAR100" not in bench.task_names
    assert bench.label_space == "union"
    union = union_label_space(bench)
    assert len(union.classnames) == sum(counts[n]["classes"] for n in XTAIL_ORDER)
    for t in bench.tasks:
        o = union.offsets[t.name]
        assert union.classnames[o:o + t.num_classes] == t.classnames
        assert t.templates == ["a photo of a {}."]
    p = bench.protocol
    assert p["split_source"] == ("torchvision (ZSCL seed-42 random splits), not CoOp split files: "
                                 "a protocol variant of RAIL's X-TAIL") == XTAIL_SPLIT_SOURCE
    assert p["label_space"] == "union" and p["prompt"] == "a photo of a {}." and p["benchmark"] == "X-TAIL"
    assert p["union_classes"] == len(union.classnames)
    per_dataset = make_xtail(root, SMALL, SMALL, check="classes", expected=counts, prompt=None)
    assert per_dataset["DTD"].templates == TEMPLATES["DTD"] and "per-dataset" in per_dataset.protocol["prompt"]


def test_real_label_space_sizes():
    assert sum(DATASETS[n]["classes"] for n in ORDERS["I"]) == 1201       # MTIL
    assert sum(DATASETS[n]["classes"] for n in XTAIL_ORDER) == 1101       # X-TAIL, torchvision Caltech101
    assert sum(DATASETS[n]["test"] for n in ORDERS["I"]) == 97209          # one evaluation
    tests = {"Aircraft": 3333, "Caltech101": 1736, "CIFAR100": 10000, "DTD": 1880, "EuroSAT": 5400,
             "Flowers": 6149, "Food": 25250, "MNIST": 10000, "OxfordPet": 3669, "StanfordCars": 8041,
             "SUN397": 21751}
    assert {n: DATASETS[n]["test"] for n in tests} == tests               # docs/protocol.md's table


def test_union_keeps_shared_names_apart():
    """'sunflower' and 'lotus' are classes of both Caltech101 and Flowers: two labels each."""
    from r1lab.data.stream import Benchmark, Task
    tasks = [Task(n, CLASSNAMES[n], ["{}"], [], []) for n in ("Caltech101", "Flowers")]
    union = union_label_space(Benchmark("x", tasks, "union"))
    assert len(union.classnames) == 203 and {"sunflower", "lotus"} <= set(union.duplicates)


# ---- errors a user can act on -------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        make_task("Aircraft", tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "'Aircraft'" in msg and str(tmp_path / "fgvc-aircraft-2013b") in msg
    for part in ("fgvc-aircraft-2013b/", "variants.txt", "images_variant_train.txt", "download=True",
                 "data/README.md", "robots.ox.ac.uk"):
        assert part in msg, part


def test_missing_file_and_hint(tmp_path):
    root, _ = fresh(tmp_path, ["StanfordCars", "DTD"])
    os.remove(root / "stanford_cars" / "cars_test_annos_withlabels.mat")
    with pytest.raises(DatasetNotFound) as e:
        make_task("StanfordCars", root, check="classes")
    msg = str(e.value)
    assert "missing: stanford_cars/cars_test_annos_withlabels.mat (file)" in msg
    assert "cannot download" in msg and "7545" in msg and "cars_train/" in msg
    # DTD extracted one level too shallow: the message says so and how to fix it
    shutil.move(str(root / "dtd" / "dtd"), str(root / "dtd_x"))
    shutil.rmtree(root / "dtd")
    shutil.move(str(root / "dtd_x"), str(root / "dtd"))
    with pytest.raises(DatasetNotFound) as e:
        make_task("DTD", root, check="classes")
    assert "dtd/dtd" in str(e.value) and "hint:" in str(e.value) and "it contains: images, labels" in str(e.value)


def test_incomplete_folder(tmp_path):
    root, counts = fresh(tmp_path, ["Food", "Aircraft", "Caltech101"])
    os.remove(root / "food-101" / "images" / "baklava" / "test1.jpg")
    with pytest.raises(DatasetIncomplete) as e:
        make_task("Food", root, check="classes", expected=counts["Food"])
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "'Food'" in msg and str(root / "food-101") in msg
    assert "1 image file(s) listed by the annotations are missing" in msg and "baklava/test1.jpg" in msg
    assert "meta/train.json" in msg                                       # the expected tree
    # a short annotation file: the count found vs expected
    ann = root / "fgvc-aircraft-2013b" / "data" / "images_variant_train.txt"
    ann.write_text("".join(ann.read_text().splitlines(keepends=True)[:-1]))
    n = counts["Aircraft"]["train"]
    with pytest.raises(DatasetIncomplete, match=f"train: found {n - 1}, expected {n}"):
        make_task("Aircraft", root, check="full", expected=counts["Aircraft"])
    make_task("Aircraft", root, check="classes", expected=counts["Aircraft"])   # only classes compared
    # a missing BACKGROUND_Google folder (torchvision needs it): named, with the fix
    shutil.rmtree(root / "caltech101" / "101_ObjectCategories" / "BACKGROUND_Google")
    with pytest.raises(DatasetNotFound, match="mkdir caltech101/101_ObjectCategories/BACKGROUND_Google"):
        make_task("Caltech101", root, check="classes")


def test_full_check_compares_real_counts(fx):
    root, counts = fx
    with pytest.raises(DatasetIncomplete) as e:
        make_task("DTD", root)                                  # check="full" against the real DTD
    assert "classes: found 3, expected 47" in str(e.value) and "test: found 9, expected 1,880" in str(e.value)
    with pytest.raises(DatasetIncomplete, match="wrong md5"):
        make_task("CIFAR100", root)                             # torchvision's hashes, checked by r1lab
    task = make_task("DTD", root, SMALL, SMALL, check=False)   # no check at all
    assert task.num_classes == 3


def test_check_root_lists_every_problem(tmp_path, fx):
    root, counts = fx
    assert check_root(root, ORDERS["I"], check="classes", expected=counts) == []
    broken, bcounts = fresh(tmp_path)
    shutil.rmtree(broken / "SUN397")
    os.remove(broken / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    os.remove(broken / "oxford-iiit-pet" / "images" / "Abyssinian_1.jpg")
    problems = check_root(broken, ORDERS["II"], check="classes", expected=bcounts)
    assert len(problems) == 3
    for name, what in zip(("MNIST", "OxfordPet", "SUN397"), ("t10k-labels-idx1-ubyte", "Abyssinian_1.jpg",
                                                             "SUN397/ (folder)")):
        assert any(f"'{name}'" in p and what in p for p in problems), name
    with pytest.raises(DataRootProblems) as e:
        make_mtil(broken, check="classes", expected=bcounts)
    assert len(e.value.problems) == 3 and isinstance(e.value, FileNotFoundError)
    assert len(check_root(broken, ["MNIST"], check="classes", expected=bcounts)) == 1


# ---- class names and templates (docs/protocol.md) ------------------------------------------------

def test_classnames_json():
    cal = CLASSNAMES["Caltech101"]
    assert len(cal) == 101 and cal[:2] == ["off-center face", "centered face"]
    assert CLASSNAMES["EuroSAT"] == [
        "annual crop land", "forest", "brushland or shrubland", "highway or road",
        "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
        "residential buildings or homes or apartments", "river", "lake or sea"]
    assert len(CLASSNAMES["Flowers"]) == 102 and len(set(CLASSNAMES["Flowers"])) == 102
    import json
    from importlib import resources
    data = json.loads(resources.files("r1lab").joinpath("assets/mtil_classnames.json").read_text())
    assert "ZSCL" in data["source"] and len(data["folders"]["Caltech101"]) == 101


def test_templates_json():
    counts = {"Aircraft": 2, "Caltech101": 34, "CIFAR100": 18, "DTD": 8, "EuroSAT": 3, "Flowers": 1,
              "Food": 1, "MNIST": 1, "OxfordPet": 1, "StanfordCars": 9, "SUN397": 2}
    assert {n: len(t) for n, t in TEMPLATES.items()} == counts
    first = {"Aircraft": "a photo of a {}, a type of aircraft.", "Caltech101": "a photo of a {}.",
             "CIFAR100": "a photo of a {}.", "DTD": "a photo of a {} texture.",
             "EuroSAT": "a centered satellite photo of {}.", "Flowers": "a photo of a {}, a type of flower.",
             "Food": "a photo of a {}, a type of food.", "MNIST": 'a photo of the number: "{}".',
             "OxfordPet": "a photo of a {}, a type of pet.", "StanfordCars": "a photo of a {}, a type of car.",
             "SUN397": "a photo of a {}."}
    assert {n: t[0] for n, t in TEMPLATES.items()} == first
    assert all(t.count("{}") == 1 for ts in TEMPLATES.values() for t in ts)


# ---- few-shot subsets ---------------------------------------------------------------------

def test_few_shot_on_a_fixture(fx):
    root, counts = fx
    task = make_task("EuroSAT", root, SMALL, SMALL, check="classes", expected=counts["EuroSAT"])
    sub = few_shot(task.train, shots=2, seed=42)
    per_label = Counter(sub.tensors[1].tolist())
    assert max(per_label.values()) <= 2 and set(per_label) == set(dataset_labels(task.train))
    assert sub.tensors[0].shape[1:] == (3, 8, 8)
    again = few_shot(task.train, shots=2, seed=42)
    assert torch.equal(sub.tensors[1], again.tensors[1])


# ---- corrupt files: reported by path, never a crash ----------------------------------------

def test_few_shot_indices_are_the_items_few_shot_takes(fx):
    from r1lab.data.mtil.verify import few_shot_indices
    root, counts = fx
    task = make_task("Food", root, SMALL, SMALL, check="classes", expected=counts["Food"])
    picks = few_shot_indices(task.train, 2, 42)
    sub = few_shot(task.train, 2, seed=42)
    assert sub.tensors[1].tolist() == [dataset_labels(task.train)[i] for i in picks]
    assert len(picks) == len(set(picks)) == len(sub)


@pytest.mark.parametrize("name, rel, keep", [
    ("Food", "food-101/meta/train.json", 0.5),                      # json cut mid-way
    ("MNIST", "MNIST/raw/train-images-idx3-ubyte", 0.7),            # shorter than its header says
    ("Flowers", "flowers-102/setid.mat", 0.3),
    ("StanfordCars", "stanford_cars/devkit/cars_train_annos.mat", 0.0),   # empty
])
def test_truncated_annotation_files_are_named_by_the_quick_check(tmp_path, name, rel, keep):
    counts = write_fixtures(tmp_path, names=[name])
    path = tmp_path / rel
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    problems = check_root(tmp_path, [name], check="classes", expected=counts)
    assert len(problems) == 1 and f"corrupt annotation file {path}" in problems[0], problems
    assert "extract it again" in problems[0]


def test_empty_listed_images_are_named_by_the_quick_check(tmp_path):
    counts = write_fixtures(tmp_path, names=["DTD"])
    img = next((tmp_path / "dtd" / "dtd" / "images" / "banded").glob("*test*.jpg"))
    img.write_bytes(b"")
    problems = check_root(tmp_path, ["DTD"], check="classes", expected=counts)
    assert len(problems) == 1 and "empty (0 bytes)" in problems[0] and str(img) in problems[0]
