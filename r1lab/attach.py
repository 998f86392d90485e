"""Attaching expert pools to a stock open_clip CLIP: the one module that touches open_clip
internals (tested against the pinned open_clip 3.3.0).

Where pools go (docs/method.md sec. 2): in every chosen block of the chosen towers, any of

    q, k, v   the three slices of the fused ``attn.in_proj_weight`` (3d x d)
    o         ``attn.out_proj``
    c_fc      ``mlp.c_fc``
    c_proj    ``mlp.c_proj``

Two open_clip facts shape this file:
  * default blocks use ``nn.MultiheadAttention``, which fuses q/k/v into one weight and never
    calls ``out_proj.forward()`` (it reads ``out_proj.weight`` directly), so wrapping
    ``out_proj`` in place would be silently ignored. We therefore swap the attention module
    for ``SplitAttention``: four real linear layers and scaled-dot-product attention, numerically
    the same function. ``CustomResidualAttentionBlock``'s ``Attention`` gets the same treatment
    (``SplitCustomAttention``), keeping its optional extras (qk-norm, cosine attention, ...).
  * ``detach_pools`` puts the original modules back with the merged weights written into
    them, so a merged model is plain open_clip again: same keys, same forward code.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import (Attention, CustomResidualAttentionBlock,
                                   ResidualAttentionBlock)

from .config import DACConfig
from .pool import ExpertPoolLinear, RouteToken
from .poolset import PoolSet

_ORIGINAL = "_r1lab_original"   # attribute holding the replaced module (not a submodule)


def _frozen_linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.requires_grad_(False)
    return lin


def _split_qkv(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> List[nn.Linear]:
    d = weight.shape[1]
    return [_frozen_linear(weight[i * d:(i + 1) * d], None if bias is None else bias[i * d:(i + 1) * d])
            for i in range(3)]


def _to_float_mask(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """nn.MultiheadAttention's bool masks mean "not allowed"; SDPA's mean "allowed".
    An additive float mask means the same to both, so convert bools to -inf / 0."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


class SplitAttention(nn.Module):
    """Drop-in for open_clip's batch-first ``nn.MultiheadAttention`` with q, k, v and o as
    separate modules, each a frozen ``nn.Linear`` or an ``ExpertPoolLinear``.

    attn(x) = o( softmax(q(x) k(x)^T / sqrt(d_h) + mask) v(x) ), heads split on the last dim.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise NotImplementedError("r1lab supports open_clip's batch-first self-attention only")
        self.num_heads = mha.num_heads
        self.dropout = mha.dropout
        self.q, self.k, self.v = _split_qkv(mha.in_proj_weight.detach(),
                                            None if mha.in_proj_bias is None else mha.in_proj_bias.detach())
        self.o = _frozen_linear(mha.out_proj.weight.detach(),
                                None if mha.out_proj.bias is None else mha.out_proj.bias.detach())
        object.__setattr__(self, _ORIGINAL, mha)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        N, L, C = t.shape
        return t.view(N, L, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, query, key=None, value=None, key_padding_mask=None,
                need_weights=False, attn_mask=None, **unused):
        if key_padding_mask is not None:
            raise NotImplementedError("key_padding_mask is not used by CLIP and not supported")
        key = query if key is None else key
        value = query if value is None else value
        N, L, C = query.shape
        mask = _to_float_mask(attn_mask, query.dtype)
        if mask is not None and mask.dim() == 3:     # (N*heads, L, S) as nn.MultiheadAttention takes it
            mask = mask.view(N, self.num_heads, L, -1)
        x = F.scaled_dot_product_attention(
            self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value)),
            attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x.transpose(1, 2).reshape(N, L, C)
        return self.o(x), None

    @torch.no_grad()
    def restore(self) -> nn.MultiheadAttention:
        """The original module with the current (merged) q/k/v/o weights written into it."""
        # the stashed original is not a submodule, so model.to(...) after attaching did not
        # move it: give it the current weights' device and dtype before copying them in
        w = _base(self.q).weight
        mha = getattr(self, _ORIGINAL).to(device=w.device, dtype=w.dtype)
        mha.in_proj_weight.copy_(torch.cat([_base(self.q).weight, _base(self.k).weight, _base(self.v).weight]))
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.copy_(torch.cat([_base(self.q).bias, _base(self.k).bias, _base(self.v).bias]))
        mha.out_proj.weight.copy_(_base(self.o).weight)
        if mha.out_proj.bias is not None:
            mha.out_proj.bias.copy_(_base(self.o).bias)
        return mha


class SplitCustomAttention(nn.Module):
    """Drop-in for open_clip's ``Attention`` (used by ``CustomResidualAttentionBlock``) with
    separate q, k, v, o modules; keeps its qk-norm, scaled-cosine, head-scale and inner-norm."""

    def __init__(self, att: Attention):
        super().__init__()
        self.num_heads, self.scale = att.num_heads, att.scale
        self.logit_scale_max = att.logit_scale_max
        self.q, self.k, self.v = _split_qkv(att.in_proj_weight.detach(),
                                            None if att.in_proj_bias is None else att.in_proj_bias.detach())
        self.o = _frozen_linear(att.out_proj.weight.detach(),
                                None if att.out_proj.bias is None else att.out_proj.bias.detach())
        # the extras are shared with the original module (frozen, read-only here)
        self.ln_q, self.ln_k, self.ln_inner = att.ln_q, att.ln_k, att.ln_inner
        self.attn_drop, self.out_drop = att.attn_drop, att.out_drop
        self.logit_scale, self.head_scale = att.logit_scale, att.head_scale
        object.__setattr__(self, _ORIGINAL, att)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None):
        N, L, C = x.shape
        heads = lambda t: t.reshape(N, L, self.num_heads, -1).transpose(1, 2)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.reshape(N, self.num_heads, L, L)
        attn_mask = _to_float_mask(attn_mask, q.dtype)
        if self.logit_scale is not None:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
            attn = attn * torch.clamp(self.logit_scale, max=self.logit_scale_max).exp()
            if attn_mask is not None:
                attn = attn + attn_mask
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        else:
            x = F.scaled_dot_product_attention(
                self.ln_q(q), self.ln_k(k), v, attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.0)
        if self.head_scale is not None:
            x = x * self.head_scale
        x = self.ln_inner(x.transpose(1, 2).reshape(N, L, C))
        return self.out_drop(self.o(x))

    @torch.no_grad()
    def restore(self) -> Attention:
        w = _base(self.q).weight
        att = getattr(self, _ORIGINAL).to(device=w.device, dtype=w.dtype)  # see SplitAttention.restore
        att.in_proj_weight.copy_(torch.cat([_base(self.q).weight, _base(self.k).weight, _base(self.v).weight]))
        if att.in_proj_bias is not None:
            att.in_proj_bias.copy_(torch.cat([_base(self.q).bias, _base(self.k).bias, _base(self.v).bias]))
        att.out_proj.weight.copy_(_base(self.o).weight)
        if att.out_proj.bias is not None:
            att.out_proj.bias.copy_(_base(self.o).bias)
        return att


def _base(m: nn.Module) -> nn.Linear:
    return m.base if isinstance(m, ExpertPoolLinear) else m


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


def attach_pools(model: nn.Module, cfg: DACConfig) -> PoolSet:
    """Freeze ``model`` and put an ``ExpertPoolLinear`` on every target of every chosen block.

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
                pool = ExpertPoolLinear(getattr(parent, t), cfg, route_token=tokens[tower])
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


def iter_pools(model: nn.Module) -> Iterator[Tuple[str, ExpertPoolLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, ExpertPoolLinear):
            yield name, m
