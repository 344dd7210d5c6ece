"""SHA-256 of source files, started as early as the command line knows SRC.

A GGUF file records its sources' digests. The command line calls :func:`start` before it imports
anything heavy, so hashing (and the page cache it warms for the reading stage) overlaps the
start-up; the run then takes each digest with :func:`file_sha256`, which waits for a hash already
under way for the same file (same size and mtime) instead of reading it again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path

_lock = threading.Lock()
_early: dict[tuple[str, int, int], Future[str]] = {}


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _hash(path: Path, chunk: int, stop: threading.Event | None) -> str:
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL on large updates
            if stop is not None and stop.is_set():
                break
    return h.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20, stop: threading.Event | None = None) -> str:
    """SHA-256 of a file through one reused 1 MiB buffer (``read(n)`` would allocate n bytes per
    call, whatever the file's size); the digest of a hash :func:`start` began, if it still
    describes the file. ``stop``: give up early (the run failed; the digest is unused)."""
    key = _key(path)
    with _lock:
        early = _early.pop(key, None) if key else None
    if early is not None:
        digest = early.result()
        if _key(path) == key:  # the file did not change while it was hashed
            return digest
    return _hash(path, chunk, stop)


def start(paths: list[Path]) -> None:
    """Begin hashing ``paths`` (regular files) on one background thread, in order."""
    jobs: list[tuple[Path, Future[str]]] = []
    with _lock:
        for p in paths:
            key = _key(p) if p.is_file() else None
            if key is not None and key not in _early:
                _early[key] = fut = Future()
                jobs.append((p, fut))
    if not jobs:
        return

    def work() -> None:
        for p, fut in jobs:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(_hash(p, 1 << 20, None))
                except OSError as e:  # the run reads the file itself and reports the error
                    fut.set_exception(e)

    threading.Thread(target=work, name="early-hash", daemon=True).start()


def source_files(src: str) -> list[Path]:
    """The files a quantize of ``src`` most likely reads: SRC itself, or the safetensors (and
    their index) in SRC or its ``transformer/`` folder."""
    p = Path(src)
    if p.is_file():
        return [p]
    for folder in (p / "transformer", p):
        found = sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.safetensors"))
        if found:
            return found
    return []
