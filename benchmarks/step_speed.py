"""Step speed of DAC against plain LoRA and the frozen model, side by side, on the CPU.

What is timed (one process; the variants interleaved round by round, in an order that rotates
every round, so that load from other processes hits them alike; medians over rounds):

  train step   zero_grad, image + text forward, in-batch symmetric contrastive loss
               (docs/method.md sec. 8, one label per sample), backward, AdamW step
     dac       the paper preset's pools (r = 12, k = 8, m = 4, dropout 0.2, frozen router,
               batch vote), only A and B train
     lora      ``DACConfig.plain_lora()``: the same layer with all 12 experts always active
     lora2     a second, identical lora model: a control for the noise of the measurement
     frozen    no adapters and nothing to train: the same forward and loss under
               ``torch.no_grad()`` (a floor, not a training step)
  inference    eval-mode ``encode_image`` + ``encode_text`` under ``torch.no_grad()``
     merged    the DAC model after ``end_task()`` and ``detach_pools()``: plain open_clip
     plain     the stock model (and plain2, a second copy, as a control)
     unmerged  the DAC model with its pools still attached (what merging saves)

Goals: the DAC step within 1.15x of plain LoRA; merged inference 1.00x the plain model.

    python benchmarks/step_speed.py --quick                       # tiny CLIP only (a minute)
    python benchmarks/step_speed.py --threads 1 --write           # + ViT-B/16, writes docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from r1lab import DACConfig, attach_pools, detach_pools  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a {}.", "a blurry photo of the {}.", "itap of my {}.",
           "a sculpture of a {} in a museum."]
CLASSES = ["cat", "truck", "river", "forest", "airliner", "tabby kitten", "sunflower", "bridge"]

# the tiny CLIP of the test suite
TINY = dict(embed_dim=32, quick_gelu=True,
            vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=2.0),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2, mlp_ratio=2.0))


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"(intra-op threads: {torch.get_num_threads()}), open_clip {open_clip.__version__}, "
            f"Python {platform.python_version()}; load average at start {load}")


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "tiny":
        return open_clip.CLIP(**TINY)
    return open_clip.create_model(name, pretrained=None)


def batch_for(model, batch: int):
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    prompts = [PROMPTS[i % len(PROMPTS)].format(CLASSES[i % len(CLASSES)]) for i in range(batch)]
    texts = open_clip.get_tokenizer("ViT-B-16-quickgelu")(prompts)
    return images, texts


def contrastive_loss(model, images, texts):
    """Symmetric in-batch contrastive loss with CLIP's own (frozen) logit scale."""
    v = model.encode_image(images, normalize=True)
    u = model.encode_text(texts, normalize=True)
    logits = model.logit_scale.exp() * u @ v.T
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def make_train_step(model, params):
    model.train()
    if not params:                                   # frozen: forward and loss only
        def step(images, texts):
            with torch.no_grad():
                contrastive_loss(model, images, texts)
        return step
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01)

    def step(images, texts):
        opt.zero_grad(set_to_none=True)
        contrastive_loss(model, images, texts).backward()
        opt.step()
    return step


def make_infer_step(model):
    model.eval()

    def step(images, texts):
        with torch.no_grad():
            model.encode_image(images)
            model.encode_text(texts)
    return step


def race(steps: dict, images, texts, warmup: int, repeats: int, verbose: bool = False):
    """Every step function, interleaved round by round in a rotating order. Returns
    {name: [wall-clock seconds of each timed call]}."""
    for _ in range(warmup):
        for fn in steps.values():
            fn(images, texts)
    times = {k: [] for k in steps}
    names = list(steps)
    for i in range(repeats):
        # rotate the order every round: the first call of a round pays for memory the
        # previous variant released (page faults), which biased a fixed order by ~5 %
        for k in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            steps[k](images, texts)
            times[k].append(time.perf_counter() - t)
        if verbose:
            print(f"  round {i + 1}/{repeats}: " + ", ".join(f"{k} {1e3 * v[-1]:.0f} ms"
                                                          for k, v in times.items()), flush=True)
    return times


def summary(times: dict, name: str, ref: str) -> dict:
    """Median wall time; the ratio of medians to ``ref``; the median per-round (paired) ratio;
    the ratio of the fastest calls (least disturbed by other processes)."""
    wall, ref_wall = times[name], times[ref]
    return dict(wall=statistics.median(wall), ratio=statistics.median(wall) / statistics.median(ref_wall),
                paired=statistics.median(a / b for a, b in zip(wall, ref_wall)),
                fastest=min(wall) / min(ref_wall))


def bench(name: str, batch: int, warmup: int, repeats: int) -> list:
    base = build(name)
    images, texts = batch_for(base, batch)
    # training: three copies of the same stock model
    torch.manual_seed(1)
    dac = copy.deepcopy(base)
    dac_pools = attach_pools(dac, DACConfig.paper())
    lora = copy.deepcopy(base)
    lora_pools = attach_pools(lora, DACConfig.plain_lora())
    torch.manual_seed(1)
    lora2 = copy.deepcopy(base)                      # control: the noise between equal variants
    lora2_pools = attach_pools(lora2, DACConfig.plain_lora())
    frozen = copy.deepcopy(base)
    frozen.requires_grad_(False)
    train = {"dac": make_train_step(dac, dac_pools.trainable_parameters()),
             "lora": make_train_step(lora, lora_pools.trainable_parameters()),
             "lora2": make_train_step(lora2, lora2_pools.trainable_parameters()),
             "frozen": make_train_step(frozen, [])}
    t_train = race(train, images, texts, warmup, repeats, verbose=name != "tiny")
    # inference: merge the (now trained) DAC pools, detach -> plain open_clip
    unmerged = copy.deepcopy(dac)
    dac_pools.end_task()
    merged = detach_pools(dac)
    del lora, lora2, frozen
    infer = {"merged": make_infer_step(merged), "plain": make_infer_step(base),
             "plain2": make_infer_step(copy.deepcopy(base)), "unmerged": make_infer_step(unmerged)}
    t_infer = race(infer, images, texts, warmup, repeats, verbose=name != "tiny")

    label = "tiny CLIP" if name == "tiny" else name
    rows = []
    for what, times, ref, variants in (
            ("train step", t_train, "lora", [("dac", "dac"), ("lora", "lora"),
                                             ("lora2", "lora, second copy (control)"),
                                             ("frozen", "frozen (no_grad forward)")]),
            ("inference", t_infer, "plain", [("merged", "merged (detached)"), ("plain", "plain open_clip"),
                                             ("plain2", "plain, second copy (control)"),
                                             ("unmerged", "unmerged (pools attached)")])):
        for key, variant in variants:
            rows.append(dict(model=label, batch=batch, what=what, variant=variant, ref=ref,
                             **summary(times, key, ref)))
    return rows


def table(rows) -> str:
    out = ["| model | batch | what | variant | median ms | ratio | paired ratio | fastest ratio | baseline |",
           "|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['batch']} | {r['what']} | {r['variant']} | {1e3 * r['wall']:,.1f} | "
                   f"{r['ratio']:.2f}x | {r['paired']:.2f}x | {r['fastest']:.2f}x | {r['ref']} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny CLIP only")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tiny-batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds for ViT-B/16")
    ap.add_argument("--tiny-repeats", type=int, default=40, help="timed rounds for the tiny CLIP")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 is steadier on a shared machine, where "
                         "a descheduled OpenMP thread stalls every parallel op")
    ap.add_argument("--write", action="store_true", help="write the table to docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(info, flush=True)
    rows = bench("tiny", args.tiny_batch, args.warmup, args.tiny_repeats)
    print(table(rows), flush=True)
    if not args.quick:
        rows += bench("ViT-B-16-quickgelu", args.batch, args.warmup, args.repeats)
        print(table(rows[8:]), flush=True)
    md = table(rows)
    print("\n" + md)
    if args.write:
        command = "python benchmarks/step_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_doc(md, info, command.strip(), args)


BEGIN, END = "<!-- step_speed.py: begin -->", "<!-- step_speed.py: end -->"


def write_doc(md: str, info: str, command: str, args) -> None:
    """Write the measured section of docs/benchmarks.md; text outside the markers is kept."""
    end_load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    section = f"""{BEGIN}
## Training step and inference speed (`benchmarks/step_speed.py`)

Command: `{command}`

Machine: {info}. Load average at the end: {end_load}.

Ratios: *ratio* is the quotient of the median wall-clock times; *paired ratio* is the median
over rounds of the per-round quotient (the variants run interleaved, round by round, in a
rotating order, so load from other processes hits them alike); *fastest ratio* is the quotient
of the fastest calls. The *second copy* rows time an identical variant again: their distance
from 1.00x is the noise floor of the measurement. Timed: {args.warmup} warm-up rounds, then
{args.tiny_repeats} rounds (tiny) or {args.repeats} rounds (ViT-B/16); random weights and inputs
(speed does not depend on them).

* **train step**: zero_grad, `encode_image` + `encode_text`, symmetric in-batch contrastive loss,
  backward, AdamW step. `dac` = `DACConfig.paper()` (r = 12, k = 8, dropout 0.2, frozen router,
  batch vote), `lora` = `DACConfig.plain_lora()` (the same layer, all 12 experts always on);
  only A and B train, CLIP is frozen. `frozen` has nothing to train: it is the same forward and
  loss under `torch.no_grad()`, a floor rather than a training step.
* **inference**: eval mode, `encode_image` + `encode_text` under `torch.no_grad()`. `merged` is
  the DAC model after `end_task()` and `detach_pools()` (plain open_clip with changed weights),
  `plain` the stock model, `unmerged` the DAC model with its pools still attached.

Goals: DAC step within 1.15x of plain LoRA; merged inference 1.00x the plain model.

{md}
{END}"""
    path = ROOT / "docs" / "benchmarks.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n\n" + BEGIN + END + "\n"
    if BEGIN in old and END in old:
        text = old[:old.index(BEGIN)] + section + old[old.index(END) + len(END):]
    else:
        text = old.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
