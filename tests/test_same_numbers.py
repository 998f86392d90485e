"""The numbers of every method are the ones recorded before the refactor into layers and
plug-ins (r1lab 0.1.0 at 1b0a0c8), bit for bit: the accuracy matrix, the accuracy before each
merge, every pool's counts and merged experts, every step's losses and learning rates, and the
merged weights (SHA-256 of their bytes). Recorded with ``scripts/record_numbers.py``; the
LoRA-family methods (o-lora, inflora, sd-lora, loramoe, codyra) were added to the same files
when they landed, without touching the earlier methods' records (LoRAMoE, whose layers stay in
the model, is fingerprinted by its weights with the layers).

The CI version runs every registered method of the paper's comparison on the first two domains
of the world at 6 iterations; ``tests/golden/methods-3x12.json`` (3 domains, 12 iterations) and
``tests/golden/main_job.json`` (``python -m r1lab compare``) are checked by the same script:

    python scripts/record_numbers.py check tests/golden/methods-3x12.json --tasks 3 --iterations 12
    python -m r1lab compare --out runs/compare && \\
        python scripts/record_numbers.py check tests/golden/main_job.json --main-job runs/compare
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import record_numbers  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "methods-2x6.json"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def now(recorded):
    return record_numbers.short_runs(tasks=recorded["tasks"], iterations=recorded["iterations"])


def test_every_method_was_recorded(recorded):
    import r1lab
    assert sorted(recorded["runs"]) == sorted(r1lab.METHODS)   # a new method is recorded when it lands


@pytest.mark.parametrize("method", sorted(json.loads(GOLDEN.read_text())["runs"]))
def test_numbers_are_the_recorded_ones(recorded, now, method):
    diffs = record_numbers.compare_records(recorded["runs"][method], now["runs"][method])
    assert not diffs, f"{method} changed:\n" + "\n".join(diffs[:10])


def test_the_comparison_catches_a_change(recorded):
    """The check itself can fail: one flipped accuracy digit is reported with its path."""
    run = json.loads(json.dumps(recorded["runs"]["dac"]))
    run["accuracy"][0][0] = repr(float(run["accuracy"][0][0]) + 0.01)
    diffs = record_numbers.compare_records(recorded["runs"]["dac"], run)
    assert len(diffs) == 1 and diffs[0].startswith("/accuracy")
