"""Maintain the notebooks: one set-up cell, tags, slides, execution with stored figures.

    python scripts/nbtool.py sync                 write the shared set-up cell, the Colab badge
                                                  (URL from pyproject.toml [project.urls]) and
                                                  slide metadata into every notebook
    python scripts/nbtool.py run [NB ...]         execute notebooks top to bottom in place under
                                                  the inline backend (figures are stored), in
                                                  order, and record each one's wall time
    python scripts/nbtool.py slides [NB ...]      build a reveal.js deck per notebook into
                                                  build/slides/ (jupyter nbconvert --to slides)

A fork changes the repository URL in one place, pyproject.toml's [project.urls] "Repository",
then runs `python scripts/nbtool.py sync`; tests/test_notebooks.py checks that every badge and
set-up cell agrees with it.

`run` measures what a student meets: each notebook in a fresh kernel, in the order given, with
the run cache (R1LAB_RUNS, default runs/cache) as the earlier notebooks left it. Time it on an
idle machine; the times go into notebooks/run_times.json and each notebook's header line.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
TIMES = NB_DIR / "run_times.json"
SETUP_TAG = "setup"
PARAMS_TAG = "parameters"
RUNTIME_RE = re.compile(r"\*\*Run time:\*\*[^\n]*")


def repo_url() -> str:
    """The repository URL from pyproject.toml's [project.urls] Repository (the only place it
    is written by hand)."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^Repository\s*=\s*"([^"]+)"', text, flags=re.M)
    if not m:
        raise SystemExit("pyproject.toml has no [project.urls] Repository = \"...\" line")
    return m.group(1).rstrip("/")


def setup_source(url: str) -> str:
    """The set-up cell, identical in every notebook. Safe to run twice: it installs r1lab only
    when it cannot be imported, and only on Colab."""
    return f'''# Set-up. On Colab: install r1lab once (safe to run again). Elsewhere: use the installed one.
%matplotlib inline
import importlib.util, os, subprocess, sys
if "google.colab" in sys.modules and importlib.util.find_spec("r1lab") is None:
    REPO = "{url}"   # set by scripts/nbtool.py from pyproject.toml
    if not os.path.isdir("/content/r1lab"):
        subprocess.run(["git", "clone", "--depth", "1", REPO, "/content/r1lab"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/r1lab"], check=True)
    sys.path.insert(0, "/content/r1lab")
if os.environ.get("R1LAB_MODE", "world") != "paper":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the offline default downloads nothing

import matplotlib.pyplot as plt
import numpy as np
import open_clip
import torch

import r1lab
from r1lab import plots

r1lab.notebook.setup()'''


def badge(url: str, name: str) -> str:
    path = url.split("github.com/", 1)[-1]
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/main/notebooks/{name})")


def notebooks(names=None):
    if names:
        return [(Path(n) if Path(n).exists() else NB_DIR / n).resolve() for n in names]
    return sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def _src(cell) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def _set_src(cell, text: str) -> None:
    cell["source"] = text


def _tags(cell):
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def slide_type(cell, first: bool) -> str:
    """One idea per slide: the title and every '## ' section start a slide, '### ' a
    sub-slide; set-up and parameter cells are skipped; the rest continues its slide."""
    tags = cell.get("metadata", {}).get("tags", [])
    if SETUP_TAG in tags or "slides-skip" in tags:
        return "skip"
    if cell["cell_type"] == "markdown":
        src = _src(cell).lstrip()
        if first or src.startswith("# ") or src.startswith("## "):
            return "slide"
        if src.startswith("### "):
            return "subslide"
    return "-"


def sync(paths) -> None:
    import nbformat
    url = repo_url()
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cells = nb.cells
        # badge: first line of the first markdown cell
        first = cells[0]
        lines = _src(first).split("\n")
        if lines and lines[0].startswith("[![Open In Colab]"):
            lines[0] = badge(url, path.name)
        else:
            lines.insert(0, badge(url, path.name))
        _set_src(first, "\n".join(lines))
        # the set-up cell: the first code cell
        setup = next(c for c in cells if c.cell_type == "code")
        _set_src(setup, setup_source(url))
        for t in ("nbval-ignore-output", SETUP_TAG):
            if t not in _tags(setup):
                _tags(setup).append(t)
        for i, c in enumerate(cells):
            md = c.setdefault("metadata", {})
            md.setdefault("slideshow", {})["slide_type"] = slide_type(c, i == 0)
            md.pop("execution", None)
        nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python",
                                               "name": "python3"})
        nbformat.write(nb, path)
        print(f"synced {path.relative_to(ROOT)}")


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def run(paths, timeout: int, record: bool, note: str) -> int:
    import nbformat
    from nbclient import NotebookClient
    env_runs = os.environ.setdefault("R1LAB_RUNS", str(ROOT / "runs" / "cache"))
    os.environ.pop("MPLBACKEND", None)            # the inline backend stores the figures
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        t0 = time.time()
        try:
            client.execute()
        except Exception as e:  # keep going: report every notebook
            failed += 1
            print(f"FAILED {path.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            nbformat.write(nb, path)
            continue
        wall = time.time() - t0
        for c in nb.cells:
            c.get("metadata", {}).pop("execution", None)
        if record:
            day = _dt.date.today().isoformat()
            line = (f"**Run time:** {_fmt(wall)} top to bottom on 2 CPU cores (measured {day}, "
                    f"{note}).")
            head = nb.cells[0]
            src = _src(head)
            _set_src(head, RUNTIME_RE.sub(line, src) if RUNTIME_RE.search(src) else src + "\n\n" + line)
            times[path.name] = dict(seconds=round(wall, 1), date=day, note=note, runs=env_runs != "")
        nbformat.write(nb, path)
        n_img = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
        print(f"ran {path.name}: {_fmt(wall)}, {n_img} figures stored")
    if record:
        TIMES.write_text(json.dumps(times, indent=2) + "\n")
    return 1 if failed else 0


def slides(paths, out: Path) -> int:
    import nbformat
    from nbconvert import SlidesExporter
    out.mkdir(parents=True, exist_ok=True)
    exp = SlidesExporter()
    for path in paths:
        body, _ = exp.from_notebook_node(nbformat.read(path, as_version=4))
        dest = out / (path.stem + ".slides.html")
        dest.write_text(body)
        print(f"wrote {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sync")
    p.add_argument("notebooks", nargs="*")
    p = sub.add_parser("run")
    p.add_argument("notebooks", nargs="*")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    p.add_argument("--record", action="store_true", help="write the wall times into the notebooks")
    p.add_argument("--note", default="idle machine", help="how the time was taken")
    p = sub.add_parser("slides")
    p.add_argument("notebooks", nargs="*")
    p.add_argument("--out", default=str(ROOT / "build" / "slides"))
    a = ap.parse_args(argv)
    paths = notebooks(a.notebooks)
    if a.cmd == "sync":
        sync(paths)
        return 0
    if a.cmd == "run":
        return run(paths, a.timeout, a.record, a.note)
    return slides(paths, Path(a.out))


if __name__ == "__main__":
    sys.exit(main())
