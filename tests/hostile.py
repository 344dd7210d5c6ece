"""Hostile inputs made from valid ones: the shared mutation engine of the reader fuzz tests.

Each reader's fuzz test starts from a small valid file, derives a few hundred mutants from it
with a seeded ``random.Random`` (deterministic: the same cases on every run and machine) and
runs a command on each. Every case must end in exit 0, or exit 2 with one ``error:`` line; none
in exit 3, a traceback, a hang (over ``TIME_LIMIT`` seconds) or an allocation larger than the
file plus ``ALLOC_SLACK``. bench/bench_fuzz.py runs the same engine with many more cases.
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A hang guard, not a speed test: generous enough for a loaded or slow CI machine (two test
# workers share two cores), far below what a hang or a quadratic parse would take.
TIME_LIMIT = 5.0
ALLOC_SLACK = 8 * 2**20
# Values that break counts, offsets and lengths: zero, one, signed/unsigned edges, huge.
_EDGE_WORDS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1]


def fuzz_count(default: int = 200) -> int:
    """Cases per reader: ``default`` in ``make test``; bench/bench_fuzz.py raises it through
    ``WEIGHTSMITH_FUZZ_CASES`` for the long run recorded in reports/fuzz.md."""
    return int(os.environ.get("WEIGHTSMITH_FUZZ_CASES", default))


def mutate(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutant of ``raw`` and a short label saying what was done."""
    n = len(raw)
    kind = rng.choice(["truncate", "flip", "word", "zero", "ff", "insert", "delete", "duplicate"])
    if n == 0:
        return "empty", b""
    if kind == "truncate":
        cut = rng.randrange(n)
        return f"truncate@{cut}", raw[:cut]
    out = bytearray(raw)
    pos = rng.randrange(n)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(n)
            out[i] ^= 1 << rng.randrange(8)
        return f"flip~{pos}", bytes(out)
    if kind == "word":
        fmt = rng.choice(["<I", "<Q"])
        word = rng.choice(_EDGE_WORDS) & (0xFFFFFFFF if fmt == "<I" else 0xFFFFFFFFFFFFFFFF)
        size = struct.calcsize(fmt)
        pos = min(pos, max(0, n - size))
        out[pos : pos + size] = struct.pack(fmt, word)[: n - pos]
        return f"word{fmt}={word}@{pos}", bytes(out)
    span = rng.randint(1, min(64, n))
    if kind in ("zero", "ff"):
        out[pos : pos + span] = (b"\0" if kind == "zero" else b"\xff") * len(out[pos : pos + span])
        return f"{kind}{span}@{pos}", bytes(out)
    if kind == "insert":
        return f"insert{span}@{pos}", bytes(out[:pos]) + rng.randbytes(span) + bytes(out[pos:])
    if kind == "delete":
        return f"delete{span}@{pos}", bytes(out[:pos]) + bytes(out[pos + span :])
    chunk = bytes(out[pos : pos + span])
    return f"duplicate{span}@{pos}", bytes(out[:pos]) + chunk + bytes(out[pos:])


def mutants(raw: bytes, seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` deterministic mutants of ``raw``."""
    rng = random.Random(seed)
    for _ in range(count):
        yield mutate(raw, rng)


@dataclass
class Outcome:
    label: str
    code: int
    seconds: float
    peak_bytes: int
    err: str

    def problem(self, size: int) -> str | None:
        """Why this case breaks the contract, or None when it holds."""
        if self.code not in (0, 2):
            return f"exit {self.code}: {self.err.strip()[:300]}"
        if "Traceback" in self.err:
            return "printed a traceback"
        if self.code == 2 and (not self.err.startswith("error: ") or self.err.count("\n") != 1):
            return f"not one error line: {self.err[:300]!r}"
        if self.seconds > TIME_LIMIT:
            return f"took {self.seconds:.2f} s"
        if self.peak_bytes > size + ALLOC_SLACK:
            return f"allocated {self.peak_bytes} bytes for a {size}-byte input"
        return None


def timed(run_cli: Callable, *args: object) -> tuple[Any, float, int]:
    """One CLI invocation under a timer and tracemalloc: (its result, seconds, peak traced bytes)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        r = run_cli(*args)
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return r, elapsed, peak


def run_case(run_cli: Callable, label: str, *args: object) -> Outcome:
    """Run one CLI invocation under a timer and tracemalloc."""
    r, elapsed, peak = timed(run_cli, *args)
    return Outcome(label, r.code, elapsed, peak, r.err)


def fuzz_file(
    run_cli: Callable,
    raw: bytes,
    target: Path,
    seed: int,
    count: int,
    command: Callable[[Path], tuple[object, ...]] = lambda p: ("inspect", p),
    write: Callable[[Path, bytes], None] | None = None,
) -> list[str]:
    """Write each mutant of ``raw`` to ``target`` and run ``command(target)``; the failures."""
    failures = []
    codes: dict[int, int] = {}
    slowest = 0.0
    for label, data in mutants(raw, seed, count):
        if write is None:
            target.write_bytes(data)
        else:
            write(target, data)
        out = run_case(run_cli, label, *command(target))
        codes[out.code] = codes.get(out.code, 0) + 1
        slowest = max(slowest, out.seconds)
        why = out.problem(len(data))
        if why:
            failures.append(f"{label}: {why}")
    log_run(target, count, codes, slowest, failures)
    return failures


def log_run(target: Path, count: int, codes: dict[int, int], slowest: float, failures: list[str]) -> None:
    """Append one line per fuzzed reader to WEIGHTSMITH_FUZZ_LOG (bench/bench_fuzz.py reads it)."""
    log = os.environ.get("WEIGHTSMITH_FUZZ_LOG")
    if not log:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    row = {"test": test, "target": target.name, "cases": count, "exit_codes": codes}
    row |= {"slowest_s": round(slowest, 3), "failures": failures[:20], "failed": len(failures)}
    with open(log, "a") as f:
        f.write(json.dumps(row) + "\n")
