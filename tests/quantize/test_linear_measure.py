"""The one-pass SQNR of the int8/fp8/int4/fp4 runs (quantize/linear/measure.py) against the
two-pass float64 value it replaced (``sqnr_db`` of the whole decoded weight), for every scheme.

Tolerance: float32 dot products per chunk, added in float64, against float64 sums: within 1e-6
relative on each energy, so 1e-4 dB on the SQNR (the report prints 3 decimals)."""

from __future__ import annotations

import pytest
import torch

from weightsmith.errors import QuantizationError
from weightsmith.kernels.linear import LINEAR_SCHEMES, quantize_weight
from weightsmith.quantize.linear.measure import measured_sqnr
from weightsmith.quantize.report import sqnr_db

DB_ATOL = 1e-4


def _weight(rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[torch.rand(rows, cols, generator=g) < 0.002] *= 30
    return w


@pytest.mark.parametrize("scheme", list(LINEAR_SCHEMES))
def test_one_pass_sqnr_matches_two_pass(scheme: str, monkeypatch) -> None:
    import weightsmith.quantize.linear.measure as measure

    monkeypatch.setattr(measure, "SQNR_CHUNK", 4096)  # several row chunks on a small weight
    w = _weight(96, 512)
    qw = quantize_weight(w, LINEAR_SCHEMES[scheme])
    whole = qw.dequantize()
    if qw.layout == "comfy":  # ComfyUI's swizzled layout (mxfp8) has no row chunks: measured whole
        with pytest.raises(ValueError, match="row-major"):
            qw.rows(0, 32)
    else:
        parts = torch.cat([qw.rows(r, r + 32).dequantize() for r in range(0, 96, 32)])
        assert torch.equal(parts, whole)  # a row chunk decodes to the same bits as the whole weight
    assert measured_sqnr(qw, w, "w") == pytest.approx(sqnr_db(w, whole), abs=DB_ATOL)


def test_a_weight_decoding_to_inf_is_refused() -> None:
    qw = quantize_weight(_weight(8, 64), LINEAR_SCHEMES["int8"])
    qw.scale[3] = float("inf")
    with pytest.raises(QuantizationError, match="decodes to NaN or infinite values"):
        measured_sqnr(qw, _weight(8, 64), "blocks.0.w")
