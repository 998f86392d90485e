"""DACConfig: the paper's numbers (METHOD.md sec. 2 and 9), validation, serialisation."""
import dataclasses

import pytest

from r1lab import METHODS, DACConfig, method_config
from r1lab.config import ORDER2_LRS


def test_paper_preset_is_methods_numbers():
    cfg = DACConfig.paper()
    assert (cfg.rank, cfg.top_k, cfg.merge_k) == (12, 8, 4)
    assert cfg.alpha == 1.0 and cfg.scale == pytest.approx(1 / 12)
    assert cfg.dropout == 0.2
    assert cfg.ago_weight == 0.1
    assert cfg.lr == 2e-3 and cfg.lr_min == 1e-6 and cfg.lr_per_task is None
    assert cfg.weight_decay == 0.01 and cfg.betas == (0.9, 0.999)
    assert cfg.iterations == 500 and cfg.batch_size == 32 and cfg.shots == 5 and cfg.seed == 42
    assert cfg.towers == ("image", "text") and cfg.blocks is None
    assert cfg.targets == ("q", "k", "v", "o", "c_fc", "c_proj")
    # the switches default to the authors' code (METHOD.md sec. 12)
    assert (cfg.router, cfg.text_route_token, cfg.selection, cfg.ago_past, cfg.ago_form) == \
        ("frozen", "sot", "batch", "all", "code")
    assert not cfg.is_dense
    assert DACConfig() == cfg
    assert [cfg.lr_for_task(t) for t in range(11)] == [2e-3] * 11


def test_paper_order_ii_learning_rates():
    expected = (2e-3, 2e-3, 1e-3, 2e-3, 2e-3, 2e-3, 3e-3, 2e-3, 2e-3, 1e-3, 3e-3)
    cfg = DACConfig.paper("II")
    assert cfg.lr_per_task == expected == ORDER2_LRS
    assert [cfg.lr_for_task(t) for t in range(11)] == list(expected)
    assert DACConfig.paper("2") == cfg
    # everything else is the Order I preset
    assert cfg.replace(lr_per_task=None) == DACConfig.paper("I")
    with pytest.raises(ValueError, match="task 11"):
        cfg.lr_for_task(11)
    with pytest.raises(ValueError, match="order"):
        DACConfig.paper("III")


def test_plain_lora_and_method_configs():
    lora = DACConfig.plain_lora()
    assert (lora.rank, lora.top_k, lora.merge_k, lora.ago_weight) == (12, 12, 12, 0.0)
    assert lora.is_dense
    base = DACConfig.tiny()
    assert method_config("dac", base) == base
    assert method_config("lora", base) == DACConfig.plain_lora(base)
    assert method_config("dac-no-ago", base).ago_weight == 0.0
    no_route = method_config("dac-no-route", base)
    assert (no_route.top_k, no_route.merge_k, no_route.ago_weight) == (12, 12, 0.1)
    assert method_config("dac-merge-all", base).merge_k == base.top_k == 8
    assert set(METHODS) >= {"zeroshot", "lora", "dac"}
    with pytest.raises(ValueError, match="unknown method"):
        method_config("moe-adapters", base)


def test_tiny_keeps_the_papers_pool():
    tiny, paper = DACConfig.tiny(), DACConfig.paper()
    for f in ("rank", "top_k", "merge_k", "alpha", "dropout", "towers", "targets", "router",
              "text_route_token", "selection", "ago_past", "ago_form", "ago_weight"):
        assert getattr(tiny, f) == getattr(paper, f), f


@pytest.mark.parametrize("changes, message", [
    (dict(top_k=13), "top_k=13 > rank=12"),
    (dict(rank=4, top_k=5, merge_k=2), "top_k=5 > rank=4"),
    (dict(merge_k=9), "merge_k=9 > top_k=8"),
    (dict(alpha=-1.0), "alpha must be >= 0"),
    (dict(ago_weight=-0.1), "ago_weight"),
    (dict(dropout=1.0), "dropout"),
    (dict(rank=0), "rank must be a positive integer"),
    (dict(top_k=2.5), "top_k must be a positive integer"),
    (dict(targets=("q", "out_proj")), "unknown targets \\['out_proj'\\]"),
    (dict(targets=()), "unknown targets"),
    (dict(towers=("vision",)), "unknown towers \\['vision'\\]"),
    (dict(blocks=(0, -1)), "blocks"),
    (dict(router="learned"), "router='learned' is not one of"),
    (dict(text_route_token="cls"), "text_route_token='cls'"),
    (dict(selection="token"), "selection='token'"),
    (dict(ago_past="top"), "ago_past='top'"),
    (dict(ago_form="cosine"), "ago_form='cosine'"),
    (dict(lr=0.0), "lr"),
    (dict(lr_per_task=(1e-3, 0.0)), "lr_per_task"),
    (dict(shots=0), "shots"),
])
def test_invalid_values_raise_helpful_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        DACConfig(**changes)
    with pytest.raises(ValueError, match="DACConfig"):
        DACConfig().replace(**changes)


def test_valid_edge_values():
    DACConfig(rank=4, top_k=4, merge_k=4)        # top_k = rank, merge_k = top_k are allowed
    DACConfig(alpha=0.0, ago_weight=0.0, dropout=0.0, shots=None)
    DACConfig(targets=("o",), towers=("text",), blocks=(0, 11))


def test_frozen_dataclass():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DACConfig().rank = 4


@pytest.mark.parametrize("cfg", [DACConfig.paper(), DACConfig.paper("II"), DACConfig.tiny(),
                                 DACConfig.plain_lora(), DACConfig(blocks=(0, 3), router="ste",
                                                                   towers=("image",), shots=None)])
def test_dict_round_trip(cfg):
    d = cfg.to_dict()
    assert DACConfig.from_dict(d) == cfg
    # lists (as JSON gives them back) become tuples again
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    assert DACConfig.from_dict(as_json) == cfg


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields \\['R'\\]"):
        DACConfig.from_dict({**DACConfig().to_dict(), "R": 8})
