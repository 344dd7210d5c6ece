"""What a compressed-tensors ``quantization_config`` group means in weightsmith's terms: the
``weights`` QuantizationArgs as one of our Linear schemes, the ``input_activations`` as the
activation quantization a runtime emulates (``int8``/``fp8`` per token, ``nvfp4`` W4A4)."""

from __future__ import annotations

from typing import Any

import torch

from weightsmith.errors import UnsupportedFormatError
from weightsmith.kernels.linear import LINEAR_SCHEMES, LinearScheme


def scheme_from_ct_args(w: dict[str, Any], where: str = "") -> LinearScheme:
    """Our scheme for a compressed-tensors ``weights`` QuantizationArgs (a registered one if equal)."""
    kind = str(w.get("type", "int")).lower()
    bits = int(w.get("num_bits", 8))
    group = w.get("group_size")
    strategy = w.get("strategy") or ("tensor" if group is None else "group" if group > 0 else "channel")
    sym = bool(w.get("symmetric", True))
    if kind == "float" and bits == 4:
        fp4 = next((s for s in LINEAR_SCHEMES.values() if s.kind == "fp4" and s.group_size == group), None)
        if fp4 is None or not sym or strategy not in ("tensor_group", "group"):
            raise UnsupportedFormatError(
                f"{where}: compressed-tensors float4 weights with group {group}, strategy {strategy!r}"
                + ("" if sym else ", asymmetric")
                + " are not supported",
                hint="weightsmith reads nvfp4 (symmetric, groups of 16) and mxfp4 (groups of 32)",
            )
        return fp4
    if strategy not in ("channel", "tensor", "group") or (kind == "int" and bits not in (4, 8)):
        raise UnsupportedFormatError(
            f"{where}: compressed-tensors {kind}{bits} with strategy {strategy!r} is not supported",
            hint="weightsmith reads int4/int8/fp8 weights per tensor, channel or group",
        )
    if kind == "float" and (bits != 8 or not sym):
        raise UnsupportedFormatError(
            f"{where}: compressed-tensors float{bits} weights are not supported",
            hint="weightsmith reads symmetric float8 compressed-tensors weights only; use the unquantized checkpoint",
        )
    fp8 = torch.float8_e4m3fn if kind == "float" else None
    gs = int(group) if strategy == "group" else None
    for s in LINEAR_SCHEMES.values():
        if (s.kind, s.bits, s.granularity, s.group_size, s.symmetric, s.fp8_dtype) == (
            kind,
            bits,
            strategy,
            gs,
            sym,
            fp8,
        ):
            return s
    name = f"ct-{kind}{bits}-{strategy}" + (f"{gs}" if gs else "") + ("" if sym else "-asym")
    return LinearScheme(name, kind, bits, strategy, gs, sym, fp8)


def activations_of(a: dict[str, Any] | None) -> str | None:
    """``int8``/``fp8`` for dynamic per-token 8-bit activations, ``nvfp4`` for compressed-tensors'
    NVFP4 activations (fp4, blocks of 16, scales computed locally under a static global scale),
    else None (weight-only, or activations weightsmith does not emulate: run weight-only)."""
    if not a:
        return None
    bits, kind = int(a.get("num_bits", 8)), str(a.get("type", "int"))
    if bits == 4 and kind == "float" and a.get("group_size") == 16 and a.get("dynamic") == "local":
        return "nvfp4"
    if not a.get("dynamic") or bits != 8:
        return None
    return "int8" if kind == "int" else "fp8"
