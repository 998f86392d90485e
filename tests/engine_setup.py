"""A small random CLIP and a fake 3-task stream for engine tests; also a script:
``python tests/engine_setup.py OUT_DIR`` runs DAC into OUT_DIR (used by the kill test)."""
import sys
import types

import open_clip
import torch
from torch.utils.data import TensorDataset

from r1lab import DACConfig
from r1lab.data.stream import Benchmark, Task

CLIP_CFG = dict(embed_dim=32, vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=2, head_width=16),
                text_cfg=dict(context_length=12, vocab_size=49408, width=32, heads=2, layers=2))
CFG = DACConfig(rank=6, top_k=4, merge_k=2, iterations=12, batch_size=8, shots=4,
                eval_batch_size=64, lr=1e-2, seed=3)


def random_bundle(seed: int = 0):
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**CLIP_CFG).eval()
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=12)
    return types.SimpleNamespace(model=model, tokenizer=tok, name="random-test-clip")


def _task(name: str, n_classes: int, seed: int) -> Task:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(n_classes, 3, 16, 16, generator=g)
    def split(n):
        y = torch.arange(n_classes).repeat(n)
        return TensorDataset(protos[y] + 0.5 * torch.randn(len(y), 3, 16, 16, generator=g), y)
    return Task(name, [f"thing {i}" for i in range(n_classes)], ["a photo of a {}.", "a {}."],
                split(6), split(5))


def fake_benchmark() -> Benchmark:
    return Benchmark("fake", [_task("alpha", 4, 1), _task("beta", 3, 2), _task("gamma", 5, 3)],
                     protocol=dict(source="tests/engine_setup.py"))


if __name__ == "__main__":
    from r1lab.engine.run import run_stream
    torch.set_num_threads(1)
    run_stream(fake_benchmark(), random_bundle(), CFG, "dac", sys.argv[1], progress=False)
