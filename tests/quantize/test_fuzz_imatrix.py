"""Fuzzed imatrix files through `weightsmith quantize --imatrix`: mutants of a small valid .dat and
a small valid GGUF imatrix, each run on the tiny wide Wan with gguf:Q4_K_M (Q4_K and Q6_K tensors
use the matrix). Every case ends in exit 0 or in exit 2 with one line, within the time and memory
bounds of tests/hostile.py; an exit-0 case's output decodes to finite values only, with no
importance-weighted tensor turned to all zeros."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import fuzz_count, log_run, mutants, run_case
from hostile_inputs import (
    IM_NAMES,
    assert_finite_gguf,
    dat_bytes,
    gguf_entries,
    importance,
    write_gguf_imatrix,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _fuzz(run_cli, src: Path, raw: bytes, target: Path, seed: int) -> list[str]:
    """Run quantize on ``fuzz_count(200)`` mutants of ``raw``; the cases that break the contract."""
    dst = target.parent / "out.gguf"
    args = ("quantize", src, dst, "--scheme", "gguf:Q4_K_M", "--imatrix", target, "--overwrite")
    target.write_bytes(raw)
    warm = run_cli(*args)  # imports and the C kernels' build, outside the timed cases
    assert warm.code == 0, warm.err
    # A case that passes quantizes the whole model: its allocations are bounded by the model's
    # size plus the imatrix's, not by the imatrix alone.
    model_bytes = sum(p.stat().st_size for p in Path(src).rglob("*") if p.is_file())
    failures = []
    codes: dict[int, int] = {}
    slowest = 0.0
    for label, data in mutants(raw, seed, fuzz_count(200)):
        target.write_bytes(data)
        dst.unlink(missing_ok=True)
        out = run_case(run_cli, label, *args)
        codes[out.code] = codes.get(out.code, 0) + 1
        slowest = max(slowest, out.seconds)
        why = out.problem(len(data) + (model_bytes if out.code == 0 else 0))
        if why is None and out.code == 0:
            try:
                assert_finite_gguf(dst)
            except AssertionError as e:
                why = f"exit 0 with a bad output: {e}"
        elif why is None and dst.exists():
            why = "exit 2 but an output was written"
        if why:
            failures.append(f"{label}: {why}")
    log_run(target, fuzz_count(200), codes, slowest, failures)
    return failures


def test_fuzz_imatrix_dat(tiny_wan, tmp_path, run_cli):
    raw = dat_bytes({n: importance(i) * 4 for i, n in enumerate(IM_NAMES[:2])}, ncall=4)
    failures = _fuzz(run_cli, tiny_wan, raw, tmp_path / "m.dat", seed=2101)
    assert not failures, "\n".join(failures[:20])


def test_fuzz_imatrix_gguf(tiny_wan, tmp_path, run_cli):
    valid = write_gguf_imatrix(
        tmp_path / "valid.gguf", gguf_entries({n: importance(i) for i, n in enumerate(IM_NAMES[:2])})
    )
    raw = valid.read_bytes()
    failures = _fuzz(run_cli, tiny_wan, raw, tmp_path / "m.gguf", seed=2102)
    assert not failures, "\n".join(failures[:20])
