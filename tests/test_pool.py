"""The rank-1 expert pool (docs/method.md sec. 1, 3-6), checked against hand-written formulas.

Every expected value here is computed without ``ExpertPoolLinear``'s own code: plain
``x @ W.T`` algebra, hand-picked router scores, hand-counted votes.
"""
import copy

import pytest
import torch

import r1lab
import torch.nn as nn

from r1lab import DACConfig, ExpertPoolLinear, attach_pools


def make_pool(d_in=6, d_out=5, seed=0, **cfg) -> ExpertPoolLinear:
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out)
    pool = r1lab.make_pool(base, DACConfig(**{"dropout": 0.0, **cfg}))
    return pool


def random_B_(pool, seed=1, std=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pool.B.copy_(std * torch.randn(pool.B.shape, generator=g))


def lora_reference(pool, x, mask):
    """y = W0 x + b + s * B diag(mask_n) A x, written out by hand. mask: (N, r)."""
    W0, b0 = pool.base.weight.detach(), pool.base.bias.detach()
    A, B, s = pool.A.detach(), pool.B.detach(), pool.cfg.alpha / pool.cfg.rank
    z = x @ A.T                                   # (N, L, r)
    return x @ W0.T + b0 + s * (z * mask[:, None, :]) @ B.T


# ----------------------------------------------------------------------------- init / decomposition
def test_fresh_pool_is_the_base_layer():
    pool = make_pool(d_in=16, rank=12)
    assert torch.count_nonzero(pool.B) == 0                         # B = 0 ...
    assert torch.count_nonzero(pool.A) > 0
    assert pool.A.abs().max() <= 1 / 16 ** 0.5                     # Kaiming-uniform(a=sqrt 5)
    assert torch.count_nonzero(pool.delta_weight()) == 0            # ... so Delta W = 0
    assert torch.equal(pool.counts, torch.zeros(12, dtype=torch.long))
    assert pool.past_B.shape == (5, 0) and pool.merged_A.shape == (0, 16)
    assert not pool.base.weight.requires_grad and not pool.base.bias.requires_grad
    assert not pool.router.weight.requires_grad and not pool.router.bias.requires_grad
    assert pool.A.requires_grad and pool.B.requires_grad
    assert pool.weight is pool.base.weight and pool.bias is pool.base.bias
    x = torch.randn(3, 7, 16)
    for mode in ("train", "eval"):
        getattr(pool, mode)()
        assert torch.equal(pool(x), pool.base(x))


def test_zero_B_is_exact_even_with_dropout():
    """Dropout sits on the LoRA branch only, so with B = 0 the output is W0 x + b exactly."""
    torch.manual_seed(0)
    pool = ExpertPoolLinear(nn.Linear(8, 4), DACConfig(dropout=0.5)).train()
    x = torch.randn(4, 5, 8)
    assert torch.equal(pool(x), pool.base(x))


def test_experts_sum_to_BA():
    pool = make_pool(d_in=7, d_out=9, rank=12)
    random_B_(pool)
    s = 1 / 12
    experts = [pool.expert(i) for i in range(12)]
    for i, E in enumerate(experts):
        assert torch.linalg.matrix_rank(E) == 1
        assert torch.allclose(E, s * pool.B[:, i:i + 1] @ pool.A[i:i + 1, :])
    BA = s * pool.B.detach() @ pool.A.detach()
    assert torch.allclose(torch.stack(experts).sum(0), pool.delta_weight(), atol=1e-6)
    assert torch.allclose(pool.delta_weight(), BA, atol=1e-7)
    T = [1, 4, 7]
    assert torch.allclose(pool.delta_weight(T), sum(experts[i] for i in T), atol=1e-6)


def test_all_experts_active_is_a_dense_lora():
    """top_k = rank: every expert on, y = W0 x + b + s B A x (hand-written dense LoRA)."""
    pool = make_pool(rank=4, top_k=4, merge_k=4, alpha=2.0)
    random_B_(pool)
    x = torch.randn(3, 5, 6)
    W0, b0, A, B = (t.detach() for t in (pool.base.weight, pool.base.bias, pool.A, pool.B))
    expected = x @ W0.T + b0 + 0.5 * (x @ A.T) @ B.T
    for mode in ("train", "eval"):
        getattr(pool, mode)()
        assert torch.allclose(pool(x), expected, atol=1e-6)
    # a dense LoRA does not route; every sample hits every expert
    assert torch.equal(pool.last.hits, torch.full((4,), 3))
    assert torch.equal(pool.last.mask, torch.ones(3, 4))


# ----------------------------------------------------------------------------- routing by hand
# Router logits per sample (rows: samples, columns: experts), r = 5, k = 3. Each sample's
# routing token is the one-hot e_n, so R h_n + bias = LOGITS[n] exactly.
LOGITS = torch.tensor([[3., 2., 1., -1., -2.],     # E_0 = {0, 1, 2}
                       [2., 3., -1., 1., -2.],     # E_1 = {0, 1, 3}
                       [1., -1., -2., 3., 2.],     # E_2 = {0, 3, 4}
                       [-1., 1., -2., 3., 2.]])    # E_3 = {1, 3, 4}
CHOSEN = [{0, 1, 2}, {0, 1, 3}, {0, 3, 4}, {1, 3, 4}]
HITS = [3, 3, 1, 3, 2]                              # c_i = sum_n 1[i in E_n]
ACTIVE = [0, 1, 3]                                  # TopK_3(c)


def hand_routed_pool(logits=LOGITS, **cfg):
    N, r = logits.shape
    pool = make_pool(d_in=N + 2, d_out=4, rank=r, top_k=3, merge_k=2, **cfg)
    random_B_(pool)
    bias = torch.tensor([0.5, -0.25, 0.0, 1.0, 0.125])
    with torch.no_grad():
        pool.router.weight.zero_()
        pool.router.weight[:, :N] = logits.T - bias[:, None]   # column n: sample n's logits
        pool.router.bias.copy_(bias)
    x = torch.randn(N, 3, N + 2)
    x[:, 0] = torch.eye(N, N + 2)                               # token 0 of sample n is e_n
    return pool, x


def test_batch_routing_by_hand():
    pool, x = hand_routed_pool()
    pool.train()
    y = pool(x)
    rt = pool.last
    assert torch.allclose(rt.scores, torch.softmax(LOGITS, -1), atol=1e-6)
    assert [set(row.tolist()) for row in rt.chosen] == CHOSEN
    assert rt.hits.tolist() == HITS
    assert rt.active.tolist() == ACTIVE
    mask = torch.zeros(4, 5)
    mask[:, ACTIVE] = 1.0                                       # one set for the whole batch
    assert torch.equal(rt.mask, mask)
    assert torch.allclose(y, lora_reference(pool, x, mask), atol=1e-6)
    # not weighted by p: the hard mask alone
    assert torch.allclose(y, pool.base(x) + pool.delta_weight(ACTIVE).matmul(x.unsqueeze(-1)).squeeze(-1),
                          atol=1e-6)


def test_vote_ties_go_to_the_lower_index():
    logits = torch.tensor([[3., 2., 1., -1., -2.],      # {0, 1, 2}
                           [-2., -1., 3., 2., 1.]])      # {2, 3, 4}
    pool, x = hand_routed_pool(logits)
    pool(x)
    assert pool.last.hits.tolist() == [1, 1, 2, 1, 1]
    assert pool.last.active.tolist() == [0, 1, 2]       # 2 wins; 0 and 1 win the tie


def test_per_sample_selection_by_hand():
    pool, x = hand_routed_pool(selection="sample")
    y = pool(x)
    rt = pool.last
    mask = torch.zeros(4, 5)
    for n, E in enumerate(CHOSEN):
        mask[n, list(E)] = 1.0
    assert rt.active is None
    assert torch.equal(rt.mask, mask)
    assert rt.hits.tolist() == HITS
    assert torch.allclose(y, lora_reference(pool, x, mask), atol=1e-6)


def test_counts_add_hits_in_training_only():
    pool, x = hand_routed_pool()
    pool.train()
    pool(x)
    pool(x)
    assert pool.counts.tolist() == [2 * h for h in HITS]
    pool.eval()
    with torch.no_grad():
        pool(x[:2])
    assert pool.counts.tolist() == [2 * h for h in HITS]       # evaluation does not count
    assert pool.last.hits.tolist() == [2, 2, 1, 1, 0]           # but it does route
    pool.reset()
    assert pool.counts.tolist() == [0] * 5


def test_disabled_pool_is_the_base_layer():
    pool, x = hand_routed_pool()
    pool.enabled = False
    assert torch.equal(pool(x), pool.base(x))
    assert pool.last is None


def test_router_reads_token_zero_after_the_branch_dropout():
    """docs/method.md sec. 3: the router's input is token 0 of the layer input *after* the
    LoRA-branch dropout; the base path sees the undropped input."""
    torch.manual_seed(0)
    pool = ExpertPoolLinear(nn.Linear(6, 4), DACConfig(rank=5, top_k=3, merge_k=2, dropout=0.5))
    random_B_(pool)
    pool.train()
    x = torch.randn(4, 3, 6)
    torch.manual_seed(123)
    y = pool(x)
    torch.manual_seed(123)
    xd = x * (torch.rand_like(x) >= 0.5) / 0.5                  # the same random draw
    scores = torch.softmax(pool.router(xd[:, 0]), -1)
    assert torch.allclose(pool.last.scores, scores.detach(), atol=1e-6)
    mask = pool.last.mask
    W0, b0, A, B = (t.detach() for t in (pool.base.weight, pool.base.bias, pool.A, pool.B))
    expected = x @ W0.T + b0 + 0.2 * ((xd @ A.T) * mask[:, None, :]) @ B.T
    assert torch.allclose(y, expected, atol=1e-6)


def test_branch_dropout_is_inverted_dropout():
    """BranchDropout keeps each element with probability 1 - p, scales kept ones by 1/(1 - p)
    (so the mean is unchanged), and is the identity in eval mode."""
    from r1lab.pool import BranchDropout
    d = BranchDropout(0.2)
    x = torch.ones(200_000)
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.8))
    assert abs(kept.float().mean().item() - 0.8) < 0.01 and abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(d.eval()(x), x)
    with pytest.raises(ValueError):
        BranchDropout(1.0)


# ----------------------------------------------------------------------------- gradients
def test_frozen_router_gets_no_gradient_and_only_active_experts_learn():
    pool, x = hand_routed_pool()
    pool.train()
    pool(x).square().sum().backward()
    assert pool.router.weight.grad is None and pool.router.bias.grad is None
    assert pool.base.weight.grad is None
    inactive = [i for i in range(5) if i not in ACTIVE]
    assert torch.count_nonzero(pool.A.grad[inactive]) == 0
    assert torch.count_nonzero(pool.B.grad[:, inactive]) == 0
    for i in ACTIVE:
        assert pool.A.grad[i].abs().sum() > 0 and pool.B.grad[:, i].abs().sum() > 0


@pytest.mark.parametrize("router", ["gate", "ste"])
def test_learned_routers_get_gradient(router):
    pool, x = hand_routed_pool(router=router)
    assert pool.router.weight.requires_grad
    pool.train()
    pool(x).square().sum().backward()
    assert pool.router.weight.grad is not None and pool.router.weight.grad.abs().sum() > 0
    assert pool.router.bias.grad.abs().sum() > 0
    inactive = [i for i in range(5) if i not in ACTIVE]
    assert torch.count_nonzero(pool.B.grad[:, inactive]) == 0   # still only active experts


def test_ste_forward_is_the_hard_mask():
    frozen, x = hand_routed_pool()
    ste, _ = hand_routed_pool(router="ste")
    assert type(ste) is not type(frozen)
    assert torch.allclose(ste(x), frozen(x), atol=1e-6)


def test_gate_weights_active_experts_by_renormalised_scores():
    pool, x = hand_routed_pool(router="gate")
    y = pool(x)
    p = torch.softmax(LOGITS, -1)
    mask = torch.zeros(4, 5)
    mask[:, ACTIVE] = 1.0
    g = p * mask
    w = g / g.sum(-1, keepdim=True) * 3                          # mean weight 1 on the active set
    assert torch.allclose(y, lora_reference(pool, x, w), atol=1e-5)


# ----------------------------------------------------------------------------- merging
def test_partial_merge_folds_top_m_by_counts():
    """k = 8, m = 4: W0 <- W0 + s B[:, T] A[T, :], T = the four most counted experts."""
    pool = make_pool(d_in=10, d_out=7)          # paper pool: r = 12, k = 8, m = 4
    random_B_(pool)
    counts = torch.tensor([5, 9, 9, 0, 7, 7, 7, 1, 2, 3, 4, 0])
    pool.counts.copy_(counts)
    T = [1, 2, 4, 5]                            # 9, 9, then 7 at 4 and 5 beat 7 at 6
    W0 = pool.base.weight.detach().clone()
    B, A = pool.B.detach().clone(), pool.A.detach().clone()
    assert pool.critical().tolist() == T
    merged = pool.end_task()
    assert merged.tolist() == T
    assert torch.equal(pool.base.weight, W0 + (1 / 12) * (B[:, T] @ A[T, :]))
    assert torch.equal(pool.merged_B, B[:, T]) and torch.equal(pool.merged_A, A[T, :])
    # a fresh pool for the next task
    assert torch.count_nonzero(pool.B) == 0 and pool.counts.sum() == 0
    assert not torch.equal(pool.A, A)


def test_full_merge_forward_equals_unmerged_forward():
    pool = make_pool(rank=4, top_k=4, merge_k=4)
    random_B_(pool)
    pool.eval()
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        unadapted = pool.base(x)
        before = pool(x)
        pool.end_task()
        after = pool(x)
    assert (before - unadapted).abs().max() > 1e-2            # the experts did something
    assert torch.allclose(after, before, atol=1e-5)
    assert torch.allclose(after, pool.base(x))                  # B = 0 again


def test_model_counts_only_in_train_mode(tiny_models, tiny_images, tiny_texts):
    model = copy.deepcopy(tiny_models["default"])
    pools = attach_pools(model, DACConfig.tiny().replace(dropout=0.0))
    model.train()
    with torch.no_grad():
        model.encode_image(tiny_images)
        model.encode_text(tiny_texts)
    N = tiny_images.shape[0]
    for name, pool in pools.items():
        assert pool.counts.sum() == N * 8, name                 # k = 8 hits per sample
        assert pool.last.active.numel() == 8
    before = pools.counts()
    model.eval()
    with torch.no_grad():
        model.encode_image(tiny_images)
    assert all(torch.equal(before[n], c) for n, c in pools.counts().items())


# ----------------------------------------------------------------------------- routing tokens in a model
def _text_tower_routes(model, texts, cfg):
    pools = attach_pools(model, cfg)
    model.eval()
    with torch.no_grad():
        model.encode_text(texts)
    return pools


@pytest.mark.parametrize("block_type", ["default", "custom"])
def test_image_routers_read_the_cls_token(tiny_models, tiny_images, block_type):
    model = copy.deepcopy(tiny_models[block_type])
    pools = attach_pools(model, DACConfig.tiny().replace(dropout=0.0))
    block = model.visual.transformer.resblocks[1]
    seen = {}
    block.ln_1.register_forward_hook(lambda m, a, out: seen.setdefault("ln_1", out))
    block.ln_2.register_forward_hook(lambda m, a, out: seen.setdefault("ln_2", out))
    model.eval()
    with torch.no_grad():
        model.encode_image(tiny_images)
    name = "visual.transformer.resblocks.1"
    for target, h in (("attn.q", seen["ln_1"]), ("attn.v", seen["ln_1"]), ("mlp.c_fc", seen["ln_2"])):
        pool = pools[f"{name}.{target}"]
        expected = torch.softmax(pool.router(h[:, 0]), -1)     # token 0 = [CLS]
        assert torch.allclose(pool.last.scores, expected, atol=1e-6), target


@pytest.mark.parametrize("block_type", ["default", "custom"])
def test_text_token_zero_routing_is_input_independent(tiny_models, tiny_texts, block_type):
    """docs/method.md sec. 3 (code fact): under the causal mask, token 0 (start of text) has the
    same hidden state for every prompt, so every prompt gets the same scores."""
    model = copy.deepcopy(tiny_models[block_type])
    pools = _text_tower_routes(model, tiny_texts, DACConfig.tiny().replace(dropout=0.0))
    for name, pool in pools.tower("text").items():
        s = pool.last.scores
        assert torch.allclose(s, s[:1].expand_as(s), atol=1e-6), name
        assert (pool.last.chosen == pool.last.chosen[:1]).all(), name


@pytest.mark.parametrize("block_type", ["default", "custom"])
def test_text_eot_routing_reads_the_end_of_text_token(tiny_models, tiny_texts, block_type):
    cfg = DACConfig.tiny().replace(dropout=0.0, text_route_token="eot")
    model = copy.deepcopy(tiny_models[block_type])
    torch.manual_seed(5)
    eot_pools = _text_tower_routes(model, tiny_texts, cfg)
    torch.manual_seed(5)                                        # the same routers
    sot_pools = _text_tower_routes(copy.deepcopy(tiny_models[block_type]), tiny_texts,
                                   cfg.replace(text_route_token="sot"))
    eot = tiny_texts.argmax(-1)                                 # CLIP's EOT has the largest id
    assert (tiny_texts[torch.arange(3), eot] == 49407).all()
    name = "transformer.resblocks.0.attn.q"
    pool = eot_pools[name]
    assert torch.equal(pool.route_token.index, eot)
    # by hand: block 0's LN1 of (token embedding + position) at the EOT position
    with torch.no_grad():
        h = model.token_embedding(tiny_texts) + model.positional_embedding
        h = model.transformer.resblocks[0].ln_1(h)[torch.arange(3), eot]
        expected = torch.softmax(pool.router(h), -1)
    assert torch.allclose(pool.last.scores, expected, atol=1e-6)
    for name, pool in eot_pools.tower("text").items():
        s = pool.last.scores
        assert not torch.allclose(s[0], s[1], atol=1e-4), name                      # prompts differ
        assert not torch.allclose(s, sot_pools[name].last.scores, atol=1e-4), name
    for pool in eot_pools.tower("image").values():              # the image tower keeps [CLS]
        assert pool.route_token.index is None
