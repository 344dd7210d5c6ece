"""The per-layer SQNR measured inside the GGUF kernels (``quantize_measured``) against the two-pass
value (quantize, then dequantize and sum again), for every quantized GGUF type, C and torch kernels.

Tolerance: the energies are the same float64 totals of float32 partial sums, taken in another order
(per block in the C kernels, per chunk in the torch kernels, per dot product in the two-pass path),
so they agree to float32 rounding of a partial sum: ENERGY_RTOL = 1e-5 relative, which bounds the
SQNR difference by 10*log10(1 + 2e-5) < 1e-4 dB (the report prints 3 decimals). Measured on this
machine (every type, both backends, the data below): at most 3e-7 relative, 1e-6 dB.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from weightsmith.kernels.ggml import dequantize, native, quantize, quantize_measured
from weightsmith.quantize.gguf.encode import blockwise_sqnr
from weightsmith.quantize.report import Sqnr

QUANTIZED = list(native.NATIVE_TYPES)  # every quantized GGUF type weightsmith writes
ENERGY_RTOL = 1e-5
DB_ATOL = 1e-4


def _backends() -> list[str]:
    have_cc = shutil.which("cc") or shutil.which("gcc")
    return ["native", "torch"] if have_cc else ["torch"]


def _weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 0.02
    x[torch.rand(rows, cols, generator=g) < 0.002] *= 30  # outliers, as in real weights
    x[3, :256] = 0  # a zero block next to live ones
    return x


def _two_pass(x: torch.Tensor, q: torch.Tensor, qtype: str, backend: str) -> tuple[float, float]:
    """Signal and error energy in float64 from a separate dequantization (the reference)."""
    deq = dequantize(q, qtype, tuple(x.shape), backend=backend).double()
    ref = x.double()
    return float(ref.square().sum()), float((deq - ref).square().sum())


# 768 columns: a whole tile plus a tail tile in the C kernels; 120 rows: two chunks
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("qtype", QUANTIZED)
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
def test_fused_sqnr_matches_two_pass(qtype: str, backend: str, with_imatrix: bool) -> None:
    x = _weights(120, 768, seed=len(qtype))
    im = torch.rand(768, generator=torch.Generator().manual_seed(5)) + 0.1 if with_imatrix else None
    m = quantize_measured(x, qtype, im, backend=backend)
    assert torch.equal(m.data, quantize(x, qtype, im, backend=backend))  # measuring changes no byte
    signal, noise = _two_pass(x, m.data, qtype, backend)
    assert noise > 0
    assert m.signal == pytest.approx(signal, rel=ENERGY_RTOL)
    assert m.noise == pytest.approx(noise, rel=ENERGY_RTOL)
    fused_db = Sqnr(m.signal, m.noise).db
    assert fused_db == pytest.approx(Sqnr(signal, noise).db, abs=DB_ATOL)
    assert fused_db == pytest.approx(blockwise_sqnr(x, m.data, qtype), abs=DB_ATOL)  # the old column


@pytest.mark.parametrize("backend", _backends())
def test_fused_sqnr_exact_cases(backend: str) -> None:
    """Data each type stores exactly measures zero error (SQNR inf), and a zero tensor zero signal."""
    grid = torch.randint(-127, 128, (64, 256), generator=torch.Generator().manual_seed(1)).float()
    grid[:, ::32] = 127  # every block's scale is exactly 1
    m = quantize_measured(grid, "Q8_0", backend=backend)
    assert m.noise == 0
    assert m.signal == pytest.approx(float(grid.double().square().sum()), rel=ENERGY_RTOL)
    z = quantize_measured(torch.zeros(8, 256), "Q4_K", backend=backend)
    assert (z.signal, z.noise) == (0.0, 0.0)
    empty = quantize_measured(torch.zeros(0, 256), "Q4_K", backend=backend)
    assert (empty.signal, empty.noise, tuple(empty.data.shape)) == (0.0, 0.0, (0, 144))
