"""One weight quantized and dequantized in memory, for sensitivity analysis.

``gguf:RECIPE`` uses the recipe's type for that tensor (as ``weightsmith quantize`` would pick it,
by its GGUF name) and weightsmith's ggml kernels; int8/fp8/int4 use the quantize package's
per-tensor kernels (``weightsmith.quantize.linear_schemes``) when present, else the plain
symmetric per-channel (int8, fp8) or per-group (int4) rounding written here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from weightsmith.errors import UsageError

FALLBACK = ("int8", "fp8", "fp8-e5m2", "int4", "int4-g64", "int4-g32")


def _linear_schemes():
    if importlib.util.find_spec("weightsmith.kernels.linear") is None:
        return None
    import weightsmith.kernels.linear as ls

    return ls


def weight_quantizer(scheme: str) -> Callable[[torch.Tensor, str, str | None], tuple[torch.Tensor, str]]:
    """A function (weight, gguf_name, gguf_type) -> (dequantized weight, type used)."""
    low = scheme.lower()
    if low.startswith("gguf:"):
        return _gguf
    ls = _linear_schemes()
    if ls is not None and low in ls.LINEAR_SCHEMES:
        spec = ls.get_linear_scheme(low)

        def linear(w: torch.Tensor, name: str, _qtype: str | None) -> tuple[torch.Tensor, str]:
            if not spec.fits(w.shape[-1]):
                return w, "kept (row does not split into groups)"
            return ls.quantize_weight(w, spec, name=name).dequantize().to(w.dtype), spec.name

        return linear
    if low in FALLBACK:
        return lambda w, _name, _qtype: (_fallback(w, low), low)
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


def _fallback(w: torch.Tensor, scheme: str) -> torch.Tensor:
    x = w.detach().to(torch.float32)
    if scheme.startswith("fp8"):
        dt = torch.float8_e5m2 if scheme == "fp8-e5m2" else torch.float8_e4m3fn
        fmax = float(torch.finfo(dt).max)
        scale = (x.abs().amax(dim=1, keepdim=True) / fmax).clamp_min(1e-12)
        return ((x / scale).clamp(-fmax, fmax).to(dt).to(torch.float32) * scale).to(w.dtype)
    if scheme == "int8":
        scale = (x.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
        return (torch.round(x / scale).clamp(-127, 127) * scale).to(w.dtype)
    g = {"int4": 128, "int4-g64": 64, "int4-g32": 32}[scheme]
    out, inn = x.shape
    if inn % g:
        return w
    xv = x.view(out, inn // g, g)
    scale = (xv.abs().amax(dim=-1, keepdim=True) / 7).clamp_min(1e-12)
    return (torch.round(xv / scale).clamp(-7, 7) * scale).view(out, inn).to(w.dtype)
