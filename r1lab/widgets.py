"""Interactive views for the notebooks. Each view is a plain function that draws a figure
and prints its check, so a notebook calls it once (a static figure for readers and nbval),
then wraps it in ``interact`` for sliders (STYLE.md: ``interact(view, k=(1, 12))``)."""
from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import plots
from .accounting import VIT_B16_PARAMS, count_for_rank, mib, vit_b16_shapes
from .diagnostics import RoutingProfile, best_rank_energy, subset_energy


def interact(view, **ranges):
    """``ipywidgets.interact`` where widgets are available; otherwise a no-op that says so."""
    try:
        from ipywidgets import interact as _interact
    except ImportError:  # pragma: no cover - ipywidgets is a dependency
        print("ipywidgets is not installed: the static figure above is all there is")
        return None
    return _interact(view, **ranges)


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
                 target: str = "q", which: str = "chosen"):
    """Expert-choice frequency per domain for one pool of the routing profile."""
    name = next((n for n in profile.tower(tower)
                 if f".resblocks.{layer}." in n and n.endswith("." + target)), None)
    if name is None:
        print(f"no {target} pool in block {layer} of the {tower} tower")
        return None
    freq = (profile.chosen if which == "chosen" else profile.active)[name]
    fig = plots.expert_heatmap(freq.numpy(), profile.domains,
                               title=f"{tower} block {layer} {target}: {which} frequency "
                                     f"(specialisation {profile.specialisation(name):.2f})")
    plt.show()
    return fig
