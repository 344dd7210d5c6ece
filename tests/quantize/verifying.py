"""One verify run of a quantized tiny transformer against its float pipeline, for the tests that
check a scheme or format end to end (a module of its own, not conftest.py, so it imports by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def verify_quantized(tmp_path: Path, family: str, variant: str, scheme: str, dst_name: str, gate: str) -> Any:
    """Quantize the tiny ``family``/``variant`` pipeline's transformer with ``scheme`` into
    ``tmp_path/dst_name``, verify it under ``gate`` (2 steps, tiny size) and return the result."""
    from weightsmith.quantize.linear.run import quantize_linear
    from weightsmith.verify import VerifyOptions, parse_gate, verify
    from weightsmith.verify.settings import GenerationSettings
    from weightsmith.verify.tiny import TINY_SIZE, save_tiny_pipeline

    pipe = save_tiny_pipeline(tmp_path / "pipe", family, variant)
    cand = tmp_path / dst_name
    quantize_linear(pipe / "transformer", cand, scheme, progress=False, device="cpu")
    h, w, f = TINY_SIZE[family]
    return verify(
        VerifyOptions(
            str(pipe),
            [str(cand)],
            GenerationSettings(height=h, width=w, frames=f, steps=2, text_len=8),
            gates=[parse_gate(gate)],
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    )
