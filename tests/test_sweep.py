"""Sweeps (r1lab/scale/sweep.py): a 2 x 2 grid on the world benchmark through submitit, each point
an ordinary run folder; finished points are skipped; a failing point fails the sweep by name;
``summary`` tables the grid with mean ± std over seeds."""
import json
import os
import re

import pytest

import r1lab.scale.sweep as sweep_mod
from r1lab.cli import main
from r1lab.errors import ConfigError
from r1lab.scale.sweep import expand, parse_sets

pytestmark = pytest.mark.slow      # submitit jobs: the slow lane

FAST = ["--order", "digits,shapes", "--set", "iterations=2", "--set", "batch_size=8",
        "--set", "shots=2", "--set", "eval_batch_size=256", "--quiet", "--threads", "1"]
GRID = ["sweep", "--methods", "dac", "lora", "--seeds", "0", "1", *FAST]
POINTS = ("dac-seed0", "dac-seed1", "lora-seed0", "lora-seed1")


def test_grid_expansion_and_folder_names():
    fixed, grid = parse_sets(["iterations=2", "ago_weight=0,0.1", "betas=0.9,0.99"])
    assert fixed == ["iterations=2", "betas=0.9,0.99"]        # a tuple field: commas are one value
    assert grid == {"ago_weight": ["0", "0.1"]}
    names = [p.name for p in expand(["dac"], [0, 1], None, grid)]
    assert names == ["dac-ago_weight=0-seed0", "dac-ago_weight=0-seed1",
                     "dac-ago_weight=0.1-seed0", "dac-ago_weight=0.1-seed1"]
    assert expand(["dac"], [0], ["I", "II"])[1].name == "dac-order=II-seed0"
    with pytest.raises(ConfigError, match="seeds"):
        parse_sets(["seed=1,2"])
    with pytest.raises(ConfigError, match="ago_weight"):
        parse_sets(["ago_weight=0,abc"])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    assert main([*GRID, "--out", str(out), "--cluster", "debug"]) == 0
    return out


def test_every_point_is_an_ordinary_finished_run_folder(swept):
    for name in POINTS:
        d = swept / name
        for f in ("metrics.json", "identity.json", "config.json", "accuracy.csv", ".lock"):
            assert (d / f).exists(), (name, f)
        ident = json.loads((d / "identity.json").read_text())
        assert ident["method"] == name.split("-")[0]
        assert ident["config"]["seed"] == int(name[-1]) and ident["config"]["iterations"] == 2
        assert ident["benchmark"]["tasks"] == ["digits", "shapes"]
    assert sorted(json.loads((swept / "sweep.json").read_text())["points"]) == list(POINTS)


def test_a_second_sweep_skips_every_finished_point(swept, monkeypatch, capsys):
    before = {n: (swept / n / "metrics.json").stat().st_mtime_ns for n in POINTS}

    def no_training(*a, **k):
        raise AssertionError("a finished point was run again")
    monkeypatch.setattr(sweep_mod, "run_point", no_training)
    monkeypatch.setattr(sweep_mod, "_run_point_caught", no_training)
    assert main([*GRID, "--out", str(swept), "--cluster", "debug"]) == 0
    assert "4 skipped" in capsys.readouterr().out
    assert before == {n: (swept / n / "metrics.json").stat().st_mtime_ns for n in POINTS}


def test_summary_tables_the_grid_with_mean_and_std_over_seeds(swept, capsys):
    assert main(["summary", str(swept)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith(("dac", "lora"))}
    assert set(rows) == {"dac", "lora"}
    for method, ln in rows.items():
        assert ln.split()[1] == "2" and ln.count("±") == 5
        m = [json.loads((swept / f"{method}-seed{s}" / "metrics.json").read_text())["average"]
             for s in (0, 1)]
        mean = f"{sum(m) / 2:.1f}"
        assert re.search(rf"\b{re.escape(mean)} ± ", ln), (ln, m)


def test_a_failing_point_fails_the_sweep_by_name(tmp_path, capsys):
    out = tmp_path / "lr"
    rc = main(["sweep", "--methods", "dac", "--seeds", "0", "--set", "lr=5e-3,1e30", *FAST,
               "--out", str(out), "--cluster", "debug"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "dac-lr=1e30-seed0" in err and "diverged" in err
    stderr_path = re.search(r"stderr: (\S+)", err).group(1)
    assert os.path.exists(stderr_path) and "RunDiverged" in open(stderr_path).read()
    assert "dac-lr=5e-3-seed0" not in err
    good = out / "dac-lr=5e-3-seed0"
    assert (good / "metrics.json").exists() and (good / "identity.json").exists()
    assert not (out / "dac-lr=1e30-seed0" / "metrics.json").exists()
    assert main(["summary", str(out)]) == 0
    table = capsys.readouterr().out
    row = next(ln for ln in table.splitlines() if ln.startswith("dac-lr=5e-3"))
    assert "±" not in row                      # one seed: no spread
    assert "unfinished: dac-lr=1e30-seed0" in table


def test_local_executor_runs_a_point_as_a_process(tmp_path, capsys):
    """One point through submitit's local executor (a job process; its log under .submitit)."""
    out = tmp_path / "local"
    assert main(["sweep", "--methods", "dac", "--seeds", "0", *FAST, "--out", str(out),
                 "--cluster", "local", "--timeout-min", "5"]) == 0
    assert "1 finished now" in capsys.readouterr().out
    d = out / "dac-seed0"
    assert (d / "metrics.json").exists() and (d / "identity.json").exists()
    assert list((out / ".submitit").glob("*_log.out"))


def test_a_sweep_with_other_data_refuses_the_folder_instead_of_reporting_old_numbers(swept, capsys):
    """Issue 17, defect 2: the points' folders hold runs of digits,shapes; a sweep over
    digits,counting into the same folder names the difference and runs nothing."""
    before = (swept / "sweep.json").read_text()
    other = [a.replace("digits,shapes", "digits,counting") for a in GRID]
    assert main([*other, "--out", str(swept), "--cluster", "debug"]) == 2
    err = capsys.readouterr().err
    assert "r1lab: error:" in err and "differs in" in err and "tasks" in err
    assert (swept / "sweep.json").read_text() == before        # never claims other arguments


def test_the_sweep_summary_shows_each_points_warnings(tmp_path, capsys, monkeypatch):
    """Issue 17, defect 7: a point's warning (here a planted one) reaches the sweep's table."""
    import r1lab.engine.run as run_mod
    monkeypatch.setattr(run_mod, "run_warnings", lambda *a, **k: ["planted warning"])
    out = tmp_path / "grid"
    grid = ["sweep", "--methods", "dac", "--seeds", "0", *FAST]
    assert main([*grid, "--out", str(out), "--cluster", "debug"]) == 0
    capsys.readouterr()
    assert main(["summary", str(out)]) == 0
    assert "warning (dac-seed0): planted warning" in capsys.readouterr().out
