"""Parameter accounting (docs/method.md sec. 2): the paper preset on ViT-B/16 gives the paper's
18.99 MiB against CLIP's 570.76 MiB."""
import copy

import pytest

from r1lab import DACConfig, attach_pools, count_parameters, mib


def test_paper_preset_on_vitb16(vitb16, vitb16_paper):
    model, pools = vitb16_paper
    assert len(pools) == 144
    assert len(pools.tower("image")) == len(pools.tower("text")) == 72
    pc = count_parameters(pools, model)
    assert pc.pools == 144
    assert pc.towers["text"].total == 1_991_520
    assert pc.towers["image"].total == 2_986_848
    assert pc.total == 4_978_368
    assert pc.without_routers == 3_317_760
    assert round(pc.total_mib, 2) == 18.99
    assert pc.model_total == 149_620_737 == sum(p.numel() for p in vitb16.parameters())
    assert round(pc.model_mib, 2) == 570.76
    assert round(100 * (1 - pc.total_mib / pc.model_mib), 1) == 96.7


def test_paper_preset_freezes_everything_but_A_and_B(vitb16_paper):
    model, pools = vitb16_paper
    adapter = {id(p) for pool in pools.values() for p in (pool.A, pool.B)}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in adapter), name
    trainable = pools.trainable_parameters()
    assert sum(p.numel() for p in trainable) == 3_317_760   # the routers stay frozen
    assert {id(p) for p in trainable} == adapter


def test_table_contains_the_numbers(vitb16_paper):
    model, pools = vitb16_paper
    table = count_parameters(pools, model).table()
    for number in ("1,991,520", "2,986,848", "4,978,368", "3,317,760", "18.99",
                   "149,620,737", "570.76", "96.7", "144"):
        assert number in table, number


def test_counts_follow_the_shapes(tiny_models):
    """Tiny CLIP (width 64, MLP 128, 2 blocks per tower): per block, q/k/v/o are 64 -> 64,
    c_fc 64 -> 128, c_proj 128 -> 64; each pool has r (d_in + d_out) LoRA and r d_in + r
    router parameters."""
    model = copy.deepcopy(tiny_models["default"])
    total_before = sum(p.numel() for p in model.parameters())
    pools = attach_pools(model, DACConfig.tiny().replace(targets=("q", "o", "c_fc", "c_proj")))
    r = 12
    shapes = [(64, 64), (64, 64), (64, 128), (128, 64)]      # (d_in, d_out)
    lora = 2 * 2 * sum(r * (i + o) for i, o in shapes)      # towers x blocks x targets
    router = 2 * 2 * sum(r * i + r for i, _ in shapes)
    pc = count_parameters(pools, model)
    assert (pc.pools, pc.without_routers, pc.total - pc.without_routers) == (16, lora, router)
    assert pc.model_total == total_before
    assert pc.total_mib == pytest.approx((lora + router) * 4 / 2 ** 20)
    assert mib(2 ** 18) == 1.0
    # plain LoRA of the same rank trains the same A and B as DAC
    dac = copy.deepcopy(tiny_models["default"])
    dac_pools = attach_pools(dac, DACConfig.tiny())
    plain = copy.deepcopy(tiny_models["default"])
    plain_pools = attach_pools(plain, DACConfig.plain_lora(DACConfig.tiny()))
    assert count_parameters(plain_pools, plain).total == count_parameters(dac_pools, dac).total
    assert sum(p.numel() for p in plain_pools.trainable_parameters()) == \
        sum(p.numel() for p in dac_pools.trainable_parameters())
