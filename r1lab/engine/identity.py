"""A run's identity: everything that determines its numbers, recorded in ``identity.json``.

    compared (a difference refuses a resume)
        method, the resolved DACConfig (none for "zeroshot"; of the LoRA-family fields only
        those the method reads), evaluation precision,
        benchmark name, label space and task list in order, its protocol record,
        per task: class count and names (hashed), templates, train / test sizes, split record,
        model name, input size and a content hash of the starting weights
    recorded only (a difference is a warning, not a refusal)
        library versions, device, where the data lives (data root, dataset paths, check mode),
        the number of processes of a data-parallel run

    weights_sha256 = sha256 over the state dict, key by key: name, dtype, shape, raw bytes

The starting weights are hashed before any pool is attached (ViT-B/16: about 600 MB, a second
or two, once per process; the result is memoised on the model until a tensor changes).
``identity_hash`` (sha256 of the compared part) names the folders of ``runcache.cached_run``.
"""
from __future__ import annotations

import hashlib
import json
import platform
from typing import Dict, List, Tuple

import torch

from r1lab._version import __version__
from r1lab.data.stream import Benchmark
from r1lab.config import FAMILY_FIELDS, DACConfig
from r1lab.engine import distributed

FORMAT = 1
# protocol / task-info keys that say where the data lives or how it was checked, not what it is
WHERE_KEYS = ("data_root", "path", "check", "expected", "expected_source")


def jsonable(obj):
    """``obj`` as JSON would store it (tuples as lists, other objects as text)."""
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """Content hash of ``model.state_dict()`` (names, dtypes, shapes and bytes), memoised."""
    sd = model.state_dict()
    key = tuple((k, v.data_ptr(), v._version, tuple(v.shape)) for k, v in sd.items())
    memo = getattr(model, "_r1lab_weights_sha", None)
    if memo is not None and memo[0] == key:
        return memo[1]
    h = hashlib.sha256()
    for k, v in sd.items():
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    object.__setattr__(model, "_r1lab_weights_sha", (key, digest))
    return digest


def model_image_size(model) -> int:
    """The side of the images the model's image tower takes (None when unknown)."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size is not None else None


def stream_name(benchmark: Benchmark) -> str:
    """'MTIL Order II', 'X-TAIL Order I', 'world': what per-task learning rates belong to."""
    order = benchmark.protocol.get("order")
    name = benchmark.protocol.get("stream_of", benchmark.name)   # MTIL-synthetic runs MTIL's stream
    return f"{name} Order {order}" if isinstance(order, str) else name


def versions() -> Dict[str, str]:
    import open_clip
    return dict(r1lab=__version__, torch=torch.__version__, open_clip=open_clip.__version__,
                python=platform.python_version())


def _split(d: Dict) -> Tuple[Dict, Dict]:
    """(what the data is, where it lives) of a protocol or task-info dict."""
    what = {k: v for k, v in d.items() if k not in WHERE_KEYS}
    where = {k: v for k, v in d.items() if k in WHERE_KEYS}
    return what, where


def settings(cfg: DACConfig, method: str) -> Dict:
    """``cfg.to_dict()`` without the LoRA-family fields that ``method`` does not read
    (config.FAMILY_FIELDS, ``Method.reads``): they do not change its numbers."""
    from r1lab.methods import get_method
    reads = get_method(method).reads
    return {k: v for k, v in cfg.to_dict().items() if k not in FAMILY_FIELDS or k in reads}


def run_identity(benchmark: Benchmark, bundle, cfg: DACConfig, method: str, device="cpu",
                 eval_bf16: bool = False) -> Dict:
    """The identity record of a run (``cfg`` is the method's resolved configuration).
    Call it before pools are attached: it hashes the model's current weights."""
    model = bundle.model
    proto_what, proto_where = _split(dict(benchmark.protocol))
    data, where = {}, {"protocol": proto_where}
    for t in benchmark.tasks:
        info_what, info_where = _split(dict(t.info))
        data[t.name] = dict(classes=t.num_classes, classnames_sha256=_sha(list(t.classnames)),
                            templates=list(t.templates), train=len(t.train), test=len(t.test),
                            info=info_what)
        where[t.name] = info_where
    return jsonable(dict(
        format=FORMAT, method=method, eval=dict(bf16=bool(eval_bf16)),
        # zero-shot numbers depend on no training setting
        config=None if method == "zeroshot" else settings(cfg, method),
        benchmark=dict(name=benchmark.name, label_space=benchmark.label_space,
                       tasks=benchmark.task_names, protocol=proto_what, data=data),
        model=dict(name=getattr(bundle, "name", type(model).__name__),
                   image_size=model_image_size(model), weights_sha256=weights_sha256(model)),
        environment=dict(versions=versions(), device=str(device), data=where, **_processes())))


def _processes() -> Dict:
    """{"processes": W} for a data-parallel run of W > 1 processes (recorded, not compared:
    resuming with another W warns); nothing in one process, so its records stay as they were."""
    W = distributed.world_size()
    return {"processes": W} if W > 1 else {}


def compared(identity: Dict) -> Dict:
    """The part of an identity that must match for a resume (all but ``environment``)."""
    return {k: v for k, v in identity.items() if k != "environment"}


def identity_hash(identity: Dict) -> str:
    return _sha(compared(identity))


def _flat(d, prefix: str = "") -> Dict[str, object]:
    if isinstance(d, dict) and d:
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 70 else s[:67] + "..."


def differences(old: Dict, new: Dict) -> Tuple[List[str], List[str]]:
    """(refusing differences, warning differences), one line each: 'key: old -> new'."""
    a, b = _flat(compared(old)), _flat(compared(new))
    # a whole task list or task table that differs is one difference, not one per task
    lines = []
    for key in ("benchmark.tasks",):
        if old.get("benchmark", {}).get("tasks") != new.get("benchmark", {}).get("tasks"):
            lines.append(f"tasks: {_short(old.get('benchmark', {}).get('tasks'))} -> "
                         f"{_short(new['benchmark']['tasks'])}")
    skip = ("benchmark.tasks", "benchmark.data", "benchmark.protocol") if lines else ("benchmark.tasks",)
    for k in sorted(set(a) | set(b)):
        if k.startswith(skip):
            continue
        if a.get(k, "<missing>") != b.get(k, "<missing>"):
            lines.append(f"{k}: {_short(a.get(k, '<missing>'))} -> {_short(b.get(k, '<missing>'))}")
    ea, eb = _flat(old.get("environment", {})), _flat(new.get("environment", {}))
    warn = [f"{k}: {_short(ea.get(k, '<missing>'))} -> {_short(eb.get(k, '<missing>'))}"
            for k in sorted(set(ea) | set(eb)) if ea.get(k, "<missing>") != eb.get(k, "<missing>")]
    return lines, warn


def protocol_record(benchmark: Benchmark, cfg: DACConfig, method: str, model_name: str,
                    device) -> Dict:
    return dict(benchmark=benchmark.name, order=benchmark.task_names,
                label_space=benchmark.label_space, method=method, model=model_name,
                shots=cfg.shots, iterations=cfg.iterations, batch_size=cfg.batch_size,
                seed=cfg.seed, device=str(device),
                **({"processes": distributed.world_size()} if distributed.world_size() > 1 else {}),
                templates={t.name: t.templates for t in benchmark.tasks},
                classes={t.name: t.num_classes for t in benchmark.tasks},
                splits={t.name: dict(train=len(t.train), test=len(t.test), **{
                    k: v for k, v in t.info.items() if isinstance(v, (str, int, float))})
                    for t in benchmark.tasks},
                benchmark_protocol=benchmark.protocol, versions=versions())
