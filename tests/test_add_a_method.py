"""docs/examples/lora_fa.py, the method that docs/architecture.md adds, works as the docs say:
registered by name, run by the unchanged engine, and with its defining property (A never moves,
B trains)."""
import importlib.util
from pathlib import Path

import pytest
import torch

import r1lab
from r1lab.methods import registry
from engine_setup import CFG, fake_benchmark, random_bundle

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "lora_fa.py"


@pytest.fixture
def lora_fa():
    spec = importlib.util.spec_from_file_location("lora_fa_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    registry._REGISTRY.pop("lora-fa", None)


def test_the_example_registers_and_trains_only_B(lora_fa):
    method = r1lab.get_method("lora-fa")
    assert isinstance(method, lora_fa.LoRAFA)
    bundle, bench = random_bundle(), fake_benchmark()
    cfg = method.configure(CFG)
    pools = method.attach(bundle.model, cfg)
    assert all(type(p) is lora_fa.FrozenAPool for p in pools.values())
    torch.manual_seed(0)
    pools.reset()
    A0 = {n: p.A.detach().clone() for n, p in pools.items()}
    task = bench.tasks[0]
    r1lab.train_task(bundle.model, bundle.tokenizer, pools, task, task.train, cfg, 0,
                     progress=False, method=method)
    assert all(torch.equal(p.A, A0[n]) for n, p in pools.items())
    assert all(p.B.abs().sum() > 0 for p in pools.values())
    assert all(not p.A.requires_grad for p in pools.values())


def test_the_engine_runs_the_example_by_name(lora_fa):
    res = r1lab.run_stream(fake_benchmark(), random_bundle(), CFG, "lora-fa", progress=False)
    assert res.accuracy.shape == (3, 3) and res.metrics is not None
    assert all(len(m) and all(len(v) == CFG.rank for v in m.values()) for m in res.merged)


def test_a_planted_bug_is_caught(lora_fa, monkeypatch):
    """The property test can fail: a layer that forgets to freeze A is caught."""
    monkeypatch.setattr(lora_fa.FrozenAPool, "reset", lora_fa.DensePool.reset)
    method = r1lab.get_method("lora-fa")
    bundle, task = random_bundle(), fake_benchmark().tasks[0]
    pools = method.attach(bundle.model, method.configure(CFG))
    A0 = {n: p.A.detach().clone() for n, p in pools.items()}
    r1lab.train_task(bundle.model, bundle.tokenizer, pools, task, task.train, CFG, 0,
                     progress=False, method=method)
    assert not all(torch.equal(p.A, A0[n]) for n, p in pools.items())
