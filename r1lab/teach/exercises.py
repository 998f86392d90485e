"""Checking a student's exercise answers.

An exercise cell in a notebook starts with a marked gap::

    transfer = ...          # your code here

and ends with ``check("Transfer", transfer, reference)``. ``check`` compares the answer with
r1lab's own value and prints one line:

    Transfer       not answered yet: replace the ... in the cell above
    Transfer       correct (max |difference| 0.0e+00)
    Transfer       not yet: shape (7,) != expected (6,). Hint: ...
    Transfer       not yet: max |difference| 3.2e+00 > 1e-06. Hint: ...

It never raises, so a notebook with open exercises still runs top to bottom; it returns
``True`` only for a correct answer. Reference solutions live in collapsed blocks under each
exercise in the notebook.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def as_float64(x) -> np.ndarray:
    """A number, list, numpy array or tensor as a float64 numpy array (what the checks compare;
    ``diagnostics.cmp`` uses it too)."""
    import torch
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def is_unanswered(answer) -> bool:
    """True for the gap markers a notebook leaves: ``...`` or ``None``, also inside a list or
    tuple (a list built from an unfinished function)."""
    if answer is Ellipsis or answer is None:
        return True
    if isinstance(answer, (list, tuple)):
        return any(is_unanswered(a) for a in answer)
    return False


def check(label: str, answer, reference, atol: float = 1e-6, hint: Optional[str] = None) -> bool:
    """Compare ``answer`` with ``reference`` element-wise (float64, absolute tolerance
    ``atol``) and print whether it is right; see the module docstring."""
    name = f"{label:<28}"
    if is_unanswered(answer):
        print(f"{name} not answered yet: replace the ... in the cell above")
        return False
    try:
        a = as_float64(answer)
    except (TypeError, ValueError):
        print(f"{name} not yet: the answer is a {type(answer).__name__}, expected numbers"
              + (f". Hint: {hint}" if hint else ""))
        return False
    b = as_float64(reference)
    if a.shape != b.shape:
        print(f"{name} not yet: shape {a.shape} != expected {b.shape}" + (f". Hint: {hint}" if hint else ""))
        return False
    if not np.all(np.isfinite(a)):
        print(f"{name} not yet: the answer holds NaN or infinity" + (f". Hint: {hint}" if hint else ""))
        return False
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    if diff <= atol:
        print(f"{name} correct (max |difference| {diff:.1e})")
        return True
    print(f"{name} not yet: max |difference| {diff:.1e} > {atol:g}" + (f". Hint: {hint}" if hint else ""))
    return False
