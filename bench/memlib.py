"""Peak-memory helpers for benchmarks: anonymous RSS (what a process really holds) sampled
from /proc, and the kernel's own high-water mark of total RSS."""

from __future__ import annotations

import resource
import threading
import time


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0]) * 1024
    return out


class PeakSampler:
    """Samples RssAnon every few milliseconds in a thread; ``peak_anon`` is the largest seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, _status().get("RssAnon", 0))
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.base_anon = _status().get("RssAnon", 0)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, _status().get("RssAnon", 0))
        self.hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
