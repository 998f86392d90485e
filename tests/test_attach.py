"""Attaching pools to stock open_clip (docs/method.md sec. 2), tested against open_clip itself.

The reference is always an untouched copy of the same open_clip model, or a stock model
whose weights were edited by hand: never r1lab's own forward.
"""
import copy

import pytest
import torch
import torch.nn as nn
from open_clip.transformer import Attention

from conftest import BLOCK_TYPES, embeddings, randomize_B, stock_weight
from r1lab import DACConfig, ExpertPoolLinear, attach_pools
from r1lab.attention import SplitAttention, SplitCustomAttention

TARGETS = ("q", "k", "v", "o", "c_fc", "c_proj")


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ----------------------------------------------------------------------------- B = 0 is the base model
@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_zero_B_equals_plain_open_clip_tiny(tiny_models, tiny_images, tiny_texts, block_type, mode, dropout):
    """With B = 0 the adapted model equals plain open_clip. Pool dropout acts on the LoRA
    branch only, so this holds in train mode with dropout > 0 as well."""
    ref = copy.deepcopy(tiny_models[block_type])
    model = copy.deepcopy(ref)
    pools = attach_pools(model, DACConfig.tiny().replace(dropout=dropout))
    assert len(pools) == 2 * 2 * 6
    getattr(model, mode)()
    getattr(ref, mode)()
    assert max_diff(embeddings(model, tiny_images, tiny_texts),
                    embeddings(ref, tiny_images, tiny_texts)) < 1e-5


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zero_B_equals_plain_open_clip_vitb16(vitb16, vitb16_paper, tokenizer, mode):
    model, pools = vitb16_paper
    assert isinstance(model.visual.transformer.resblocks[0].attn, SplitAttention)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    texts = tokenizer(["a photo of a cat.", "a satellite photo of a river."])
    try:
        getattr(model, mode)()
        getattr(vitb16, mode)()
        assert max_diff(embeddings(model, images, texts), embeddings(vitb16, images, texts)) < 1e-5
    finally:
        model.eval()
        vitb16.eval()


# ----------------------------------------------------------------------------- every pool is applied
@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_each_target_changes_the_output(tiny_models, tiny_images, tiny_texts, block_type):
    """A non-zero B on any single pool changes the tower's output. For ``o`` this is the
    open_clip pitfall: ``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling
    ``out_proj.forward()``, so a wrapped out_proj would be silently ignored."""
    model = copy.deepcopy(tiny_models[block_type])
    pools = attach_pools(model, DACConfig.tiny().replace(dropout=0.0))
    model.eval()
    base_img, base_txt = embeddings(model, tiny_images, tiny_texts)
    for prefix, tower in (("visual.transformer", "image"), ("transformer", "text")):
        for block in (0, 1):
            for t in TARGETS:
                name = f"{prefix}.resblocks.{block}.{'attn' if t in 'qkvo' else 'mlp'}.{t}"
                pool = pools[name]
                with torch.no_grad():
                    pool.B.normal_(0, 0.5)
                img, txt = embeddings(model, tiny_images, tiny_texts)
                changed, same = (img, txt) if tower == "image" else (txt, img)
                base_changed, base_same = (base_img, base_txt) if tower == "image" else (base_txt, base_img)
                assert (changed - base_changed).abs().max() > 1e-3, name
                assert torch.equal(same, base_same), name
                with torch.no_grad():
                    pool.B.zero_()


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_dense_pools_equal_stock_model_with_edited_weights(tiny_models, tiny_images, tiny_texts, block_type):
    """All experts active (plain LoRA): the adapted model equals a *stock* open_clip model
    whose weights were changed by hand to W0 + s B A in open_clip's own layout."""
    stock = copy.deepcopy(tiny_models[block_type])
    model = copy.deepcopy(stock)
    pools = attach_pools(model, DACConfig.plain_lora(DACConfig.tiny()).replace(dropout=0.0))
    randomize_B(pools, std=0.2)
    with torch.no_grad():
        for name, pool in pools.items():
            stock_weight(stock, name).add_((1 / 12) * pool.B @ pool.A)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        getattr(stock, mode)()
        adapted = embeddings(model, tiny_images, tiny_texts)
        assert max_diff(adapted, embeddings(stock, tiny_images, tiny_texts)) < 1e-5
    assert max_diff(adapted, embeddings(tiny_models[block_type], tiny_images, tiny_texts)) > 1e-3


# ----------------------------------------------------------------------------- freezing
@pytest.mark.parametrize("router, trainable", [("frozen", {"A", "B"}),
                                               ("gate", {"A", "B", "router.weight", "router.bias"})])
def test_only_adapter_parameters_train(tiny_models, tiny_images, tiny_texts, router, trainable):
    model = copy.deepcopy(tiny_models["default"])
    pools = attach_pools(model, DACConfig.tiny().replace(router=router))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {f"{pool}.{t}" for pool in pools for t in trainable}
    assert len(pools.trainable_parameters()) == len(pools) * len(trainable)
    randomize_B(pools)
    model.train()
    loss = model.encode_image(tiny_images).square().sum() + model.encode_text(tiny_texts).square().sum()
    loss.backward()
    for n, p in model.named_parameters():
        if n in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n                   # frozen parts get no gradient


def test_pool_names_and_subsets(tiny_models):
    model = copy.deepcopy(tiny_models["default"])
    cfg = DACConfig.tiny().replace(towers=("text",), targets=("o", "c_proj"), blocks=(1,))
    pools = attach_pools(model, cfg)
    assert list(pools) == ["transformer.resblocks.1.attn.o", "transformer.resblocks.1.mlp.c_proj"]
    assert isinstance(model.transformer.resblocks[0].attn, nn.MultiheadAttention)
    assert isinstance(model.visual.transformer.resblocks[1].mlp.c_fc, nn.Linear)
    assert isinstance(model.transformer.resblocks[1].mlp.c_fc, nn.Linear)
    assert isinstance(model.transformer.resblocks[1].mlp.c_proj, ExpertPoolLinear)
    assert model.get_submodule("transformer.resblocks.1.attn.o") is pools["transformer.resblocks.1.attn.o"]
    assert list(pools.tower("image")) == [] and len(pools.tower("text")) == 2
    with pytest.raises(RuntimeError, match="already has pools"):
        attach_pools(model, cfg)


def test_custom_blocks_get_split_custom_attention(tiny_models):
    model = copy.deepcopy(tiny_models["custom"])
    original = model.visual.transformer.resblocks[0].attn
    assert isinstance(original, Attention)
    attach_pools(model, DACConfig.tiny())
    split = model.visual.transformer.resblocks[0].attn
    assert isinstance(split, SplitCustomAttention)
    assert split.ln_q is original.ln_q and not isinstance(split.ln_q, nn.Identity)  # qk-norm kept


def test_missing_blocks_raise(tiny_models):
    model = copy.deepcopy(tiny_models["default"])
    with pytest.raises(ValueError, match="blocks \\[5\\] do not exist"):
        attach_pools(model, DACConfig.tiny().replace(blocks=(0, 5)))


# ----------------------------------------------------------------------------- split attention alone
def _masks(N, heads, L):
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)              # True = not allowed
    additive = torch.zeros(L, L).masked_fill(causal, float("-inf"))
    g = torch.Generator().manual_seed(0)
    per_head = torch.randn(N * heads, L, L, generator=g)              # (N*heads, L, L) float
    return {"none": None, "bool": causal, "float": additive, "3d": per_head}


@pytest.mark.parametrize("mask", ["none", "bool", "float", "3d"])
def test_split_attention_matches_multihead_attention(mask):
    """SplitAttention computes nn.MultiheadAttention's function, with every mask form that
    nn.MultiheadAttention accepts from open_clip (bool = "not allowed", additive float, 3-D)."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    split = SplitAttention(copy.deepcopy(mha)).eval()
    x = torch.randn(3, 5, 16)
    m = _masks(3, 2, 5)[mask]
    want = mha(x, x, x, need_weights=False, attn_mask=m)[0]
    got = split(x, x, x, need_weights=False, attn_mask=m)[0]
    assert torch.allclose(got, want, atol=1e-5)
    restored = split.restore()
    assert type(restored) is nn.MultiheadAttention
    assert torch.allclose(restored(x, x, x, need_weights=False, attn_mask=m)[0], want, atol=1e-6)


@pytest.mark.parametrize("mask", ["none", "bool", "float", "3d"])
@pytest.mark.parametrize("extras", [dict(qk_norm=True, scale_heads=True, inner_norm=True), {}])
def test_split_custom_attention_matches_open_clip_attention(mask, extras):
    torch.manual_seed(0)
    att = Attention(16, num_heads=2, **extras).eval()
    with torch.no_grad():
        for p in att.parameters():
            p.add_(0.1 * torch.randn_like(p))
    split = SplitCustomAttention(copy.deepcopy(att)).eval()
    x = torch.randn(3, 5, 16)
    m = _masks(3, 2, 5)[mask]
    want = att(x, attn_mask=m)
    assert torch.allclose(split(x, attn_mask=m), want, atol=1e-5)
    assert torch.allclose(split.restore()(x, attn_mask=m), want, atol=1e-6)


def test_attach_undoes_everything_when_a_pool_fails_midway(tiny_models, monkeypatch):
    """Validation catches bad targets first; should a pool still fail while attaching (here the
    20th), every change made so far is undone."""
    import r1lab.attach as attach_mod
    model = copy.deepcopy(tiny_models["default"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    made = []

    class Failing(ExpertPoolLinear):
        def __init__(self, *a, **k):
            made.append(1)
            if len(made) == 20:
                raise RuntimeError("out of memory (planted)")
            super().__init__(*a, **k)
    with pytest.raises(RuntimeError, match="planted"):
        attach_mod.attach_pools(model, DACConfig.tiny().replace(text_route_token="eot"),
                                pool_class=Failing)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
    monkeypatch.undo()
    assert len(attach_pools(model, DACConfig.tiny())) == 2 * 2 * 6
