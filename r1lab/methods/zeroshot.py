"""Zero-shot CLIP: nothing is trained or merged; every row of the accuracy matrix is the
untouched model's accuracy (the reference every continual learner is measured against)."""
from __future__ import annotations

from r1lab.methods.base import Method
from r1lab.methods.registry import register


@register
class ZeroShot(Method):
    name = "zeroshot"
    summary = "the untouched CLIP: no training"
    trains = False
