"""What the engine says while it works: messages through ``logging``, progress bars only on a
terminal.

    say(msg)                 one line on the "r1lab" logger ("[r1lab] msg" on standard output)
    warn(msg)                "[r1lab] warning: msg"
    bar(iterable, ...)       a tqdm bar when standard error is a terminal, else the iterable
    speaking(on)             context: messages and bars on or off for the calls inside

Only the main process of a data-parallel run speaks. A redirected log (``python -m r1lab
compare > log``) therefore holds one line per task and the tables, never a bar's carriage
returns. Users who configure ``logging`` themselves can attach their own handlers to the
"r1lab" logger; the default handler writes to whatever ``sys.stdout`` is at the time (so
notebooks and pytest's capture see the lines).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Iterable, Iterator, Optional

from r1lab.engine import distributed

logger = logging.getLogger("r1lab")
_on = contextvars.ContextVar("r1lab_speaking", default=True)


class _CurrentStdout(logging.StreamHandler):
    """A stream handler on the current ``sys.stdout`` (replaced by notebooks and pytest)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


if not logger.handlers:
    _handler = _CurrentStdout()
    _handler.setFormatter(logging.Formatter("[r1lab] %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def speaks() -> bool:
    return _on.get() and distributed.is_main()


@contextlib.contextmanager
def speaking(on: bool = True) -> Iterator[None]:
    """Messages and bars on (or off) inside the block; off stays off in nested calls."""
    token = _on.set(_on.get() and bool(on))
    try:
        yield
    finally:
        _on.reset(token)


def say(msg: str) -> None:
    if speaks():
        logger.info(msg)


def warn(msg: str) -> None:
    if speaks():
        logger.warning(f"warning: {msg}")


def bar(iterable: Iterable, total: Optional[int] = None, desc: str = "", leave: bool = False):
    """``iterable`` with a progress bar, shown only on a terminal."""
    if not speaks() or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=leave)
