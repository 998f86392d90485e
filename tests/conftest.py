"""Shared fixtures: small open_clip CLIPs built from dict configs (no weights, no internet).

Two block types matter to r1lab (see ``r1lab/attach.py``):
  * "default": ``ResidualAttentionBlock`` with ``nn.MultiheadAttention`` (what ViT-B/16 uses)
  * "custom":  ``CustomResidualAttentionBlock`` with open_clip's own ``Attention``; open_clip
    selects it when any of qk_norm / scale_heads / scale_attn_inner / scale_attn / scale_fc
    is set in a tower config. (scaled_cosine_attn is left out: stock open_clip 3.3.0 cannot
    run it, its ``Attention`` calls ``torch.bmm`` on 4-D tensors.)

Models are expensive only for ViT-B/16 (a few seconds to build), so the session builds each
model once and tests take ``copy.deepcopy`` of it before changing anything.
"""
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread by default: on a shared 2-core machine (load average 6), two OpenMP
# threads made this suite 5x slower (262 s against 48 s), because every parallel op waits for
# a descheduled thread. R1LAB_TEST_THREADS=0 keeps torch's own choice.
_threads = int(os.environ.get("R1LAB_TEST_THREADS", "1"))
if _threads > 0:
    torch.set_num_threads(_threads)

VITB16 = "ViT-B-16-quickgelu"

# width 64, 2 heads, 2 blocks per tower; the text tower keeps CLIP's vocabulary and context so
# the real tokenizer (start-of-text 49406, end-of-text 49407 = the largest id) can be used
TINY_CFG = dict(
    embed_dim=32,
    quick_gelu=True,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=2.0),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2, mlp_ratio=2.0),
)
# options that make open_clip build CustomResidualAttentionBlock in each tower
CUSTOM_VISION = dict(qk_norm=True, scale_heads=True, scale_attn_inner=True)
CUSTOM_TEXT = dict(qk_norm=True, scale_attn=True, scale_fc=True)

BLOCK_TYPES = ("default", "custom")
PROMPTS = ["a photo of a cat.", "a blurry photo of a very large red truck on a road."]


def tiny_cfg(block_type: str = "default") -> dict:
    """open_clip model config (the dict ``open_clip.CLIP(**cfg)`` takes) of the tiny CLIP."""
    cfg = copy.deepcopy(TINY_CFG)
    if block_type == "custom":
        cfg["vision_cfg"].update(CUSTOM_VISION)
        cfg["text_cfg"].update(CUSTOM_TEXT)
    elif block_type != "default":
        raise ValueError(block_type)
    return cfg


def perturb_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give LayerNorms and head scales non-trivial values (they start at 1 and 0), so that a
    bug that skips one of the custom extras (qk-norm, inner norm, ...) changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn(module.weight.shape, generator=g))
                module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=g))
            head_scale = getattr(module, "head_scale", None)
            if isinstance(head_scale, torch.nn.Parameter):
                head_scale.add_(0.1 * torch.randn(head_scale.shape, generator=g))


def make_tiny(block_type: str = "default", seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**tiny_cfg(block_type))
    perturb_norms(model, seed)
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return open_clip.get_tokenizer(VITB16)


@pytest.fixture(scope="session")
def tiny_models():
    """{"default": model, "custom": model}; never modify these, deepcopy them."""
    return {bt: make_tiny(bt) for bt in BLOCK_TYPES}


@pytest.fixture(scope="session")
def vitb16():
    """Stock ViT-B/16 (QuickGELU) with random weights; never modify it, deepcopy it."""
    torch.manual_seed(0)
    return open_clip.create_model(VITB16, pretrained=None)


@pytest.fixture(scope="session")
def tiny_images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def tiny_texts(tokenizer):
    return tokenizer(PROMPTS + ["itap of a dog"])


def embeddings(model, images, texts):
    """(image features, text features), unnormalised, without autograd."""
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts)


def randomize_B(pools, std: float = 0.05, seed: int = 0) -> None:
    """Give every pool a non-zero B (a trained-looking pool) from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pool in pools.values():
            pool.B.copy_(std * torch.randn(pool.B.shape, generator=g))


@pytest.fixture(scope="session")
def vitb16_paper(vitb16):
    """(model, pools): a copy of ``vitb16`` with the paper preset attached (B = 0).
    Read-only for tests: never train, merge or detach it."""
    from r1lab import DACConfig, attach_pools
    model = copy.deepcopy(vitb16)
    torch.manual_seed(0)
    pools = attach_pools(model, DACConfig.paper())
    return model, pools


def stock_weight(model, pool_name: str) -> torch.Tensor:
    """The rows of a *stock* open_clip weight that the pool ``pool_name`` adapts, written
    from open_clip's own layout (independently of r1lab.attach): q, k, v are the three
    row blocks of the fused ``attn.in_proj_weight``; o is ``attn.out_proj.weight``."""
    module_name, target = pool_name.rsplit(".", 1)
    module = model.get_submodule(module_name)        # ...attn or ...mlp
    if target in ("q", "k", "v"):
        d = module.in_proj_weight.shape[1]
        i = "qkv".index(target)
        return module.in_proj_weight[i * d:(i + 1) * d]
    if target == "o":
        return module.out_proj.weight
    return getattr(module, target).weight


# ----------------------------------------------------------------------------- test lanes
# README, "Contributing": `pytest -m "not slow"` is the fast lane (the library tests without the
# multi-process, ViT-B/16 end-to-end and same-numbers runs); `bash scripts/test.sh` runs every
# lane: tests/, the notebooks under nbval (marked notebook) and the browser test (marked browser).
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = str(item.fspath)
        if path.endswith(".ipynb"):
            item.add_marker(pytest.mark.notebook)
            item.add_marker(pytest.mark.slow)
        elif "tests_browser" in path:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
