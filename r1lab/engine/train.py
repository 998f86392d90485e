"""Training one task (docs/method.md sec. 7-9).

Task loss, per mini-batch of N (image, label) pairs. With unit-norm image features v_j and
text features u_i of template(classname(y_i)) (one template drawn once per task):

    logits_ij = exp(logit_scale) * u_i^T v_j            CLIP's own frozen scale
    T_ij      = 1[y_i = y_j] / sum_k 1[y_i = y_k]        soft targets: same label = positive
    L_task    = ( CE(logits, T) + CE(logits^T, T^T) ) / 2

Total loss: L = L_task + w * P, the method's penalty P and its weight w (``Method.penalty``):
DAC's is lambda * L_AGO for tasks 2 onward, none for the first.
Optimiser: AdamW on the pools' trainable parameters, peak lr = ``cfg.lr_for(task name)``,
cosine decay with no warm-up over exactly the task's T = iterations steps:

    lr_s = lr_min + (lr - lr_min) (1 + cos(pi s / T)) / 2,   s = 0 .. T-1   (recorded in the log)

Randomness of task t (index from 0): seed_t = cfg.seed + 1000 t picks the template
(``random.Random(seed_t)``) and the batches (``torch.Generator().manual_seed(seed_t)``);
``run.py`` seeds the fresh pool with the same seed_t. Batches come from seeded shuffled
epochs, drop_last.

The method is called before each step's forward (``before_step``) and right after the
optimiser step (``after_step``); consolidation (r1lab/methods/consolidation.py) fixes and holds
its experts there.

Data-parallel (torchrun, r1lab/engine/distributed.py): the batch above is the global batch; every
process draws the same indices, encodes its contiguous slice, and the loss is computed over
the gathered features of the whole batch, so the step is one process's step (dropout aside).

Divergence: a non-finite loss (checked every step, at no cost: the loss is read for the log
anyway) or a non-finite trainable parameter at the end of the task raises ``RunDiverged``
naming the task, the step and the learning rate.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from r1lab.engine import distributed, report
from r1lab.data.stream import Task
from r1lab.config import DACConfig
from r1lab.errors import RunDiverged
from r1lab.methods import Method, get_method
from r1lab.poolset import PoolSet


def soft_targets(labels: torch.Tensor) -> torch.Tensor:
    """T_ij = 1[y_i = y_j] / sum_k 1[y_i = y_k] (each row sums to 1)."""
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.sum(1, keepdim=True)


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric in-batch contrastive loss with soft targets (docs/method.md sec. 8).
    Features must be L2-normalised; ``logit_scale`` is the log scale (exp is applied)."""
    logits = logit_scale.exp() * text_features @ image_features.T      # (N, N): text i, image j
    T = soft_targets(labels)
    loss_t = torch.sum(-T * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_i = torch.sum(-T.T * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (loss_t + loss_i) / 2


def batch_task_loss(model, class_tokens: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                    idx: torch.Tensor, logit_scale: torch.Tensor, device="cpu") -> torch.Tensor:
    """L_task of the mini-batch ``idx`` (docs/method.md sec. 8). Split over processes, this
    process encodes only its slice of ``idx``, every pool votes over the whole batch, and the
    loss is computed over the features of every slice, gathered with gradient (see
    r1lab/engine/distributed.py); in one process that is the whole batch."""
    mine = distributed.local_part(idx)
    x, y = images[mine].to(device), labels[mine].to(device)
    with distributed.split_batch():
        v = F.normalize(model.encode_image(x), dim=-1)
        u = F.normalize(model.encode_text(class_tokens[y]), dim=-1)
    v, u = distributed.gather_features(v, u)
    return contrastive_loss(v, u, labels[idx].to(device), logit_scale)


@dataclass
class TaskLog:
    """What training one task produced (read by notebooks and saved in the run folder)."""
    task: str
    template: str
    lr: float
    loss: List[float] = field(default_factory=list)        # total loss per step
    task_loss: List[float] = field(default_factory=list)
    ago: List[float] = field(default_factory=list)         # unweighted L_AGO per step
    seconds: float = 0.0
    lrs: List[float] = field(default_factory=list)         # learning rate used at each step


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Indices of ``steps`` mini-batches from seeded shuffled epochs (drop_last; a set smaller
    than one batch is used whole)."""
    bs = min(batch_size, n)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - bs + 1, bs):
            yield perm[i:i + bs]
            done += 1
            if done == steps:
                return


def train_task(model, tokenizer, pools: PoolSet, task: Task, data: TensorDataset,
               cfg: DACConfig, task_index: int, device="cpu", progress: bool = True,
               on_step: Optional[Callable[[int, float], None]] = None,
               method: Optional[Method] = None) -> TaskLog:
    """Train the pools on one task's (few-shot) data with ``method``'s penalty and step hooks
    (default: DAC's); the caller seeds, resets the pools before and merges after (see
    ``run.py``). ``progress``: messages and a bar on a terminal (report.py)."""
    with report.speaking(progress):
        return _train(model, tokenizer, pools, task, data, cfg, task_index, device, on_step,
                      method or get_method("dac"))


def _train(model, tokenizer, pools: PoolSet, task: Task, data: TensorDataset, cfg: DACConfig,
           task_index: int, device, on_step, method: Method) -> TaskLog:
    t0 = time.time()
    seed = task_seed(cfg, task_index)
    template = random.Random(seed).choice(task.templates)
    class_tokens = tokenizer([template.format(c) for c in task.classnames]).to(device)
    images, labels = data.tensors
    gen = torch.Generator().manual_seed(seed)
    params = pools.trainable_parameters()
    lr = cfg.lr_for(task.name)
    opt = torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iterations, eta_min=cfg.lr_min)
    logit_scale = model.logit_scale.detach()
    log = TaskLog(task=task.name, template=template, lr=lr)
    if len(labels) < cfg.batch_size:     # the whole set is the batch: it must split evenly too
        with distributed.raised_everywhere():
            distributed.check_batch(len(labels), f" (task {task.name}: its whole training set, "
                                                 f"smaller than batch_size {cfg.batch_size})")
    model.train()
    steps = report.bar(_batches(len(labels), cfg.batch_size, cfg.iterations, gen),
                       total=cfg.iterations, desc=f"train {task.name}")
    for step, idx in enumerate(steps):
        method.before_step(pools, cfg, step)
        l_task = batch_task_loss(model, class_tokens, images, labels, idx, logit_scale, device)
        penalty = method.penalty(pools, cfg, task_index)
        loss = l_task if penalty is None else l_task + method.penalty_weight(cfg) * penalty
        value = loss.item()
        if not math.isfinite(value):
            model.eval()
            raise RunDiverged(task.name, task_index, step, lr, f"the loss became {value}")
        log.lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(params)   # across processes: the one-process gradient
        opt.step()
        method.after_step(pools, cfg, step)
        sched.step()
        log.loss.append(value)
        log.task_loss.append(l_task.item())
        log.ago.append(0.0 if penalty is None else penalty.item())
        if on_step is not None:
            on_step(step, value)
    model.eval()
    bad = [i for i, p in enumerate(params) if not bool(torch.isfinite(p).all())]
    if bad:
        raise RunDiverged(task.name, task_index, cfg.iterations - 1, lr,
                          f"{len(bad)} trainable tensors became non-finite (inf / nan)")
    log.seconds = time.time() - t0
    return log


def task_seed(cfg: DACConfig, task_index: int) -> int:
    """seed_t = cfg.seed + 1000 t: template, batches and fresh pool of task t (from 0)."""
    return cfg.seed + 1000 * task_index
