"""Zero-shot and 16-shot linear-probe accuracy of the tiny CLIP on every world domain.

    python scripts/measure_world.py                       # the bundled data/tiny-clip
    python scripts/measure_world.py --model-dir /tmp/clip --seed 1

The table shows the world's intended shape: alias domains at chance zero-shot but far above
it under a linear probe on frozen image features ("good features, poor alignment"), and
named domains high zero-shot. The checks at the end are the properties the offline default
needs (see data/tiny-clip/MODEL_CARD.md):

    weak   every alias domain's zero-shot <= chance + 25 points
    strong some domain's zero-shot >= 70 %
    probe  every alias domain's probe >= chance + 30 points (LoRA can learn them)
"""
import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from r1lab.engine.models import load_clip  # noqa: E402
from r1lab.data.world import make_world_benchmark  # noqa: E402
from r1lab.engine.pretrain_world import format_rows, measure_world  # noqa: E402


def check(rows) -> list:
    alias = [r for r in rows if r["coverage"] == "alias"]
    out = [("weak: alias domains zero-shot <= chance + 25",
            all(r["zeroshot"] <= r["chance"] + 25 for r in alias)),
           ("strong: some domain zero-shot >= 70", any(r["zeroshot"] >= 70 for r in rows))]
    if all("probe" in r for r in rows):
        out.append(("probe: alias domains probe >= chance + 30",
                    all(r["probe"] >= r["chance"] + 30 for r in alias)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=None, help="tiny CLIP folder (default: data/tiny-clip)")
    ap.add_argument("--seed", type=int, default=0, help="world generator seed")
    ap.add_argument("--no-probe", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    bundle = load_clip("tiny", pretrained=args.model_dir)
    bench = make_world_benchmark(seed=args.seed)
    rows = measure_world(bundle.model, bundle.tokenizer, bench, probe=not args.no_probe)
    print(f"tiny CLIP: {bundle.info['weights']}  (logit scale {bundle.info['logit_scale']:.1f}); "
          f"world seed {args.seed}, 16 train / 50 test images per class")
    print(format_rows(rows))
    ok = True
    for name, passed in check(rows):
        print(f"[{'ok' if passed else 'FAIL'}] {name}")
        ok &= passed
    print(f"({time.time() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
