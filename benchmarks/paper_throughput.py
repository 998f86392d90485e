"""Training and evaluation throughput of the paper preset (CLIP ViT-B/16, 144 pools).

Measures, in one process, with the engine's own code path (``train_task``, ``encode_images``):
  * training iterations/s at batch 32 (forward, backward, AdamW; AGO on, as from task 2),
  * peak accelerator memory during training (CUDA only),
  * the same under bf16 autocast (CUDA only),
  * evaluation images/s of the merged model, fp32 and bf16 autocast,
  * the projected wall time of a complete 5-shot MTIL Order I run (11 tasks x 500 steps and
    11 evaluations x 97,209 images at the measured rates), printed next to Table 2.

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
from r1lab.data.stream import Task
from r1lab.engine.evaluate import encode_images
from r1lab.engine.train import train_task


TASKS, TEST_IMAGES = 11, 97209   # MTIL: 11 datasets, 97,209 test images (docs/protocol.md)


def _f(x, spec):
    return "-" if x is None else format(x, spec)


def table(res) -> str:
    """The figures next to the paper's Table 2 (DAC, batch 32, one RTX A6000)."""
    rows = [f"{'':<34}{'this machine':>16}{'paper (Table 2)':>18}",
            f"{'device':<34}{res['device'][:16]:>16}{'RTX A6000':>18}",
            f"{'training it/s, fp32':<34}{_f(res['train_it_per_s'], '.2f'):>16}{'1.84':>18}",
            f"{'training it/s, bf16 autocast':<34}{_f(res.get('train_it_per_s_bf16'), '.2f'):>16}{'-':>18}",
            f"{'peak training memory MB, fp32':<34}{_f(res['train_peak_mb'], ',.0f'):>16}{'9,490':>18}",
            f"{'peak training memory MB, bf16':<34}{_f(res.get('train_peak_mb_bf16'), ',.0f'):>16}{'-':>18}",
            f"{'evaluation images/s, fp32':<34}{_f(res.get('eval_images_per_s_fp32'), ',.0f'):>16}{'-':>18}",
            f"{'evaluation images/s, bf16':<34}{_f(res.get('eval_images_per_s_bf16'), ',.0f'):>16}{'-':>18}"]
    paper_train = res.get("mtil_run_steps", 0) / 1.84 / 60
    names = {"fp32": "fp32", "engine": "fp32 train, bf16 eval", "bf16": "bf16"}
    for label in ("fp32", "engine", "bf16"):
        if res.get(f"mtil_projected_min_{label}") is not None:
            rows.append(f"{'MTIL I run min, ' + names[label]:<34}{res[f'mtil_projected_min_{label}']:>16,.1f}"
                        f"{'-':>18}")
            rows.append(f"{'  of which training / evaluation':<34}"
                        f"{_f(res[f'mtil_train_min_{label}'], '.1f') + ' / ' + _f(res[f'mtil_eval_min_{label}'], '.1f'):>16}"
                        f"{'(train ' + format(paper_train, '.0f') + ' min)' if label == 'fp32' else '':>18}")
    rows.append(f"projection: {res.get('mtil_run_steps')} training steps + {res.get('mtil_run_eval_images'):,} "
                f"test images at the rates above; cache build, checkpoints and text heads not included")
    return "\n".join(rows)


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
    def time_training(amp):
        """Training it/s and peak MB of ``cfg.iterations`` steps (the first ``warm`` untimed)."""
        times, t_last = [], [None]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        def on_step(step, loss):
            sync(device)
            now = time.perf_counter()
            if t_last[0] is not None and step >= warm:
                times.append(now - t_last[0])
            t_last[0] = now

        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            train_task(model, tok, pools, task, data, cfg, task_index=1, device=device, progress=False,
                       on_step=on_step)
        it_s = len(times) / sum(times) if times else float("nan")
        return it_s, (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None)

    it_s, peak_mb = time_training(None)
    # bf16 autocast training: on the GPU only (CPU bf16 matmuls are slow and not what is timed)
    it_s_bf16, peak_mb_bf16 = time_training(torch.bfloat16) if device.type == "cuda" else (None, None)

    pools.end_task()
    from r1lab import detach_pools
    detach_pools(model)
    ev = TensorDataset(torch.randn(args.eval_images, 3, 224, 224), torch.zeros(args.eval_images, dtype=torch.long))
    res = dict(device=str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
               torch=torch.__version__, batch=args.batch, train_it_per_s=it_s,
               train_peak_mb=peak_mb, train_it_per_s_bf16=it_s_bf16, train_peak_mb_bf16=peak_mb_bf16,
               paper_it_per_s=1.84, paper_peak_mb=9490)
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
    # a complete 5-shot MTIL Order I run: 11 tasks x `iterations` steps, 11 evaluations x 97,209
    # images (the test-set cache build, checkpoints and zero-shot heads are not included)
    steps = TASKS * DACConfig.paper().iterations
    res["mtil_run_steps"], res["mtil_run_eval_images"] = steps, TASKS * TEST_IMAGES
    # "engine": what `r1lab run --bf16` does today (fp32 training, bf16 evaluation);
    # "bf16": training under bf16 autocast too (train.py does not do that yet)
    for label, train, ev in (("fp32", it_s, res.get("eval_images_per_s_fp32")),
                             ("engine", it_s, res.get("eval_images_per_s_bf16")),
                             ("bf16", it_s_bf16, res.get("eval_images_per_s_bf16"))):
        if train and ev:
            t_train, t_eval = steps / train, TASKS * TEST_IMAGES / ev
            res[f"mtil_train_min_{label}"] = t_train / 60
            res[f"mtil_eval_min_{label}"] = t_eval / 60
            res[f"mtil_projected_min_{label}"] = (t_train + t_eval) / 60
    res["mtil_projected_min"] = res.get("mtil_projected_min_engine") or res.get("mtil_projected_min_fp32")
    print(table(res))
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
