"""Every hyper-parameter of DAC in one typed dataclass.

Field names follow the paper's symbols (docs/method.md):

    rank     r   experts per pool (rank of the single LoRA)             sec. 1-2
    top_k    k   experts composed per mini-batch ("R" in the paper)      sec. 4
    merge_k  m   experts folded into CLIP at the end of a task           sec. 6
    alpha        LoRA scale numerator, s = alpha / r                      sec. 2
    ago_weight   lambda in L = L_task + lambda * L_AGO                    sec. 7

Presets are derived with ``dataclasses.replace``:

    DACConfig.paper()        the paper's ViT-B/16 5-shot MTIL Order I setting (sec. 2, 9)
    DACConfig.tiny()         a few iterations, for tests
    DACConfig.plain_lora()   sequential LoRA: all experts active, all merged, no AGO

Per-task learning rates are keyed by dataset name, never by position (``lr_by_task``), and
say which stream they were set for (``lr_by_task_for``, e.g. "MTIL Order II"): a run on
another stream refuses them, and a subset of the stream keeps each dataset's own rate.

Every value is checked at construction (type, range, finiteness): a wrong one raises
``ConfigError`` naming the field. ``DACConfig.parse_value(field, text)`` reads a value of the
field's declared type from text (the command line's ``--set FIELD=VALUE``).

The *switches* of docs/method.md sec. 12 default to what the authors' code does, because the
published numbers came from the code.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Dict, Iterable, Literal, Optional, Tuple, Union

from r1lab.errors import ConfigError

TARGETS = ("q", "k", "v", "o", "c_fc", "c_proj")
TOWERS = ("image", "text")
# the switches' values; each field's type below is the Literal of its tuple
Router = Literal["frozen", "gate", "ste"]
RouteTokenName = Literal["sot", "eot"]
Selection = Literal["batch", "sample"]
AgoPast = Literal["all", "merged"]
AgoForm = Literal["code", "paper", "dense"]
TieRule = Literal["lower", "topk", "random"]
MergeRule = Literal["topm", "svd"]
ROUTERS, ROUTE_TOKENS, SELECTIONS, AGO_PAST, AGO_FORMS, TIE_RULES, MERGE_RULES = (
    typing.get_args(t) for t in (Router, RouteTokenName, Selection, AgoPast, AgoForm, TieRule, MergeRule))

# Order II learning rates of the paper (docs/method.md sec. 9), listed in Order II's task order,
# and the same rates keyed by dataset: what the configuration stores.
ORDER2_TASKS = ("StanfordCars", "Food", "MNIST", "OxfordPet", "Flowers", "SUN397", "Aircraft",
                "Caltech101", "DTD", "EuroSAT", "CIFAR100")
ORDER2_LRS = (2e-3, 2e-3, 1e-3, 2e-3, 2e-3, 2e-3, 3e-3, 2e-3, 2e-3, 1e-3, 3e-3)
ORDER2_LR_BY_TASK: Dict[str, float] = dict(zip(ORDER2_TASKS, ORDER2_LRS))
ORDER2_STREAM = "MTIL Order II"

# the fields of the LoRA-family section: a method's run identity holds only those it reads
# (``Method.reads``), so that adding a method leaves the identity of every other run as it was
FAMILY_FIELDS = ("olora_weight", "inflora_threshold", "moe_experts", "moe_balance", "moe_delta",
                 "codyra_sparsity", "codyra_init")

INT_MINIMUM = {"seed": 0}   # every other int field is a count: at least 1


@dataclass(frozen=True)
class DACConfig:
    # --- the expert pool (docs/method.md sec. 1-2) ---------------------------------------------
    rank: int = 12                # r: rank-1 experts per pool
    top_k: int = 8                # k: experts active per mini-batch (paper's R)
    merge_k: int = 4              # m: experts merged into CLIP after each task (k/2)
    alpha: float = 1.0            # scale s = alpha / rank = 1/12
    dropout: float = 0.2          # dropout on the LoRA branch input only
    towers: Tuple[str, ...] = TOWERS      # which encoders get pools
    targets: Tuple[str, ...] = TARGETS    # which linears in each block
    blocks: Optional[Tuple[int, ...]] = None  # block indices; None = all blocks

    # --- switches (docs/method.md sec. 12); defaults = the authors' code -------------------------
    router: Router = "frozen"      # "frozen": no gradient (code); "gate" / "ste": learned
    text_route_token: RouteTokenName = "sot"  # text tower routes on token 0 ("sot", code) or end-of-text
    selection: Selection = "batch"    # "batch": one vote per mini-batch (code); "sample"
    ago_past: AgoPast = "all"       # past B columns in AGO: "all" (code bug) or "merged" (paper)
    ago_form: AgoForm = "code"      # "code": sum |cross-Gram|; "paper": mean of pair dots; "dense"
    ago_weight: float = 0.1       # lambda; AGO applies from the second task on
    tie_rule: TieRule = "lower"     # equal hits / counts at the k-th (m-th) place: "lower" index
                                  # wins, "topk" = torch.topk's order, "random" (seeded)

    # --- variants beyond the paper (docs/method.md sec. 13); defaults = DAC ----------------------
    consolidate: float = 0.0      # last share of each task's steps training only the top-m
    merge_rule: MergeRule = "topm"    # "topm": fold the top-m experts; "svd": the rank-m truncation

    # --- the LoRA family (docs/method.md sec. 14): read only by those methods -----------------
    olora_weight: float = 0.5     # O-LoRA: lambda_1 on sum |A_past A^T| (the paper's value)
    inflora_threshold: float = 0.95  # InfLoRA: share of input energy the kept basis M holds
    moe_experts: int = 4          # LoRAMoE: experts per layer, each of rank rank / moe_experts
    moe_balance: float = 0.01     # LoRAMoE: beta, weight of the localized balancing loss
    moe_delta: float = 0.1        # LoRAMoE: delta, imbalance between the two expert groups
    codyra_sparsity: float = 0.5  # CoDyRA: soft threshold of a step as a share of its lr
    codyra_init: float = 0.05     # CoDyRA: importance weights of a fresh pool

    # --- training (docs/method.md sec. 8-9) ----------------------------------------------------
    lr: float = 2e-3              # AdamW peak learning rate
    lr_min: float = 1e-6          # cosine decay floor, no warm-up
    weight_decay: float = 0.01
    betas: Tuple[float, float] = (0.9, 0.999)
    iterations: int = 500         # optimiser steps per task
    batch_size: int = 32          # drop_last batches
    shots: Optional[int] = 5      # images per class for training; None = the full train set
    seed: int = 42
    # per-task peak learning rates by dataset name (a dict is accepted and stored as sorted
    # (name, lr) pairs); every task of the stream needs one. None: ``lr`` for every task.
    lr_by_task: Optional[Tuple[Tuple[str, float], ...]] = None
    lr_by_task_for: Optional[str] = None  # the stream they belong to ("MTIL Order II"); None: any

    # --- evaluation -------------------------------------------------------------------------
    eval_batch_size: int = 256
    eval_before_merge: bool = True  # also record each task's accuracy just before its merge

    def __post_init__(self):
        def bad(msg: str):
            raise ConfigError(f"DACConfig: {msg}")

        def put(name, value):
            object.__setattr__(self, name, value)

        for name, tp in _hints(type(self)).items():   # the declared types
            v = getattr(self, name)
            if tp is int:
                low = INT_MINIMUM.get(name, 1)
                if not _is_int(v) or v < low:
                    what = "a positive integer" if low == 1 else "a non-negative integer"
                    bad(f"{name} must be {what}, got {v!r}{_kind(v)}")
                put(name, int(v))
            elif tp is float:
                if not _is_real(v) or not math.isfinite(v):
                    bad(f"{name} must be a finite number, got {v!r}{_kind(v)}")
                put(name, float(v))
            elif tp is bool and not isinstance(v, bool):
                bad(f"{name} must be True or False, got {v!r}")
        if self.shots is not None:
            if not _is_int(self.shots) or self.shots < 1:
                bad(f"shots must be an integer >= 1 or None (full data), got {self.shots!r}{_kind(self.shots)}")
            put("shots", int(self.shots))
        if self.top_k > self.rank:
            bad(f"top_k={self.top_k} > rank={self.rank}: a pool cannot activate more experts "
                f"than it has; use top_k <= rank")
        if self.merge_k > self.top_k:
            bad(f"merge_k={self.merge_k} > top_k={self.top_k}: only active experts are "
                f"trained, so merge at most top_k of them")
        if self.alpha < 0:
            bad(f"alpha must be >= 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.consolidate < 1.0:
            bad(f"consolidate (the share of each task's steps that trains only the top-m experts) "
                f"must be in [0, 1), got {self.consolidate}")
        for name in ("olora_weight", "moe_balance", "codyra_sparsity", "codyra_init"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.inflora_threshold <= 1.0:
            bad(f"inflora_threshold (the share of input energy InfLoRA's basis keeps) must be in "
                f"(0, 1], got {self.inflora_threshold}")
        if not 0.0 <= self.moe_delta < 1.0:
            bad(f"moe_delta must be in [0, 1), got {self.moe_delta}")
        if self.ago_weight < 0:
            bad(f"ago_weight (lambda) must be >= 0, got {self.ago_weight}")
        if self.lr <= 0 or self.lr_min < 0 or self.weight_decay < 0:
            bad(f"lr must be > 0, lr_min and weight_decay >= 0 (got lr={self.lr}, "
                f"lr_min={self.lr_min}, weight_decay={self.weight_decay})")
        betas = _as_tuple(self.betas)
        if (betas is None or len(betas) != 2 or not all(_is_real(b) and math.isfinite(b) for b in betas)
                or not all(0.0 <= b < 1.0 for b in betas)):
            bad(f"betas must be two numbers in [0, 1), e.g. (0.9, 0.999), got {self.betas!r}")
        put("betas", tuple(float(b) for b in betas))
        put("lr_by_task", _lr_table(self.lr_by_task, bad))
        if self.lr_by_task_for is not None and not isinstance(self.lr_by_task_for, str):
            bad(f"lr_by_task_for must be a stream name such as {ORDER2_STREAM!r} or None, "
                f"got {self.lr_by_task_for!r}")
        for name, allowed in (("targets", TARGETS), ("towers", TOWERS)):
            v = _as_tuple(getattr(self, name))
            if v is None or not all(isinstance(t, str) for t in v):
                bad(f"{name} must be a tuple of names from {allowed}, got {getattr(self, name)!r}")
            unknown = [t for t in v if t not in allowed]
            if unknown or not v:
                bad(f"unknown {name} {unknown or '(empty)'}; choose from {allowed}")
            if len(set(v)) != len(v):
                bad(f"{name} names {sorted({t for t in v if v.count(t) > 1})} twice: each gets one pool")
            put(name, v)
        if self.blocks is not None:
            blocks = _as_tuple(self.blocks)
            if blocks is None or any((not _is_int(b)) or b < 0 for b in blocks):
                bad(f"blocks must be non-negative block indices, got {self.blocks}")
            if len(set(blocks)) != len(blocks):
                bad(f"blocks names a block twice, got {self.blocks}")
            put("blocks", tuple(int(b) for b in blocks))
        for name, tp in _hints(type(self)).items():    # the switches
            if typing.get_origin(tp) is Literal and getattr(self, name) not in typing.get_args(tp):
                bad(f"{name}={getattr(self, name)!r} is not one of {typing.get_args(tp)}")

    # --- derived ----------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """s = alpha / r (docs/method.md sec. 2)."""
        return self.alpha / self.rank

    @property
    def is_dense(self) -> bool:
        """True when every expert is always active (plain LoRA): routing is skipped."""
        return self.top_k == self.rank

    def lr_for(self, task: str) -> float:
        """The peak learning rate of the task named ``task``: ``lr_by_task[task]`` when
        per-task rates are set, else ``lr``."""
        if self.lr_by_task is None:
            return self.lr
        table = dict(self.lr_by_task)
        if task not in table:
            raise ConfigError(f"DACConfig: lr_by_task has no learning rate for task {task!r} "
                              f"(it has {sorted(table)}); add one, or set lr_by_task=None to "
                              f"use lr={self.lr:g} for every task")
        return table[task]

    def check_stream(self, task_names: Iterable[str], stream: str) -> None:
        """Refuse per-task rates set for another stream, or missing for a task of this one
        (before any training). ``stream`` names the benchmark and order ("MTIL Order II")."""
        if self.lr_by_task is None:
            return
        if self.lr_by_task_for is not None and self.lr_by_task_for != stream:
            raise ConfigError(
                f"DACConfig: lr_by_task holds the per-task learning rates of {self.lr_by_task_for}, "
                f"but this stream is {stream}; use that stream's rates, or one lr for every task "
                f"(lr_by_task=None, e.g. the paper preset without order II)")
        for name in task_names:
            self.lr_for(name)

    def replace(self, **changes) -> "DACConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_by_task"] = None if self.lr_by_task is None else dict(self.lr_by_task)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DACConfig":
        d = dict(d)
        legacy = d.pop("lr_per_task", None)   # position-keyed rates of earlier versions
        if legacy is not None:
            raise ConfigError("DACConfig: lr_per_task (learning rates by position) was replaced by "
                              "lr_by_task (learning rates by dataset name, e.g. {'Aircraft': 3e-3})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"DACConfig: unknown fields {sorted(unknown)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fixed)

    @classmethod
    def parse_value(cls, name: str, text: str):
        """A value for field ``name`` read from ``text`` as the field's declared type:
        int, float ("inf" / "nan" parse, and are then refused as non-finite), bool
        (true/false), str, tuples (comma-separated, brackets optional), None ("none"), and
        lr_by_task as "Aircraft:3e-3,Food:2e-3" or a dict literal. Raises ``ConfigError``
        naming the field."""
        hints = typing.get_type_hints(cls)
        if name not in hints:
            raise ConfigError(f"--set {name}: unknown DACConfig field {name!r}; fields are {sorted(hints)}")
        try:
            if name == "lr_by_task":
                return _parse_table(text)
            return _parse(hints[name], text.strip())
        except (ValueError, SyntaxError, TypeError) as e:
            raise ConfigError(f"--set {name}={text}: {name} {e}") from None

    # --- presets ----------------------------------------------------------------------------
    @classmethod
    def paper(cls, order: str = "I") -> "DACConfig":
        """ViT-B/16, both towers, all blocks, q/k/v/o/c_fc/c_proj; r=12, k=8, m=4, s=1/12,
        dropout 0.2, lambda 0.1, AdamW 2e-3 -> 1e-6 cosine, 500 it/task, batch 32, 5 shots,
        seed 42 (docs/method.md sec. 2 and 9). ``order="II"`` sets Order II's per-task learning
        rates, keyed by dataset and tied to MTIL Order II."""
        cfg = cls()
        if str(order).upper() in ("II", "2"):
            cfg = cfg.replace(lr_by_task=ORDER2_LR_BY_TASK, lr_by_task_for=ORDER2_STREAM)
        elif str(order).upper() not in ("I", "1"):
            raise ValueError(f"order must be 'I' or 'II', got {order!r}")
        return cfg

    @classmethod
    def tiny(cls) -> "DACConfig":
        """The paper's pool and switches with a schedule small enough for CPU tests."""
        return cls(iterations=3, batch_size=8, shots=2, eval_batch_size=64, lr=5e-3)

    @classmethod
    def plain_lora(cls, base: Optional["DACConfig"] = None) -> "DACConfig":
        """Sequential LoRA as a configuration of the same layer: k = m = r, no AGO."""
        base = base or cls()
        return base.replace(top_k=base.rank, merge_k=base.rank, ago_weight=0.0)


# ------------------------------------------------------------------------------ helpers
@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    """The dataclass's declared field types (what validation and ``--set`` parsing follow)."""
    return typing.get_type_hints(cls)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _kind(v) -> str:
    return f" ({type(v).__name__})" if not isinstance(v, (int, float)) or isinstance(v, bool) else ""


def _as_tuple(v) -> Optional[tuple]:
    return tuple(v) if isinstance(v, (tuple, list)) else None


def _lr_table(v, bad) -> Optional[Tuple[Tuple[str, float], ...]]:
    """{name: lr} or (name, lr) pairs -> sorted (name, lr) pairs, every lr finite and > 0."""
    if v is None:
        return None
    try:
        items = list(v.items()) if isinstance(v, dict) else [tuple(p) for p in v]
    except TypeError:
        items = None
    if not items or not all(len(p) == 2 and isinstance(p[0], str) for p in items):
        bad(f"lr_by_task must map dataset names to learning rates, e.g. {{'Aircraft': 3e-3}}, got {v!r}")
    for name, lr in items:
        if not _is_real(lr) or not math.isfinite(lr) or lr <= 0:
            bad(f"every learning rate in lr_by_task must be a finite number > 0, got {name}: {lr!r}")
    if len({n for n, _ in items}) != len(items):
        bad(f"lr_by_task names a dataset twice: {[n for n, _ in items]}")
    return tuple(sorted((n, float(lr)) for n, lr in items))


_NONE = ("none", "null")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse(tp, s: str):
    """Text -> a value of the type hint ``tp`` (ValueError with what was expected)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if s.lower() in _NONE:
            return None
        return _parse(next(a for a in args if a is not type(None)), s)
    if origin is tuple:
        parts = [p.strip() for p in s.strip("()[] ").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(args[0], p) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"needs {len(args)} comma-separated values, got {s!r}")
        return tuple(_parse(a, p) for a, p in zip(args, parts))
    if origin is Literal:   # a switch: its value is checked by DACConfig itself
        return _parse(str, s)
    if tp is bool:
        if s.lower() in _TRUE + _FALSE:
            return s.lower() in _TRUE
        raise ValueError(f"must be true or false, got {s!r}")
    if tp is int:
        try:
            return int(s)
        except ValueError:
            raise ValueError(f"must be an integer, got {s!r}") from None
    if tp is float:
        try:
            return float(s)
        except ValueError:
            raise ValueError(f"must be a number, got {s!r}") from None
    if tp is str:
        return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s
    raise ValueError(f"cannot be set from text (type {tp})")


def _parse_table(s: str):
    """'Aircraft:3e-3,Food:2e-3' or a dict literal -> {name: lr}; 'none' -> None."""
    s = s.strip()
    if s.lower() in _NONE:
        return None
    if s.startswith("{"):
        d = ast.literal_eval(s)
        if not isinstance(d, dict):
            raise ValueError(f"must be a dict of dataset name -> lr, got {s!r}")
        return d
    out = {}
    for part in filter(None, (p.strip() for p in s.split(","))):
        name, sep, lr = part.replace("=", ":").partition(":")
        if not sep:
            raise ValueError(f"must be NAME:LR pairs separated by commas, got {part!r}")
        try:
            out[name.strip()] = float(lr)
        except ValueError:
            raise ValueError(f"must be NAME:LR pairs; {lr!r} is not a number") from None
    return out
