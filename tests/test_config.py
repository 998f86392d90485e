"""DACConfig: the paper's numbers (docs/method.md sec. 2 and 9), validation, serialisation."""
import dataclasses
import re

import pytest

from r1lab import METHODS, ConfigError, DACConfig, method_config
from r1lab.config import ORDER2_LR_BY_TASK, ORDER2_LRS, ORDER2_STREAM, ORDER2_TASKS
from r1lab.data.mtil import ORDERS


def test_paper_preset_is_methods_numbers():
    cfg = DACConfig.paper()
    assert (cfg.rank, cfg.top_k, cfg.merge_k) == (12, 8, 4)
    assert cfg.alpha == 1.0 and cfg.scale == pytest.approx(1 / 12)
    assert cfg.dropout == 0.2
    assert cfg.ago_weight == 0.1
    assert cfg.lr == 2e-3 and cfg.lr_min == 1e-6 and cfg.lr_by_task is None
    assert cfg.weight_decay == 0.01 and cfg.betas == (0.9, 0.999)
    assert cfg.iterations == 500 and cfg.batch_size == 32 and cfg.shots == 5 and cfg.seed == 42
    assert cfg.towers == ("image", "text") and cfg.blocks is None
    assert cfg.targets == ("q", "k", "v", "o", "c_fc", "c_proj")
    # the switches default to the authors' code (docs/method.md sec. 12)
    assert (cfg.router, cfg.text_route_token, cfg.selection, cfg.ago_past, cfg.ago_form) == \
        ("frozen", "sot", "batch", "all", "code")
    assert not cfg.is_dense
    assert DACConfig() == cfg
    assert [cfg.lr_for(n) for n in ORDERS["I"]] == [2e-3] * 11


def test_paper_order_ii_learning_rates():
    """docs/method.md sec. 9 lists them in Order II's task order; the config keys them by dataset."""
    expected = (2e-3, 2e-3, 1e-3, 2e-3, 2e-3, 2e-3, 3e-3, 2e-3, 2e-3, 1e-3, 3e-3)
    assert ORDER2_LRS == expected and list(ORDER2_TASKS) == ORDERS["II"]
    cfg = DACConfig.paper("II")
    assert dict(cfg.lr_by_task) == ORDER2_LR_BY_TASK == dict(zip(ORDERS["II"], expected))
    assert [cfg.lr_for(n) for n in ORDERS["II"]] == list(expected)
    assert cfg.lr_for("Aircraft") == 3e-3 and cfg.lr_for("MNIST") == 1e-3
    assert cfg.lr_by_task_for == ORDER2_STREAM == "MTIL Order II"
    assert DACConfig.paper("2") == cfg
    # everything else is the Order I preset
    assert cfg.replace(lr_by_task=None, lr_by_task_for=None) == DACConfig.paper("I")
    with pytest.raises(ConfigError, match="no learning rate for task 'ImageNet'"):
        cfg.lr_for("ImageNet")
    with pytest.raises(ValueError, match="order"):
        DACConfig.paper("III")


def test_per_task_rates_are_tied_to_their_stream():
    cfg = DACConfig.paper("II")
    cfg.check_stream(["Aircraft", "DTD"], "MTIL Order II")      # a subset keeps its own rates
    with pytest.raises(ConfigError, match="MTIL Order II.*X-TAIL Order I"):
        cfg.check_stream(["Aircraft"], "X-TAIL Order I")
    own = DACConfig(lr_by_task={"a": 1e-3, "b": 2e-3})        # no stream named: any stream
    own.check_stream(["b", "a"], "world")
    with pytest.raises(ConfigError, match="no learning rate for task 'c'"):
        own.check_stream(["a", "c"], "world")
    assert own.lr_by_task == (("a", 1e-3), ("b", 2e-3)) == DACConfig(lr_by_task=[("b", 2e-3), ("a", 1e-3)]).lr_by_task


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
    (dict(lr_by_task={"a": 1e-3, "b": 0.0}), "lr_by_task"),
    (dict(lr_by_task={"a": float("nan")}), "lr_by_task"),
    (dict(lr_by_task=(1e-3, 2e-3)), "lr_by_task must map dataset names"),
    (dict(shots=0), "shots"),
    # non-finite and wrongly typed values are refused at construction, naming the field
    (dict(lr=float("inf")), "lr must be a finite number"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(alpha=float("nan")), "alpha must be a finite number"),
    (dict(ago_weight=float("nan")), "ago_weight must be a finite number"),
    (dict(lr="abc"), "lr must be a finite number, got 'abc'"),
    (dict(seed="abc"), "seed must be a non-negative integer"),
    (dict(seed=1.5), "seed must be a non-negative integer"),
    (dict(iterations=True), "iterations must be a positive integer"),
    (dict(betas="abc"), "betas must be two numbers"),
    (dict(betas=(0.9, float("nan"))), "betas must be two numbers"),
    (dict(betas=(0.9,)), "betas must be two numbers"),
    (dict(shots=2.0), "shots must be an integer"),
    (dict(eval_before_merge="yes"), "eval_before_merge"),
    (dict(lr_by_task_for=2), "lr_by_task_for"),
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


@pytest.mark.parametrize("field, text, value", [
    ("lr", "2e-3", 2e-3), ("iterations", "200", 200), ("seed", "7", 7),
    ("betas", "0.9,0.99", (0.9, 0.99)), ("betas", "(0.8, 0.9)", (0.8, 0.9)),
    ("towers", "image", ("image",)), ("targets", "q,v", ("q", "v")),
    ("blocks", "none", None), ("blocks", "0,11", (0, 11)), ("shots", "None", None),
    ("router", "gate", "gate"), ("eval_before_merge", "false", False),
    ("lr_by_task", "Aircraft:3e-3,DTD:2e-3", {"Aircraft": 3e-3, "DTD": 2e-3}),
    ("lr_by_task", "{'Aircraft': 0.003}", {"Aircraft": 3e-3}),
])
def test_parse_value_reads_the_declared_type(field, text, value):
    parsed = DACConfig.parse_value(field, text)
    assert parsed == value and type(parsed) is type(value)
    DACConfig().replace(**{field: parsed})


@pytest.mark.parametrize("field, text, message", [
    ("lr", "abc", "--set lr=abc: lr must be a number"),
    ("seed", "abc", "--set seed=abc: seed must be an integer"),
    ("betas", "abc", "--set betas=abc: betas needs 2"),
    ("iterations", "2.5", "iterations must be an integer"),
    ("eval_before_merge", "maybe", "eval_before_merge must be true or false"),
    ("learning_rate", "1", "unknown DACConfig field 'learning_rate'"),
])
def test_parse_value_names_the_field(field, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DACConfig.parse_value(field, text)


def test_legacy_position_keyed_rates():
    d = DACConfig().to_dict()
    assert DACConfig.from_dict({**d, "lr_per_task": None}) == DACConfig()   # old config.json
    with pytest.raises(ConfigError, match="lr_by_task"):
        DACConfig.from_dict({**d, "lr_per_task": [1e-3]})


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields \\['R'\\]"):
        DACConfig.from_dict({**DACConfig().to_dict(), "R": 8})
