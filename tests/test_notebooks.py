"""Hygiene of the committed notebooks: what a reader sees without running anything.

Every figure is stored (at lecture size), no output is an error or a stray warning, the stored
outputs come from one top-to-bottom run, the set-up cell and Colab badge agree with the one
repository URL in pyproject.toml, test markers live in tags, every notebook carries slide
metadata, a measured run time of at most three minutes and a references cell. nbval (run by
the same test command) checks that the notebooks still execute; this file checks what was
committed.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_BYTES = 5 * 1024 * 1024
MAX_SECONDS = 180
MIN_PNG_WIDTH = 450          # a 4.5-inch figure at 100 dpi; the old 72-dpi heatmaps were 412 px
DRAWS = re.compile(r"(plots\.(?!pool_title)\w+\(|plt\.(subplots|figure|show)\(|_view\(|_widget\()")


def _nbtool():
    spec = importlib.util.spec_from_file_location("nbtool", ROOT / "scripts" / "nbtool.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _src(cell) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def _text(out) -> str:
    if "text" in out:
        t = out["text"]
    else:
        t = out.get("data", {}).get("text/plain", "")
    return "".join(t) if isinstance(t, list) else t


def _png_width(b64: str) -> int:
    raw = base64.b64decode(b64 if isinstance(b64, str) else "".join(b64))
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">I", raw[16:20])[0]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_size_and_one_top_to_bottom_run(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB (limit 5 MB)"
    nb = _load(path)
    counts = [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(isinstance(n, int) for n in counts), f"{path.name}: cells without execution count (not run)"
    assert counts == list(range(1, len(counts) + 1)), \
        f"{path.name}: execution counts {counts} are not one top-to-bottom run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_errors_warnings_reprs_or_progress_bars(path):
    for i, cell in enumerate(_load(path)["cells"]):
        for out in cell.get("outputs", []):
            where = f"{path.name} cell {i}"
            assert out["output_type"] != "error", f"{where}: stored error {out.get('ename')}"
            text = _text(out)
            assert "Traceback" not in text, f"{where}: a traceback in the output"
            if out["output_type"] == "stream":
                assert out["name"] == "stdout", f"{where}: stderr output (a stray warning?): {text[:200]}"
            assert not re.search(r"<[\w.]+ (object )?at 0x[0-9a-f]+>", text), f"{where}: an object repr: {text[:120]}"
            assert not re.search(r"\d+it/s\]|\|[█▏▎▍▌▋▊▉ ]+\|", text), f"{where}: progress-bar output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_drawing_cell_stores_a_legible_figure(path):
    n_fig = 0
    for i, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        tags = cell.get("metadata", {}).get("tags", [])
        if DRAWS.search(_src(cell)) or "widget" in tags:
            assert pngs, f"{path.name} cell {i} draws but stores no image:\n{_src(cell)[:200]}"
        for png in pngs:
            w = _png_width(png)
            assert w >= MIN_PNG_WIDTH, f"{path.name} cell {i}: figure {w} px wide (< {MIN_PNG_WIDTH})"
        n_fig += len(pngs)
    assert n_fig >= 1, f"{path.name} stores no figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markers_in_tags_and_slides(path):
    nb = _load(path)
    for i, cell in enumerate(nb["cells"]):
        assert "NBVAL_" not in _src(cell), f"{path.name} cell {i}: nbval marker in the source, use a tag"
        st = cell.get("metadata", {}).get("slideshow", {}).get("slide_type")
        assert st in ("slide", "subslide", "fragment", "-", "skip", "notes"), f"{path.name} cell {i}: no slide type"
    assert nb["cells"][0]["metadata"]["slideshow"]["slide_type"] == "slide"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_and_badge_follow_the_one_repository_url(path):
    tool = _nbtool()
    url = tool.repo_url()
    nb = _load(path)
    setup = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert _src(setup) == tool.setup_source(url), f"{path.name}: run `python scripts/nbtool.py sync`"
    assert "setup" in setup["metadata"].get("tags", [])
    assert _src(nb["cells"][0]).splitlines()[0] == tool.badge(url, path.name)
    # the URL is written by hand only in pyproject.toml
    assert 'Repository = "' in (ROOT / "pyproject.toml").read_text()


def test_setup_cell_is_safe_to_run_twice_and_never_forces_paper_mode_offline():
    src = _nbtool().setup_source("https://example.org/x/y")
    assert 'find_spec("r1lab") is None' in src        # installs only when r1lab cannot be imported
    assert 'os.environ.get("R1LAB_MODE", "world") != "paper"' in src
    assert "os.chdir" not in src                         # no working-folder change to break a rerun


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_measured_run_time_and_references(path):
    nb = _load(path)
    head = _src(nb["cells"][0])
    m = re.search(r"\*\*Run time:\*\* (?:(\d+) min )?(\d+) s top to bottom", head)
    assert m, f"{path.name}: no measured run time in the header (python scripts/nbtool.py run --record)"
    seconds = int(m.group(1) or 0) * 60 + int(m.group(2))
    assert seconds <= MAX_SECONDS, f"{path.name}: {seconds} s > {MAX_SECONDS} s"
    times = json.loads((ROOT / "notebooks" / "run_times.json").read_text())
    assert abs(times[path.name]["seconds"] - seconds) <= 1
    refs = [c for c in nb["cells"] if c["cell_type"] == "markdown" and _src(c).startswith("## References")]
    assert refs and "arxiv.org/abs/2601.22828" in _src(refs[0]), f"{path.name}: no references cell citing DAC"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_are_gaps_with_hidden_solutions(path):
    cells = _load(path)["cells"]
    checks = [c for c in cells if c["cell_type"] == "code" and "r1lab.exercises.check(" in _src(c)]
    assert checks, f"{path.name} has no checked exercise"
    for c in checks:
        assert "..." in _src(c), f"{path.name}: an exercise cell arrives solved:\n{_src(c)[:200]}"
        printed = "".join(_text(o) for o in c.get("outputs", []))
        assert "not answered yet" in printed, f"{path.name}: the stored exercise output is not the unanswered one"
    solutions = [c for c in cells if c["cell_type"] == "markdown" and "<details><summary>Solution" in _src(c)]
    assert len(solutions) >= 1


def test_one_slide_deck_builds(tmp_path):
    tool = _nbtool()
    assert tool.slides([ROOT / "notebooks" / "02_decomposition.ipynb"], tmp_path) == 0
    html = (tmp_path / "02_decomposition.slides.html").read_text()
    assert "reveal" in html.lower() and "Decomposition" in html
