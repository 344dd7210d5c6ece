"""The SQNR of an INT8/FP8/INT4/FP4 weight, and the check that it decodes to finite numbers, in one
pass over row chunks.

Before, a run decoded the whole weight (a full float32 copy), checked it for NaN/inf (a pass), then
summed signal and error in float64 over copies of both (five more passes): under the profiler that
was half of an int8 job. Here each chunk of a few million elements is decoded, checked and summed
while in cache; sums are float32 dot products added in float64 (within ~1e-6 relative of float64
sums: far below the report's 0.001 dB), a chunk whose float32 sums overflow summed again in float64.
"""

from __future__ import annotations

import math

import torch

from weightsmith.errors import QuantizationError
from weightsmith.kernels.linear import QuantizedWeight
from weightsmith.quantize.report import SQNR_CHUNK, Sqnr


def measured_sqnr(qw: QuantizedWeight, ref: torch.Tensor, name: str) -> float:
    """SQNR in dB of ``qw`` against the float weight ``ref`` (same shape, ``qw``'s device);
    refuses a weight any element of which decodes to NaN or infinity."""
    out, inn = qw.shape
    # ComfyUI's microscaled layout pads rows and swizzles its block scales across 128-row tiles:
    # its rows are not row-major slices, so it is decoded whole (one chunk).
    step = out if qw.layout == "comfy" else max(1, (4 * SQNR_CHUNK) // max(1, inn))
    acc = Sqnr()
    for r0 in range(0, out, step):
        part = qw if step >= out else qw.rows(r0, r0 + step)
        deq = part.dequantize().reshape(-1)
        x = ref[r0 : r0 + step].reshape(-1).to(torch.float32)
        diff = deq - x
        s, n = float(torch.dot(x, x)), float(torch.dot(diff, diff))
        if not math.isfinite(n) or not math.isfinite(s):  # rare: decoded NaN/inf, or float32 overflow
            if not bool(torch.isfinite(deq).all()):
                raise QuantizationError(
                    f"tensor {name!r} does not fit {qw.scheme.name}: it decodes to NaN or infinite values",
                    hint=f"keep it unquantized with --keep '{name}', or fix the checkpoint",
                )
            x64 = x.to(torch.float64)
            d64 = deq.to(torch.float64).sub_(x64)
            s, n = float(torch.dot(x64, x64)), float(torch.dot(d64, d64))
        acc.add(s, n)
    return acc.db
