"""The layers of r1lab hold (docs/architecture.md): import-linter's contracts, no import circle,
a small top level, the paper's pool readable in one sitting, training without the plotting
stack, and methods as plug-ins in one registry."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "r1lab"


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_no_import_circle():
    import grimp
    g = grimp.build_graph("r1lab")
    circles = [(m, n) for m in sorted(g.modules) for n in g.find_modules_directly_imported_by(m)
               if n != m and n.startswith("r1lab") and g.chain_exists(importer=n, imported=m)]
    assert circles == []


def test_the_check_sees_a_back_import(tmp_path):
    """Plant an import from the core into the engine in a copy: the layers contract breaks."""
    copy = tmp_path / "repo"
    shutil.copytree(PKG, copy / "r1lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    pool = copy / "r1lab" / "pool.py"
    pool.write_text(pool.read_text() + "\nfrom r1lab.engine import run  # planted\n")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    out = subprocess.run([exe, "--config", str(copy / "pyproject.toml")], cwd=copy,
                         capture_output=True, text=True, env={"PYTHONPATH": str(copy), "PATH": ""})
    assert out.returncode != 0
    assert "r1lab.pool" in out.stdout and "r1lab.engine" in out.stdout


def test_top_level_holds_the_core_only():
    modules = sorted(p.name for p in PKG.glob("*.py"))
    assert len(modules) <= 12, modules
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert packages == ["analysis", "data", "engine", "methods", "scale", "teach"]


def test_the_paper_pool_is_one_sitting():
    src = (PKG / "pool.py").read_text()
    assert len(src.splitlines()) <= 270
    code = src.split('"""', 2)[2]                                  # past the module docstring
    for variant in ("self.fixed", "hold_others", "linalg.svd", "expert_weights", "cfg.router",
                    "cfg.selection", "cfg.merge_rule", "cfg.consolidate", "top_k == self.rank"):
        assert variant not in code, variant                        # variants live in methods/
    forward = code.split("def forward", 1)[1].split("\n    def ", 1)[0]
    assert forward.count("return") == 2                             # disabled, or the one path


def test_import_r1lab_loads_no_plotting_stack_until_a_notebook_asks():
    code = ("import sys, r1lab; heavy = [m for m in ('matplotlib', 'seaborn', 'ipywidgets') "
            "if m in sys.modules]; print(heavy); assert not heavy; "
            "print(r1lab.plots.__name__); assert 'matplotlib' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == ["[]", "r1lab.teach.plots"]


@pytest.mark.parametrize("old,new", [("r1lab.widgets", "r1lab.teach.widgets"),
                                     ("r1lab.run", "r1lab.engine.run"),
                                     ("r1lab.world.pretrain", "r1lab.engine.pretrain_world"),
                                     ("r1lab.datasets.mtil", "r1lab.data.mtil.folders")])
def test_old_module_paths_still_import(old, new):
    import importlib
    assert importlib.import_module(old) is importlib.import_module(new)


def test_every_method_is_one_registered_object():
    import r1lab
    from r1lab.methods import registry
    assert set(r1lab.METHODS) == set(registry.names())
    for name in r1lab.METHODS:
        m = r1lab.get_method(name)
        assert isinstance(m, r1lab.Method) and m.name == name
    with pytest.raises(r1lab.ConfigError, match="unknown method 'nope'"):
        r1lab.get_method("nope")
