"""One picture of the method (docs/method.md sec. 1-7), drawn by code so that it is tested.

    fig = method_diagram()                    the whole method, opening notebook 01
    fig = method_diagram(highlight="routing") the same picture with one stage emphasised
                                              (notebooks 02-04 zoom into one stage each)

The picture reads left to right for one adapted linear layer in one training step, then
the end of the task:

    CLIP (frozen W0, both towers) -> a pool of r rank-1 experts on the layer
    -> router on token 0 -> per-sample top-k -> batch vote -> 0/1 mask on the rank dimension
    -> counts (hits summed over the task) -> top-m merge into W0
    and AGO between the current critical columns B[:, C] and the past columns P.
"""
from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

STAGES = ("decomposition", "routing", "ago", "merge")
_EMPH = "#d62728"
_EDGE = "#444444"


def _box(ax, x, y, w, h, title, body, stage, highlight, face="#f4f4f4"):
    on = highlight is not None and stage == highlight
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                fc="#fff3f0" if on else face, ec=_EMPH if on else _EDGE,
                                lw=2.6 if on else 1.2, gid=f"box:{stage}"))
    ax.text(x + w / 2, y + h - 0.16, title, ha="center", va="top", fontsize=10.5, weight="bold")
    ax.text(x + w / 2, y + h - 0.5, body, ha="center", va="top", fontsize=9.5, linespacing=1.45)


def _arrow(ax, x0, y0, x1, y1, text: str = "", color=_EDGE):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14,
                                 lw=1.4, color=color, shrinkA=2, shrinkB=2))
    if text:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.1, text, ha="center", va="bottom", fontsize=8.5,
                color=color)


def _experts(ax, x, y, rank, top_k, merge_k, size=0.26):
    """A row of r squares: merged (dark), active but not merged (light), idle (white)."""
    for i in range(rank):
        face = "#1f4e79" if i < merge_k else "#8fb8de" if i < top_k else "white"
        ax.add_patch(Rectangle((x + i * (size + 0.05), y), size, size, fc=face, ec=_EDGE, lw=0.8))


def method_diagram(rank: int = 12, top_k: int = 8, merge_k: int = 4,
                   highlight: Optional[str] = None, title: Optional[str] = None):
    """Draw DAC for one adapted linear layer; ``highlight`` is one of ``STAGES`` or None.
    Returns the figure."""
    if highlight is not None and highlight not in STAGES:
        raise ValueError(f"highlight must be one of {STAGES} or None, got {highlight!r}")
    if not 1 <= merge_k <= top_k <= rank:
        raise ValueError(f"need 1 <= merge_k <= top_k <= rank, got m={merge_k}, k={top_k}, r={rank}")
    fig, ax = plt.subplots(figsize=(13.5, 6.2))
    ax.set_xlim(0, 13.5)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    # top row: where the pools live, and what a pool is
    _box(ax, 0.2, 4.15, 3.6, 1.85, "CLIP, frozen",
         "image tower and text tower\nevery block: q, k, v, o, c_fc, c_proj\n"
         "(ViT-B/16: 2 x 12 x 6 = 144 linears)", None, highlight)
    _box(ax, 4.4, 4.15, 4.6, 1.85, "a pool on each adapted linear",
         "$W_0 x + s\\,BA\\,x = W_0 x + s\\,(b_1 a_1^\\top + \\dots + b_r a_r^\\top)\\,x$\n"
         f"r = {rank} rank-1 experts, fresh for every task\n", "decomposition", highlight)
    _experts(ax, 4.4 + (4.6 - rank * 0.31) / 2, 4.62, rank, top_k, merge_k)
    _box(ax, 9.6, 4.15, 3.7, 1.85, "inference: plain CLIP",
         "only the merged experts remain,\nfolded into $W_0$: no router,\nno task ID, no extra cost",
         None, highlight, face="#eef6ee")
    _arrow(ax, 3.8, 5.15, 4.4, 5.15)
    _arrow(ax, 9.0, 5.15, 9.6, 5.15, "after\nthe stream")

    # middle row: one training step of one pool
    y, h = 2.05, 1.75
    steps = [
        ("router on token 0", "[CLS] (image) or\nstart-of-text (text)\n$p = \\mathrm{softmax}(R\\,h)$"),
        ("per-sample top-k", f"$E_n = \\mathrm{{TopK}}_k(p_n)$\nk = {top_k} of r = {rank}"),
        ("batch vote", "$c_i$ = #samples with $i \\in E_n$\n$S = \\mathrm{TopK}_k(c)$\none set per batch"),
        ("0/1 mask", "$y = W_0 x + s\\,B_{:,S}A_{S,:}\\,\\mathrm{drop}(x)$\nonly S is used\nand trained"),
    ]
    x, w = 0.2, 2.55
    for i, (t, body) in enumerate(steps):
        _box(ax, x, y, w, h, t, body, "routing", highlight, face="#f0f4fa")
        if i:
            _arrow(ax, x - 0.35, y + h / 2, x, y + h / 2)
        x += w + 0.35
    _box(ax, x, y, 13.3 - x, h, "counts",
         "hits summed over\nthe task's steps\n$\\mathrm{counts} \\leftarrow \\mathrm{counts} + c$", "merge", highlight)
    _arrow(ax, x - 0.35, y + h / 2, x, y + h / 2)
    _arrow(ax, 5.0, 4.15, 1.5, y + h, color="#777777")
    ax.text(3.2, 3.93, "every training step", ha="center", fontsize=8.5, color="#777777")

    # bottom row: AGO during the task, merge at its end
    _box(ax, 0.2, 0.15, 6.4, 1.55, "AGO loss (tasks 2, 3, ...)",
         "$\\mathcal{L} = \\mathcal{L}_{task} + \\lambda\\,\\Vert B_{:,C}^\\top P\\Vert_1$,  "
         f"$C = \\mathrm{{TopK}}_{{m}}$(counts so far)\n"
         "pushes the current critical columns away from\nthe columns P that earlier tasks wrote",
         "ago", highlight)
    _box(ax, 7.0, 0.15, 6.3, 1.55, "end of task: merge the critical experts",
         f"$T = \\mathrm{{TopK}}_m(\\mathrm{{counts}})$, m = {merge_k}\n"
         "$W_0 \\leftarrow W_0 + s\\,B_{:,T}A_{T,:}$; the rest is dropped;\n"
         "B's columns are kept as P for later tasks' AGO", "merge", highlight)
    _arrow(ax, 12.2, y, 11.0, 1.7)
    _arrow(ax, 7.0, 0.9, 6.6, 0.9, "P")
    _arrow(ax, 6.0, 1.7, 9.2, y, color="#777777")
    ax.text(7.75, 1.78, "gradient on $B_{:,C}$ only", fontsize=8.5, color="#777777", rotation=6)

    # legend for the expert squares
    for j, (face, label) in enumerate((("#1f4e79", f"merged: m = {merge_k}"),
                                       ("#8fb8de", f"active only: {top_k - merge_k}"),
                                       ("white", f"idle: r - k = {rank - top_k}"))):
        ax.add_patch(Rectangle((4.55 + j * 1.5, 4.25), 0.16, 0.16, fc=face, ec=_EDGE, lw=0.8))
        ax.text(4.75 + j * 1.5, 4.33, label, va="center", fontsize=7)
    ax.set_title(title or "DAC: a pool of rank-1 experts in one LoRA, per adapted linear layer",
                 fontsize=13, weight="bold")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93)
    return fig
