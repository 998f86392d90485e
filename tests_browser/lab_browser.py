"""Helpers of the browser test: find Chromium, run a throw-away JupyterLab, drive a notebook tab.

* Chromium: ``$R1LAB_CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on
  PATH, else ``/usr/bin/chromium``. Playwright never downloads a browser here.
* ``Lab``: the project's own JupyterLab (``sys.executable -m jupyterlab``) on 127.0.0.1 and a
  free port, no token, every Jupyter folder (config, data, runtime, settings, workspaces,
  IPython, checkpoints) in a temporary folder (the trust database too, so every notebook
  opens untrusted, as on a fresh machine): autosave off, news and update checks off, every
  cell rendered (no windowing), a fresh workspace per tab so that no tab is restored. It is stopped through
  its own process handle (and its own process group), never by name. Its kernels get
  ``R1LAB_RUNS=<repo>/runs/cache`` (finished runs, filled by the nbval run before this one, so
  notebooks reload instead of training) and no
  ``MPLBACKEND`` (scripts/test.sh sets Agg, under which a kernel shows no figure).
* ``NotebookTab`` / ``check_widget``: open a notebook, Run All from the menu, move controls.
* ``$R1LAB_BROWSER_NOTEBOOKS``: a folder of notebooks to test instead of notebooks/ (to develop
  the test on trimmed copies).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from r1lab.teach.widgets import EXPECT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = Path(os.environ.get("R1LAB_BROWSER_NOTEBOOKS") or ROOT / "notebooks").resolve()
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOW_TO = ("install it with `apt-get install -y chromium` (Debian/Ubuntu; Playwright never downloads "
          "a browser here), or point R1LAB_CHROMIUM at a Chromium or Chrome binary")
NOTEBOOK_TIMEOUT = int(os.environ.get("R1LAB_BROWSER_NOTEBOOK_TIMEOUT", 300))  # s, Run All of one notebook
REDRAW_TIMEOUT = 30                          # s for one move to redraw
FIGURE_FIXED = {("sweep", "threshold")}      # controls that change only the printed readout
ALLOWED_CONSOLE = re.compile(r"colab-badge|colab\.research\.google\.com")   # offline badge image
CHECKED: List[str] = []                      # what was checked; conftest prints it at the end


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_chromium() -> Optional[str]:
    env = os.environ.get("R1LAB_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


# ------------------------------------------------------------------ the notebooks and their widgets
WIDGET_CALL = re.compile(r"(?m)^[^#\n]*\b(?:interact|[a-z_]+_widget)\(")


def widget_cells(path: Path) -> List[int]:
    """Indices (in ``nb.cells``) of the notebook's slider cells: code cells tagged ``widget``;
    in a notebook with no such tag, code cells that call ``interact(`` or ``*_widget(``."""
    cells = json.loads(path.read_text())["cells"]
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    tagged = [i for i, c in code if "widget" in c.get("metadata", {}).get("tags", [])]
    return tagged or [i for i, c in code if WIDGET_CALL.search("".join(c["source"]))]


def widget_notebooks():
    """[(notebook path, [cell index, ...])] for every notebook that has slider cells."""
    out = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = widget_cells(path)
        if cells:
            out.append((path, cells))
    return out


def saved_png(path: Path, index: int) -> bool:
    """Whether the stored outputs of cell ``index`` hold a PNG."""
    cell = json.loads(path.read_text())["cells"][index]
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


# ------------------------------------------------------------------ JupyterLab
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server of this test, in folders of its own. ``widgets=False`` disables the
    widget extension in its own (temporary) config folder only."""

    SETTINGS = {
        "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    }

    def __init__(self, root: Path, widgets: bool = True):
        self.root = root
        self.tmp = Path(tempfile.mkdtemp(prefix="r1lab-lab-"))
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
            env[var] = str(self.tmp / sub)
            (self.tmp / sub).mkdir()
        env.setdefault("R1LAB_RUNS", str(ROOT / "runs" / "cache"))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.env = env
        for plugin, values in self.SETTINGS.items():
            pkg, name = plugin.split(":")
            folder = self.tmp / "settings" / pkg
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
        if not widgets:
            self.disable_widgets()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--ServerApp.terminals_enabled=False", "--ServerApp.disable_check_xsrf=True",
               f"--FileCheckpoints.checkpoint_dir={self.tmp / 'checkpoints'}"]  # not into the repo
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = self.tmp / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.wait_ready()

    def disable_widgets(self):
        """``jupyter labextension disable`` at the user level, which JUPYTER_CONFIG_DIR makes
        this server's temporary config folder (never the environment's own)."""
        subprocess.run([sys.executable, "-m", "jupyter", "labextension", "disable", "--level=user",
                        "@jupyter-widgets/jupyterlab-manager"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        page_config = self.tmp / "config" / "labconfig" / "page_config.json"
        assert "@jupyter-widgets/jupyterlab-manager" in page_config.read_text()

    def wait_ready(self, timeout: float = 90):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/api/status", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self):
        """End every session (and so its kernel) through the server's API."""
        for s in self.api("/api/sessions"):
            self.api(f"/api/sessions/{s['id']}", "DELETE")

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.shutdown_kernels()
            except OSError:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        try:                                   # leftovers of this server's own process group only
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------ one notebook in one tab
class NotebookTab:
    """A notebook opened in a fresh browser context and workspace; ``static`` records what its
    slider cells show before anything runs."""

    def __init__(self, lab: Lab, browser, path: Path, cells=()):
        self.lab, self.path = lab, path
        self.rel = path.relative_to(lab.root).as_posix()
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: List[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.set_default_timeout(60_000)
        ws = re.sub(r"\W", "", path.stem) + f"{time.time_ns() % 10**9}"
        self.page.goto(f"{lab.url}/lab/workspaces/{ws}/tree/{self.rel}")
        self.page.wait_for_selector(".jp-Notebook .jp-Cell")
        self.wait_kernel_idle()
        self.page.wait_for_timeout(500)
        self.static = {i: self.output_state(i) for i in cells}
        self.ran = False
        self.run_seconds = 0.0

    def _console(self, msg):
        if msg.type == "error":
            where = (msg.location or {}).get("url", "")
            if not ALLOWED_CONSOLE.search(where + " " + msg.text):
                self.errors.append(f"console error: {msg.text} ({where})")

    def wait_kernel_idle(self, timeout: float = 120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            states = [s["kernel"]["execution_state"] for s in self.lab.api("/api/sessions")
                      if s["path"] == self.rel and s.get("kernel")]
            if states and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        raise AssertionError(f"the kernel of {self.rel} did not become idle in {timeout:.0f} s")

    def cell(self, index: int):
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def output_state(self, index: int) -> dict:
        out = self.cell(index).locator(".jp-OutputArea")
        return {"img": out.locator("img").count(), "text": out.inner_text()}

    def prompts(self) -> List[str]:
        return self.page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_inner_texts()

    def run_all(self):
        """Run > Run All Cells, as a student would; wait until no cell is queued or running."""
        t0 = time.time()
        busy = ("() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
                ".some(p => p.textContent.includes('*'))")
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        self.page.wait_for_function(busy, timeout=30_000)
        self.page.wait_for_function(f"() => !({busy})()", timeout=NOTEBOOK_TIMEOUT * 1000, polling=500)
        self.ran = True
        self.run_seconds = time.time() - t0
        errors = self.error_outputs()
        assert not errors, f"{self.rel}: a cell ended in an error:\n{errors[0][-3000:]}"
        unrun = [p for p in self.prompts() if not re.search(r"\d", p)]
        assert not unrun, f"{self.rel}: {len(unrun)} code cells did not run"

    def error_outputs(self) -> List[str]:
        texts = self.page.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts()
        return [t for t in texts if "Traceback (most recent call last)" in t]

    def close(self):
        self.context.close()
        self.lab.shutdown_kernels()


# ------------------------------------------------------------------ one control of a widget
class Control:
    """One control of a widget, as it is on screen."""

    def __init__(self, tab: NotebookTab, node):
        self.tab, self.node = tab, node
        classes = node.get_attribute("class") or ""
        self.kind = ("slider" if node.locator(".noUi-handle").count()
                     else "dropdown" if node.locator("select").count()
                     else "toggle" if "widget-toggle-buttons" in classes
                     else "other")
        label = node.locator(".widget-label")
        self.label = label.first.inner_text().strip() if label.count() else ""

    def shown(self) -> str:
        """The value as the control shows it."""
        if self.kind == "slider":
            return self.node.locator(".widget-readout").inner_text().strip()
        if self.kind == "dropdown":
            return self.node.locator("select").evaluate("s => s.options[s.selectedIndex].text").strip()
        if self.kind == "toggle":
            return self.node.locator("button.mod-active").inner_text().strip()
        return ""

    def set_shown(self, value: str):
        """Put the control back to ``value`` (as shown): typed into a slider's readout, a click
        on a button, a choice in a drop-down."""
        if self.kind == "slider":
            readout = self.node.locator(".widget-readout")
            if readout.get_attribute("contenteditable") == "true":
                readout.click()
                self.tab.page.keyboard.press("Control+A")
                self.tab.page.keyboard.type(value)
                self.tab.page.keyboard.press("Enter")
        elif self.kind == "toggle":
            self.node.locator("button", has_text=re.compile(f"^{re.escape(value)}$")).first.click()
        elif self.kind == "dropdown":
            self.node.locator("select").select_option(label=value)

    def moves(self):
        """Actions (each returns what it did): by keyboard, then by typing where the control has
        a text field (a slider's readout): a value in range, then one far out of range."""
        page = self.tab.page
        if self.kind == "slider":
            handle = self.node.locator(".noUi-handle")

            def key():
                now = float(handle.get_attribute("aria-valuenow"))
                lo = float(handle.get_attribute("aria-valuemin"))
                k = "ArrowLeft" if now > lo else "ArrowRight"
                handle.focus()
                page.keyboard.press(k)
                return f"key {k}"
            yield key
            readout = self.node.locator(".widget-readout")
            if readout.get_attribute("contenteditable") == "true":
                decimals = "." in self.shown()

                def fmt(x: float) -> str:
                    return f"{x:.2f}" if decimals else str(int(round(x)))

                def typed(value_of):
                    def act():
                        lo = float(handle.get_attribute("aria-valuemin"))
                        hi = float(handle.get_attribute("aria-valuemax"))
                        value = value_of(lo, hi)
                        readout.click()
                        page.keyboard.press("Control+A")
                        page.keyboard.type(value)
                        page.keyboard.press("Enter")
                        return f"typed {value}"
                    return act

                def inside(lo, hi):          # two steps above the minimum, unless shown already
                    step = 0.05 if decimals else 1.0
                    v = fmt(min(lo + 2 * step, hi))
                    return v if v != self.shown() else fmt(lo + step)
                yield typed(inside)
                yield typed(lambda lo, hi: fmt(hi * 10 + 7))
        elif self.kind == "dropdown":      # (JupyterLab's shortcuts take a drop-down's keys)
            select = self.node.locator("select")
            n = select.evaluate("s => s.options.length")

            def choose():
                i = select.evaluate("s => s.selectedIndex")
                label = select.evaluate(f"s => s.options[{(i + 1) % n}].text")
                select.select_option(label=label)
                return f"chose {label}"
            if n > 1:
                yield choose
        elif self.kind == "toggle":
            buttons = self.node.locator("button")
            n = buttons.count()

            def other():
                labels = buttons.all_inner_texts()
                return buttons.nth((labels.index(self.shown()) + 1) % n)

            def key():
                b = other()
                b.focus()
                page.keyboard.press("Space")
                return "key Space"

            def click():
                b = other()
                b.click()
                return "click"
            if n > 1:
                yield key
            if n > 2:
                yield click


def widget_box(tab: NotebookTab, index: int, timeout: float = 15):
    out = tab.cell(index).locator(".jp-OutputArea")
    box = out.locator(".widget-interact")
    try:
        box.first.wait_for(state="visible", timeout=timeout * 1000)
    except Exception:
        raise AssertionError(f"{tab.rel}, cell {index}: no widget rendered; the cell shows "
                             f"{out.locator('img').count()} image(s) and the text "
                             f"{out.inner_text()[:200]!r}") from None
    return box.first


def figure(box) -> Optional[str]:
    img = box.locator(".widget-output img")
    return img.first.get_attribute("src") if img.count() else None


def check_widget(tab: NotebookTab, index: int, render_timeout: float = 15) -> List[str]:
    """Move every control of the widget in cell ``index``; after each move the readout must
    say what ``EXPECT`` says for the value the control shows, and the figure must be redrawn.
    Returns what was checked. ``render_timeout``: seconds the widget may take to appear after
    the cell ran."""
    box = widget_box(tab, index, render_timeout)
    kind = next((c[len("r1lab-"):] for c in (box.get_attribute("class") or "").split()
                 if c.startswith("r1lab-") and c != "r1lab-widget"), None)
    expect: Dict[str, str] = EXPECT.get(kind, {})
    output = box.locator(".widget-output")
    output.wait_for(state="attached", timeout=REDRAW_TIMEOUT * 1000)
    controls = [c for c in (Control(tab, n) for n in box.locator(":scope > *").all()) if c.kind != "other"]
    assert controls, f"{tab.rel}, cell {index}: the widget has no controls"
    if kind:
        labels = [c.label for c in controls]
        assert set(labels) == set(expect), f"the {kind} widget shows {labels}; EXPECT has {sorted(expect)}"
    done = [f"{tab.path.stem}, cell {index} ({kind or 'interact'}):"]

    def settle(c: Control, how: str, shown0: str, text0: str, fig0: Optional[str], t0: float) -> str:
        """Wait for the redraw after a move; assert it says what EXPECT says. Returns a line."""
        redraw = bool(kind) and (kind, c.label) not in FIGURE_FIXED
        deadline = time.time() + REDRAW_TIMEOUT
        while True:
            shown = c.shown()
            want = expect[c.label].format(shown) if kind else None
            text, fig = output.inner_text(), figure(box)
            changed = text != text0 or fig != fig0
            ok = shown != shown0 and (want in text if want else changed) and (fig != fig0 or not redraw)
            if ok or time.time() > deadline:
                break
            tab.page.wait_for_timeout(100)
        took = time.time() - t0
        assert shown != shown0, f"{c.label}: {how} left the control at {shown0}"
        assert "Traceback" not in text, f"{c.label} = {shown}: the widget printed a traceback:\n{text[:2000]}"
        if want:
            assert want in text, (f"{c.label}: {how} shows {shown!r}, but the readout does not say "
                                  f"{want!r}:\n{text[:600]}")
        else:
            assert changed, f"{c.label}: {how} ({shown0} -> {shown}) did not change the output"
        if redraw:
            assert fig != fig0, f"{c.label}: {how} ({shown0} -> {shown}) did not redraw the figure"
        if kind == "decomposition":
            vals = {x.label: int(x.shown()) for x in controls}
            assert vals["k"] <= vals["rank"], f"k = {vals['k']} is above rank = {vals['rank']}"
        return (f"  {c.label}: {how}: {shown0} -> {shown}; "
                + (f"readout says {want!r}" if want else "output changed")
                + (", figure redrawn" if redraw else "") + f" ({took:.1f} s)")

    for c in controls:
        start = c.shown()
        for move in c.moves():
            text0, fig0, shown0, t0 = output.inner_text(), figure(box), c.shown(), time.time()
            done.append(settle(c, move(), shown0, text0, fig0, t0))
        if c.shown() != start:      # back to where it was, so each control starts from the default
            text0, fig0, shown0, t0 = output.inner_text(), figure(box), c.shown(), time.time()
            c.set_shown(start)
            done.append(settle(c, f"set back to {start}", shown0, text0, fig0, t0))
    return done
