"""Attaching expert pools to a stock open_clip CLIP: the one module that touches open_clip
internals (tested against the pinned open_clip 3.3.0).

Where pools go (docs/method.md sec. 2): in every chosen block of the chosen towers, any of

    q, k, v   the three slices of the fused ``attn.in_proj_weight`` (3d x d)
    o         ``attn.out_proj``
    c_fc      ``mlp.c_fc``
    c_proj    ``mlp.c_proj``

Two open_clip facts shape this file:
  * default blocks use ``nn.MultiheadAttention``, which fuses q/k/v into one weight and never
    calls ``out_proj.forward()``, so a pool on ``out_proj`` would be silently ignored: the
    attention module is swapped for ``SplitAttention`` (``attention.py``), four real linear
    layers and scaled-dot-product attention, numerically the same function.
  * ``detach_pools`` puts the original modules back with the merged weights written into
    them, so a merged model is plain open_clip again: same keys, same forward code.

Which layer each pool is: ``pool_class`` (the paper's ``ExpertPoolLinear`` by default; the
methods pick variant layers through ``r1lab.methods.layers.attach_pools``).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from open_clip.transformer import Attention, CustomResidualAttentionBlock, ResidualAttentionBlock

from r1lab.attention import SplitAttention, SplitCustomAttention
from r1lab.config import DACConfig
from r1lab.pool import ExpertPoolLinear
from r1lab.poolset import PoolSet
from r1lab.routing import RouteToken


# ---------------------------------------------------------------------------- towers
def towers(model: nn.Module) -> Dict[str, Tuple[str, nn.Module]]:
    """{"image": (prefix, transformer), "text": (prefix, transformer)} of an open_clip model."""
    out = {}
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        out["image"] = ("visual.transformer", visual.transformer)
    if hasattr(model, "transformer") and hasattr(model.transformer, "resblocks"):
        out["text"] = ("transformer", model.transformer)
    elif hasattr(model, "text") and hasattr(getattr(model.text, "transformer", None), "resblocks"):
        out["text"] = ("text.transformer", model.text.transformer)
    return out


def _token_embedding(model: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """(module holding pool_type/eos id, token embedding) of the text tower."""
    if hasattr(model, "token_embedding"):
        return model, model.token_embedding
    return model.text, model.text.token_embedding


def _eot_hook(owner: nn.Module, token: RouteToken):
    pool_type = getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax"))
    eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))

    def hook(_module, args):
        ids = args[0]
        if pool_type == "eos" and eos_id is not None:
            token.index = (ids == eos_id).int().argmax(dim=-1)
        elif pool_type == "last":
            token.index = torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
        elif pool_type == "first":
            token.index = None
        else:  # argmax: CLIP's end-of-text token has the largest id
            token.index = ids.argmax(dim=-1)
    hook._r1lab = True   # found and removed by detach_pools (also on deep copies)
    return hook


def _attention_problem(block, name: str) -> Optional[str]:
    """Why the attention of ``block`` cannot be split (None when it can)."""
    attn = getattr(block, "attn", None)
    if isinstance(block, ResidualAttentionBlock):
        if not isinstance(attn, nn.MultiheadAttention):
            return f"{name}.attn is a {type(attn).__name__}, not an nn.MultiheadAttention"
        if not attn.batch_first or not attn._qkv_same_embed_dim or attn.bias_k is not None:
            return f"{name}.attn is not open_clip's batch-first self-attention"
    elif not isinstance(attn, Attention):
        return f"{name}.attn is a {type(attn).__name__}, not open_clip's Attention"
    return None


def plan_pools(model: nn.Module, cfg: DACConfig) -> List[Tuple[str, int, nn.Module]]:
    """Validate every target of ``cfg`` on ``model`` without changing anything.

    Returns [(tower, block index, block)] to adapt; raises ``ValueError`` listing every
    problem (missing tower or block, unsupported block, a target that is not an nn.Linear).
    """
    found = towers(model)
    missing = [t for t in cfg.towers if t not in found]
    if missing:
        raise ValueError(f"cannot find the {missing} tower(s) of {type(model).__name__}: r1lab "
                         f"supports open_clip ViT towers built from ResidualAttentionBlock / "
                         f"CustomResidualAttentionBlock (not timm or Hugging Face towers)")
    problems, plan = [], []
    for tower in cfg.towers:
        prefix, transformer = found[tower]
        n_blocks = len(transformer.resblocks)
        bad = [b for b in (cfg.blocks or ()) if b >= n_blocks]
        if bad:
            raise ValueError(f"blocks {bad} do not exist in the {tower} tower ({n_blocks} blocks)")
        if tower == "text" and cfg.text_route_token == "eot":
            try:
                _token_embedding(model)
            except AttributeError:
                problems.append("the text tower has no token embedding to find the end-of-text token")
        for b in (range(n_blocks) if cfg.blocks is None else cfg.blocks):
            block = transformer.resblocks[b]
            name = f"{prefix}.resblocks.{b}"
            if not isinstance(block, (ResidualAttentionBlock, CustomResidualAttentionBlock)):
                problems.append(f"unsupported block type {type(block).__name__} at {name}")
                continue
            if any(t in cfg.targets for t in "qkvo"):
                p = _attention_problem(block, name)
                if p:
                    problems.append(p)
            for t in cfg.targets:
                if t in "qkvo":
                    continue
                lin = getattr(getattr(block, "mlp", None), t, None)
                if not isinstance(lin, nn.Linear):
                    problems.append(f"{name}.mlp.{t} is a {type(lin).__name__}, not an nn.Linear")
            plan.append((tower, b, block))
    if problems:
        raise ValueError("attach_pools changed nothing: " + "; ".join(problems)
                         + ". Choose targets / blocks / towers that are nn.Linear layers of "
                           "open_clip blocks (DACConfig.targets, .blocks, .towers)")
    return plan


def attach_pools(model: nn.Module, cfg: DACConfig, pool_class: type = ExpertPoolLinear) -> PoolSet:
    """Freeze ``model`` and put a pool (``pool_class``, the paper's layer by default) on every
    target of every chosen block.

    Returns a ``PoolSet`` (an ordered dict: qualified module name -> pool), e.g.
    ``visual.transformer.resblocks.0.attn.q`` or ``transformer.resblocks.11.mlp.c_proj``.

    Atomic: every target is validated first (``plan_pools``), and should anything still fail
    while attaching, every change is undone, so on an error the model is exactly as it was.
    """
    if getattr(model, "_r1lab_pools", None):
        raise RuntimeError("this model already has pools attached; call detach_pools(model) first")
    plan = plan_pools(model, cfg)
    found = towers(model)
    grads = {p: p.requires_grad for p in model.parameters()}
    swapped: List[Tuple[nn.Module, str, nn.Module]] = []   # (parent, attribute, original)
    hooks = []

    def swap(parent: nn.Module, attr: str, new: nn.Module) -> None:
        swapped.append((parent, attr, getattr(parent, attr)))
        setattr(parent, attr, new)

    try:
        model.requires_grad_(False)
        pools: Dict[str, ExpertPoolLinear] = {}
        tokens: Dict[str, RouteToken] = {}
        for tower, b, block in plan:
            if tower not in tokens:
                tokens[tower] = RouteToken()
                if tower == "text" and cfg.text_route_token == "eot":
                    owner, emb = _token_embedding(model)
                    hooks.append(emb.register_forward_pre_hook(_eot_hook(owner, tokens[tower])))
            name = f"{found[tower][0]}.resblocks.{b}"
            if any(t in cfg.targets for t in "qkvo"):
                split = SplitAttention if isinstance(block, ResidualAttentionBlock) else SplitCustomAttention
                swap(block, "attn", split(block.attn))
            for t in cfg.targets:
                parent = block.attn if t in "qkvo" else block.mlp
                pool = pool_class(getattr(parent, t), cfg, route_token=tokens[tower])
                swap(parent, t, pool)
                pools[f"{name}.{'attn' if t in 'qkvo' else 'mlp'}.{t}"] = pool
    except BaseException:
        for parent, attr, original in reversed(swapped):
            setattr(parent, attr, original)
        for h in hooks:
            h.remove()
        for p, g in grads.items():
            p.requires_grad_(g)
        raise
    object.__setattr__(model, "_r1lab_pools", True)
    return PoolSet(pools, cfg)


@torch.no_grad()
def detach_pools(model: nn.Module) -> nn.Module:
    """Remove every pool and split attention, writing the current base weights (with all
    merges folded in) back into the original open_clip modules. Un-merged experts of the
    current task are dropped. Returns the same model, now plain open_clip."""
    if not getattr(model, "_r1lab_pools", None):
        return model
    kept = [n for n, m in model.named_modules() if isinstance(m, ExpertPoolLinear) and not m.mergeable]
    if kept:
        raise ValueError(f"{len(kept)} pools keep their layers at inference ({type(model.get_submodule(kept[0])).__name__} "
                         f"at {kept[0]}, ...): they cannot be folded into a plain open_clip model; "
                         f"save the model with its pools instead (torch.save(model.state_dict(), path))")
    for module in model.modules():
        for key, fn in list(module._forward_pre_hooks.items()):
            if getattr(fn, "_r1lab", False):
                del module._forward_pre_hooks[key]
    for mod_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, ExpertPoolLinear):
                setattr(module, child_name, child.base)
    for mod_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (SplitAttention, SplitCustomAttention)):
                setattr(module, child_name, child.restore())
    object.__setattr__(model, "_r1lab_pools", None)
    return model


def merged_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The merged model as a plain open_clip state dict (original key names), loadable by a
    stock open_clip model with ``strict=True``. The model itself is left untouched."""
    plain = detach_pools(copy.deepcopy(model))
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


def save_merged(model: nn.Module, path) -> None:
    """Save ``merged_state_dict(model)`` as safetensors (load it with
    ``open_clip.create_model(name, pretrained=path)``)."""
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in merged_state_dict(model).items()}
    save_file(sd, str(path))
