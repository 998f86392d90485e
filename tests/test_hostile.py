"""Hostile-input probes (issue 10, "Runs that never lie"): each of these reproduced a silent
wrong result or a late, unhelpful failure before; each now has to be refused, reported or
handled. Runs use the small random CLIP and 3-task stream of engine_setup.py (under a second
each) or the bundled tiny CLIP on two world tasks with two iterations."""
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torchvision import transforms as T

import r1lab.engine.run as run_mod
from r1lab import DACConfig, attach_pools, detach_pools
from r1lab.data.stream import Benchmark, Task
from r1lab.engine.testset_cache import cached_test_sets
from r1lab.cli import main
from r1lab.data.mtil import DatasetIncomplete, check_root, make_mtil, make_task, write_fixtures
from r1lab.errors import (CheckpointCorrupt, ConfigError, RunDiverged, RunLocked, RunMismatch,
                          RunWriteError)
from r1lab.pool import ExpertPoolLinear
from r1lab.engine.run import run_stream, run_warnings
from r1lab.engine.runfolder import FileLock

sys.path.insert(0, str(Path(__file__).parent))
from engine_setup import CFG, _task, fake_benchmark, random_bundle  # noqa: E402

FAST = CFG.replace(iterations=3)
WORLD = ["run", "--tasks", "digits,shapes", "--set", "iterations=2", "--set", "shots=2",
         "--set", "eval_batch_size=256", "--quiet"]
WORLD1 = [a.replace("digits,shapes", "digits") for a in WORLD]      # one task: quicker
SIXTEEN = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])   # the random CLIP's input


def run(out=None, cfg=FAST, bm=None, bundle=None, **kw):
    return run_stream(bm or fake_benchmark(), bundle or random_bundle(), cfg, "dac", out,
                      progress=False, **kw)


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run every resumed one must reproduce."""
    return run()


def no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("training started although the input was bad")
    monkeypatch.setattr(run_mod, "train_task", fail)


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.startswith("r1lab: error:")
    for n in needles:
        assert n in err, (n, err)
    return err


# ---- 1. a run folder knows what it holds ---------------------------------------------------

def test_resume_refuses_other_tasks(tmp_path):
    run(tmp_path, stop_after=1)
    other = Benchmark("fake", [_task("textures", 4, 1), _task("arrows", 3, 2), _task("colours", 5, 3)])
    with pytest.raises(RunMismatch, match="tasks: .*alpha.* -> .*textures") as e:
        run(tmp_path, bm=other)
    assert "--no-resume --overwrite" in str(e.value)
    with pytest.raises(RunMismatch, match="tasks"):
        run(tmp_path, bm=fake_benchmark().reordered(["beta", "alpha", "gamma"]))


def test_resume_refuses_other_weights_under_the_same_model_name(tmp_path):
    run(tmp_path, stop_after=1)
    other = random_bundle()
    with torch.no_grad():
        other.model.visual.conv1.weight.mul_(1.001)
    assert other.name == random_bundle().name
    with pytest.raises(RunMismatch, match="model.weights_sha256"):
        run(tmp_path, bundle=other)


def test_resume_refuses_a_folder_without_its_record(tmp_path):
    run(tmp_path, stop_after=1)
    for f in ("identity.json", "config.json"):
        (tmp_path / f).unlink()
    with pytest.raises(RunMismatch, match="no identity.json"):
        run(tmp_path, cfg=FAST.replace(lr=5e-2))      # would claim the new lr for the whole run
    assert not (tmp_path / "config.json").exists()


def test_a_record_deleted_during_the_run_is_written_again(tmp_path, monkeypatch):
    from r1lab.engine.runfolder import RunFolder
    checkpoint = RunFolder.checkpoint

    def and_delete(folder, *a, **k):
        checkpoint(folder, *a, **k)
        for f in ("identity.json", "config.json"):
            if (folder.out / f).exists():
                (folder.out / f).unlink()
    monkeypatch.setattr(RunFolder, "checkpoint", and_delete)
    run(tmp_path, stop_after=2)
    assert (tmp_path / "identity.json").exists() and (tmp_path / "config.json").exists()
    monkeypatch.setattr(RunFolder, "checkpoint", checkpoint)
    run(tmp_path)                                      # the record was back for the resume
    assert json.loads((tmp_path / "config.json").read_text())["config"]["lr"] == FAST.lr


def test_no_resume_never_leaves_old_results(tmp_path, reference):
    out = tmp_path / "run"
    run(out)
    with pytest.raises(RunMismatch, match="--overwrite"):
        run(out, resume=False)
    assert (out / "metrics.json").exists()             # refused: nothing touched
    run(out, resume=False, overwrite=True, stop_after=1, cfg=FAST.replace(lr=5e-3))
    for stale in ("metrics.json", "accuracy.csv", "counts.pt", "losses.csv",
                  "checkpoints/task_01.pt", "checkpoints/task_02.pt"):
        assert not (out / stale).exists(), stale
    old = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(old) == 1 and (old[0] / "metrics.json").exists()
    assert (old[0] / "checkpoints" / "task_02.pt").exists()
    with pytest.raises(RunMismatch):                   # and no plain resume stitches old and new
        run(out)


def test_no_resume_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(WORLD + ["--out", str(out)]) == 0
    capsys.readouterr()
    assert main(WORLD + ["--out", str(out), "--no-resume"]) == 2
    one_line_error(capsys, "--overwrite")
    assert main(WORLD1 + ["--out", str(out), "--no-resume", "--overwrite", "--set", "seed=1"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 1
    assert len(list(tmp_path.glob("w.old-*/metrics.json"))) == 1


# ---- 2. divergence stops the run; collapse is flagged; values are checked --------------------

def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = FAST.replace(lr_by_task={"alpha": 1e-2, "beta": 1e30, "gamma": 1e-2})
    with pytest.raises(RunDiverged) as e:
        run(tmp_path, cfg=cfg)
    msg = str(e.value)
    assert "task 2 (beta)" in msg and "step" in msg and "learning rate" in msg and "1e+30" in msg
    assert str(tmp_path) in msg and "\n" not in msg
    assert (tmp_path / "checkpoints" / "task_00.pt").exists()
    assert not (tmp_path / "checkpoints" / "task_01.pt").exists()
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "accuracy.csv").exists()


def test_divergence_exits_non_zero_with_one_line(tmp_path, capsys):
    rc = main(WORLD + ["--out", str(tmp_path), "--set", "lr_by_task=digits:5e-3,shapes:1e30"])
    assert rc == 2
    one_line_error(capsys, "diverged", "task 2 (shapes)", "lr")
    assert (tmp_path / "checkpoints" / "task_00.pt").exists() and not (tmp_path / "metrics.json").exists()


def test_chance_collapse_is_flagged_in_folder_log_and_summary(tmp_path, monkeypatch, capsys):
    def at_chance(model, tokenizer, benchmark, device="cpu", batch_size=256, only=None, **kw):
        idx = range(len(benchmark.tasks)) if only is None else only
        return [100.0 / benchmark.tasks[j].num_classes for j in idx]
    monkeypatch.setattr(run_mod, "accuracy_row", at_chance)
    res = run_stream(fake_benchmark(), random_bundle(), FAST, "dac", tmp_path, progress=True)
    assert res.warnings and "chance" in res.warnings[0]
    assert "warning:" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["warnings"] == res.warnings
    assert main(["summary", str(tmp_path)]) == 0
    assert "warning: every accuracy of the last row" in capsys.readouterr().out


def test_loss_explosion_is_flagged():
    from r1lab.engine.train import TaskLog
    calm = TaskLog("a", "{}", 1e-3, loss=[2.0, 1.5, 1.0, 0.9])
    wild = TaskLog("b", "{}", 1e-3, loss=[2.0, 5.0, 30.0, 40.0])
    A = np.array([[80.0, 10.0], [70.0, 90.0]])
    assert run_warnings(A, [25.0, 25.0], [calm]) == []
    (w,) = run_warnings(A, [25.0, 25.0], [calm, wild])
    assert "task b" in w and "rose" in w


@pytest.mark.parametrize("setting, field", [
    ("lr=abc", "lr"), ("lr=inf", "lr"), ("lr=nan", "lr"), ("alpha=nan", "alpha"),
    ("ago_weight=nan", "ago_weight"), ("seed=abc", "seed"), ("betas=abc", "betas"),
    ("iterations=2.5", "iterations"), ("nonsense=1", "nonsense"),
])
def test_set_errors_name_the_field_in_one_line(setting, field, capsys, monkeypatch):
    no_training(monkeypatch)
    assert main(["run", "--set", setting, "--quiet"]) == 2
    err = one_line_error(capsys, field)
    assert err.count("\n") == 0


def test_worker_count_is_checked_before_work(capsys, monkeypatch):
    no_training(monkeypatch)
    assert main(["run", "--workers", "-1", "--quiet"]) == 2
    one_line_error(capsys, "--workers")
    with pytest.raises(ConfigError, match="num_workers"):
        run(num_workers=-1)


# ---- 3. one writer per folder and per cache -------------------------------------------------

def test_a_second_writer_is_refused(tmp_path, capsys):
    with FileLock(tmp_path / ".lock"):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            run(tmp_path)
        assert main(WORLD1 + ["--out", str(tmp_path)]) == 2
        one_line_error(capsys, "another process")
    assert not (tmp_path / "checkpoints").exists()
    run(tmp_path, stop_after=1)                       # free again once the holder is done


class SlowPixels(Dataset):
    """8-bit-grid test images that take a while to read (so two builders overlap)."""

    def __init__(self, n=12):
        self.px = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(0))
        self.reads = 0

    def __len__(self):
        return len(self.px)

    def __getitem__(self, i):
        self.reads += 1
        time.sleep(0.01)
        return self.px[i].float() / 255.0, i % 2


def test_two_builders_of_one_cache_neither_crash_nor_build_twice(tmp_path):
    ds = SlowPixels()
    bm = Benchmark("b", [Task("t", ["a", "b"], ["{}"], ds, ds)])
    results, errors = [], []
    go = threading.Barrier(2)

    def build():
        go.wait()
        try:
            results.append(cached_test_sets(bm, tmp_path, batch_size=4)[0])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    assert ds.reads == len(ds), "the second builder must wait and reuse the first one's cache"
    assert torch.equal(results[0][3][0], results[1][3][0])
    assert not list(tmp_path.glob(".*tmp"))


# ---- 4. hyper-parameters tied to datasets ---------------------------------------------------

def _named_stream(name, order, label_space="task"):
    return Benchmark(name, [_task("Aircraft", 4, 1), _task("DTD", 3, 2)], label_space,
                     protocol=dict(order=order))


PAPER_SMALL = dict(iterations=2, batch_size=8, shots=2, eval_batch_size=64)


def test_order2_subset_keeps_each_datasets_rate():
    cfg = DACConfig.paper("II").replace(**PAPER_SMALL)
    res = run_stream(_named_stream("MTIL", "II"), random_bundle(), cfg, "dac", None, progress=False)
    assert [log.lr for log in res.logs] == [3e-3, 2e-3]       # Aircraft 3e-3, DTD 2e-3


def test_xtail_refuses_mtil_order2_rates(monkeypatch, capsys):
    no_training(monkeypatch)
    cfg = DACConfig.paper("II").replace(**PAPER_SMALL)
    with pytest.raises(ConfigError, match="MTIL Order II"):
        run_stream(_named_stream("X-TAIL", "I", "union"), random_bundle(), cfg, "dac", None, progress=False)
    with pytest.raises(ConfigError, match="MTIL Order II"):
        run_stream(_named_stream("MTIL", "I"), random_bundle(), cfg, "dac", None, progress=False)
    assert main(["run", "--benchmark", "xtail", "--order", "II", "--data-root", "/nonexistent"]) == 2
    one_line_error(capsys, "X-TAIL")


# ---- 5. fail before work ---------------------------------------------------------------------

def test_a_one_task_run_finishes_with_transfer_undefined(tmp_path, capsys):
    res = run(tmp_path, bm=fake_benchmark().reordered(["alpha"]))
    assert np.isnan(res.metrics.transfer) and res.metrics.diagonal == res.accuracy[0, 0]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["transfer"] is None and m["diagonal"] == pytest.approx(res.accuracy[0, 0])
    assert main(["summary", str(tmp_path)]) == 0
    assert "Transfer n/a" in capsys.readouterr().out


def test_mtil_with_the_tiny_model_fails_before_any_cache(tmp_path, capsys, monkeypatch):
    no_training(monkeypatch)
    write_fixtures(tmp_path / "data", names=["EuroSAT", "MNIST"], per_class=1, n_classes=10)
    out = tmp_path / "run"
    rc = main(["run", "--benchmark", "mtil", "--tasks", "EuroSAT,MNIST", "--data-root",
               str(tmp_path / "data"), "--check", "classes", "--model", "tiny", "--quiet",
               "--out", str(out)])
    assert rc == 2
    one_line_error(capsys, "32x32", "224x224")
    assert not list(out.glob("cache/*.npy")) and not (out / "checkpoints").exists()


# ---- 6. corrupt data caught by the checks ---------------------------------------------------

@pytest.mark.parametrize("mode", ["classes", False])
def test_truncated_cifar_pickle_is_reported_by_path(tmp_path, mode):
    counts = write_fixtures(tmp_path, names=["CIFAR100"])
    pickle = tmp_path / "cifar-100-python" / "train"
    pickle.write_bytes(pickle.read_bytes()[: pickle.stat().st_size // 2])
    problems = check_root(tmp_path, ["CIFAR100"], check=mode, expected=counts)
    assert len(problems) == 1 and str(pickle) in problems[0]
    assert "extract it again" in problems[0] and "cifar-100-python.tar.gz" in problems[0]
    with pytest.raises(DatasetIncomplete, match=str(pickle)):
        make_task("CIFAR100", tmp_path, check=mode, expected=counts["CIFAR100"])


def _break(path: Path, kind: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "garbage": b"this is not a JPEG file " * 20}[kind])


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_corrupt_jpegs_are_reported_by_path_before_training(tmp_path, kind, monkeypatch):
    counts = write_fixtures(tmp_path, names=["Food"], per_class=2)
    bm = make_mtil(tmp_path, names=["Food"], train_transform=SIXTEEN, test_transform=SIXTEEN,
                   check="classes", expected=counts)
    bad = sorted((tmp_path / "food-101" / "images" / "apple_pie").glob("train*.jpg"))
    assert len(bad) == 2
    for p in bad:                      # every training image of one class: in any few-shot subset
        _break(p, kind)
    problems = check_root(tmp_path, ["Food"], check="classes", expected=counts, shots=2, seed=42)
    assert len(problems) == 1 and all(str(p) in problems[0] for p in bad), problems
    no_training(monkeypatch)
    with pytest.raises(DatasetIncomplete) as e:
        run_stream(bm, random_bundle(), FAST.replace(shots=2), "dac", None, progress=False)
    assert all(str(p) in str(e.value) for p in bad) and "extract it again" in str(e.value)


def test_a_corrupt_test_image_names_its_file(tmp_path):
    counts = write_fixtures(tmp_path, names=["Food"], per_class=2)
    task = make_task("Food", tmp_path, SIXTEEN, SIXTEEN, check="classes", expected=counts["Food"])
    path = Path(task.test.dataset._image_files[task.test.indices[0]])
    _break(path, "truncated")
    with pytest.raises(DatasetIncomplete, match=str(path)):
        task.test[0]


# ---- 7. checkpoints --------------------------------------------------------------------------

def test_a_corrupt_checkpoint_is_named_and_fallback_resumes(tmp_path, reference):
    run(tmp_path, stop_after=2)
    bad = tmp_path / "checkpoints" / "task_01.pt"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CheckpointCorrupt) as e:
        run(tmp_path)
    assert str(bad) in str(e.value) and "--fallback" in str(e.value) and "task_00.pt" in str(e.value)
    res = run(tmp_path, fallback=True)
    assert np.array_equal(res.accuracy, reference.accuracy)
    assert (tmp_path / "checkpoints" / "task_01.pt.corrupt").exists()


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunWriteError, match="task_00.pt.*disk full"):
        run(tmp_path)
    assert not list((tmp_path / "checkpoints").glob("*"))


def test_seconds_add_up_over_processes_and_files_are_readable(tmp_path):
    run(tmp_path, stop_after=1)
    first = torch.load(tmp_path / "checkpoints" / "task_00.pt", weights_only=False)["elapsed"]
    res = run(tmp_path)
    assert first >= res.logs[0].seconds
    assert res.seconds >= first + sum(log.seconds for log in res.logs[1:])
    assert json.loads((tmp_path / "metrics.json").read_text())["seconds"] == res.seconds
    umask = os.umask(0)
    os.umask(umask)
    for f in ("metrics.json", "accuracy.csv", "identity.json", "checkpoints/task_02.pt"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~umask, f


# ---- 8. atomic attach ------------------------------------------------------------------------

def test_a_failed_attach_leaves_the_model_unchanged(tiny_models):
    import copy
    model = copy.deepcopy(tiny_models["default"])
    block = model.transformer.resblocks[1]
    block.mlp.c_fc = nn.Sequential(block.mlp.c_fc)     # same function, but not an nn.Linear
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    grads = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match="transformer.resblocks.1.mlp.c_fc is a Sequential"):
        attach_pools(model, DACConfig.tiny())
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert not any(isinstance(m, ExpertPoolLinear) for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pools = attach_pools(model, DACConfig.tiny().replace(blocks=(0,)))   # still attachable
    assert len(pools) == 2 * 6
    detach_pools(model)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
