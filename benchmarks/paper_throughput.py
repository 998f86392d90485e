"""Training and evaluation throughput of the paper preset (CLIP ViT-B/16, 144 pools).

Measures, in one process, with the engine's own code path (``train_task``, ``encode_images``):
  * training iterations/s at batch 32 (forward, backward, AdamW; AGO on, as from task 2),
  * peak accelerator memory during training (CUDA only),
  * evaluation images/s of the merged model, fp32 and bf16 autocast.

The paper reports 1.84 it/s training and 9,490 MB peak memory for DAC at batch 32 on one
RTX A6000 (Table 2). Random weights and random 224 px images: speed does not depend on them.

    python benchmarks/paper_throughput.py --device cuda            # the GPU check
    python benchmarks/paper_throughput.py --device cpu --steps 2 --eval-images 16   # smoke
"""
from __future__ import annotations

import argparse
import json
import time

import open_clip
import torch
from torch.utils.data import TensorDataset

from r1lab import DACConfig, attach_pools
from r1lab.benchmark import Task
from r1lab.evaluate import encode_images
from r1lab.train import train_task


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps (after 5 warm-up)")
    ap.add_argument("--eval-images", type=int, default=4096)
    ap.add_argument("--eval-batch", type=int, default=512)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).to(device)
    tok = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    warm = min(5, args.steps)
    cfg = DACConfig.paper().replace(iterations=warm + args.steps, batch_size=args.batch)
    pools = attach_pools(model, cfg)
    # one finished task, so that AGO has past columns as in tasks 2..11
    with torch.no_grad():
        for p in pools.values():
            p.B.normal_(0, 1e-3)
    pools.end_task()

    n = args.batch * 4
    data = TensorDataset(torch.randn(n, 3, 224, 224), torch.arange(n) % 100)
    task = Task("random", [f"class {i}" for i in range(100)], ["a photo of a {}."], data, data)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_last = [None]

    def on_step(step, loss):
        sync(device)
        now = time.perf_counter()
        if t_last[0] is not None and step >= warm:
            times.append(now - t_last[0])
        t_last[0] = now

    train_task(model, tok, pools, task, data, cfg, task_index=1, device=device, progress=False, on_step=on_step)
    it_s = len(times) / sum(times) if times else float("nan")
    peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None

    pools.end_task()
    from r1lab import detach_pools
    detach_pools(model)
    ev = TensorDataset(torch.randn(args.eval_images, 3, 224, 224), torch.zeros(args.eval_images, dtype=torch.long))
    res = dict(device=str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
               torch=torch.__version__, batch=args.batch, train_it_per_s=it_s,
               train_peak_mb=peak_mb, paper_it_per_s=1.84, paper_peak_mb=9490)
    for label, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        if amp is not None and device.type != "cuda":
            continue
        encode_images(model, TensorDataset(ev.tensors[0][:args.eval_batch], ev.tensors[1][:args.eval_batch]),
                      device, args.eval_batch, amp_dtype=amp)   # warm-up
        sync(device)
        t = time.perf_counter()
        encode_images(model, ev, device, args.eval_batch, amp_dtype=amp)
        sync(device)
        res[f"eval_images_per_s_{label}"] = args.eval_images / (time.perf_counter() - t)
    # a full 5-shot MTIL Order I run evaluates 11 x 97,209 images and trains 11 x 501 steps
    if res.get("eval_images_per_s_fp32"):
        res["mtil_estimate_min_fp32"] = (11 * 97209 / res["eval_images_per_s_fp32"] + 11 * 501 / it_s) / 60
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
