"""Mutated gates TOML files: every case ends in exit 0 or 2 with one line, fast, never exit 3.

The gates file is read before any model is opened, so each mutant runs `verify` against a
baseline that does not exist: a mutant that fails to parse stops at the gates error, one that
parses stops at the missing baseline, both in milliseconds.
"""

from __future__ import annotations

import pytest
from hostile import fuzz_count, fuzz_file

import weightsmith.verify.run  # noqa: F401 - imported up front so the fuzz cases time parsing, not imports
from weightsmith.errors import WeightsmithError
from weightsmith.verify.gates import Gate, load_gates_toml

VALID = b"""# CI gates for the Wan Q4_K_M artifact
gates = ["psnr>=30", "ssim >= 0.95", "latent_sqnr>=20", "flicker<=0.01"]
"""
VALID_TABLE = b"""[gates]
psnr = ">=30"
latent_cosine = [">= 0.99", "<=1"]
step_sqnr_min = 12.5
size_ratio = "<0.5"
"""


@pytest.mark.parametrize(("raw", "seed"), [(VALID, 10), (VALID_TABLE, 11)], ids=["list", "table"])
def test_fuzz_gates_toml(run_cli, tmp_path, raw, seed):
    target = tmp_path / "gates.toml"
    target.write_bytes(raw)
    assert len(load_gates_toml(target)) >= 4  # the seed file itself is valid
    missing = tmp_path / "no-such-baseline"
    failures = fuzz_file(
        run_cli,
        raw,
        target,
        seed,
        fuzz_count(200) // 2,
        command=lambda p: ("verify", missing, missing, "--gates", p),
    )
    assert not failures, "\n".join(failures[:20])


def test_gates_loader_never_raises_anything_else(tmp_path):
    """The same mutants through the loader itself: a list of gates or a weightsmith error."""
    from hostile import mutants

    target = tmp_path / "gates.toml"
    for label, data in mutants(VALID + VALID_TABLE.replace(b"[gates]", b"[other]"), 12, fuzz_count(200) // 2):
        target.write_bytes(data)
        try:
            gates = load_gates_toml(target)
        except WeightsmithError:
            continue
        assert all(isinstance(g, Gate) for g in gates), label
