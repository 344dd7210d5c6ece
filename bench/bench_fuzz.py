"""The long fuzz run: every reader's fuzz test with many more cases than `make test` runs.

The fuzz tests (tests/**/test_fuzz_*.py) mutate small valid files with a seeded generator
(tests/hostile.py) and demand exit 0 or 2 with one line, under a second, allocating no more than
the file's size. Here they run with WEIGHTSMITH_FUZZ_CASES cases each (default 2000) and every
fuzzed reader's outcome is written to reports/fuzz.md. Usage:

    .venv/bin/python bench/bench_fuzz.py [--cases 2000] [--out reports/fuzz.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "reports" / "fuzz.md"))
    args = ap.parse_args()
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_fuzz_*.py"))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "fuzz.jsonl"
        env = dict(os.environ, WEIGHTSMITH_FUZZ_CASES=str(args.cases), WEIGHTSMITH_FUZZ_LOG=str(log))
        t0 = time.perf_counter()
        rc = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env
        )
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    total = sum(r["cases"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    lines = [
        "# Fuzzing the readers",
        "",
        f"`bench/bench_fuzz.py --cases {args.cases}`: each fuzz test's valid seed file mutated {args.cases} times",
        "(truncations, bit flips, edge-value words, zeroed/0xff runs, inserted, deleted and duplicated bytes;",
        "seeded, so the same cases on every machine). Contract per case: exit 0, or exit 2 with one `error:`",
        "line; never exit 3, a traceback, more than 1 s, or an allocation beyond the file's size + 8 MiB.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Wall time {wall:.0f} s; pytest exit {rc}.",
        "",
        f"**{total} cases, {failed} broke the contract.**",
        "",
        "| test | fuzzed file | cases | exit 0 | exit 2 | other | slowest (s) | broke |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        codes = {int(k): v for k, v in r["exit_codes"].items()}
        other = sum(v for k, v in codes.items() if k not in (0, 2))
        lines.append(
            f"| {r['test']} | {r['target']} | {r['cases']} | {codes.get(0, 0)} | {codes.get(2, 0)} | {other} "
            f"| {r['slowest_s']} | {r['failed']} |"
        )
    broken = [f"- {r['test']}: {f}" for r in rows for f in r["failures"]]
    if broken:
        lines += ["", "## Cases that broke the contract", "", *broken]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{total} cases, {failed} broke the contract -> {args.out}")
    return 0 if rc == 0 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
