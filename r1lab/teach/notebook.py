"""What every notebook does in its first cells, and the "what you should see" checks.

    r1lab.teach.notebook.setup()                  threads, figure style, expected warnings, versions
    r1lab.teach.notebook.where(MODE, MODEL, ...)  one line: what runs where (device, model, benchmark)
    r1lab.teach.notebook.expect(label, value, low, high, why)
                                            a lesson's number, printed, and checked against the
                                            range the lesson relies on (nbval fails if a later
                                            change breaks the lesson)

Exercises have their own checker, ``r1lab.teach.exercises.check``: it never raises, so a notebook
with unanswered exercises still runs top to bottom. ``expect`` does raise: it guards the
lesson, not the student.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Optional

LECTURE_DPI = 100


def setup(threads: Optional[int] = None, quiet: bool = False) -> None:
    """Prepare a notebook kernel.

    threads  torch CPU threads (default: env ``R1LAB_THREADS``, else torch's own choice; the
             run times stated in the notebooks were measured with 2 threads on 2 cores)
    Silences two warnings that are expected here and explained where they matter: open_clip's
    note that a model was created without pretrained weights (notebooks build random models on
    purpose, to count parameters or read structure), and tqdm's note that ipywidgets progress
    bars are unavailable (notebooks run without progress bars)."""
    import matplotlib.pyplot as plt
    import open_clip
    import torch

    from r1lab._version import __version__
    n = threads if threads is not None else os.environ.get("R1LAB_THREADS")
    if n:
        torch.set_num_threads(int(n))
    plt.rcParams.update({"figure.dpi": LECTURE_DPI, "savefig.dpi": LECTURE_DPI,
                         "axes.titlesize": 11, "axes.labelsize": 10,
                         "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9})
    warnings.filterwarnings("ignore", message=".*No pretrained weights loaded.*")
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger().addFilter(_quiet_random_weights)
    if not quiet:
        print(f"torch {torch.__version__} | open_clip {open_clip.__version__} | r1lab {__version__} "
              f"| {torch.get_num_threads()} CPU threads | CUDA available: {torch.cuda.is_available()}")


def _quiet_random_weights(record: logging.LogRecord) -> bool:
    """Drop open_clip's "No pretrained weights loaded" log line (notebooks build random models
    on purpose); everything else passes."""
    return "No pretrained weights loaded" not in record.getMessage()


def where(mode: str, model: str, benchmark: str, device: str, extra: str = "") -> str:
    """One line saying what this notebook will run, and where."""
    weights = "bundled tiny CLIP, offline" if model == "tiny" else f"open_clip {model}"
    line = f"mode {mode}: model {model} ({weights}) | benchmark {benchmark} | device {device}"
    return line + (f" | {extra}" if extra else "")


def expect(label: str, value: float, low: float = float("-inf"), high: float = float("inf"),
           why: str = "") -> float:
    """Print ``label: value`` with the range the lesson relies on, and raise if it is outside.

    Used where a notebook's prose states a number or a direction (for example "DAC forgets
    less than plain LoRA": ``expect("LoRA - DAC forgetting", d, low=0)``). Returns ``value``."""
    v = float(value)
    if low == float("-inf"):
        rng = f"<= {high:.4g}"
    elif high == float("inf"):
        rng = f">= {low:.4g}"
    else:
        rng = f"in [{low:.4g}, {high:.4g}]"
    ok = low <= v <= high
    print(f"{label}: {v:.2f}  (the lesson needs {rng}{': ' + why if why else ''})")
    if not ok:
        raise AssertionError(f"{label} = {v:.3f} is outside {rng}: the lesson this cell supports "
                             f"no longer holds; rerun the notebook from the top, and if it persists "
                             f"the code or the default configuration changed")
    return v
