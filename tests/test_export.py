"""End of task and export (docs/method.md sec. 6): the merged model is plain open_clip again.

References: a fresh stock open_clip model that loads the exported weights (``strict=True``),
open_clip's own ``create_model`` reading the saved safetensors file, and weights edited by
hand in open_clip's layout.
"""
import copy
import json

import open_clip
import pytest
import torch
import torch.nn as nn
from open_clip.transformer import Attention
from safetensors.torch import load_file

from conftest import BLOCK_TYPES, VITB16, embeddings, randomize_B, stock_weight, tiny_cfg
from r1lab import (DACConfig, ExpertPoolLinear, attach_pools, detach_pools, merged_state_dict,
                   save_merged)
from r1lab.attention import SplitAttention, SplitCustomAttention


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def train_forwards(model, images, texts, steps=2):
    """Training-mode forwards (no optimiser): fills every pool's activation counts."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model.encode_image(images[i:] if i else images)
            model.encode_text(texts[i:] if i else texts)
    model.eval()


def adapted(block_type, tiny_models, images, texts, cfg=None, seed=0):
    """A tiny model with pools, random B and real activation counts (one task's state)."""
    model = copy.deepcopy(tiny_models[block_type])
    torch.manual_seed(seed)
    pools = attach_pools(model, cfg or DACConfig.tiny().replace(dropout=0.0))
    randomize_B(pools, std=0.2, seed=seed)
    train_forwards(model, images, texts)
    return model, pools


# ----------------------------------------------------------------------------- merging in the model
@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_merge_all_keeps_the_function(tiny_models, tiny_images, tiny_texts, block_type):
    """merge_k = top_k = rank: the merged model computes what the un-merged one did (eval,
    dropout off), and its pools start from B = 0."""
    cfg = DACConfig.plain_lora(DACConfig.tiny()).replace(dropout=0.0)
    model, pools = adapted(block_type, tiny_models, tiny_images, tiny_texts, cfg)
    before = embeddings(model, tiny_images, tiny_texts)
    assert max_diff(before, embeddings(tiny_models[block_type], tiny_images, tiny_texts)) > 1e-3
    merged = pools.end_task()
    assert all(T.tolist() == list(range(12)) for T in merged.values())
    assert all(torch.count_nonzero(p.B) == 0 for p in pools.values())
    assert max_diff(embeddings(model, tiny_images, tiny_texts), before) < 1e-5


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_partial_merge_in_open_clip_layout(tiny_models, tiny_images, tiny_texts, block_type):
    """k = 8, m = 4: every exported weight is W0 + s B[:, T] A[T, :] with T = top-4 counts,
    in open_clip's own layout (fused in_proj rows for q, k, v)."""
    original = tiny_models[block_type]
    model, pools = adapted(block_type, tiny_models, tiny_images, tiny_texts)
    expected = copy.deepcopy(original)
    with torch.no_grad():
        for name, pool in pools.items():
            order = sorted(range(12), key=lambda i: (-pool.counts[i].item(), i))
            T = sorted(order[:4])
            stock_weight(expected, name).add_((1 / 12) * (pool.B[:, T] @ pool.A[T, :]))
            assert pool.critical().tolist() == T
    pools.end_task()
    sd, ref = merged_state_dict(model), expected.state_dict()
    for key in ref:
        assert torch.allclose(sd[key], ref[key], atol=1e-7, rtol=0), key
    fresh = open_clip.CLIP(**tiny_cfg(block_type))
    fresh.load_state_dict(sd, strict=True)
    fresh.eval()
    assert max_diff(embeddings(fresh, tiny_images, tiny_texts), embeddings(model, tiny_images, tiny_texts)) < 1e-5


def test_unmerged_experts_do_not_leave_the_model(tiny_models, tiny_images, tiny_texts):
    """Export writes only what was merged; the current task's un-merged pool is dropped."""
    model, pools = adapted("default", tiny_models, tiny_images, tiny_texts)
    pools.end_task()
    randomize_B(pools, std=0.2, seed=7)                  # a second task in progress
    with pools.disabled():
        merged_only = embeddings(model, tiny_images, tiny_texts)
    assert max_diff(embeddings(model, tiny_images, tiny_texts), merged_only) > 1e-3
    fresh = open_clip.CLIP(**tiny_cfg("default")).eval()
    fresh.load_state_dict(merged_state_dict(model), strict=True)
    assert max_diff(embeddings(fresh, tiny_images, tiny_texts), merged_only) < 1e-5


# ----------------------------------------------------------------------------- merged_state_dict
@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_merged_state_dict_has_stock_keys_and_loads_strictly(tiny_models, tiny_images, tiny_texts, block_type):
    model, pools = adapted(block_type, tiny_models, tiny_images, tiny_texts)
    pools.end_task()
    sd = merged_state_dict(model)
    stock = open_clip.CLIP(**tiny_cfg(block_type)).state_dict()
    assert list(sd) == list(stock)
    assert all(sd[k].shape == stock[k].shape and sd[k].dtype == stock[k].dtype for k in sd)
    fresh = open_clip.CLIP(**tiny_cfg(block_type)).eval()
    fresh.load_state_dict(sd, strict=True)
    assert max_diff(embeddings(fresh, tiny_images, tiny_texts), embeddings(model, tiny_images, tiny_texts)) < 1e-5
    # the adapted model itself is untouched
    assert len(list(m for m in model.modules() if isinstance(m, ExpertPoolLinear))) == len(pools)


# ----------------------------------------------------------------------------- files
def test_save_merged_reads_back_with_open_clip_tiny(tiny_models, tiny_images, tiny_texts, tmp_path):
    model, pools = adapted("custom", tiny_models, tiny_images, tiny_texts)
    pools.end_task()
    folder = tmp_path / "merged"
    folder.mkdir()
    save_merged(model, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_cfg("custom")}))
    loaded = open_clip.create_model(f"local-dir:{folder}").eval()   # open_clip's own loader
    want = embeddings(model, tiny_images, tiny_texts)
    assert max_diff(embeddings(loaded, tiny_images, tiny_texts), want) < 1e-5
    fresh = open_clip.CLIP(**tiny_cfg("custom")).eval()
    fresh.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")), strict=True)
    assert max_diff(embeddings(fresh, tiny_images, tiny_texts), want) < 1e-5


@pytest.mark.slow
def test_save_merged_reads_back_with_open_clip_vitb16(vitb16, vitb16_paper, tokenizer, tmp_path):
    """The paper preset's export has exactly stock ViT-B/16's keys and loads with
    ``open_clip.create_model(name, pretrained=path)``. (Nothing is merged in this shared,
    read-only model: the merge itself is checked on the tiny CLIPs above.)"""
    model, _ = vitb16_paper
    path = tmp_path / "merged.safetensors"
    save_merged(model, path)
    sd, stock = load_file(str(path)), vitb16.state_dict()
    assert sorted(sd) == sorted(stock)
    assert all(torch.equal(sd[k], stock[k]) for k in stock)
    assert any(isinstance(m, ExpertPoolLinear) for m in model.modules())   # left attached
    loaded = open_clip.create_model(VITB16, pretrained=str(path)).eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    texts = tokenizer(["a photo of a cat."])
    assert max_diff(embeddings(loaded, images, texts), embeddings(vitb16.eval(), images, texts)) < 1e-5


# ----------------------------------------------------------------------------- detach_pools
@pytest.mark.parametrize("block_type, attention", [("default", nn.MultiheadAttention),
                                                   ("custom", Attention)])
def test_detach_restores_stock_modules(tiny_models, tiny_images, tiny_texts, block_type, attention):
    cfg = DACConfig.tiny().replace(dropout=0.0, text_route_token="eot")
    model, pools = adapted(block_type, tiny_models, tiny_images, tiny_texts, cfg)
    pools.end_task()
    want = embeddings(model, tiny_images, tiny_texts)
    eot_hooks = lambda m: [h for h in m.token_embedding._forward_pre_hooks.values() if getattr(h, "_r1lab", False)]
    merged_state_dict(model)                             # detaches a deep copy only
    assert len(eot_hooks(model)) == 1
    assert detach_pools(model) is model
    assert eot_hooks(model) == []
    for m in model.modules():
        assert not isinstance(m, (ExpertPoolLinear, SplitAttention, SplitCustomAttention))
        assert not any(getattr(h, "_r1lab", False) for h in m._forward_pre_hooks.values())
    for tower in (model.visual.transformer, model.transformer):
        for block in tower.resblocks:
            assert type(block.attn) is attention
            assert type(block.mlp.c_fc) is nn.Linear and type(block.mlp.c_proj) is nn.Linear
    assert list(model.state_dict()) == list(tiny_models[block_type].state_dict())
    assert max_diff(embeddings(model, tiny_images, tiny_texts), want) < 1e-5
    assert detach_pools(model) is model                  # a no-op the second time
    attach_pools(model, cfg)                             # and a new attach works


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_detach_follows_dtype_changes_after_attach(tiny_models, tiny_images, tiny_texts, block_type):
    """``model.to(...)`` after attaching must carry over to the restored attention modules
    (the originals are stashed outside the module tree)."""
    model, pools = adapted(block_type, tiny_models, tiny_images, tiny_texts)
    pools.end_task()
    want = embeddings(model, tiny_images, tiny_texts)
    model.double()
    detach_pools(model)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    got = embeddings(model, tiny_images.double(), tiny_texts)
    assert max_diff(got, [w.double() for w in want]) < 1e-5


# ----------------------------------------------------------------------------- adapter checkpoints
@pytest.mark.parametrize("cfg", [DACConfig.tiny().replace(dropout=0.0),
                                 DACConfig.tiny().replace(dropout=0.0, ago_past="merged"),
                                 DACConfig.plain_lora(DACConfig.tiny()).replace(dropout=0.0)],
                         ids=["dac", "dac-merged-past", "lora"])
def test_adapter_state_replays_merges_bit_for_bit(tiny_models, tiny_images, tiny_texts, cfg):
    """Two tasks, then ``load_adapter_state(replay_merges=True)`` on a fresh attached copy of
    the original model reproduces every merged base weight exactly."""
    model, pools = adapted("default", tiny_models, tiny_images, tiny_texts, cfg)
    pools.end_task()
    randomize_B(pools, std=0.2, seed=3)
    train_forwards(model, tiny_images, tiny_texts)
    pools.end_task()
    randomize_B(pools, std=0.2, seed=4)                  # task 3 in progress
    train_forwards(model, tiny_images, tiny_texts)
    state = pools.adapter_state()

    fresh = copy.deepcopy(tiny_models["default"])
    fresh_pools = attach_pools(fresh, cfg)
    fresh_pools.load_adapter_state(state, replay_merges=True)
    for name, pool in pools.items():
        other = fresh_pools[name]
        assert torch.equal(other.base.weight, pool.base.weight), name
        assert torch.equal(other.base.bias, pool.base.bias), name
        for key in ("A", "B", "counts", "past_B", "merged_A", "merged_B", "router.weight"):
            assert torch.equal(other.state_dict()[key], pool.state_dict()[key]), (name, key)
    assert max_diff(embeddings(fresh, tiny_images, tiny_texts), embeddings(model, tiny_images, tiny_texts)) == 0
    with pytest.raises(KeyError):
        fresh_pools.load_adapter_state({k: v for k, v in state.items() if "visual" not in k})


@pytest.mark.parametrize("router", ["frozen", "ste"])
def test_export_right_after_a_training_step(tiny_models, tiny_images, tiny_texts, router):
    """``pool.last`` is a diagnostic: it must not keep autograd tensors, or the model can no
    longer be deep-copied (``merged_state_dict``) after a training forward."""
    model = copy.deepcopy(tiny_models["default"])
    pools = attach_pools(model, DACConfig.tiny().replace(router=router))
    model.train()
    loss = model.encode_image(tiny_images).square().sum() + model.encode_text(tiny_texts).square().sum()
    for pool in pools.values():
        assert all(t is None or t.grad_fn is None for t in vars(pool.last).values())
    loss.backward()
    sd = merged_state_dict(model)
    assert list(sd) == list(tiny_models["default"].state_dict())
    copy.deepcopy(model)
