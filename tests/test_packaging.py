"""The set-up path: exact pins agree everywhere; the package's own ranges admit them."""
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pins(text: str) -> dict:
    return {m.group(1).lower(): m.group(2)
            for m in re.finditer(r"^[\s-]*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M)}


def test_environment_yml_pins_equal_requirements():
    req = pins((ROOT / "requirements.txt").read_text())
    env = pins((ROOT / "environment.yml").read_text())
    assert req == env
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1" and req["open_clip_torch"] == "3.3.0"


def test_pyproject_ranges_admit_the_pins_and_do_not_pin_torch():
    from packaging.requirements import Requirement
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [Requirement(d) for d in meta["dependencies"]]
    req = pins((ROOT / "requirements.txt").read_text())
    for d in deps:
        name = d.name.lower()
        assert "==" not in str(d.specifier), f"{name} is pinned exactly in pyproject: Colab would reinstall it"
        if name in req:
            assert d.specifier.contains(req[name]), f"{name}=={req[name]} is outside {d.specifier}"
    for extra in ("test", "notebooks", "dev"):
        assert extra in meta["optional-dependencies"]


def test_installed_versions_match_the_pins():
    from importlib.metadata import version
    req = pins((ROOT / "requirements.txt").read_text())
    for name in ("torch", "torchvision", "open_clip_torch"):
        assert version(name).split("+")[0] == req[name]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in ci and "bash scripts/test.sh" in readme


@pytest.mark.parametrize("path", ["notebooks", "r1lab", "data", "tests", "README.md", "environment.yml", "pyproject.toml"])
def test_top_level_layout(path):
    assert (ROOT / path).exists()
