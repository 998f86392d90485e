"""The paper preset's exact code path on CPU: CLIP ViT-B/16 (random weights), the MTIL
loaders on generated fixtures, two tasks, two iterations, through the command line."""
import pytest
import json


from r1lab.cli import main
from r1lab.data.mtil.fixtures import write_fixtures


@pytest.mark.slow
def test_paper_preset_runs_end_to_end_on_cpu(tmp_path, capsys):
    # EuroSAT and MNIST with all 10 real classes (so the class-count check of real data passes)
    # and one image per class: ViT-B/16 steps on CPU cost seconds per image
    write_fixtures(tmp_path / "data", names=["EuroSAT", "MNIST"], per_class=1, n_classes=10, image_size=16)
    out = tmp_path / "run"
    rc = main(["run", "--benchmark", "mtil", "--order", "I", "--tasks", "EuroSAT,MNIST",
               "--data-root", str(tmp_path / "data"), "--check", "classes",
               "--model", "ViT-B-16-quickgelu", "--preset", "paper",
               "--set", "iterations=2", "--set", "eval_batch_size=16", "--quiet", "--out", str(out)])
    assert rc == 0
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["model"] == "ViT-B-16-quickgelu" and proto["order"] == ["EuroSAT", "MNIST"]
    assert proto["benchmark_protocol"]["benchmark"] == "MTIL"
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["rank"], cfg["top_k"], cfg["merge_k"], cfg["lr"], cfg["batch_size"], cfg["shots"]) == (12, 8, 4, 2e-3, 32, 5)
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["per_dataset"]) == 2 and 0 <= m["last"] <= 100
    assert sorted(p.name for p in (out / "cache").glob("*.npy")) == ["EuroSAT.npy", "MNIST.npy"]
    assert "Transfer" in capsys.readouterr().out
