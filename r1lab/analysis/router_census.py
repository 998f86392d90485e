"""Which routers can see the input (docs/method.md sec. 13.1).

Every pool routes on token 0 of its own input, h = x~[:, 0] (pool.py). Two places of CLIP make
that token the same for every input:

* the text tower: token 0 is the start-of-text token, and causal attention lets it attend only
  to itself, so at every block its hidden state is one fixed vector for all prompts;
* the image tower, block 0, ``q``/``k``/``v``: their input is ln_1 of the class embedding plus
  position 0 (after ln_pre), before any attention has mixed in the patches.

In such a pool the router sees a constant; all that varies from sample to sample is the
dropout mask on it, so its "routing" is dropout noise followed by the vote. This module
measures it instead of assuming it: ``token_spread`` feeds distinct inputs through a model in
eval mode (no dropout) and records, for each pool, how much its routing token varies,

    spread = max_n || h_n - mean_n h_n ||  /  max(mean_n || h_n ||, eps)

and a pool is *constant* when spread <= ``tol`` (1e-5: float round-off). ``census`` does it
for any open_clip architecture with random weights (the structure alone decides, no download).

For finished runs, ``count_entropy`` and ``set_overlap`` describe how the two kinds of pool
behave: the entropy of a pool's counts over its r experts (0: always the same experts,
1: uniform) and the overlap |T_a & T_b| / m of merged sets across tasks or across seeds.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from r1lab.config import DACConfig
from r1lab.pool import ExpertPoolLinear
from r1lab.poolset import PoolAddress, PoolSet

TOL = 1e-5


@torch.no_grad()
def token_spread(model, pools: PoolSet, images: torch.Tensor, tokens: torch.Tensor) -> Dict[str, float]:
    """{pool name: spread of its routing token over the inputs} (see the module docstring).
    ``images`` and ``tokens`` are batches of at least two distinct inputs each; the model is
    run in eval mode, so dropout does not vary anything."""
    if images.shape[0] < 2 or tokens.shape[0] < 2:
        raise ValueError("token_spread needs at least two images and two prompts to compare")
    seen: Dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(module: ExpertPoolLinear, args):
            seen[name] = module.routing_token(args[0]).detach().double()
        return hook

    handles = [p.register_forward_pre_hook(grab(n)) for n, p in pools.items()]
    was = model.training
    model.eval()
    try:
        model.encode_image(images)
        model.encode_text(tokens)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out = {}
    for name in pools:
        h = seen[name]
        dev = (h - h.mean(0, keepdim=True)).norm(dim=-1).max()
        out[name] = float(dev / h.norm(dim=-1).mean().clamp_min(1e-30))
    return out


@dataclass
class PoolInput:
    """One pool of a census: where it sits and whether its router can see the input."""
    name: str
    tower: str
    block: int
    target: str
    spread: float

    @property
    def constant(self) -> bool:
        return self.spread <= TOL


def census(model, pools: PoolSet, images: torch.Tensor, tokens: torch.Tensor) -> List[PoolInput]:
    """Every pool, in order, with its routing-token spread over the given inputs."""
    spread = token_spread(model, pools, images, tokens)
    return [PoolInput(n, *PoolAddress.of(n), spread[n]) for n in pools]


def architecture_census(model_name: str = "ViT-B-16-quickgelu", cfg: Optional[DACConfig] = None,
                        n: int = 4, seed: int = 0) -> List[PoolInput]:
    """The census of an open_clip architecture with random weights: ``n`` random images at
    its input size and ``n`` different prompts. Only the structure matters (which token a
    router reads and what attention lets reach it), so no weights are downloaded."""
    import logging
    import open_clip
    torch.manual_seed(seed)
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)      # open_clip warns that no weights were loaded: intended
    try:
        model = open_clip.create_model(model_name, pretrained=None)
    finally:
        log.setLevel(level)
    tok = open_clip.get_tokenizer(model_name)
    from r1lab.attach import attach_pools
    pools = attach_pools(model, cfg or DACConfig.paper())
    side = model.visual.image_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, side, side, generator=g)
    words = ["a photo of a dog.", "a satellite image of a forest.", "the number seven.",
             "a red striped texture.", "an aircraft on a runway.", "a bowl of soup."]
    tokens = tok([words[i % len(words)] + " " * (i // len(words)) for i in range(n)])
    return census(model, pools, images, tokens)


def summary(rows: Sequence[PoolInput]) -> Dict[str, int]:
    """Counts of constant pools: total, per tower, and how many pools there are."""
    out = {"pools": len(rows), "constant": sum(r.constant for r in rows)}
    for tower in ("image", "text"):
        sub = [r for r in rows if r.tower == tower]
        out[f"{tower} pools"] = len(sub)
        out[f"{tower} constant"] = sum(r.constant for r in sub)
    return out


# ------------------------------------------------------------------ statistics of runs
def count_entropy(counts: torch.Tensor) -> float:
    """Entropy of a pool's counts as a distribution over its r experts, divided by log r:
    0 when one set of experts gets every hit, 1 when every expert is hit equally."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    total = c.sum()
    if total <= 0 or c.numel() < 2:
        return float("nan")
    p = c[c > 0] / total
    return float(-(p * p.log()).sum() / math.log(c.numel()))


def set_overlap(a, b) -> float:
    """|a & b| / |a| for two merged sets of the same size m (1: the same experts)."""
    a = set(int(i) for i in torch.as_tensor(a).flatten().tolist())
    b = set(int(i) for i in torch.as_tensor(b).flatten().tolist())
    return len(a & b) / max(1, len(a))


def pool_statistics(runs, constant: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """For runs of one method (one per seed, each with ``counts`` and ``merged`` per task):
    the mean count entropy, the mean overlap of merged sets across tasks (same run, pairs of
    tasks) and across seeds (same task, pairs of runs), for constant-token pools and for
    input-dependent ones. Chance overlap of two random m-sets of r experts is m / r."""
    const = set(constant)
    names = list(runs[0].counts[0])
    out = {}
    for label, group in (("constant token", [n for n in names if n in const]),
                         ("input-dependent", [n for n in names if n not in const])):
        ent = [count_entropy(r.counts[t][n]) for r in runs for t in range(len(r.counts)) for n in group]
        tasks = [set_overlap(r.merged[a][n], r.merged[b][n]) for r in runs
                 for a, b in itertools.combinations(range(len(r.merged)), 2) for n in group]
        seeds = [set_overlap(x.merged[t][n], y.merged[t][n]) for x, y in itertools.combinations(runs, 2)
                 for t in range(len(x.merged)) for n in group]
        mean = lambda v: float(torch.tensor(v, dtype=torch.float64).nanmean()) if v else float("nan")  # noqa: E731
        out[label] = {"pools": len(group), "entropy": mean(ent), "overlap across tasks": mean(tasks),
                      "overlap across seeds": mean(seeds)}
    return out
