"""Attention with real linear layers, so that pools can wrap q, k, v and o (docs/method.md
sec. 2): the one other module, besides attach.py, that knows open_clip's internals (tested
against the pinned open_clip 3.3.0).

open_clip's default blocks use ``nn.MultiheadAttention``, which fuses q/k/v into one weight
``in_proj_weight`` (3d x d) and never calls ``out_proj.forward()`` (it reads ``out_proj.weight``
directly), so a wrapper placed on ``out_proj`` would be silently ignored. ``SplitAttention``
replaces it with four ``nn.Linear`` layers q, k, v, o and scaled-dot-product attention:
numerically the same function. ``SplitCustomAttention`` does the same for the ``Attention`` of
``CustomResidualAttentionBlock``, keeping its optional extras (qk-norm, cosine attention, ...).

Both keep the replaced module (``ORIGINAL``), so ``detach_pools`` can put it back with the merged
weights written into it.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import Attention

ORIGINAL = "_r1lab_original"   # attribute holding the replaced module (not a submodule)


def _base(m: nn.Module) -> nn.Linear:
    """The plain linear behind q, k, v or o: a pool's frozen ``base`` (with its merges), or the
    linear itself."""
    return m.base if isinstance(getattr(m, "base", None), nn.Linear) else m


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
        object.__setattr__(self, ORIGINAL, mha)

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
        return _write_back(self)


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
        object.__setattr__(self, ORIGINAL, att)

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
        return _write_back(self)


@torch.no_grad()
def _write_back(split: nn.Module) -> nn.Module:
    """The module a split attention replaced, with its current (merged) q/k/v/o weights written
    into the fused ``in_proj`` and ``out_proj``. The stashed original is not a submodule, so
    ``model.to(...)`` after attaching did not move it: it first gets the weights' device and
    dtype."""
    q, k, v, o = (_base(m) for m in (split.q, split.k, split.v, split.o))
    orig = getattr(split, ORIGINAL).to(device=q.weight.device, dtype=q.weight.dtype)
    orig.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
    if orig.in_proj_bias is not None:
        orig.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
    orig.out_proj.weight.copy_(o.weight)
    if orig.out_proj.bias is not None:
        orig.out_proj.bias.copy_(o.bias)
    return orig
