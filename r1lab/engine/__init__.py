"""The engine: what runs a method over a task stream.

    train.py           one task's optimisation (contrastive loss, AdamW, cosine schedule)
    evaluate.py        zero-shot heads and accuracy rows
    run.py             the task loop: train, evaluate, merge, checkpoint, resume
    runfolder.py       the run folder: lock, identity, checkpoints, final files
    identity.py        what determines a run's numbers (resume and caching compare it)
    atomic.py          atomic file writes
    testset_cache.py   preprocessed test sets on disk
    cached_runs.py     runs computed once and reloaded (what the notebooks call)
    metrics.py         Transfer / Average / Last / diagonal / forgetting
    presets.py         one home for configuration: presets, benchmarks by name, --set
    comparison.py      several methods over several seeds, and their table
    models.py          loading CLIP (the bundled tiny model, or open_clip's)
    distributed.py     data-parallel runs under torchrun
    pretrain_world.py  how the bundled tiny CLIP was pretrained on the world

It imports the core (the paper's layer), ``r1lab.methods`` and ``r1lab.data``; nothing below it
imports the engine.
"""
