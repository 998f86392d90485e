"""Interactive views for the notebooks: sliders that cannot break, with a static picture.

Two layers:

* **View functions** (``decomposition_view``, ``heatmap_view``, ``sweep_view``) draw one figure
  and print its readout; a notebook calls one of them for a static figure (``plt.show()``,
  returns the figure). A bad value (k above the rank, a block the model does not have, a
  (lambda, m) pair that was not run) prints a one-line message and returns None: no traceback.
* **Widget factories**, one per slider cell, each a single line in the notebook::

      r1lab.teach.widgets.decomposition_widget()                 # 02: rank, k
      r1lab.teach.widgets.routing_widget(profile, CFG)           # 03: tower, block, target, which, top_k
      r1lab.teach.widgets.sweep_widget(grid, threshold=0.1)      # 04: lambda, merge_k, threshold

  Each exposes only its own controls, with ranges that are always valid (the k slider's maximum
  follows the rank slider; blocks, targets and towers are the profile's own; lambda and m are
  the grid's own values), readouts rounded as printed (thresholds ``:.2f``), and sliders that
  redraw on release (``continuous_update=False``). The figure is shown as a PNG at 100 dpi
  (``savefig``), the same under any matplotlib backend. Discrete choices are toggle buttons,
  not drop-downs or selection sliders: in JupyterLab a focused drop-down's arrow and letter
  keys go to the notebook's command-mode shortcuts, and a selection slider's readout takes
  typed text that it then ignores (both found by the browser test). ``EXPECT`` says, per
  control, which printed text follows the value the control shows (tests_browser/ checks it).

**The static picture.** A factory displays one output whose mime bundle holds three entries:

* ``application/vnd.jupyter.widget-view+json``: the live widget (controls + figure);
* ``image/png``: the figure of the default values, rendered when the cell ran;
* ``text/plain``: the widget's name, its controls and the default readout.

Each front end shows one of them, so nothing is ever shown twice:

* JupyterLab 4, cell run in this session: the widget (its renderer ranks first).
* JupyterLab 4, saved notebook not yet run: the notebook is not trusted, JupyterLab then uses
  only "safe" renderers, the widget renderer is not one, so the PNG shows (checked in Chromium
  by tests_browser/ on notebooks executed by nbconvert). A notebook the reader has trusted
  shows the widget as saved in ``metadata.widgets`` instead, or "model not found" without it
  (read in the extension's code, not checked).
* JupyterLab without the widget extension: the PNG (checked: the browser test's control; once
  run, the view's own prints and figure follow it, as no Output widget captures them).
* nbconvert to HTML (nbviewer): the widget if the notebook holds the widget state (drawn by
  widget JavaScript from a CDN), otherwise the PNG (its ``WidgetsDataTypeFilter``; checked).
* GitHub and other viewers without widgets: the PNG, as they render no widget (not checked).

Two outputs, a PNG then the widget, would show the figure twice in a live JupyterLab; a PNG
replaced by the widget through ``update_display`` would be replaced in the saved notebook too.
"""
from __future__ import annotations

import base64
import io
from typing import Callable, Dict, List, Optional, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
import torch

from r1lab.teach import plots
from r1lab.analysis.accounting import VIT_B16_PARAMS, count_for_rank, mib, vit_b16_shapes
from r1lab.analysis.diagnostics import (RoutingProfile, best_rank_energy, collision_rate,
                                        mean_overlap, merged_norms, specialisation, subset_energy)

DPI = 100
_BUTTONS = {"button_width": "auto"}       # ToggleButtons as wide as their labels
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# Per widget, per control (its label on screen): the text the readout prints for the value the
# control shows ("{}" = the control's readout as displayed). The browser test reads this.
EXPECT: Dict[str, Dict[str, str]] = {
    "decomposition": {"rank": "144 pools of rank {}:", "k": "energy kept by these {} experts"},
    "routing": {"tower": "{} tower,", "block": "block {},", "target": ", {} (",
                "which": "{} frequency", "top_k": "at k = {}"},
    "sweep": {"lambda": "lambda = {},", "merge_k": "m = {}:", "threshold": "(|cos| > {})"},
}

Drawn = Tuple["plt.Figure", List[str]]     # a figure and its readout lines


def _int(value, name: str, lo: int, hi: Optional[int] = None) -> Union[int, str]:
    """``value`` as an int in lo..hi, or a one-line message saying what is allowed."""
    ok = isinstance(value, (int, np.integer)) or (isinstance(value, float) and float(value).is_integer())
    if isinstance(value, bool) or not ok or value < lo or (hi is not None and value > hi):
        allowed = f"a whole number from {lo} to {hi}" if hi is not None else f"a whole number >= {lo}"
        return f"{name} = {value!r} is not possible here: choose {allowed}"
    return int(value)


def _show(drawn: Union[Drawn, str, None]):
    """Print the readout (or the message) and show the figure; return the figure or None."""
    if drawn is None or isinstance(drawn, str):
        if drawn:
            print(drawn)
        return None
    fig, lines = drawn
    print("\n".join(lines))
    plt.show()
    return fig


# ------------------------------------------------------------------ 02: decomposition
def _draw_decomposition(rank: int = 12, k: int = 8, d: int = 48, seed: int = 0) -> Union[Drawn, str]:
    d = _int(d, "d (layer size)", 1)
    if isinstance(d, str):
        return d
    rank = _int(rank, "rank r", 1, d)
    if isinstance(rank, str):
        return rank
    k = _int(k, "k", 1, rank)
    if isinstance(k, str):
        return k + f" (k is at most the rank r = {rank})"
    seed = _int(seed, "seed", 0)
    if isinstance(seed, str):
        return seed
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, rank, generator=g) * torch.linspace(1.0, 0.2, rank)
    A = torch.randn(rank, d, generator=g) / d ** 0.5
    chosen = list(range(k))
    full = (B @ A).numpy()
    part = (B[:, chosen] @ A[chosen]).numpy()
    mats = {f"B A: all {rank} experts": full, f"the {k} experts kept": part,
            f"the {rank - k} experts left out": full - part}
    lim = max(float(np.abs(full).max()), float(np.abs(full - part).max())) or 1.0
    with plt.rc_context({"figure.dpi": DPI}):
        fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.0), layout="constrained")
    for ax, (label, m) in zip(axes, mats.items()):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="entry of the update")
    fig.suptitle(f"a random rank-{rank} update of a {d} x {d} layer, and {k} of its {rank} rank-1 experts")
    c = count_for_rank(vit_b16_shapes(), rank)
    total = sum(t.total for t in c.values())
    lines = [f"energy kept by these {k} experts: {subset_energy(B, A, chosen):.2f} "
             f"(best possible rank-{k}: {best_rank_energy(B, A, k):.2f})",
             f"ViT-B/16, 144 pools of rank {rank}: {total:,} trainable parameters = {mib(total):.2f} MiB "
             f"({100 * total / VIT_B16_PARAMS:.2f} % of CLIP's {mib(VIT_B16_PARAMS):.2f} MiB); "
             f"each step uses {k}/{rank} experts"]
    return fig, lines


def decomposition_view(rank: int = 12, k: int = 8, d: int = 48, seed: int = 0):
    """A random LoRA update B A of rank ``rank`` on a d x d layer, the sum of ``k`` of its
    rank-1 experts, and what is left out; with the ViT-B/16 parameter accounting at that rank.
    Needs 1 <= k <= rank <= d; anything else prints one line and returns None."""
    return _show(_draw_decomposition(rank, k, d, seed))


def decomposition_widget(rank: int = 12, k: int = 8, max_rank: int = 32, d: int = 48, seed: int = 0,
                         show: bool = True):
    """Sliders ``rank`` (1..max_rank) and ``k`` (1..rank: its maximum follows the rank) over
    ``decomposition_view``; the layer size ``d`` and the ``seed`` are fixed.

    Displays the widget with a static picture of its default view (module docstring) and
    returns None; ``show=False`` returns the ``Panel`` instead, undisplayed."""
    from ipywidgets import IntSlider
    max_rank = min(int(max_rank), int(d))
    bad = _int(rank, "rank r", 1, max_rank)
    bad = bad if isinstance(bad, str) else _int(k, "k", 1, rank)
    if isinstance(bad, str):
        print(bad)
        return None
    r_w = IntSlider(value=rank, min=1, max=max_rank, description="rank", continuous_update=False)
    k_w = IntSlider(value=k, min=1, max=rank, description="k", continuous_update=False)

    def follow(change):                        # k never above the rank
        k_w.max = change["new"]
    r_w.observe(follow, "value")               # registered first: k is clamped before a redraw
    return _panel("decomposition", {"rank": r_w, "k": k_w},
                  lambda rank, k: _draw_decomposition(rank, k, d, seed), show)


# ------------------------------------------------------------------ 03: routing
def _own_k(profile: RoutingProfile, name: str) -> int:
    """The pools' own k: every sample's top-k holds k experts, so each row of ``chosen`` sums to k."""
    return int(round(float(profile.chosen[name].sum(1).mean())))


def _draw_heatmap(profile: RoutingProfile, tower: str = "image", layer: int = 0, target: str = "q",
                  which: str = "chosen", top_k: Optional[int] = None) -> Union[Drawn, str]:
    if tower not in ("image", "text") or not profile.tower(tower):
        towers = [t for t in ("image", "text") if profile.tower(t)]
        return f"tower = {tower!r} is not in this profile: choose one of {towers}"
    if which not in ("chosen", "active"):
        return f"which = {which!r}: choose 'chosen' (per-sample top-k) or 'active' (the batch's vote)"
    blocks = profile.blocks(tower)
    layer_ok = _int(layer, "block", 0)
    name = None if isinstance(layer_ok, str) else profile.find(tower, layer_ok, target)
    if name is None:
        return (f"no {target} pool in block {layer} of the {tower} tower (blocks {blocks[0]}..{blocks[-1]}, "
                f"linears {profile.targets()})")
    rank = profile.chosen[name].shape[1]
    own = _own_k(profile, name)
    if top_k is None:
        k = own
    else:
        k = _int(top_k, "top_k", 1, rank)
        if isinstance(k, str):
            return k + f" (a pool has r = {rank} experts)"
    if k == own:
        chosen, active = profile.chosen[name], profile.active[name]
    else:
        chosen, active = profile.at_k(name, k)
    freq = chosen if which == "chosen" else active
    with plt.rc_context({"figure.dpi": DPI}):
        fig = plots.expert_heatmap(freq.numpy(), profile.domains, vmax=1.0,
                                   title=f"{tower} tower, block {layer_ok}, {target}: {which} frequency, k = {k}")
    mesh = fig.axes[0].collections[0]
    if getattr(mesh, "colorbar", None) is not None:
        mesh.colorbar.set_label("share of the domain's " + ("samples" if which == "chosen" else "batches"))
    fig.axes[0].set_ylabel("domain")
    fig.tight_layout()
    spec = (f"specialisation {profile.specialisation(name):.2f} at the pools' own k = {own}"
            + ("" if k == own else f", {specialisation(chosen):.2f} at k = {k}")
            + " (0 = every domain picks the same experts, 1 = no expert shared)")
    lines = [f"{tower} tower, block {layer_ok}, {target} ({name}): {which} frequency at k = {k}", spec]
    return fig, lines


def heatmap_view(profile: RoutingProfile, tower: str = "image", layer: int = 0,
                 target: str = "q", which: str = "chosen", top_k: Optional[int] = None):
    """Expert-choice frequency per domain for one pool of the routing profile.

    ``which``: "chosen" (per-sample top-k) or "active" (the batch's voted set).
    ``top_k``: replay the choice with another k from the stored scores
    (``RoutingProfile.at_k``); None keeps the pools' own k. A pool the profile does not hold,
    or a k outside 1..r, prints one line and returns None."""
    return _show(_draw_heatmap(profile, tower, layer, target, which, top_k))


def routing_widget(profile: RoutingProfile, cfg=None, tower: str = "image", block: Optional[int] = None,
                   target: str = "c_fc", which: str = "chosen", top_k: Optional[int] = None,
                   show: bool = True):
    """Buttons ``tower``, ``target`` (the profile's linears) and ``which`` (chosen / active),
    sliders ``block`` (0..the tower's last block) and ``top_k`` (1..r, replayed from the stored scores)
    over ``heatmap_view``. ``cfg`` (a ``DACConfig``) gives the default k; without it, the
    pools' own k. ``block`` defaults to the last block.

    Displays the widget with a static picture of its default view and returns None;
    ``show=False`` returns the ``Panel`` instead."""
    from ipywidgets import IntSlider, ToggleButtons
    towers = [t for t in ("image", "text") if profile.tower(t)]
    if not towers:
        print("the routing profile holds no pool")
        return None
    tower = tower if tower in towers else towers[0]
    targets = profile.targets()
    target = target if target in targets else targets[0]
    blocks = profile.blocks(tower)
    block = blocks[-1] if block is None else block
    rank = next(iter(profile.chosen.values())).shape[1]
    k = top_k if top_k is not None else (cfg.top_k if cfg is not None else _own_k(profile, profile.tower(tower)[0]))
    for bad in (_int(block, "block", blocks[0], blocks[-1]), _int(k, "top_k", 1, rank)):
        if isinstance(bad, str):
            print(bad)
            return None
    t_w = ToggleButtons(options=towers, value=tower, description="tower", style=_BUTTONS)
    b_w = IntSlider(value=block, min=blocks[0], max=blocks[-1], description="block", continuous_update=False)
    g_w = ToggleButtons(options=targets, value=target, description="target", style=_BUTTONS)
    w_w = ToggleButtons(options=["chosen", "active"], value=which, description="which", style=_BUTTONS)
    k_w = IntSlider(value=k, min=1, max=rank, description="top_k", continuous_update=False)

    def follow(change):                        # towers may have different depths
        bl = profile.blocks(change["new"])
        b_w.min, b_w.max = 0, bl[-1]
        b_w.min = bl[0]
    t_w.observe(follow, "value")
    return _panel("routing", {"tower": t_w, "block": b_w, "target": g_w, "which": w_w, "top_k": k_w},
                  lambda tower, block, target, which, top_k:
                  _draw_heatmap(profile, tower, block, target, which, top_k), show)


# ------------------------------------------------------------------ 04: lambda x merge_k sweep
def _draw_sweep(runs: dict, ago_weight: float = 0.1, merge_k: int = 4, threshold: float = 0.1) -> Union[Drawn, str]:
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        return f"threshold = {threshold!r}: choose a number between 0 and 1"
    if not 0.0 <= threshold <= 1.0:
        return f"threshold = {threshold:.2f} is not a |cos|: choose a number between 0 and 1"
    res = runs.get((ago_weight, merge_k))
    if res is None:
        grid = ", ".join(f"({lam:g}, {m})" for lam, m in sorted(runs))
        return f"no run for lambda = {ago_weight:g}, m = {merge_k}: the grid has (lambda, m) = {grid}"
    names = res.task_names
    with plt.rc_context({"figure.dpi": DPI}):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(0.9 * len(names) + 6.5, 0.45 * len(names) + 2.4))
    plots.accuracy_matrix(res.accuracy, names, ax=ax1,
                          title=f"accuracy (%), lambda = {ago_weight:g}, m = {merge_k}")
    plots.gram(mean_overlap(res.pools).numpy(), names, ax=ax2,
               title="|cos| between tasks' merged B columns")
    fig.tight_layout()
    m = res.metrics
    lines = [f"lambda = {ago_weight:g}, m = {merge_k}: Transfer {m.transfer:.1f}, Average {m.average:.1f}, "
             f"Last {m.last:.1f}, diagonal {m.diagonal:.1f}, forgetting {m.forgetting:.1f}",
             f"collision rate {collision_rate(res.pools, threshold):.2f} (|cos| > {threshold:.2f}); size of each "
             f"task's merged update ||Delta W_t||_F: {[round(v, 3) for v in merged_norms(res.pools).tolist()]}"]
    return fig, lines


def sweep_view(runs: dict, ago_weight: float = 0.1, merge_k: int = 4, threshold: float = 0.1):
    """One finished run of a (lambda, merge_k) grid, read from ``runs[(ago_weight, merge_k)]``
    (``RunResult``s with their live pools): its accuracy matrix next to the cross-task overlap
    of its merged B columns (``diagnostics.mean_overlap``), with the metrics, the collision rate
    and the size of each task's merged update (``diagnostics.merged_norms``) printed. It only
    reads results: moving a slider never trains (04_ago_orthogonality). A pair not in the grid,
    or a threshold outside 0..1, prints one line and returns None."""
    return _show(_draw_sweep(runs, ago_weight, merge_k, threshold))


def sweep_widget(runs: dict, threshold: float = 0.1, ago_weight: Optional[float] = None,
                 merge_k: Optional[int] = None, show: bool = True):
    """Buttons ``lambda`` and ``merge_k`` for the values of the grid ``runs`` (keys
    ``(lambda, m)``), and a slider ``threshold`` (0.05..0.5, the collision rate's |cos|, starting at
    ``threshold``) over ``sweep_view``. Pairs the grid does not hold print the ones it does.
    Defaults: the paper's (0.1, 4) if the grid has it, else its first pair.

    Displays the widget with a static picture of its default view and returns None;
    ``show=False`` returns the ``Panel`` instead."""
    from ipywidgets import FloatSlider, ToggleButtons
    if not runs:
        print("the grid holds no finished run")
        return None
    keys = sorted(runs)
    if ago_weight is None or merge_k is None:
        ago_weight, merge_k = (0.1, 4) if (0.1, 4) in runs else keys[0]
    lams = sorted({lam for lam, _ in keys})
    ms = sorted({m for _, m in keys})
    if ago_weight not in lams or merge_k not in ms:
        print(f"lambda = {ago_weight}, m = {merge_k} is not in the grid: it has {keys}")
        return None
    t = min(max(round(float(threshold) / 0.05) * 0.05, 0.05), 0.5)
    l_w = ToggleButtons(options=[(f"{v:g}", v) for v in lams], value=ago_weight, description="lambda",
                        style=_BUTTONS)
    m_w = ToggleButtons(options=[(f"{v}", v) for v in ms], value=merge_k, description="merge_k", style=_BUTTONS)
    t_w = FloatSlider(value=round(t, 2), min=0.05, max=0.5, step=0.05, readout_format=".2f",
                      description="threshold", continuous_update=False)
    return _panel("sweep", {"lambda": l_w, "merge_k": m_w, "threshold": t_w},
                  lambda **kw: _draw_sweep(runs, kw["lambda"], kw["merge_k"], round(kw["threshold"], 2)), show)


# ------------------------------------------------------------------ the panel
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class Panel:
    """A live widget (controls over an output) and a static picture of its default view.

    ``controls``: {label: ipywidgets control}; ``output``: the ``Output`` the view draws into;
    ``widget``: the whole ``VBox`` (CSS classes ``r1lab-widget`` and ``r1lab-<kind>``);
    ``png`` / ``text``: the default view's figure and readout. Displaying a Panel shows one
    output whose mime bundle holds the widget, the PNG and a text fallback (module docstring).
    ``last``: the latest readout (lines) or message, for tests."""

    def __init__(self, kind: str, controls: dict, draw: Callable[..., Union[Drawn, str]]):
        from ipywidgets import Output, VBox
        self.kind, self.controls, self._draw = kind, controls, draw
        self.output = Output()
        self.png: Optional[bytes] = None
        self.last: Union[List[str], str, None] = None
        self._shown = None
        self.update()
        self.text = (f"[r1lab {kind} widget: {', '.join(controls)}. Run the notebook to move them; "
                     f"the picture shows the default view]\n"
                     + ("\n".join(self.last) if isinstance(self.last, list) else str(self.last)))
        for c in controls.values():
            c.observe(self.update, "value")
        self.widget = VBox(list(controls.values()) + [self.output])
        for cls in ("widget-interact", "r1lab-widget", f"r1lab-{kind}"):
            self.widget.add_class(cls)

    def values(self) -> dict:
        return {name: c.value for name, c in self.controls.items()}

    def update(self, change=None):
        """Redraw for the controls' values (a change that leaves them as drawn is skipped)."""
        from IPython.display import Image, clear_output, display
        values = self.values()
        if values == self._shown:
            return
        self._shown = values
        drawn = self._draw(**values)
        if isinstance(drawn, str):
            fig, self.last = None, drawn
        else:
            fig, self.last = drawn
        png = _png(fig) if fig is not None else None
        if self.png is None:
            self.png = png
        with self.output:
            clear_output(wait=True)
            print(self.last if isinstance(self.last, str) else "\n".join(self.last))
            if png is not None:
                display(Image(data=png, format="png"))

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = {"text/plain": self.text}
        if self.png is not None:
            data["image/png"] = base64.b64encode(self.png).decode("ascii")
        view = self.widget._repr_mimebundle_()
        if view and WIDGET_MIME in view:
            data[WIDGET_MIME] = view[WIDGET_MIME]
        return data

    def __repr__(self):
        return self.text


def _panel(kind: str, controls: dict, draw, show: bool):
    panel = Panel(kind, controls, draw)
    if not show:
        return panel
    from IPython.display import display
    display(panel)
    return None


# ------------------------------------------------------------------ legacy
def interact(view, **ranges):
    """``ipywidgets.interact`` for a view not covered by a factory above. Prefer the factories:
    they bound every control and store a static picture. Returns nothing, so a cell that ends
    in ``interact(...)`` stores no ``<function ... at 0x...>`` repr."""
    import functools
    try:
        from ipywidgets import interact as _interact
    except ImportError:  # pragma: no cover - ipywidgets is a dependency
        print("ipywidgets is not installed: the static figure above is all there is")
        return None

    @functools.wraps(view)
    def shown(**kwargs):
        view(**kwargs)

    _interact(shown, **ranges)
    return None
