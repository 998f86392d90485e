"""Every slider of every notebook, as a student meets it: JupyterLab in a real (headless) Chromium.

For each notebook with slider cells (tagged ``widget``; lab_browser.widget_cells):

1. opened before running (an untrusted notebook), each slider cell shows its stored static
   picture (an <img>), not ``interactive(children=...`` nor a widget error;
2. Run > Run All Cells from the menu; no cell may end in an error;
3. in each slider cell every control is moved by keyboard (an arrow key on a slider's handle,
   Space on a toggle button), by typing into a slider's readout (a value in range, then one far
   out of range, which must clamp) and, for toggle buttons of more than two, by a click; after
   each move the
   printed readout must say what ``r1lab.teach.widgets.EXPECT`` says for the value the control now
   shows, and the figure must be redrawn (except for controls that only change the readout);
4. the browser console may hold no error but the Colab badge image, which cannot load offline.

A control test runs step 3 once more, on a two-cell notebook, with the widget extension disabled
(in that server's own config folder) and requires it to fail. Run: ``bash scripts/test.sh tests_browser``.
"""
import json

import pytest

from .lab_browser import CHECKED, NOTEBOOKS, Lab, NotebookTab, check_widget, saved_png, widget_notebooks

CASES = [(path, cell) for path, cells in widget_notebooks() for cell in cells]
IDS = [f"{path.stem}-cell{cell}" for path, cell in CASES]

if not CASES:
    pytestmark = pytest.mark.skip(reason=f"no notebook in {NOTEBOOKS} has slider cells")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_saved_notebook_shows_the_picture(case, tabs):
    """Before it is run, each slider cell shows the PNG stored with its widget."""
    path, cell = case
    assert saved_png(path, cell), (f"{path.name}, cell {cell}: no image/png stored with the widget "
                                   f"(run the notebook and save it with its outputs)")
    tab = tabs(path)
    state = tab.static[cell]
    assert "interactive(children" not in state["text"], f"cell {cell} shows the widget's text repr"
    assert "widget" not in state["text"].lower() or state["img"], state["text"][:300]
    assert state["img"] >= 1, f"{path.name}, cell {cell} shows no picture before it is run: {state['text'][:300]!r}"
    assert not tab.errors, "\n".join(tab.errors)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_control_redraws(case, tabs):
    """Run All, then move every control of the cell's widget."""
    path, cell = case
    tab = tabs(path)
    if not tab.ran:
        tab.run_all()
        CHECKED.append(f"{path.name}: Run All took {tab.run_seconds:.0f} s")
    CHECKED.extend(check_widget(tab, cell))
    assert not tab.errors, "\n".join(tab.errors)


CONTROL_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": "import r1lab"},
        {"cell_type": "code", "metadata": {"tags": ["widget"]}, "execution_count": None, "outputs": [],
         "source": "r1lab.widgets.decomposition_widget()"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_control_fails_without_the_widget_extension(browser, tmp_path):
    """The same check, on a server whose widget extension is disabled (in its own config
    folder), must fail; the cell must then fall back to the picture, not to a repr. To keep
    it short it runs on a two-cell notebook: ``import r1lab`` and notebook 02's widget."""
    path = tmp_path / "control.ipynb"
    path.write_text(json.dumps(CONTROL_NOTEBOOK))
    lab = Lab(tmp_path, widgets=False)
    try:
        tab = NotebookTab(lab, browser, path)
        try:
            tab.run_all()
            with pytest.raises(AssertionError, match="no widget rendered") as failure:
                check_widget(tab, 1, render_timeout=5)
            out = tab.cell(1).locator(".jp-OutputArea")
            assert out.locator("img").count() >= 1, "without the extension the cell shows no picture"
            assert "interactive(children" not in out.inner_text()
            # (the console now holds "Exception opening new comm": no front end for the widgets)
            CHECKED.append(f"control, widget extension disabled: the check fails as it should: "
                           f"{str(failure.value)[:160]}")
        finally:
            tab.close()
    finally:
        lab.stop()
