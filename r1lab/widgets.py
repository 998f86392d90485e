"""Interactive views for the notebooks. Each view is a plain function that draws a figure
and prints its check, so a notebook calls it once (a static figure for readers and nbval),
then wraps it in ``interact`` for sliders (STYLE.md: ``interact(view, k=(1, 12))``)."""
from __future__ import annotations

import functools
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import plots
from .accounting import VIT_B16_PARAMS, count_for_rank, mib, vit_b16_shapes
from .diagnostics import (RoutingProfile, best_rank_energy, collision_rate, mean_overlap,
                          merged_norms, subset_energy)


def interact(view, **ranges):
    """``ipywidgets.interact`` where widgets are available; otherwise a no-op that says so.

    The view's return value (a figure it has already shown) is not displayed a second time,
    and nothing is returned, so a notebook cell that ends in ``interact(...)`` stores no
    ``<function ... at 0x...>`` repr."""
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


def decomposition_view(rank: int = 12, k: int = 8, d: int = 48, seed: int = 0):
    """A random LoRA update B A of the given rank on a d x d layer, the sum of k of its
    rank-1 experts, and what is left out; with the ViT-B/16 parameter accounting at that rank."""
    k = min(k, rank)
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, rank, generator=g) * torch.linspace(1.0, 0.2, rank)
    A = torch.randn(rank, d, generator=g) / d ** 0.5
    chosen = list(range(k))
    full = (B @ A).numpy()
    part = (B[:, chosen] @ A[chosen]).numpy()
    fig = plots.update_matrices({"B A (all r experts)": full, f"k = {k} experts": part,
                                 "left out": full - part},
                                title=f"rank r = {rank}, sparsity k = {k}")
    c = count_for_rank(vit_b16_shapes(), rank)
    total = sum(t.total for t in c.values())
    print(f"energy kept by these {k} experts: {subset_energy(B, A, chosen):.2f} "
          f"(best possible rank-{k}: {best_rank_energy(B, A, k):.2f})")
    print(f"ViT-B/16, 144 pools of rank {rank}: {total:,} trainable parameters = {mib(total):.2f} MiB "
          f"({100 * total / VIT_B16_PARAMS:.2f} % of CLIP's {mib(VIT_B16_PARAMS):.2f} MiB); "
          f"each step uses {k}/{rank} experts")
    plt.show()
    return fig


def heatmap_view(profile: RoutingProfile, tower: str = "image", layer: int = 0,
                 target: str = "q", which: str = "chosen", top_k: Optional[int] = None):
    """Expert-choice frequency per domain for one pool of the routing profile.

    ``which``: "chosen" (per-sample top-k) or "active" (the batch's voted set).
    ``top_k``: replay the choice with another k from the stored scores
    (``RoutingProfile.at_k``); None keeps the pools' own k."""
    name = next((n for n in profile.tower(tower)
                 if f".resblocks.{layer}." in n and n.endswith("." + target)), None)
    if name is None:
        print(f"no {target} pool in block {layer} of the {tower} tower")
        return None
    if top_k is None:
        chosen, active = profile.chosen[name], profile.active[name]
    else:
        chosen, active = profile.at_k(name, top_k)
    freq = chosen if which == "chosen" else active
    k = "" if top_k is None else f", k = {top_k}"
    fig = plots.expert_heatmap(freq.numpy(), profile.domains, vmax=1.0,
                               title=f"{tower} block {layer} {target}: {which} frequency{k}")
    print(f"{name}: specialisation {profile.specialisation(name):.2f} at the pools' own k "
          f"(0 = every domain picks the same experts, 1 = no expert shared)")
    plt.show()
    return fig


def sweep_view(runs: dict, ago_weight: float = 0.1, merge_k: int = 4, threshold: float = 0.1):
    """One finished run of a (lambda, merge_k) grid, read from ``runs[(ago_weight, merge_k)]``
    (``RunResult``s with their live pools): its accuracy matrix next to the cross-task overlap
    of its merged B columns (``diagnostics.mean_overlap``), with the metrics, the collision rate
    and the size of each task's merged update (``diagnostics.merged_norms``) printed. It only
    reads results: moving a slider never trains (04_ago_orthogonality)."""
    res = runs.get((ago_weight, merge_k))
    if res is None:
        print(f"no run for lambda = {ago_weight}, merge_k = {merge_k}; the grid has {sorted(runs)}")
        return None
    names = res.task_names
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(0.9 * len(names) + 6.5, 0.45 * len(names) + 2.2))
    plots.accuracy_matrix(res.accuracy, names, ax=ax1, title=f"accuracy, lambda = {ago_weight}, m = {merge_k}")
    plots.gram(mean_overlap(res.pools).numpy(), names, ax=ax2, title="|cos| of merged B columns")
    fig.tight_layout()
    m = res.metrics
    print(f"lambda = {ago_weight}, m = {merge_k}: Transfer {m.transfer:.1f}, Average {m.average:.1f}, "
          f"Last {m.last:.1f}, diagonal {m.diagonal:.1f}, forgetting {m.forgetting:.1f}")
    print(f"collision rate {collision_rate(res.pools, threshold):.2f} (|cos| > {threshold}); size of each "
          f"task's merged update ||Delta W_t||_F: {[round(v, 3) for v in merged_norms(res.pools).tolist()]}")
    plt.show()
    return fig
