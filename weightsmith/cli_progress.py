"""What the command line does with the library's progress and log records: tqdm bars on a
terminal (none in CI or a pipe), and warnings of the ``weightsmith`` loggers as ``note:`` lines."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from weightsmith.progress import Progress


class TerminalBars:
    """A progress callback drawing one tqdm bar per running job on stderr."""

    terminal = True  # tells weightsmith.progress.wanted() that bars are shown (huggingface_hub's too)

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        bar = self._bars.get(p.task)
        if bar is None and not p.finished:
            bar = tqdm(
                total=p.total, desc=p.task, unit=p.unit, file=sys.stderr, dynamic_ncols=True, leave=False
            )
            self._bars[p.task] = bar
        if bar is None:
            return
        bar.update(p.done - bar.n)
        if p.note:
            bar.set_postfix_str(p.note)
        if p.finished:
            bar.close()
            del self._bars[p.task]


def bars() -> TerminalBars | None:
    """Bars for this run: only on a terminal, never in CI."""
    return TerminalBars() if sys.stderr.isatty() and not os.environ.get("CI") else None


class _NoteLines(logging.Handler):
    """Warnings of weightsmith's loggers as one ``note:`` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"note: {record.getMessage()}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def notes_on_stderr() -> Iterator[None]:
    """Print weightsmith's warnings (a stale partial output removed, ...) while a command runs."""
    log = logging.getLogger("weightsmith")
    handler = _NoteLines(logging.WARNING)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
