"""The LoRA family (docs/method.md sec. 14) as a whole: every method registered, documented and
run by the unchanged engine in both forms on the tiny test CLIP, and on CLIP ViT-B/16 (random
weights) in the X-TAIL form and through the command line on ``mtil-synthetic`` (MTIL form); adding them changed
no run identity of the methods that were there; the study's collision rate equals notebook
04's on DAC's pools. Each method's defining property is tested in its own file
(tests/test_o_lora.py, test_inflora.py, test_sd_lora.py, test_loramoe.py, test_codyra.py)."""
import copy
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import r1lab
from engine_setup import CFG, fake_benchmark, random_bundle
from r1lab.config import FAMILY_FIELDS, DACConfig
from r1lab.data.stream import Benchmark, Task
from r1lab.methods import LORA_FAMILY
from r1lab.analysis import lora_family

ROOT = Path(__file__).resolve().parents[1]


def test_five_methods_registered_documented_and_cited():
    method_md = (ROOT / "docs" / "method.md").read_text()
    refs = (ROOT / "docs" / "references.md").read_text()
    assert len(LORA_FAMILY) == 5 and set(LORA_FAMILY) <= set(r1lab.METHODS)
    for name in LORA_FAMILY:
        m = r1lab.get_method(name)
        assert f"`--method {name}`" in method_md
        assert set(m.reads) <= set(FAMILY_FIELDS)
    for paper in ("O-LoRA", "InfLoRA", "SD-LoRA", "LoRAMoE", "CoDyRA"):
        assert f"**{paper}.**" in refs
    assert [m for m in r1lab.METHODS if not r1lab.get_method(m).merges] == ["loramoe"]


def test_a_family_field_is_in_the_identity_of_its_method_only():
    from r1lab.engine.identity import settings
    cfg = DACConfig(olora_weight=3.0)
    assert settings(cfg, "o-lora")["olora_weight"] == 3.0
    for other in ("dac", "lora", "codyra"):
        assert "olora_weight" not in settings(cfg, other)
    assert set(settings(cfg, "dac")) == set(DACConfig().to_dict()) - set(FAMILY_FIELDS)


@pytest.mark.parametrize("space", ["task", "union"])
@pytest.mark.parametrize("method", LORA_FAMILY)
def test_the_engine_runs_each_method_in_both_forms(method, space):
    bench = fake_benchmark()
    bench = Benchmark(bench.name, bench.tasks, protocol=bench.protocol, label_space=space)
    cfg = CFG.replace(iterations=4, moe_experts=3)
    res = r1lab.run_stream(bench, random_bundle(), cfg, method, progress=False)
    assert res.accuracy.shape == (3, 3) and np.isfinite(res.accuracy).all()
    assert res.metrics is not None and 0 <= res.metrics.last <= 100


# ------------------------------------------------------------------ ViT-B/16 (random weights)
def _tasks_224(n=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(n):
        x = torch.randn(4, 3, 224, 224, generator=g)
        y = torch.tensor([0, 1, 0, 1])
        out.append(Task(f"t{t}", [f"thing {t}{i}" for i in range(2)], ["a photo of a {}."],
                        TensorDataset(x, y), TensorDataset(x[:2], y[:2])))
    return out


# The smoke tests put pools on blocks 0 and 11 of each tower and on q, k, v, o and c_fc (inputs
# of width 768 / 512): InfLoRA eigen-decomposes each pool's input covariance twice per task, and
# c_proj's 3072 x 3072 took 300 s on one CPU thread here (a GPU does it in well under a second).
SMOKE = dict(iterations=1, batch_size=2, eval_batch_size=8, blocks=(0, 11), targets=("q", "k", "v", "o", "c_fc"))


@pytest.mark.slow
@pytest.mark.parametrize("method", LORA_FAMILY)
def test_vitb16_runs_each_method_in_the_xtail_form(vitb16, tokenizer, method):
    """Two tasks, one step each, every test image scored among both tasks' classes (the union
    label space); the MTIL form runs through the command line below."""
    cfg = DACConfig.paper().replace(shots=None, lr_by_task=None, lr_by_task_for=None, **SMOKE)
    bundle = types.SimpleNamespace(model=copy.deepcopy(vitb16), tokenizer=tokenizer, name="vitb16-random")
    bench = Benchmark("vit-smoke", _tasks_224(), protocol={}, label_space="union")
    res = r1lab.run_stream(bench, bundle, cfg, method, progress=False)
    assert res.accuracy.shape == (2, 2) and np.isfinite(res.accuracy).all()


@pytest.mark.slow
def test_vitb16_on_mtil_synthetic_through_the_cli(tmp_path):
    """The MTIL form on ViT-B/16: one command-line comparison of the five methods on
    mtil-synthetic (EuroSAT's shape), each a finished run folder."""
    from r1lab.cli import main
    sets = [a for k, v in SMOKE.items() for a in ("--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}")]
    rc = main(["compare", "--methods", *LORA_FAMILY, "--seeds", "0", "--benchmark", "mtil-synthetic",
               "--tasks", "EuroSAT", "--test-scale", "0.001", "--model", "ViT-B-16-quickgelu",
               "--preset", "paper", "--set", "shots=1", *sets, "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    for method in LORA_FAMILY:
        run = tmp_path / f"{method}-seed0"
        assert json.loads((run / "config.json").read_text())["method"] == method
        assert 0 <= json.loads((run / "metrics.json").read_text())["last"] <= 100


# ------------------------------------------------------------------ the study's collisions
def test_study_collision_rate_equals_notebook_04s_on_dac_pools():
    from r1lab.analysis.diagnostics import collision_rate
    bundle, bench = random_bundle(), fake_benchmark()
    res = r1lab.run_stream(bench, bundle, CFG, "dac", progress=False)
    cfg = CFG.to_dict()
    blocks = [lora_family.task_columns("dac", p.adapter_state(), cfg) for p in res.pools.values()]
    assert all(len(b) == 3 and b[0].shape[1] == CFG.merge_k for b in blocks)
    assert lora_family.collision_rate(blocks) == pytest.approx(collision_rate(res.pools))
    assert lora_family.collision_rate(blocks, threshold=2.0) == 0.0     # the check can fail


def test_line_residual_by_hand():
    st = {"dac": {"diagonal": (50.0, 0), "forgetting": (4.0, 0)},
          "lora": {"diagonal": (54.0, 0), "forgetting": (12.0, 0)},
          "x": {"diagonal": (52.0, 0), "forgetting": (5.0, 0)}}
    assert lora_family.line_slope(st) == 2.0
    assert lora_family.line_residual(st, "x") == pytest.approx(5.0 - 8.0)


# ------------------------------------------------------------------ the study's files
def test_readme_tables_agree_with_the_committed_run_folders():
    """README's LoRA-family block is what scripts/lora_family.py generates from the committed
    run folders, collisions.json and cost.json (and the check can fail)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("lora_family_script", ROOT / "scripts" / "lora_family.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.readme(check=True) == 0
    block = lora_family.readme_block()
    assert block in (ROOT / "README.md").read_text()
    assert "| `inflora` |" in block and "X-TAIL form" in block


def test_every_committed_run_is_finished_and_the_settings_follow_the_rule():
    root = lora_family.results_dir()
    for form in lora_family.FORMS:
        assert lora_family.complete(root / form)
        assert not list((root / form).glob("*/checkpoints"))
        collisions = lora_family.read_collisions(root / form)
        assert collisions["loramoe"] is None and all(len(collisions[m]) == 3 for m in lora_family.METHODS
                                                     if m != "loramoe")
    chosen = lora_family.settings(root / "tune")
    for method, (field, values) in lora_family.TUNING.items():
        scores = lora_family.tuning_runs(root / "tune", method)
        assert float(chosen[field]) == max(scores, key=scores.get)
        cfg = json.loads((root / "mtil" / f"{method}-seed0" / "config.json").read_text())["config"]
        assert cfg[field] == float(chosen[field])


@pytest.mark.slow
def test_the_notebooks_fallback_comparison_runs(tmp_path):
    """Notebook 07 recomputes a small comparison when the committed folders are missing."""
    comp = lora_family.small_comparison("xtail", tmp_path, methods=("dac", "lora", "o-lora"),
                                        iterations=2, tasks=2)
    assert set(comp.runs) == {"dac", "lora", "o-lora"} and comp.zeroshot is not None
    assert all(np.isfinite(comp.stats(m)["forgetting"][0]) for m in comp.runs)
    assert lora_family.line_summary(comp).startswith("Along the DAC-LoRA line")   # nan-safe
