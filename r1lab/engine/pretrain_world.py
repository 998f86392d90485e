"""Pretrain the tiny CLIP of the offline default on generated image-caption pairs.

    python -m r1lab.engine.pretrain_world --out data/tiny-clip --steps 1500 --seed 0 [--batch 256]

The model is stock ``open_clip.model.CLIP`` with ``TINY_CLIP_CFG`` (patch 8, 4 layers, width
128 in both towers, context 20, embedding 128) and open_clip's bundled BPE tokenizer.

Loss (CLIP's symmetric InfoNCE with *soft targets*): for a batch of N pairs with unit-norm
image features v_i and caption features u_j,

    logits_ij = exp(t) v_i . u_j            t = learned log logit scale, exp(t) <= 100
    T_ij      = 1[c_i == c_j] / #{k : c_k == c_i}     (identical captions are all positives)
    L         = ( CE(logits, T) + CE(logits^T, T) ) / 2

Short generated captions repeat within a batch ("a red star."), and plain InfoNCE would push
those true positives apart (docs/world.md, lesson 3). Optimiser: AdamW (betas 0.9 / 0.98,
weight decay 0.1 on matrices only), linear warm-up then cosine decay to 0.

Written to ``--out`` (each file to a temporary name first, then ``os.replace``):

    open_clip_config.json       {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": ...}
    open_clip_model.safetensors the state dict in float16 (cast to float32 on load)
    zeroshot.json               per-domain zero-shot accuracy on the world's test sets
    MODEL_CARD.md               command, seed, budget, wall time, size and measured figures

Every figure is measured on the *saved* weights, after the float16 round trip.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from r1lab.engine.atomic import atomic_write
from r1lab.engine.train import contrastive_loss
from r1lab.data.world.stream import SOURCE, make_world_benchmark, to_tensor
from r1lab.data.world.captions import pretraining_batch

TINY_CLIP_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
LOGIT_SCALE_MAX = 100.0
WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
ZEROSHOT = "zeroshot.json"
CARD = "MODEL_CARD.md"
CHECKPOINT = "pretrain_checkpoint.pt"   # while training; removed at the end
REBUILD = "python -m r1lab.engine.pretrain_world --out data/tiny-clip --steps 1500 --seed 0"


def build_tiny_clip(seed: int = 0):
    """A freshly initialised tiny CLIP (float32) and its tokenizer."""
    import open_clip
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CLIP_CFG)
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CLIP_CFG["text_cfg"]["context_length"])


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              captions: Sequence[str]) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets over identical captions (see the module docstring):
    the engine's ``contrastive_loss`` with each distinct caption as a label."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions], device=image_features.device)
    return contrastive_loss(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1),
                            cid, logit_scale)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``lr`` to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * lr * (1.0 + math.cos(math.pi * t))


class CaptionTokens:
    """Tokenizer with a cache: the generated captions come from a small set of strings."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            for c, row in zip(missing, self.tokenizer(missing)):
                self.cache[c] = row
        return torch.stack([self.cache[c] for c in captions])


def param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on matrices (ndim >= 2) only; not on biases, norms, the logit scale."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def pretrain(steps: int = 1500, seed: int = 0, batch: int = 256, lr: float = 1e-3,
             warmup: int = 100, weight_decay: float = 0.1, progress: bool = True,
             threads: Optional[int] = 2, checkpoint: Optional[Path] = None, checkpoint_every: int = 100):
    """Train a tiny CLIP from scratch. Returns (model in eval mode, tokenizer, log dict).

    With ``checkpoint`` (a file path) the state is saved every ``checkpoint_every`` steps and
    a run started again with the same arguments resumes from it, bit for bit the same run
    (model, optimiser and data-stream state are all restored)."""
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = build_tiny_clip(seed)
    model.train()
    tok = CaptionTokens(tokenizer)
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))   # the data stream
    args = {"steps": steps, "seed": seed, "batch": batch, "lr": lr, "warmup": warmup,
            "weight_decay": weight_decay}
    start, losses, spent = 0, [], {"wall_s": 0.0, "cpu_s": 0.0, "data_s": 0.0, "resumed": 0}
    if checkpoint is not None and Path(checkpoint).is_file():
        ck = torch.load(checkpoint, weights_only=False)
        if ck["args"] != args:
            raise ValueError(f"{checkpoint} belongs to another run ({ck['args']}); delete it or match it")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        rng.bit_generator.state = ck["rng"]
        start, losses, spent = ck["step"], ck["losses"], ck["spent"]
        spent["resumed"] += 1
    t0, c0, t_data = time.time(), time.process_time(), 0.0

    def account():
        return {"wall_s": spent["wall_s"] + time.time() - t0,
                "cpu_s": spent["cpu_s"] + time.process_time() - c0,
                "data_s": spent["data_s"] + t_data, "resumed": spent["resumed"]}

    bar = range(start, steps)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc="pretrain", unit="step", dynamic_ncols=True, initial=start, total=steps)
    for step in bar:
        td = time.time()
        imgs, caps = pretraining_batch(rng, batch)
        x, text = to_tensor(imgs), tok(caps)
        t_data += time.time() - td
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        v, u = model.encode_image(x), model.encode_text(text)
        loss = clip_loss(v, u, model.logit_scale, caps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(LOGIT_SCALE_MAX))
        losses.append(loss.item())
        if progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            state = {"args": args, "model": model.state_dict(), "opt": opt.state_dict(),
                     "rng": rng.bit_generator.state, "step": step + 1, "losses": losses, "spent": account()}
            atomic_write(Path(checkpoint), lambda p: torch.save(state, p))
    model.eval()
    log = {**args, "threads": torch.get_num_threads(),
           **{k: round(v, 1) if isinstance(v, float) else v for k, v in account().items()},
           "final_loss": round(float(np.mean(losses[-20:])), 4),
           "logit_scale": round(model.logit_scale.exp().item(), 2),
           "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, steps, 50)]}
    return model, tokenizer, log


# --- saving, atomically ------------------------------------------------------------------------
def save_tiny_clip(model: torch.nn.Module, out: Path) -> None:
    """``open_clip_config.json`` and the float16 ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    cfg = {"model_cfg": TINY_CLIP_CFG,
           "preprocess_cfg": {"size": 32, "mean": list(_mean()), "std": list(_std()),
                              "interpolation": "bicubic", "resize_mode": "shortest"}}
    atomic_write(out / WEIGHTS, lambda p: save_file(sd, str(p), metadata={"format": "pt", "dtype": "float16"}))
    atomic_write(out / CONFIG, lambda p: p.write_text(json.dumps(cfg, indent=2) + "\n"))


def _mean():
    from open_clip.constants import OPENAI_DATASET_MEAN
    return OPENAI_DATASET_MEAN


def _std():
    from open_clip.constants import OPENAI_DATASET_STD
    return OPENAI_DATASET_STD


# --- measuring ---------------------------------------------------------------------------------
def linear_probe(model, task, device="cpu", C: float = 1.0) -> float:
    """Top-1 accuracy (%) of a logistic-regression probe on frozen, unit-norm image features:
    fitted on the task's train split, scored on its test split. High probe accuracy with
    chance zero-shot = good features, poor alignment."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from r1lab.engine.evaluate import encode_images
    xtr, ytr = encode_images(model, task.train, device)
    xte, yte = encode_images(model, task.test, device)
    scaler = StandardScaler().fit(xtr.numpy())
    clf = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(xtr.numpy()), ytr.numpy())
    return 100.0 * float((clf.predict(scaler.transform(xte.numpy())) == yte.numpy()).mean())


def measure_world(model, tokenizer, benchmark=None, probe: bool = True, device="cpu") -> List[Dict]:
    """One row per domain: classes, chance, zero-shot accuracy and (optionally) the 16-shot
    linear probe, all in %."""
    from r1lab.engine.evaluate import evaluate_task, zeroshot_head
    benchmark = benchmark or make_world_benchmark()
    rows = []
    for t in benchmark.tasks:
        head = zeroshot_head(model, tokenizer, t.classnames, t.templates, device)
        row = {"domain": t.name, "classes": t.num_classes, "chance": round(100.0 / t.num_classes, 1),
               "zeroshot": round(evaluate_task(model, head, t.test, device), 1),
               "coverage": t.info.get("coverage")}
        if probe:
            row["probe"] = round(linear_probe(model, t, device), 1)
        rows.append(row)
    return rows


def format_rows(rows: List[Dict]) -> str:
    """A Markdown table of ``measure_world`` rows."""
    probe = all("probe" in r for r in rows)
    head = "| domain | classes | pretraining words | chance | zero-shot |" + (" 16-shot linear probe |" if probe else "")
    sep = "|---|---|---|---|---|" + ("---|" if probe else "")
    lines = [head, sep]
    for r in rows:
        lines.append(f"| {r['domain']} | {r['classes']} | {r['coverage']} | {r['chance']:.1f} | {r['zeroshot']:.1f} |"
                     + (f" {r['probe']:.1f} |" if probe else ""))
    zs = np.mean([r["zeroshot"] for r in rows])
    lines.append(f"| mean | | | {np.mean([r['chance'] for r in rows]):.1f} | {zs:.1f} |"
                 + (f" {np.mean([r['probe'] for r in rows]):.1f} |" if probe else ""))
    return "\n".join(lines)


def write_card(out: Path, log: Dict, rows: List[Dict], n_params: int, weights_mb: float,
               command: str, note: str = "", n_test: int = 50) -> None:
    import open_clip
    n_tok = TINY_CLIP_CFG["text_cfg"]["vocab_size"] * TINY_CLIP_CFG["text_cfg"]["width"]
    text = f"""# tiny-clip: the bundled CLIP of r1lab's offline default

A from-scratch `open_clip.model.CLIP` trained for {log['steps']:,} steps on generated image-caption
pairs of the r1lab world (`r1lab/world`). It exists so that every notebook and test runs offline
on a CPU; it is not a useful image model outside this world.

## How it was made
- Command: `{command}`
- Seed {log['seed']}, {log['steps']:,} steps x batch {log['batch']} = {log['steps'] * log['batch']:,} fresh pairs;
  AdamW lr {log['lr']:g} (betas 0.9 / 0.98, weight decay {log['weight_decay']:g} on matrices),
  {log['warmup']} warm-up steps then cosine to 0; soft-target symmetric InfoNCE over identical
  captions; learned logit scale capped at {LOGIT_SCALE_MAX:g} (final value **{log['logit_scale']:.1f}**:
  use the model's own scale, not 100).
- Wall time: **{log['wall_s']:.0f} s** on {log['threads']} CPU threads ({log['data_s']:.0f} s of it generating data;
  process CPU time {log['cpu_s']:.0f} s; resumed from a checkpoint {log['resumed']} times),
  final loss {log['final_loss']:.3f}.{(' ' + note) if note else ''} torch {torch.__version__}, open_clip {open_clip.__version__},
  numpy {np.__version__}, Python {platform.python_version()}.
- Architecture: patch 8, 4 layers, width 128, head width 32 (image); context 20, width 128,
  4 heads, 4 layers, vocabulary 49,408 with open_clip's bundled BPE tokenizer (text);
  embedding 128. **{n_params:,} parameters** ({n_tok:,} of them the token embedding).
- Weights: `{WEIGHTS}`, float16 ({weights_mb:.1f} MB); loaded as float32.
  Load with `r1lab.engine.models.load_clip("tiny")`; plain open_clip also reads the folder:
  `open_clip.create_model("local-dir:data/tiny-clip")` (float16 values copied into float32
  parameters) with `open_clip.get_tokenizer("local-dir:data/tiny-clip")`.

## Inputs
32 x 32 RGB, normalised with open_clip's `OPENAI_DATASET_MEAN` / `OPENAI_DATASET_STD`. The world's
tensors are already normalised, so this model's transforms are the identity.

## Measured on the saved weights (world seed 0, {n_test} test images per class)
Zero-shot: the template-averaged head of `r1lab.engine.evaluate` over each domain's own classes.
Probe: logistic regression on frozen unit-norm image features, 16 training images per class.
"Pretraining words" says whether pretraining captions used the prompts' class words (named),
only some of them (partial), or only alias words that never occur in the prompts (alias):
see `r1lab/data/world/domains.py` for the words.

{format_rows(rows)}

Reproduce: `python scripts/measure_world.py` (also recomputed by `tests/test_models.py`).
The alias domains sit at chance zero-shot while their probe is far above it: good features,
poor alignment, as MTIL's hard datasets are for real CLIP. Fine-tuning learns them quickly.

## Continual-learning yardstick: filled by `python -m r1lab compare`
Sequential plain LoRA vs DAC on this world (Transfer / Average / Last, forgetting): to be
measured with the continual-learning engine and recorded here. No number is claimed yet.

## Training-data composition
{SOURCE}: object scenes 50 %, full-frame textures 14 %, counting / arrows / digits 12 % each
(alias captions). Digits pretraining never uses the held-out test digits.
"""
    atomic_write(out / CARD, lambda p: p.write_text(text))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m r1lab.engine.pretrain_world", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/tiny-clip", help="output folder")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-probe", action="store_true", help="skip the linear probe in the card")
    ap.add_argument("--eval-per-class", type=int, default=50,
                    help="test images per class for the measured figures (fewer: a quicker smoke run)")
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="save a resumable checkpoint in --out every N steps (0: never)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--note", default="", help="a sentence for the card (e.g. the machine was shared)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT if args.checkpoint_every > 0 else None
    model, _, log = pretrain(args.steps, args.seed, args.batch, args.lr, min(args.warmup, args.steps),
                             progress=not args.quiet, threads=args.threads or None,
                             checkpoint=ckpt, checkpoint_every=max(1, args.checkpoint_every))
    save_tiny_clip(model, out)
    if ckpt is not None and ckpt.is_file():
        ckpt.unlink()
    from r1lab.engine.models import load_clip
    bundle = load_clip("tiny", pretrained=str(out))            # measure the saved weights
    bench = make_world_benchmark(seed=0, n_test_per_class=args.eval_per_class)
    rows = measure_world(bundle.model, bundle.tokenizer, bench, probe=not args.no_probe)
    zs = {"benchmark": {"source": SOURCE, "seed": 0, "n_test_per_class": args.eval_per_class},
          "accuracy": {r["domain"]: r["zeroshot"] for r in rows},
          "chance": {r["domain"]: r["chance"] for r in rows}}
    if not args.no_probe:
        zs["linear_probe_16shot"] = {r["domain"]: r["probe"] for r in rows}
    zs["pretraining"] = {k: v for k, v in log.items() if k != "loss_curve"}
    atomic_write(out / ZEROSHOT, lambda p: p.write_text(json.dumps(zs, indent=2) + "\n"))
    n_params = sum(p.numel() for p in bundle.model.parameters())
    command = "python -m r1lab.engine.pretrain_world " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_card(out, log, rows, n_params, (out / WEIGHTS).stat().st_size / 1e6, command.strip(), args.note,
               args.eval_per_class)
    print(format_rows(rows))
    print(f"wrote {out}/ ({log['wall_s']:.0f} s of pretraining)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
