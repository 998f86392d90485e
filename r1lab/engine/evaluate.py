"""Zero-shot evaluation (docs/method.md sec. 10, docs/protocol.md "Evaluation head").

Head of a dataset with classes c and templates t_1..t_n:

    w_c = normalize( mean_i normalize( f_text(t_i(c)) ) )          (C, D)
    logits(x) = 100 * normalize(f_image(x)) . w_c                    top-1 over its classes

The text tower changes while a task trains (text-side pools), so heads are encoded again at
every evaluation, once per evaluation. Label spaces:
    "task"   each test set against its own classes (MTIL)
    "union"  each test set against the union of every task's classes (X-TAIL)

Data-parallel (torchrun): ``accuracy_row`` shards each test set over the processes (each
encodes its slice of every eval batch) and sums the correct answers over them; the heads are
encoded whole by every process (r1lab/engine/distributed.py).
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from r1lab.engine import distributed, report
from r1lab.data.stream import Benchmark


@torch.no_grad()
def zeroshot_head(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                  device="cpu", batch_size: int = 256) -> torch.Tensor:
    """(C, D) unit-norm class embeddings, each the normalised mean of its normalised
    template embeddings."""
    was_training = model.training
    model.eval()
    prompts = [t.format(c) for c in classnames for t in templates]
    feats = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[i:i + batch_size]).to(device)
        feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    emb = torch.cat(feats).view(len(classnames), len(templates), -1).mean(1)
    model.train(was_training)
    return F.normalize(emb, dim=-1)


def _loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=False, persistent_workers=False)


@torch.no_grad()
def encode_images(model, dataset: Dataset, device="cpu", batch_size: int = 256,
                  num_workers: int = 0, amp_dtype: Optional[torch.dtype] = None,
                  desc: str = "encode", shard: bool = False) -> tuple:
    """(features (N, D) unit-norm float32, labels (N,)) of a dataset of (image, label).

    ``shard`` (data-parallel runs): only this process's slice of each batch is encoded
    (``distributed.eval_slices``), the pools voting over the whole batch; the result is this
    process's part of the set."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    device = torch.device(device)
    if shard:
        parts = distributed.eval_slices(len(dataset), batch_size)
        # an empty part: one stand-in sample whose hits count zero, so this process still
        # joins the votes of the un-merged pools; its output is dropped
        loader = DataLoader(dataset, batch_sampler=[p or [0] for p in parts], num_workers=num_workers)
        keep = [bool(p) for p in parts]
    else:
        loader, keep = _loader(dataset, batch_size, num_workers), None
    for i, (x, y) in enumerate(report.bar(loader, desc=desc)):
        x = x.to(device, non_blocking=True)
        counted = keep is None or keep[i]
        split = distributed.split_batch(count=counted) if shard else contextlib.nullcontext()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None), split:
            f = model.encode_image(x)
        if counted:
            feats.append(F.normalize(f.float(), dim=-1))
            labels.append(torch.as_tensor(y))
    model.train(was_training)
    if not feats:            # this process's part of a tiny set is empty
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels).to(torch.long)


def top1(features: torch.Tensor, labels: torch.Tensor, head: torch.Tensor,
         label_offset: int = 0) -> float:
    """Top-1 accuracy (%) of ``100 * features @ head.T`` against ``labels + label_offset``."""
    logits = 100.0 * features @ head.to(features.device).T
    pred = logits.argmax(-1).cpu()
    return 100.0 * (pred == labels.cpu() + label_offset).double().mean().item()


def top1_counts(features: torch.Tensor, labels: torch.Tensor, head: torch.Tensor,
                label_offset: int = 0) -> Tuple[int, int]:
    """(correct, total) of ``top1``: what the processes of a data-parallel run add up."""
    if len(labels) == 0:
        return 0, 0
    pred = (100.0 * features @ head.to(features.device).T).argmax(-1).cpu()
    return int((pred == labels.cpu() + label_offset).sum()), len(labels)


def evaluate_task(model, head: torch.Tensor, dataset: Dataset, device="cpu",
                  batch_size: int = 256, label_offset: int = 0, **kw) -> float:
    """Top-1 accuracy (%) of one test set under a zero-shot head."""
    feats, labels = encode_images(model, dataset, device, batch_size, **kw)
    return top1(feats, labels, head, label_offset)


def accuracy_row(model, tokenizer, benchmark: Benchmark, device="cpu", batch_size: int = 256,
                 test_sets: Optional[Sequence[Dataset]] = None, only: Optional[Sequence[int]] = None,
                 shard: Optional[bool] = None, **kw) -> List[float]:
    """Accuracy (%) on every task's test set, in benchmark order: one row of the matrix.

    ``test_sets`` replaces each task's ``test`` (for example the run's preprocessed cache);
    ``only`` restricts the row to these task indices. In the "union" label space each test
    set is scored over all tasks' classes, its labels offset by the classes before it.
    ``shard`` (default: when torch.distributed runs more than one process) splits every test
    set over the processes, which must all call this function; each returns the whole row.
    """
    idx = list(range(len(benchmark.tasks))) if only is None else list(only)
    test_sets = test_sets or [t.test for t in benchmark.tasks]
    union = benchmark.label_space == "union"
    shard = distributed.is_active() if shard is None else shard
    heads = {j: zeroshot_head(model, tokenizer, benchmark.tasks[j].classnames,
                              benchmark.tasks[j].templates, device, batch_size)
             for j in (range(len(benchmark.tasks)) if union else idx)}
    if union:
        all_heads = torch.cat([heads[j] for j in range(len(benchmark.tasks))])
        offsets = np.cumsum([0] + [t.num_classes for t in benchmark.tasks[:-1]]).tolist()
    row, counts = [], []
    for j in report.bar(idx, desc="evaluate"):
        feats, labels = encode_images(model, test_sets[j], device, batch_size,
                                      desc=benchmark.tasks[j].name, shard=shard, **kw)
        head, offset = (all_heads, offsets[j]) if union else (heads[j], 0)
        if shard:
            counts.append(top1_counts(feats, labels, head, offset))
        else:
            row.append(top1(feats, labels, head, offset))
    return distributed.accuracies(counts) if shard else row


def zeroshot_table(model, tokenizer, benchmark: Benchmark, device="cpu") -> dict:
    """{task name: zero-shot accuracy %} of an untouched model."""
    return dict(zip(benchmark.task_names, accuracy_row(model, tokenizer, benchmark, device)))
