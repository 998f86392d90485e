"""Data-parallel runs under torchrun: one continual-learning run over W processes, with the
semantics of one process on the global batch.

    torchrun --nproc_per_node 8 -m r1lab run --benchmark mtil ... --device cuda
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m r1lab run ...

Every process (rank q of W) holds the whole model, the whole few-shot training set and every
test set; the hooks below split the work. Without an initialised process group (one process)
every hook is the identity and the run is bit for bit what it always was.

Training step (docs/method.md sec. 4-9), global batch of N = ``cfg.batch_size`` samples,
N divisible by W (``ConfigError`` otherwise), n = N / W:

    idx      = the next N indices of the seeded permutation   the same on every rank: every
                                                              rank draws from the same generator
    idx_q    = idx[q n : (q + 1) n]                           this rank's contiguous slice
    every pool, on the slice:
        c_q     = sum_{n in slice} 1[i in E_n]                per-sample hits of the slice
        c       = sum_q c_q                                   all_reduce: the global batch's vote
        S       = TopK_k(c)                                   one active set, the same everywhere
        counts += c                                           identical on every rank
    F        = [f_0; f_1; ...; f_{W-1}]                       image and text features of every
                                                              slice, gathered in rank order,
                                                              with gradient (``gather_features``)
    L        = L_task(F, labels[idx]) + lambda L_AGO          the same global loss on every rank

Gradient. The gather's backward sums the gradient arriving at F over the ranks and keeps this
rank's block; every rank computed the same L, so rank q receives W dL/df_q, and its parameter
gradient is g_q = W (dL/df_q)(df_q/dtheta) + lambda grad L_AGO (AGO depends on the parameters
only, identical everywhere). The average over ranks is

    g = (1/W) sum_q g_q = sum_q (dL/df_q)(df_q/dtheta) + lambda grad L_AGO,

exactly the one-process gradient (``average_gradients``: one flattened all_reduce of the
trainable gradients; a tensor with no gradient on any rank stays None, so AdamW skips it as it
does in one process). Identical gradients from identical states keep AdamW's parameters and
moments identical on every rank, so merges and AGO's past columns are identical too.

Evaluation. A test set's batches of ``eval_batch_size`` are one process's batches; each rank
encodes its contiguous slice of each (``eval_slices``: a disjoint part of the test set), and
the numbers of correct answers and of samples per test set are summed over the ranks (one
all_reduce per row). An un-merged pool (the accuracy before the merge) votes over the whole
eval batch as in training; a rank whose slice of a short last batch is empty forwards one
stand-in sample whose hits count zero, so that it joins every vote, and drops its output.
The heads (the text prompts) are encoded whole on every rank.

What is not the same as one process:
  * float rounding: a slice of n samples goes through other kernel blockings than a batch of
    N, and sums run in another order (about 1e-7 relative); an accuracy can move only when a
    prediction sits on such a tie;
  * dropout: each rank draws masks for its own slice only, and from its own stream (rank 0
    continues the one-process stream, rank q > 0 reseeds from (seed_t, q), ``seed_rank``), so
    the masks cannot equal one process's. With ``--set dropout=0`` a W-process run equals
    the one-process run up to rounding (tests/test_distributed.py asserts it).

Files. Rank 0 alone writes the run folder (lock, identity, checkpoints, metrics); it decides
where to resume and broadcasts what it read (the finished tasks' rows and the last adapter
state), so the run folder needs to exist on rank 0's machine only. The test-set cache is
built by rank 0 while the others wait, then memory-mapped by every rank from the same path:
with a shared file system it is built once; without one each machine builds its own copy
under that path (cache.py's lock keeps it to one builder per machine), and every process
waits for the last one before training starts.

Failures. A rank that raises ends its process; torchrun then stops the other workers. A rank
that hangs makes the others' next collective fail after ``timeout`` seconds (``--dist-timeout``,
default 600), and they stop with ``DistributedError`` naming the operation, instead of waiting
forever. Waits on work that only some processes do (rank 0 opening the folder, reading
checkpoints, checking the data; building a test-set cache, which can take longer than any
collective should) go through a second gloo group with a 24-hour timeout; a rank that dies
closes its connections, which ends those waits at once.

Start-up: every process loads the model, then takes rank 0's weights (``broadcast_model``, as
DistributedDataParallel does), so randomly initialised models agree too. From Python, call
``init()`` in every process and then the same ``run_stream`` everywhere (a group initialised
by the caller works as well; its own timeout then applies to every wait).

Threads: each process uses max(1, cores // local world size) CPU threads. Devices: gloo on the
CPU, NCCL on CUDA with this process on cuda:LOCAL_RANK.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from datetime import timedelta
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch

from r1lab.errors import ConfigError, DistributedError, R1labError
from r1lab.routing import Collective

try:
    import torch.distributed as dist
except ImportError:  # pragma: no cover - a torch built without distributed support
    dist = None

DEFAULT_TIMEOUT = 600.0          # seconds a collective waits for the other ranks
MAIN_WAIT_TIMEOUT = 24 * 3600.0  # seconds the others wait while rank 0 works alone
T = TypeVar("T")

_timeout = DEFAULT_TIMEOUT       # the process group's collective timeout (seconds)
_owned = False                   # this module initialised the process group (and ends it)
_wait_group = None               # gloo group for waits on rank 0's own work
_split = [False, True]           # inside split_batch: [a batch is split over ranks, count my hits]


# ------------------------------------------------------------------ who am I
def launched_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_active() -> bool:
    """True when a process group of more than one process is initialised."""
    return (dist is not None and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes and prints."""
    return rank() == 0


def describe() -> str:
    """'process q of W' (for messages)."""
    return f"process {rank()} of {world_size()}"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ------------------------------------------------------------------ set up and tear down
def init(device="cpu", timeout: float = DEFAULT_TIMEOUT) -> str:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and return the device this process
    must use: ``device`` unchanged outside torchrun (or with one process), else cuda:LOCAL_RANK
    for a CUDA device (backend NCCL) and the CPU with gloo otherwise. Sets the CPU threads to
    max(1, cores // LOCAL_WORLD_SIZE)."""
    global _owned, _wait_group, _timeout
    W = launched_world_size()
    if W <= 1:
        return device
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"--dist-timeout must be a number of seconds > 0, got {timeout!r}")
    if dist is None or not dist.is_available():
        raise DistributedError(f"WORLD_SIZE={W}, but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(W)))
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local} needs cuda:{local}, but this machine has "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA devices: "
                f"start at most that many processes per node (--nproc_per_node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
        if not dist.is_gloo_available():
            raise DistributedError("the gloo backend (CPU runs) is not available in this torch build")
    torch.set_num_threads(max(1, _cores() // max(1, local_world)))
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout)))
            _timeout = float(timeout)
        except Exception as e:  # noqa: BLE001 - rendezvous errors come in many types
            raise DistributedError(f"could not join the process group ({_first_line(e)}); start "
                                   f"r1lab with torchrun (README.md, 'Data-parallel runs')") from e
        _owned = True
    _wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=MAIN_WAIT_TIMEOUT))
    return str(dev)


def shutdown() -> None:
    """Leave the process group this module joined (a no-op otherwise)."""
    global _owned, _wait_group
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned, _wait_group = False, None


# ------------------------------------------------------------------ collectives, with clear errors
def _first_line(e: BaseException) -> str:
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip())      # gloo's "[file.cc:78] " prefix
    return text.splitlines()[0][:300] if text else type(e).__name__


def _collective(what: str, fn: Callable, *args, **kw):
    try:
        return fn(*args, **kw)
    except RuntimeError as e:   # gloo / NCCL errors, timeouts and closed connections
        raise DistributedError(
            f"{what} failed: {_first_line(e)}. Another process has stopped (its own message says "
            f"why) or has not answered within --dist-timeout ({_timeout:g} s)") from e


def wait_for_all() -> None:
    """Every process waits for the others, up to 24 hours (the group of ``main_only``): after
    work whose length differs between machines, such as building a test-set cache where the
    file system is not shared."""
    if is_active():
        _collective("waiting for every process", dist.barrier, group=_wait_group)


def mark_everywhere(e: BaseException) -> BaseException:
    """Mark an error that every rank raises alike: the command line prints it on rank 0 only."""
    e.r1lab_every_rank = True
    return e


@contextlib.contextmanager
def raised_everywhere() -> Iterator[None]:
    """Errors (``R1labError``) raised inside are deterministic: every rank raises the same one."""
    try:
        yield
    except R1labError as e:
        raise mark_everywhere(e)


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else an ``R1labError`` with its message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any pickling problem
        return R1labError(f"process 0 stopped: {type(e).__name__}: {e}")


def main_only(fn: Callable[[], T], share: bool = False) -> Optional[T]:
    """Run ``fn`` on rank 0 only, while the others wait (up to 24 hours when ``init`` made the
    group, since rank 0 may be building a test-set cache; else the group's own timeout). With
    ``share`` every rank returns rank 0's result (pickled), else the others return None. When
    ``fn`` raises, every rank raises the same error. In one process: ``fn()``."""
    if not is_active():
        return fn()
    box: List = [None]
    if rank() == 0:
        try:
            value = fn()
        except BaseException as e:
            box[0] = ("error", _portable(e))
            try:
                _collective("sharing rank 0's error", dist.broadcast_object_list, box, src=0,
                            group=_wait_group)
            except DistributedError:
                pass                      # the others are gone already: rank 0's own error stands
            raise
        box[0] = ("ok", value if share else None)
        _collective("sharing rank 0's result", dist.broadcast_object_list, box, src=0, group=_wait_group)
        return value
    _collective("waiting for rank 0", dist.broadcast_object_list, box, src=0, group=_wait_group)
    kind, payload = box[0]
    if kind == "error":
        if not isinstance(payload, R1labError):
            payload = R1labError(f"process 0 stopped: {type(payload).__name__}: {payload}")
        raise mark_everywhere(payload)
    return payload


def broadcast_model(model: torch.nn.Module) -> None:
    """Every rank takes rank 0's weights and buffers (as DistributedDataParallel does when it
    is built): a model created with random weights starts the same everywhere."""
    if not is_active():
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            buf = t if t.is_contiguous() else t.contiguous()
            _collective("broadcasting the model", dist.broadcast, buf, src=0)
            if buf is not t:
                t.copy_(buf)


def seed_rank(seed: int) -> None:
    """Give rank q > 0 its own random stream for the task (dropout masks), from (seed, q);
    rank 0 keeps the stream that ``torch.manual_seed(seed)`` started, as one process does.
    Called after the fresh pools are drawn, which needs the same stream on every rank."""
    if not is_active() or rank() == 0:
        return
    import numpy as np
    torch.manual_seed(int(np.random.SeedSequence([int(seed), rank()]).generate_state(1)[0]))


# ------------------------------------------------------------------ training: a split batch
def check_batch(batch_size: int, note: str = "") -> None:
    """``ConfigError`` unless the global batch splits evenly over the ranks."""
    W = world_size()
    if W > 1 and batch_size % W:
        lower, upper = (batch_size // W) * W, (batch_size // W + 1) * W
        fix = f"--set batch_size={lower} or {upper}" if lower else f"--set batch_size={upper}"
        raise ConfigError(
            f"the global batch of {batch_size} samples{note} is split evenly over the {W} "
            f"processes of this run, but {batch_size} is not divisible by {W}: use {fix}, or "
            f"another number of processes (torchrun --nproc_per_node / --nnodes)")


def local_part(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the batch itself in one process)."""
    if not is_active():
        return batch
    n = len(batch) // world_size()
    return batch[rank() * n:(rank() + 1) * n]


@contextlib.contextmanager
def split_batch(count: bool = True) -> Iterator[None]:
    """Forwards inside are slices of a batch split over the ranks: every pool's vote sums the
    hits of all slices (``vote``). ``count=False``: this rank's slice is a stand-in whose
    hits count zero."""
    before = list(_split)
    _split[0], _split[1] = True, bool(count)
    try:
        yield
    finally:
        _split[0], _split[1] = before


def vote(hits: torch.Tensor) -> torch.Tensor:
    """The hits of the whole global batch, c = sum_q c_q (inside ``split_batch`` with more
    than one process); ``hits`` itself otherwise."""
    if not _split[0] or not is_active():
        return hits
    total = hits.clone() if _split[1] else torch.zeros_like(hits)
    _collective("the batch vote (all_reduce of expert hits)", dist.all_reduce, total)
    return total


def agree(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's value of ``t`` on every rank (a broadcast; ``t`` itself in one process). For
    choices drawn from a rank's own random stream, such as ties broken at random
    (``routing.top_indices``), which must be the same everywhere; rank 0 continues the
    one-process stream, so the choice is one process's."""
    if not is_active():
        return t
    out = t.clone().contiguous()
    _collective("agreeing on a random choice (broadcast from rank 0)", dist.broadcast, out, src=0)
    return out


class _PoolCollective(Collective):
    """What every pool of a data-parallel run uses (``PoolSet.use_collective``): the vote sums
    the hits of every slice of a split batch, random tie-breaks take rank 0's draw."""

    def vote(self, hits: torch.Tensor) -> torch.Tensor:
        return vote(hits)

    def agree(self, t: torch.Tensor) -> torch.Tensor:
        return agree(t)


COLLECTIVE = _PoolCollective()


class _GatherWithGrad(torch.autograd.Function):
    """y = [x_0; ...; x_{W-1}] (rank order); backward: dx_q = (sum over ranks of dy)[block q]."""

    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world_size())]
        _collective("gathering the batch's features", dist.all_gather, parts, x)
        ctx.block = (rank() * x.shape[0], (rank() + 1) * x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        _collective("summing the features' gradients", dist.all_reduce, grad)
        return grad[ctx.block[0]:ctx.block[1]]


def gather_features(*features: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Each (n, D_i) tensor of this rank's slice -> the (N, D_i) tensor of the global batch,
    with gradient (one all_gather for all of them). In one process: the tensors themselves."""
    if not is_active():
        return features
    widths = [f.shape[1] for f in features]
    return tuple(torch.split(_GatherWithGrad.apply(torch.cat(features, dim=1)), widths, dim=1))


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """grad <- (1/W) sum_q grad_q for every parameter (see the module docstring for why this
    is the one-process gradient); one all_reduce of the flattened gradients plus one flag per
    tensor. A tensor without a gradient on every rank keeps None."""
    if not is_active() or not params:
        return
    ref = params[0]
    flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else
                      torch.zeros(p.numel(), device=ref.device, dtype=ref.dtype) for p in params]
                     + [torch.tensor([float(p.grad is not None) for p in params], device=ref.device,
                                     dtype=ref.dtype)])
    _collective("averaging the gradients (all_reduce)", dist.all_reduce, flat)
    flat /= world_size()
    start = 0
    present = flat[-len(params):]
    for i, p in enumerate(params):
        g = flat[start:start + p.numel()].view_as(p)
        start += p.numel()
        if present[i] == 0:
            p.grad = None
        elif p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


# ------------------------------------------------------------------ evaluation: sharded test sets
def eval_slices(n: int, batch_size: int) -> List[List[int]]:
    """For each of the ceil(n / batch_size) batches of one process over a set of n, this rank's
    contiguous part (sizes differ by at most one; a part may be empty in a short last batch)."""
    W, q = world_size(), rank()
    out = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        base, extra = divmod(size, W)
        lo = start + q * base + min(q, extra)
        out.append(list(range(lo, lo + base + (1 if q < extra else 0))))
    return out


def accuracies(counts: Sequence[Tuple[int, int]]) -> List[float]:
    """Accuracy (%) per test set from this rank's (correct, total) pairs, summed over ranks."""
    t = torch.tensor([[c, n] for c, n in counts], dtype=torch.float64)
    if is_active():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        _collective("summing the evaluation counts (all_reduce)", dist.all_reduce, t)
    return [100.0 * (c / n) if n else float("nan") for c, n in t.cpu().tolist()]
