"""Fixtures of the browser test (helpers in lab_browser.py).

pytest-playwright's browser is pointed at the system Chromium. Where none is found (or
Playwright is not installed) the tests skip with a message saying how to enable them, except
when ``$CI`` is set (GitHub's ``CI=true``): then a missing browser is a failure.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .lab_browser import (CHECKED, CHROMIUM_FLAGS, HOW_TO, NOTEBOOKS, Lab, NotebookTab,
                         find_chromium, in_ci, widget_notebooks)


def skip_or_fail(why: str):
    if in_ci():
        pytest.fail(f"{why}, and CI is set, so the browser test may not skip: {HOW_TO}", pytrace=False)
    pytest.skip(f"{why}: {HOW_TO}")


try:
    import pytest_playwright  # noqa: F401
except ImportError:                            # the plugin brings the ``browser`` fixture
    @pytest.fixture(scope="session")
    def browser():
        skip_or_fail("Playwright / pytest-playwright are not installed (pip install -r requirements.txt)")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, pointed at the system Chromium, headless, with the
    flags this offline machine needs (Playwright gives each launch a fresh --user-data-dir)."""
    exe = find_chromium()
    if exe is None:
        skip_or_fail("no Chromium found")
    return {**browser_type_launch_args, "executable_path": exe, "headless": True, "args": CHROMIUM_FLAGS}


@pytest.fixture(scope="session")
def lab(browser):
    """The JupyterLab the widget tests use (started after the browser, so that a missing
    browser skips before any server starts)."""
    server = Lab(NOTEBOOKS.parent)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tabs(lab, browser):
    """``tabs(path)``: the notebook open in its own tab; opening the next one closes the last
    (and ends its kernel), so one notebook runs at a time."""
    open_tabs = {}
    cells = dict(widget_notebooks())

    def get(path):
        if path not in open_tabs:
            for old in open_tabs.values():
                old.close()
            open_tabs.clear()
            open_tabs[path] = NotebookTab(lab, browser, path, cells.get(path, ()))
        return open_tabs[path]

    yield get
    for tab in open_tabs.values():
        tab.close()


def pytest_terminal_summary(terminalreporter):
    if CHECKED:
        terminalreporter.section("widgets checked in the browser")
        for line in CHECKED:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    """One notebook at a time: its saved-picture checks, then its sliders; the control test
    last. (Each notebook then opens, and starts a kernel, once.)"""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if Path(str(item.fspath)).parent == here]
    phase = {"test_saved_notebook_shows_the_picture": 0, "test_every_control_redraws": 1}

    def key(item):
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if not case:
            return (1, "", 0, 0)
        return (0, str(case[0]), phase.get(item.originalname, 2), case[1])
    ordered = sorted((items[i] for i in slots), key=key)
    for i, item in zip(slots, ordered):
        items[i] = item
