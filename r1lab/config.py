"""Every hyper-parameter of DAC in one typed dataclass.

Field names follow the paper's symbols (METHOD.md):

    rank     r   experts per pool (rank of the single LoRA)             sec. 1-2
    top_k    k   experts composed per mini-batch ("R" in the paper)      sec. 4
    merge_k  m   experts folded into CLIP at the end of a task           sec. 6
    alpha        LoRA scale numerator, s = alpha / r                      sec. 2
    ago_weight   lambda in L = L_task + lambda * L_AGO                    sec. 7

Presets are derived with ``dataclasses.replace``:

    DACConfig.paper()        the paper's ViT-B/16 5-shot MTIL Order I setting (sec. 2, 9)
    DACConfig.tiny()         a few iterations, for tests
    DACConfig.plain_lora()   sequential LoRA: all experts active, all merged, no AGO

The *switches* of METHOD.md sec. 12 default to what the authors' code does, because the
published numbers came from the code.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

TARGETS = ("q", "k", "v", "o", "c_fc", "c_proj")
TOWERS = ("image", "text")
ROUTERS = ("frozen", "gate", "ste")
ROUTE_TOKENS = ("sot", "eot")
SELECTIONS = ("batch", "sample")
AGO_PAST = ("all", "merged")
AGO_FORMS = ("code", "paper", "dense")

# Order II learning rates of the paper preset, in Order II task order (METHOD.md sec. 9).
ORDER2_LRS = (2e-3, 2e-3, 1e-3, 2e-3, 2e-3, 2e-3, 3e-3, 2e-3, 2e-3, 1e-3, 3e-3)


@dataclass(frozen=True)
class DACConfig:
    # --- the expert pool (METHOD.md sec. 1-2) ---------------------------------------------
    rank: int = 12                # r: rank-1 experts per pool
    top_k: int = 8                # k: experts active per mini-batch (paper's R)
    merge_k: int = 4              # m: experts merged into CLIP after each task (k/2)
    alpha: float = 1.0            # scale s = alpha / rank = 1/12
    dropout: float = 0.2          # dropout on the LoRA branch input only
    towers: Tuple[str, ...] = TOWERS      # which encoders get pools
    targets: Tuple[str, ...] = TARGETS    # which linears in each block
    blocks: Optional[Tuple[int, ...]] = None  # block indices; None = all blocks

    # --- switches (METHOD.md sec. 12); defaults = the authors' code -------------------------
    router: str = "frozen"        # "frozen": no gradient (code); "gate" / "ste": learned
    text_route_token: str = "sot"  # text tower routes on token 0 ("sot", code) or end-of-text
    selection: str = "batch"      # "batch": one vote per mini-batch (code); "sample"
    ago_past: str = "all"         # past B columns in AGO: "all" (code bug) or "merged" (paper)
    ago_form: str = "code"        # "code": sum |cross-Gram|; "paper": mean of pair dots; "dense"
    ago_weight: float = 0.1       # lambda; AGO applies from the second task on

    # --- training (METHOD.md sec. 8-9) ----------------------------------------------------
    lr: float = 2e-3              # AdamW peak learning rate
    lr_per_task: Optional[Tuple[float, ...]] = None  # overrides lr task by task (Order II)
    lr_min: float = 1e-6          # cosine decay floor, no warm-up
    weight_decay: float = 0.01
    betas: Tuple[float, float] = (0.9, 0.999)
    iterations: int = 500         # optimiser steps per task
    batch_size: int = 32          # drop_last batches
    shots: Optional[int] = 5      # images per class for training; None = the full train set
    seed: int = 42

    # --- evaluation -------------------------------------------------------------------------
    eval_batch_size: int = 256
    eval_before_merge: bool = True  # also record each task's accuracy just before its merge

    def __post_init__(self):
        def bad(msg: str):
            raise ValueError(f"DACConfig: {msg}")

        for name in ("rank", "top_k", "merge_k", "iterations", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                bad(f"{name} must be a positive integer, got {v!r}")
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
        if self.ago_weight < 0:
            bad(f"ago_weight (lambda) must be >= 0, got {self.ago_weight}")
        if self.lr <= 0 or self.lr_min < 0 or self.weight_decay < 0:
            bad("lr must be > 0, lr_min and weight_decay >= 0")
        if self.lr_per_task is not None and any(lr <= 0 for lr in self.lr_per_task):
            bad("every entry of lr_per_task must be > 0")
        if self.shots is not None and self.shots < 1:
            bad(f"shots must be >= 1 or None (full data), got {self.shots}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            bad(f"unknown targets {unknown or '(empty)'}; choose from {TARGETS}")
        unknown = [t for t in self.towers if t not in TOWERS]
        if unknown or not self.towers:
            bad(f"unknown towers {unknown or '(empty)'}; choose from {TOWERS}")
        if self.blocks is not None and any((not isinstance(b, int)) or b < 0 for b in self.blocks):
            bad(f"blocks must be non-negative block indices, got {self.blocks}")
        for name, allowed in (("router", ROUTERS), ("text_route_token", ROUTE_TOKENS),
                              ("selection", SELECTIONS), ("ago_past", AGO_PAST),
                              ("ago_form", AGO_FORMS)):
            if getattr(self, name) not in allowed:
                bad(f"{name}={getattr(self, name)!r} is not one of {allowed}")

    # --- derived ----------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """s = alpha / r (METHOD.md sec. 2)."""
        return self.alpha / self.rank

    @property
    def is_dense(self) -> bool:
        """True when every expert is always active (plain LoRA): routing is skipped."""
        return self.top_k == self.rank

    def lr_for_task(self, t: int) -> float:
        if self.lr_per_task is None:
            return self.lr
        if t >= len(self.lr_per_task):
            raise ValueError(f"lr_per_task has {len(self.lr_per_task)} entries, task {t} has none")
        return self.lr_per_task[t]

    def replace(self, **changes) -> "DACConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DACConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"DACConfig: unknown fields {sorted(unknown)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fixed)

    # --- presets ----------------------------------------------------------------------------
    @classmethod
    def paper(cls, order: str = "I") -> "DACConfig":
        """ViT-B/16, both towers, all blocks, q/k/v/o/c_fc/c_proj; r=12, k=8, m=4, s=1/12,
        dropout 0.2, lambda 0.1, AdamW 2e-3 -> 1e-6 cosine, 500 it/task, batch 32, 5 shots,
        seed 42 (METHOD.md sec. 2 and 9). ``order="II"`` sets the per-task learning rates."""
        cfg = cls()
        if order.upper() in ("II", "2"):
            cfg = cfg.replace(lr_per_task=ORDER2_LRS)
        elif order.upper() not in ("I", "1"):
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


def method_config(method: str, base: DACConfig) -> DACConfig:
    """The methods of the continual-learning engine, as configurations of one layer.

    ``dac``            the authors' DAC
    ``lora``           plain sequential LoRA (all experts active and merged, no AGO)
    ``dac-no-ago``     DAC with lambda = 0
    ``dac-no-route``   no routing: all r experts active and merged, AGO on (LoRA + AGO)
    ``dac-merge-all``  DAC that merges every active expert (m = k)
    ``zeroshot``       handled by the engine: no training at all
    """
    if method == "dac":
        return base
    if method == "lora":
        return DACConfig.plain_lora(base)
    if method == "dac-no-ago":
        return base.replace(ago_weight=0.0)
    if method == "dac-no-route":
        return base.replace(top_k=base.rank, merge_k=base.rank)
    if method == "dac-merge-all":
        return base.replace(merge_k=base.top_k)
    if method == "zeroshot":
        return base
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


METHODS = ("zeroshot", "lora", "dac", "dac-no-ago", "dac-no-route", "dac-merge-all")
