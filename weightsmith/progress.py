"""Progress of long jobs, reported to a callback the caller installs; library code never draws.

A job opens ``bar(total, desc, unit)`` and ticks it. Each tick becomes a ``Progress`` event passed
to the callback installed with ``reporting(callback)`` for the current context (the API's
``progress=`` argument installs it), and nowhere else: without a callback nothing is printed.
The command line installs one that draws tqdm bars on a terminal (``weightsmith/cli_progress.py``).
Start and end of each job also go to the ``weightsmith.progress`` logger at DEBUG level.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One event of a job: ``done`` of ``total`` ``unit``s of the job named ``task``.

    ``finished`` is set on the job's last event (also when it ended early by an error or Ctrl-C);
    ``note`` is the job's latest status text (e.g. the tensor it is on)."""

    task: str
    done: int
    total: int
    unit: str
    note: str = ""
    finished: bool = False


ProgressCallback = Callable[[Progress], None]

_CALLBACK: ContextVar[ProgressCallback | None] = ContextVar("weightsmith_progress", default=None)


class Tick(Protocol):
    """What ``bar`` yields: the two calls a job makes (tqdm's names)."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str) -> None: ...


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


class _Task:
    def __init__(self, callback: ProgressCallback, task: str, total: int, unit: str) -> None:
        self.callback, self.task, self.total, self.unit = callback, task, total, unit
        self.done, self.note = 0, ""

    def emit(self, finished: bool = False) -> None:
        self.callback(Progress(self.task, self.done, self.total, self.unit, self.note, finished))

    def update(self, n: int = 1) -> None:
        self.done += n
        self.emit()

    def set_postfix_str(self, s: str) -> None:
        self.note = s


@contextlib.contextmanager
def reporting(callback: ProgressCallback | None) -> Iterator[None]:
    """Send the progress of every job started inside the block (this thread or task) to
    ``callback``; None keeps whatever callback an outer block installed."""
    if callback is None:
        yield
        return
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


def wanted() -> bool:
    """Whether the installed callback draws on a terminal (its ``terminal`` attribute), so that
    a library with its own bars (huggingface_hub's uploads) may show them too."""
    return bool(getattr(_CALLBACK.get(), "terminal", False))


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[Tick]:
    """A job of ``total`` steps named ``desc``: ticks go to the installed callback, if any."""
    callback = _CALLBACK.get() if enabled else None
    log.debug("%s: %d %s", desc, total, unit)
    if callback is None:
        yield _Null()
        return
    task = _Task(callback, desc, total, unit)
    task.emit()
    try:
        yield task
    finally:
        task.emit(finished=True)
        log.debug("%s: %d of %d %s done", desc, task.done, total, unit)
