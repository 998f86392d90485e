"""Plots used by the notebooks and the README. Each function draws on an ``ax`` (created if
omitted) and returns the figure; nothing here computes results, it only draws them."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from r1lab.poolset import PoolAddress
from r1lab.teach.diagram import method_diagram  # noqa: F401  (the method picture, for notebooks)


def _ax(ax, size=(5, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    return ax.figure, ax


def pool_title(name: str) -> str:
    """A pool's module path in words: ``visual.transformer.resblocks.3.mlp.c_fc`` ->
    "image tower, block 3, c_fc"; ``transformer.resblocks.0.attn.q`` -> "text tower, block 0, q"."""
    return PoolAddress.of(name).words()


def accuracy_matrix(A, names: Sequence[str], ax=None, title: str = "", vmin=0, vmax=100,
                    cbar: bool = True):
    """The T x T accuracy matrix: rows = after training task t, columns = test set j.
    Cells above the diagonal are zero-shot transfer; the diagonal is plasticity; the last
    row is the final model. The colour scale is fixed (0-100 %) so panels compare."""
    fig, ax = _ax(ax, (0.7 * len(names) + 3.2, 0.55 * len(names) + 2))
    sns.heatmap(np.asarray(A), annot=True, fmt=".0f", cmap="viridis", vmin=vmin, vmax=vmax,
                xticklabels=names, yticklabels=names, cbar=cbar, ax=ax, annot_kws={"size": 9},
                cbar_kws={"label": "top-1 accuracy (%)"} if cbar else None)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after training")
    ax.set_title(title)
    return fig


def forgetting_curves(A, names: Sequence[str], ax=None, title: str = "", before_merge=None):
    """Accuracy on each task from the moment it is trained to the end of the stream."""
    A = np.asarray(A)
    fig, ax = _ax(ax, (7.5, 4.2))
    T = len(names)
    for j in range(T):
        line, = ax.plot(range(j, T), A[j:, j], marker="o", ms=3, label=names[j])
        if before_merge is not None and before_merge[j] is not None:
            ax.plot([j], [before_merge[j]], marker="^", color=line.get_color(), ms=6)
    ax.set_xticks(range(T))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_xlabel("after training")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title + ("  (triangles: before the merge)" if before_merge is not None else ""))
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return fig


def metric_bars(stats: Dict[str, Dict[str, tuple]], keys=("transfer", "average", "last", "forgetting"),
                ax=None, title: str = "", zeroshot: Optional[Dict[str, float]] = None):
    """Grouped bars of metric means (with std error bars) per method.
    ``stats`` = {method: {metric: (mean, std)}} (``Comparison.stats``)."""
    fig, ax = _ax(ax, (8, 4))
    methods = list(stats)
    w = 0.8 / max(len(methods), 1)
    x = np.arange(len(keys))
    for i, m in enumerate(methods):
        mean = [stats[m][k][0] for k in keys]
        std = [stats[m][k][1] for k in keys]
        ax.bar(x + i * w - 0.4 + w / 2, mean, w, yerr=std, label=m, capsize=3)
    if zeroshot:
        for i, k in enumerate(keys):
            if k in zeroshot:
                ax.hlines(zeroshot[k], i - 0.45, i + 0.45, colors="k", linestyles="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels([k.capitalize() for k in keys])
    ax.set_ylabel("%")
    ax.set_title(title + ("  (dashed: zero-shot)" if zeroshot else ""))
    ax.legend(fontsize=8)
    return fig


def before_after_merge(names: Sequence[str], before: Sequence[float], after: Sequence[float],
                       ax=None, title: str = "own-task accuracy at the merge"):
    """The plasticity a partial merge gives up: each task's accuracy just before and just
    after folding its top-m experts into CLIP."""
    fig, ax = _ax(ax, (7.5, 3.6))
    x = np.arange(len(names))
    ax.bar(x - 0.2, before, 0.4, label="before merge (k active experts)")
    ax.bar(x + 0.2, after, 0.4, label="after merge (top-m folded in)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def expert_heatmap(freq, rows: Sequence[str], ax=None, title: str = "", vmax=None,
                   xlabel: str = "expert", cbar_label: str = "share of hits", cbar: bool = True):
    """A (rows x rank) frequency matrix: how often each expert is chosen, per domain."""
    fig, ax = _ax(ax, (0.4 * np.asarray(freq).shape[1] + 3.0, 0.4 * len(rows) + 1.6))
    sns.heatmap(np.asarray(freq), cmap="mako", vmin=0, vmax=vmax, xticklabels=True,
                yticklabels=list(rows), ax=ax, cbar=cbar,
                cbar_kws={"shrink": 0.8, "label": cbar_label} if cbar else None)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return fig


def gram(G, labels: Sequence[str], ax=None, title: str = "", vmax=1.0, cbar: bool = True,
         cbar_label: str = "mean |cos| of merged B columns"):
    """A (T x T) overlap matrix between tasks (|cosine|, 0 = orthogonal)."""
    fig, ax = _ax(ax, (5.0, 3.9))
    sns.heatmap(np.asarray(G), annot=True, fmt=".2f", cmap="rocket_r", vmin=0, vmax=vmax,
                xticklabels=list(labels), yticklabels=list(labels), ax=ax, cbar=cbar,
                annot_kws={"size": 8}, cbar_kws={"label": cbar_label} if cbar else None)
    ax.set_title(title)
    return fig


def energy_curve(curves: Dict[str, List[float]], ax=None, k_mark: Optional[int] = None,
                 title: str = "energy of B A kept by k experts"):
    """Lines of energy share vs number of experts kept (one line per selection rule)."""
    fig, ax = _ax(ax, (6.4, 3.8))
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=label)
    if k_mark is not None:
        ax.axvline(k_mark, color="grey", ls=":", lw=1)
    ax.set_xlabel("experts kept (k)")
    ax.set_ylabel("share of ||BA||_F^2")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def update_matrices(mats: Dict[str, np.ndarray], title: str = ""):
    """Side-by-side images of weight updates (e.g. full B A, k experts, the rest)."""
    fig, axes = plt.subplots(1, len(mats), figsize=(3.0 * len(mats) + 0.8, 3.2))
    axes = np.atleast_1d(axes)
    lim = max(float(np.abs(m).max()) for m in mats.values()) or 1.0
    for ax, (label, m) in zip(axes, mats.items()):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("input dimension")
        ax.set_ylabel("output dimension")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="entry of the update (one scale)")
    return fig


def loss_curves(logs, ax=None, title: str = "training loss per task"):
    """Total loss per step for each task of a run, laid end to end."""
    fig, ax = _ax(ax, (7, 3))
    start = 0
    for log in logs:
        n = len(log.loss)
        ax.plot(range(start, start + n), log.loss, lw=1, label=log.task)
        start += n
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=4)
    return fig


def examples(benchmark, n: int = 6, split: str = "test", size: float = 1.25):
    """A grid of images, one row per task: the first image of ``n`` evenly spaced classes,
    each titled with its class name. Images are shown un-normalised (CLIP mean / std)."""
    from r1lab.data.stream import dataset_labels
    from r1lab.data.world import to_images
    T = len(benchmark.tasks)
    fig, axes = plt.subplots(T, n, figsize=(size * n, 1.2 * size * T), squeeze=False)
    for row, task in zip(axes, benchmark.tasks):
        ds = task.test if split == "test" else task.train
        labels = dataset_labels(ds)
        classes = sorted(set(np.linspace(0, task.num_classes - 1, n).round().astype(int).tolist()))
        for ax in row:
            ax.axis("off")
        for ax, c in zip(row, classes):
            x = ds[labels.index(c)][0]
            ax.imshow(to_images(x[None])[0], interpolation="nearest")
            name = task.classnames[c]
            ax.set_title(name if len(name) <= 16 else name[:15] + "…", fontsize=7)
        row[0].text(-0.15, 0.5, task.name, transform=row[0].transAxes, ha="right", va="center",
                    fontsize=8)
    fig.tight_layout()
    return fig




def confusion_matrix(M, classnames: Sequence[str], ax=None, title: str = ""):
    """Counts of (true class, predicted class) for one test set (``diagnostics.confusion``)."""
    M = np.asarray(M)
    fig, ax = _ax(ax, (0.5 * len(classnames) + 3.2, 0.45 * len(classnames) + 2))
    sns.heatmap(M, annot=True, fmt="d", cmap="Blues", xticklabels=list(classnames),
                yticklabels=list(classnames), ax=ax, cbar_kws={"label": "test images"},
                annot_kws={"size": 8})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return fig


def token_census(rows, title: str = "", axes=None):
    """Which routers can see the input (``r1lab.analysis.router_census.census``): one panel per tower,
    targets x blocks, colour = log10 of the routing token's spread over distinct inputs;
    cells marked "=" route on a token that is the same for every input."""
    from r1lab.analysis.router_census import TOL
    towers = [t for t in ("image", "text") if any(r.tower == t for r in rows)]
    targets = [t for t in ("q", "k", "v", "o", "c_fc", "c_proj") if any(r.target == t for r in rows)]
    blocks = sorted({r.block for r in rows})
    if axes is None:
        fig, axes = plt.subplots(1, len(towers), figsize=(max(7.0, 0.55 * len(blocks) + 3) * len(towers) / 1.4, 3.4),
                                 squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    floor = np.log10(TOL) - 1
    for ax, tower in zip(axes, towers):
        M = np.full((len(targets), len(blocks)), np.nan)
        annot = np.full(M.shape, "", dtype=object)
        for r in rows:
            if r.tower == tower:
                i, j = targets.index(r.target), blocks.index(r.block)
                M[i, j] = max(np.log10(max(r.spread, 1e-30)), floor)
                annot[i, j] = "=" if r.constant else ""
        sns.heatmap(M, ax=ax, cmap="rocket", vmin=floor, vmax=0, annot=annot, fmt="",
                    annot_kws={"size": 12, "color": "white", "weight": "bold"},
                    xticklabels=blocks, yticklabels=targets, cbar=ax is axes[-1],
                    cbar_kws={"label": "log10 spread of the routing token"} if ax is axes[-1] else None)
        n = sum(1 for r in rows if r.tower == tower and r.constant)
        tot = sum(1 for r in rows if r.tower == tower)
        ax.set_title(f"{tower} tower: {n} of {tot} pools route on a constant (=)")
        ax.set_xlabel("block")
        ax.set_ylabel("target")
        ax.set_yticklabels(targets, rotation=0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def goal_map(stats: Dict[str, Dict[str, tuple]], ax=None, title: str = "", reference: str = "dac",
             baseline: str = "lora", tolerance: float = 2.0):
    """Diagonal (plasticity) against forgetting (stability) per method, mean ± std over seeds
    (``Comparison.stats``). The shaded box is the goal: forgetting within ``tolerance`` points
    of ``reference`` and at least half of the diagonal gap from ``reference`` to ``baseline``
    closed."""
    fig, ax = _ax(ax, (7.5, 5))
    ref, base = stats[reference], stats[baseline]
    need = ref["diagonal"][0] + 0.5 * (base["diagonal"][0] - ref["diagonal"][0])
    lo = min(s["forgetting"][0] - s["forgetting"][1] for s in stats.values()) - 1
    hi_diag = max(s["diagonal"][0] + s["diagonal"][1] for s in stats.values()) + 1
    ax.add_patch(plt.Rectangle((lo, need), ref["forgetting"][0] + tolerance - lo, hi_diag - need,
                               color="tab:green", alpha=0.12, lw=0))
    ax.text(lo + 0.2, hi_diag - 0.3, "goal", color="tab:green", va="top", fontsize=10)
    ax.plot([ref["forgetting"][0], base["forgetting"][0]], [ref["diagonal"][0], base["diagonal"][0]],
            ls="--", color="0.5", lw=1, label=f"straight line {reference} - {baseline}")
    for i, (m, s) in enumerate(stats.items()):
        ax.errorbar(s["forgetting"][0], s["diagonal"][0], xerr=s["forgetting"][1], yerr=s["diagonal"][1],
                    fmt="o", capsize=3, label=m)
        ax.annotate(m, (s["forgetting"][0], s["diagonal"][0]), textcoords="offset points",
                    xytext=(6, (4, -13, 12)[i % 3]), fontsize=9)   # staggered: close points stay legible
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("forgetting (points, lower is better)")
    ax.set_ylabel("diagonal: accuracy on the task just learned (%)")
    ax.set_title(title)
    return fig


def line_map(stats: Dict[str, Dict[str, tuple]], ax=None, title: str = "", low: str = "dac",
             high: str = "lora"):
    """Forgetting (x) against diagonal (y) per method, mean ± std over seeds, with the straight
    line through ``low`` and ``high`` extended across the plot: a method to the left of the line
    forgets less than the line predicts for its diagonal ("above the line")."""
    fig, ax = _ax(ax, (7.5, 5))
    (fl, dl), (fh, dh) = [(stats[m]["forgetting"][0], stats[m]["diagonal"][0]) for m in (low, high)]
    slope = (fh - fl) / (dh - dl)                      # forgetting per diagonal point
    ds = [s["diagonal"][0] for s in stats.values()]
    y = np.linspace(min(ds) - 2, max(ds) + 2, 2)
    ax.plot(fl + slope * (y - dl), y, ls="--", color="0.5", lw=1,
            label=f"{low} - {high} line ({slope:.2f} forgetting per diagonal point)")
    for i, (m, s) in enumerate(stats.items()):
        ax.errorbar(s["forgetting"][0], s["diagonal"][0], xerr=s["forgetting"][1], yerr=s["diagonal"][1],
                    fmt="s" if m in (low, high) else "o", capsize=3, label=m)
        ax.annotate(m, (s["forgetting"][0], s["diagonal"][0]), textcoords="offset points",
                    xytext=(6, (4, -13, 12)[i % 3]), fontsize=9)
    ax.set_ylim(min(ds) - 2, max(ds) + 2)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("forgetting (points, lower is better)")
    ax.set_ylabel("diagonal: accuracy on the task just learned (%)")
    ax.set_title(title)
    return fig


STATUS_COLOURS = {"trained": "#f4a259", "frozen": "#d9d9d9", "designed": "#7fb3d5", "kept": "#c39bd3"}


def layer_card(card: Dict, ax=None, title: str = ""):
    """One method's layer as a picture: the frozen path W0 x and the branch x -> A -> B -> (+),
    each part coloured by what happens to it in a task (trained, frozen, designed, kept from
    earlier tasks), extra parts below the branch, and what the end of a task does. ``card``:
    {"A": status, "B": status, "extra": [(label, status), ...], "end": text, "kept": text}."""
    fig, ax = _ax(ax, (4.2, 3.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ax.axis("off")

    def box(x, y, w, h, label, status, size=9):
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=STATUS_COLOURS[status], edgecolor="0.3", lw=1))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=size)

    ax.annotate("", xy=(8.6, 8.4), xytext=(0.6, 8.4), arrowprops=dict(arrowstyle="->", color="0.4"))
    box(3.6, 7.7, 2.4, 1.4, "W0", "frozen")
    ax.annotate("", xy=(2.0, 6.0), xytext=(0.6, 8.2), arrowprops=dict(arrowstyle="->", color="0.4"))
    box(2.0, 5.3, 1.8, 1.4, "A", card["A"])
    box(5.0, 5.3, 1.8, 1.4, "B", card["B"])
    ax.annotate("", xy=(5.0, 6.0), xytext=(3.8, 6.0), arrowprops=dict(arrowstyle="->", color="0.4"))
    ax.annotate("", xy=(8.6, 8.1), xytext=(6.8, 6.0), arrowprops=dict(arrowstyle="->", color="0.4"))
    ax.text(0.2, 8.4, "x", va="center", fontsize=10)
    ax.text(8.8, 8.4, "y", va="center", fontsize=10)
    for i, (label, status) in enumerate(card.get("extra", [])):
        box(0.3 + 4.9 * (i % 2), 3.2 - 1.6 * (i // 2), 4.6, 1.3, label, status, size=8.5)
    ax.text(0.2, 0.2 if len(card.get("extra", [])) > 2 else 1.0, f"end of task: {card['end']}",
            fontsize=8.5, va="bottom", wrap=True)
    ax.set_title(title, fontsize=11)
    return fig


def layer_cards(cards: Dict[str, Dict], ncols: int = 4, title: str = ""):
    """``layer_card`` of every method in a grid, with the colour legend in the last panel."""
    n = len(cards) + 1
    rows = -(-n // ncols)
    fig, axes = plt.subplots(rows, ncols, figsize=(4.2 * ncols, 3.4 * rows))
    axes = np.atleast_1d(axes).ravel()
    for ax, (m, card) in zip(axes, cards.items()):
        layer_card(card, ax=ax, title=m)
    for ax in axes[len(cards):]:
        ax.axis("off")
    legend = axes[len(cards)]
    for i, (status, colour) in enumerate(STATUS_COLOURS.items()):
        legend.add_patch(plt.Rectangle((0.1, 0.75 - 0.18 * i), 0.12, 0.12, facecolor=colour, edgecolor="0.3",
                                       transform=legend.transAxes))
        words = {"trained": "trained in the task", "frozen": "frozen", "designed": "computed, not trained",
                 "kept": "kept from earlier tasks"}[status]
        legend.text(0.28, 0.81 - 0.18 * i, words, transform=legend.transAxes, va="center", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
