"""Worker script of tests/test_distributed.py, started by torchrun (one copy per process).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py cli ARGS...
        ``python -m r1lab ARGS...`` with two test hooks, set by environment variables:
        R1LAB_TEST_FAULT=raise|hang   rank 1 raises, or sleeps for 4 minutes, when its first task
                                      starts training
        R1LAB_TEST_WRITES=DIR         every process records which paths under R1LAB_TEST_WATCH it
                                      created, wrote, renamed or made, in DIR/rank<q>.json
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py grad OUT
        one training step on the global batch of ``grad_setup``; each process saves its
        averaged gradients, counts and loss to OUT/rank<q>.pt
"""
import builtins
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _record_writes(watch: str, out_dir: str) -> None:
    """Wrap the calls through which Python code creates or changes files, and save the ones
    under ``watch`` when the process ends."""
    import atexit
    seen = []

    def note(path):
        p = os.path.abspath(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else None
        if p is not None and p.startswith(watch):
            seen.append(p)

    real_open, real_os_open = builtins.open, os.open
    real_replace, real_rename, real_mkdir = os.replace, os.rename, os.mkdir

    def open_(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            note(path)
        return real_os_open(path, flags, *a, **k)

    def replace(src, dst, *a, **k):
        note(dst)
        return real_replace(src, dst, *a, **k)

    def rename(src, dst, *a, **k):
        note(dst)
        return real_rename(src, dst, *a, **k)

    def mkdir(path, *a, **k):
        note(path)
        return real_mkdir(path, *a, **k)

    builtins.open, os.open, os.replace, os.rename, os.mkdir = open_, os_open, replace, rename, mkdir

    def save():
        rank = os.environ.get("RANK", "0")
        with real_open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(seen, f)
    atexit.register(save)


def _inject_fault(kind: str) -> None:
    """Rank 1 fails (``raise``) or stops answering (``hang``) when its first task starts."""
    import r1lab.engine.run
    real = r1lab.engine.run.train_task

    def train_task(*args, **kw):
        if os.environ.get("RANK") == "1" and args[6] == 0:       # task_index
            if kind == "hang":
                time.sleep(240)          # bounded, should torchrun fail to stop it
            raise RuntimeError("injected failure of rank 1")
        return real(*args, **kw)
    r1lab.engine.run.train_task = train_task


def cli(argv) -> int:
    if os.environ.get("R1LAB_TEST_WRITES"):
        _record_writes(os.path.abspath(os.environ["R1LAB_TEST_WATCH"]), os.environ["R1LAB_TEST_WRITES"])
    if os.environ.get("R1LAB_TEST_FAULT"):
        _inject_fault(os.environ["R1LAB_TEST_FAULT"])
    from r1lab.cli import main
    return main(argv)


def grad_setup(router: str):
    """(bundle, pools, tokens, images, labels, idx, cfg): a random tiny CLIP with DAC pools that
    have past columns (so AGO is live) and a non-zero B, and one global batch of 8 of the fake
    benchmark's first task, in float64. The same on every process (seeded)."""
    import torch
    from engine_setup import CFG, fake_benchmark, random_bundle
    from r1lab import attach_pools
    cfg = CFG.replace(dropout=0.0, batch_size=8, router=router)
    bundle = random_bundle(0)
    bundle.model.double()               # float64: rounding far below the asserted tolerance
    torch.manual_seed(1)
    pools = attach_pools(bundle.model, cfg)
    from r1lab.engine import distributed
    pools.use_collective(distributed.COLLECTIVE)   # what run_stream does under torchrun
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for pool in pools.values():
            pool.B.copy_(0.05 * torch.randn(pool.B.shape, generator=g))
            pool.counts.copy_(torch.randint(0, 9, pool.counts.shape, generator=g))
    pools.end_task()                    # past columns for AGO; fresh pools
    for pool in pools.values():
        with torch.no_grad():
            pool.B.copy_(0.05 * torch.randn(pool.B.shape, generator=g))
    task = fake_benchmark().tasks[0]
    images, labels = task.train.tensors
    images = images.double()
    idx = torch.randperm(len(labels), generator=g)[:cfg.batch_size]
    tokens = bundle.tokenizer([task.templates[0].format(c) for c in task.classnames])
    return bundle, pools, tokens, images, labels, idx, cfg


def grad_step(router: str):
    """One step's loss (L_task + lambda L_AGO), the (averaged) gradients of the pools and
    their counts; then an accuracy row of the un-merged pools (eval batch 8 over test sets of
    20, 15 and 25 images: the last batch of 1 leaves rank 1 a stand-in sample)."""
    import torch
    from torch.utils.data import TensorDataset
    from engine_setup import fake_benchmark
    from r1lab.engine import distributed
    from r1lab.ago import ago_loss
    from r1lab.engine.evaluate import accuracy_row, encode_images
    from r1lab.engine.train import batch_task_loss
    bundle, pools, tokens, images, labels, idx, cfg = grad_setup(router)
    model = bundle.model
    model.train()
    l_task = batch_task_loss(model, tokens, images, labels, idx, model.logit_scale.detach())
    loss = l_task + cfg.ago_weight * ago_loss(pools.values(), cfg.ago_form)
    loss.backward()
    params = pools.trainable_parameters()
    distributed.average_gradients(params)
    names = [f"{n}.{k}" for n, pool in pools.items() for k, p in pool.named_parameters() if p.requires_grad]
    grads = {n: p.grad.clone() for n, p in zip(names, params)}
    bm = fake_benchmark()
    sets = [TensorDataset(t.test.tensors[0].double(), t.test.tensors[1]) for t in bm.tasks]
    with torch.no_grad():
        row = accuracy_row(model, bundle.tokenizer, bm, batch_size=8, test_sets=sets)
        # this process's image features and which samples they are
        feats = [(encode_images(model, ds, batch_size=8, shard=distributed.is_active())[0],
                  [i for part in distributed.eval_slices(len(ds), 8) for i in part]) for ds in sets]
    return dict(loss=loss.item(), grads=grads, counts=pools.counts(), row=row, feats=feats)


def grad(out: str) -> int:
    import torch
    from r1lab.engine import distributed
    distributed.init("cpu", timeout=60)
    res = {router: grad_step(router) for router in ("frozen", "gate")}
    # ties broken at random from each rank's own stream must still agree (rank 0's draw)
    from r1lab.routing import top_indices
    torch.manual_seed(100 + distributed.rank())
    v = torch.tensor([5, 3, 3, 3, 3, 0, 3, 3])
    res["random ties"] = [top_indices(v, 3, "random", distributed.COLLECTIVE).tolist() for _ in range(20)]
    torch.save(res, os.path.join(out, f"rank{distributed.rank()}.pt"))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    sys.exit(cli(rest) if cmd == "cli" else grad(rest[0]))
