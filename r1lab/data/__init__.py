"""Task streams: the interface every benchmark provides (``stream.py``: ``Benchmark``, ``Task``,
few-shot subsets), the generated offline world (``world/``) and the real MTIL / X-TAIL datasets
on local folders (``mtil/``)."""
