"""One tensor to the bytes a GGUF file stores for its ggml type, and the SQNR of that encoding
(torch tensors on any device; ``arrays.py`` does the same for numpy arrays, with these errors)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from weightsmith.errors import QuantizationError
from weightsmith.quantize.report import SQNR_CHUNK, Sqnr

if TYPE_CHECKING:
    import numpy as np
    import torch

F16_MAX = 65504.0


def not_finite(name: str, qtype: str) -> QuantizationError:
    return QuantizationError(
        f"tensor {name!r} holds NaN or infinite values; it cannot be quantized to {qtype}",
        hint=f"fix the checkpoint, or keep it in float with --keep '{name}'",
    )


def beyond_f16(name: str, big: float) -> QuantizationError:
    return QuantizationError(
        f"tensor {name!r} holds values beyond F16's range (up to {big:.3g}; F16 holds {F16_MAX:g})",
        hint="use --scheme gguf:BF16 or gguf:F32, which keep every tensor in a wider float, "
        "or fix the checkpoint's outliers",
    )


def prepare(t: torch.Tensor, qtype: str, device: torch.device, name: str) -> torch.Tensor:
    """What ``encode`` quantizes: float32 on ``device`` for a quantized type (refusing NaN/inf,
    naming the tensor), ``t`` as it is for a float type. Runs in the pipeline's reading stage."""
    import torch

    if qtype in ("F32", "F16", "BF16"):
        return t
    x = t.to(device=device, dtype=torch.float32)
    if x.numel() and not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
        raise not_finite(name, qtype)
    return x


def encode(
    t: torch.Tensor,
    qtype: str,
    device: torch.device,
    imatrix: torch.Tensor | None,
    name: str,
    prepared: bool = False,
) -> tuple[np.ndarray, float | None]:
    """(stored array, SQNR in dB or None for float types) for one tensor; ``prepared``: ``t`` came
    from :func:`prepare` already."""
    import torch

    from weightsmith.io.gguf_writer import tensor_bytes
    from weightsmith.kernels.ggml import quantize_measured

    if qtype == "F32":
        return t.to(torch.float32).contiguous().numpy(), None
    if qtype == "F16":
        if t.is_floating_point() and t.numel() and float(t.abs().max()) > F16_MAX:
            raise beyond_f16(name, float(t.abs().max()))
        return t.to(torch.float16).contiguous().numpy(), None
    if qtype == "BF16":
        return tensor_bytes(t.to(torch.bfloat16), "BF16"), None
    x = t if prepared else prepare(t, qtype, device, name)
    m = quantize_measured(x, qtype, imatrix)
    if math.isfinite(m.signal) and math.isfinite(m.noise):
        acc = Sqnr(m.signal, m.noise)
        return m.data.cpu().numpy(), acc.db
    # rare: float32 sums overflowed, or blocks decode to inf/NaN; the two-pass path sums again in
    # float64 and refuses undecodable blocks with a message naming the tensor
    return m.data.cpu().numpy(), blockwise_sqnr(x, m.data, qtype, name)


def blockwise_sqnr(x: torch.Tensor, q: torch.Tensor, qtype: str, name: str = "tensor") -> float:
    """SQNR of ``q`` against ``x``, dequantizing a few million elements at a time (no full float copy).

    Sums of squares are float32 dot products (BLAS): 10x faster than float64 sums and within ~1e-5
    relative, i.e. 0.0001 dB, of them; this is a report, not a bit-exact quantity. A chunk whose
    float32 sums overflow is summed again in float64, and one whose decoded values are not finite
    (ggml's float16 block scales overflow on weights beyond ~1e5..1e9, depending on the type) is
    refused: no NaN or infinite block is ever written.
    """
    import torch

    from weightsmith.kernels.ggml import dequantize

    xr = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    qr = q.reshape(xr.shape[0], -1)
    step = max(1, (4 * SQNR_CHUNK) // max(1, xr.shape[1]))
    acc = Sqnr()
    for r0 in range(0, xr.shape[0], step):
        ref = xr[r0 : r0 + step]
        deq = dequantize(qr[r0 : r0 + step], qtype, tuple(ref.shape))
        diff = deq.sub_(ref).reshape(-1)
        flat = ref.reshape(-1)
        s, n = float(torch.dot(flat, flat)), float(torch.dot(diff, diff))
        if not (math.isfinite(s) and math.isfinite(n)):  # rare: look again, in float64
            deq = dequantize(qr[r0 : r0 + step], qtype, tuple(ref.shape)).reshape(-1)
            if not bool(torch.isfinite(deq).all()):
                big = float(ref.abs().max())
                raise QuantizationError(
                    f"tensor {name!r} does not fit {qtype}: its values reach {big:.3g}, and {qtype}'s "
                    "float16 block scales overflow, giving infinite or NaN blocks",
                    hint="values beyond float16 need --scheme gguf:BF16 or gguf:F32 (every tensor "
                    "kept in a wider float); or fix the checkpoint's outliers",
                )
            f64 = flat.to(torch.float64)
            d64 = deq.to(torch.float64).sub_(f64)
            s, n = float(torch.dot(f64, f64)), float(torch.dot(d64, d64))
        acc.add(s, n)
    return acc.db
