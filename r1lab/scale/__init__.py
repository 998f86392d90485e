"""Scaling out: sweeps over a grid of methods x seeds x settings, dispatched to a scheduler
(``sweep.py``). Data-parallel runs live in the engine (``r1lab/engine/distributed.py``), because
the training step itself calls them."""
