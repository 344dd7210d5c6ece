"""One weight quantized and dequantized in memory, for sensitivity analysis.

``gguf:RECIPE`` uses the recipe's type for that tensor (as ``weightsmith quantize`` would pick it,
by its GGUF name) and weightsmith's ggml kernels; int8/fp8/int4 use the Linear schemes' kernels
(``weightsmith.kernels.linear``), the same numbers ``weightsmith quantize`` writes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import weightsmith.kernels.linear as ls
from weightsmith.errors import UsageError


def weight_quantizer(scheme: str) -> Callable[[torch.Tensor, str, str | None], tuple[torch.Tensor, str]]:
    """A function (weight, gguf_name, gguf_type) -> (dequantized weight, type used)."""
    low = scheme.lower()
    if low.startswith("gguf:"):
        return _gguf
    if low in ls.LINEAR_SCHEMES:
        spec = ls.get_linear_scheme(low)

        def linear(w: torch.Tensor, name: str, _qtype: str | None) -> tuple[torch.Tensor, str]:
            if not spec.fits(w.shape[-1]):
                return w, "kept (row does not split into groups)"
            return ls.quantize_weight(w, spec, name=name).dequantize().to(w.dtype), spec.name

        return linear
    raise UsageError(f"unknown scheme {scheme!r} for sensitivity", hint="use gguf:TYPE, int8, fp8 or int4")


def _gguf(w: torch.Tensor, name: str, qtype: str | None) -> tuple[torch.Tensor, str]:
    from weightsmith.kernels.ggml import dequantize, quantize

    if qtype is None or qtype == "F32":
        return w, qtype or "F32"
    if qtype == "F16":
        return w.to(torch.float16).to(w.dtype), qtype
    if qtype == "BF16":
        return w.to(torch.bfloat16).to(w.dtype), qtype
    x = w.detach().to(torch.float32)
    return dequantize(quantize(x, qtype), qtype, tuple(x.shape)).to(w.dtype), qtype
