"""Bounded pipeline stages for quantize runs: reading, quantizing and writing overlap, a few tensors
in flight at most.

A stage is an iterator run in a worker thread that stays at most ``depth`` items ahead of its
consumer (a bounded queue): peak memory grows by ``depth + 1`` items per stage, not by the model.
Errors raised in the worker come out of the consumer's loop unchanged (same exception, same exit
code). When the consumer stops early (an error, Ctrl-C, SIGTERM turned into an exception), the
stage tells its worker to stop and waits a moment for the item in hand; only the consumer writes
the output, so cleaning it up never races a worker. The kernels release the GIL, which is what
lets the stages run side by side.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_POLL = 0.05  # seconds: how often a blocked side looks again for a stop (signals stay responsive)
_JOIN = 2.0  # seconds a stopped stage waits for its worker's item in hand


class _End:
    pass


_END = _End()


def _close(it: object) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def ahead(items: Iterable[T], depth: int = 1, name: str = "stage") -> Generator[T, None, None]:
    """Yield ``items``, produced in a worker thread at most ``depth`` items ahead. Close it (or use
    ``contextlib.closing``) where the consumer may stop early: that stops and joins the worker."""
    q: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put((False, exc))
        finally:
            _close(it)

    # The worker runs in a copy of this thread's context: the progress callback a caller installed
    # (weightsmith.progress.reporting, a ContextVar) sees the ticks of the stage's work too.
    ctx = contextvars.copy_context()
    worker = threading.Thread(target=ctx.run, args=(work,), name=f"weightsmith-{name}", daemon=True)
    worker.start()
    try:
        while True:
            try:
                ok, item = q.get(timeout=_POLL)
            except queue.Empty:
                continue
            if not ok:
                raise item  # type: ignore[misc]
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # Wait for the item in hand, but not without end: a worker inside one long kernel call
        # must not hold up Ctrl-C. Workers never touch the output file (the consumer writes it),
        # so one left running finishes its item, sees the stop and ends on its own.
        worker.join(_JOIN)


@dataclass
class Phases:
    """Seconds spent per phase of a run, summed over tensors (phases overlap in a pipeline, so the
    sum can exceed the wall time); shown by ``--debug`` and the speed benchmark."""

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def timed(self, phase: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, with the time spent producing each one counted as ``phase``."""
        it = iter(items)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self.add(phase, time.perf_counter() - t0)
                yield item
        finally:
            _close(it)

    def call(self, phase: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, its time counted as ``phase``."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.add(phase, time.perf_counter() - t0)

    def line(self) -> str:
        return " ".join(f"{k}={v:.3f}" for k, v in self.seconds.items())


class Background(Generic[T]):
    """One call run in a daemon thread (source hashing beside the quantization); ``result()`` waits
    for it and re-raises its error. A daemon thread, not an executor: an abandoned run must not
    hold the process at exit."""

    def __init__(self, fn: Callable[[], T], name: str = "background") -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        ctx = contextvars.copy_context()  # the caller's progress callback, as in ``ahead``
        self._thread = threading.Thread(
            target=ctx.run, args=(self._run, fn), name=f"weightsmith-{name}", daemon=True
        )
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> T:
        while not self._done.wait(_POLL):
            pass
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
