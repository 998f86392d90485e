"""The generated world: r1lab's offline default benchmark and the data of its tiny CLIP.

    from r1lab.data.world import make_world_benchmark
    bench = make_world_benchmark(seed=0)     # 7 MTIL-shaped domains at 32 x 32, a few seconds

Modules: ``render`` (numpy drawing), ``domains`` (classes, prompts, pretraining words and
generators; the alias words that keep some domains at chance zero-shot are listed there),
``captions`` (pretraining pairs), ``benchmark`` (the ``Benchmark``), ``pretrain`` (trains the
bundled tiny CLIP: ``python -m r1lab.engine.pretrain_world --out data/tiny-clip``).
"""
from r1lab.data.world.stream import make_world_benchmark, make_world_task, to_images, to_tensor
from r1lab.data.world.domains import DEFAULT_ORDER, DOMAINS, Domain

__all__ = ["make_world_benchmark", "make_world_task", "to_tensor", "to_images",
           "DEFAULT_ORDER", "DOMAINS", "Domain"]
