"""The synthetic MTIL-shaped benchmark (issue 12, item 3): real shapes, random images, no data."""
import json
from pathlib import Path

import pytest
import torch

from r1lab.data.stream import dataset_labels, few_shot
from r1lab.data.mtil.folders import CLASSNAMES, ORDERS, TEMPLATES
from r1lab.data.mtil.synthetic import SYNTHETIC_NOTE, make_mtil_synthetic, real_counts
from r1lab.engine.models import model_input_size
from r1lab.engine.comparison import make_benchmark
from r1lab.engine.identity import stream_name

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

# docs/protocol.md: the 11 MTIL test sets, 97,209 images
REAL = {"Aircraft": (100, 3333), "Caltech101": (101, 1736), "CIFAR100": (100, 10000), "DTD": (47, 1880),
        "EuroSAT": (10, 5400), "Flowers": (102, 6149), "Food": (101, 25250), "MNIST": (10, 10000),
        "OxfordPet": (37, 3669), "StanfordCars": (196, 8041), "SUN397": (397, 21751)}


@pytest.mark.parametrize("order", ["I", "II"])
def test_real_shapes_at_full_scale(order):
    bm = make_mtil_synthetic(order=order)          # builds no image
    assert bm.task_names == ORDERS[order]
    assert {t.name: (t.num_classes, len(t.test)) for t in bm.tasks} == REAL
    assert sum(len(t.test) for t in bm.tasks) == 97209 == bm.protocol["test_images"]
    for t in bm.tasks:
        assert len(t.train) == 5 * t.num_classes
        assert real_counts(t.name)["test"] == len(t.test)
    assert bm.protocol["synthetic"] is True and bm.protocol["note"] == SYNTHETIC_NOTE
    assert "meaningless" in SYNTHETIC_NOTE and "timing" in SYNTHETIC_NOTE
    assert stream_name(bm) == f"MTIL Order {order}"   # the paper preset's Order II rates apply


def test_names_and_templates_are_the_real_assets():
    bm = make_mtil_synthetic()
    for t in bm.tasks:
        assert t.templates == TEMPLATES[t.name]
        if t.name in CLASSNAMES:
            assert t.classnames == CLASSNAMES[t.name]
        assert len(t.classnames) == len(set(t.classnames)) == REAL[t.name][0]
    assert bm["MNIST"].classnames[3] == "3 - three"


def test_images_are_deterministic_normalised_and_lazy():
    a = make_mtil_synthetic(image_size=32, seed=0)
    b = make_mtil_synthetic(image_size=32, seed=0)
    c = make_mtil_synthetic(image_size=32, seed=1)
    x, y = a["DTD"].test[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 7
    assert torch.equal(x, b["DTD"].test[7][0])
    assert not torch.equal(x, a["DTD"].test[8][0])
    assert not torch.equal(x, c["DTD"].test[7][0])
    assert not torch.equal(x, a["DTD"].train[7][0])
    assert not torch.equal(x, a["MNIST"].test[7][0])
    # uint8 pixels behind CLIP normalisation: the test-set cache stores them losslessly
    from r1lab.engine.testset_cache import _to_uint8
    from r1lab.data.mtil.folders import CLIP_MEAN, CLIP_STD
    assert _to_uint8(x[None], torch.tensor(CLIP_MEAN).view(1, 3, 1, 1),
                     torch.tensor(CLIP_STD).view(1, 3, 1, 1)) is not None
    assert a["DTD"].test[-1][1] == (len(a["DTD"].test) - 1) % 47
    with pytest.raises(IndexError):
        a["DTD"].test[len(a["DTD"].test)]
    # the cache fingerprint tells seeds and sizes apart
    from r1lab.engine.testset_cache import fingerprint
    assert fingerprint(a["DTD"].test) == fingerprint(b["DTD"].test) != fingerprint(c["DTD"].test)


def test_shots_per_class_and_test_scale():
    bm = make_mtil_synthetic(shots=3, test_scale=0.001, image_size=16)
    for t in bm.tasks:
        labels = dataset_labels(t.train)
        assert sorted(labels) == sorted(list(range(t.num_classes)) * 3)
        test_labels = dataset_labels(t.test)
        assert set(test_labels) == set(range(t.num_classes))      # at least one per class
        assert len(t.test) == max(t.num_classes, round(0.001 * REAL[t.name][1]))
    sub = few_shot(bm["EuroSAT"].train, 3, seed=0)
    assert len(sub) == 30 and sub.tensors[0].shape == (30, 3, 16, 16)
    with pytest.raises(ValueError):
        make_mtil_synthetic(test_scale=0)
    with pytest.raises(ValueError):
        make_mtil_synthetic(names=["ImageNet"])


def test_make_benchmark_and_model_input_size():
    bm = make_benchmark("mtil-synthetic", order="II", image_size=32, names=["MNIST", "EuroSAT"])
    assert bm.task_names == ["MNIST", "EuroSAT"] and bm.protocol["order"] == "II"
    assert bm["MNIST"].test[0][0].shape == (3, 32, 32)
    assert model_input_size("tiny") == 32
    assert model_input_size("ViT-B-16-quickgelu") == 224


def test_cli_run_end_to_end(tmp_path, monkeypatch):
    from r1lab.cli import main
    out = tmp_path / "run"
    rc = main(["run", "--benchmark", "mtil-synthetic", "--order", "I", "--tasks", "EuroSAT,MNIST", "--test-scale", "0.001",
               "--preset", "tiny", "--set", "iterations=2", "--out", str(out), "--quiet"])
    assert rc == 0
    assert (out / "accuracy.csv").is_file() and (out / "metrics.json").is_file()
    proto = json.loads((out / "protocol.json").read_text())
    assert "synthetic" in json.dumps(proto).lower()


def test_paper_throughput_table():
    """The report's table (the script itself times ViT-B/16: minutes on CPU, so not run here)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("paper_throughput", ROOT / "benchmarks" / "paper_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = dict(device="NVIDIA H200", train_it_per_s=10.0, train_peak_mb=5000.0, train_it_per_s_bf16=20.0,
               train_peak_mb_bf16=3000.0, eval_images_per_s_fp32=2000.0, eval_images_per_s_bf16=4000.0,
               mtil_run_steps=5500, mtil_run_eval_images=11 * 97209)
    for label, tr, ev in (("fp32", 10.0, 2000.0), ("engine", 10.0, 4000.0), ("bf16", 20.0, 4000.0)):
        res[f"mtil_train_min_{label}"], res[f"mtil_eval_min_{label}"] = 5500 / tr / 60, 11 * 97209 / ev / 60
        res[f"mtil_projected_min_{label}"] = res[f"mtil_train_min_{label}"] + res[f"mtil_eval_min_{label}"]
    text = mod.table(res)
    assert "1.84" in text and "9,490" in text and "RTX A6000" in text
    assert f"{(550 + 11 * 97209 / 2000) / 60:,.1f}" in text     # fp32 projection, minutes
    assert "bf16 autocast" in text and "1,069,299 test images" in text
    cpu = dict(res, device="cpu", train_peak_mb=None, train_it_per_s_bf16=None, train_peak_mb_bf16=None,
               eval_images_per_s_bf16=None)
    for k in [k for k in cpu if k.endswith(("_engine", "_bf16")) and k.startswith("mtil_")]:
        del cpu[k]
    assert "bf16 eval" not in mod.table(cpu)
