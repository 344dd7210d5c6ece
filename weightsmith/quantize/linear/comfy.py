"""ComfyUI's single-file layouts, written the way ComfyUI's loader reads them (reference
comfy-quant.md); reading them back is ``weightsmith.io.comfy_quant``'s job.

comfy_quant (``--format comfy``), per quantized Linear ``L`` in the original layout, with
``L.comfy_quant`` the uint8 bytes of the layer's JSON ``{"format": ...}``:

==================  ======================================  ================================
format (scheme)     ``L.weight``                            scales
==================  ======================================  ================================
float8_e4m3fn       F8_E4M3 [out, in]                       ``weight_scale`` float32 ``()``
(fp8-tensor; fp8)
float8_e5m2         F8_E5M2 [out, in]                       ``weight_scale`` float32 ``()``
int8_tensorwise     I8 [out, in]                            ``weight_scale`` float32 ``()``
mxfp8               F8_E4M3 [out, in], padded to 32s        ``weight_scale`` U8 E8M0, swizzled
nvfp4               U8 [out, in/2] (even column high),      ``weight_scale`` F8_E4M3 swizzled,
                    padded to 16s                           ``weight_scale_2`` float32 ``()``
==================  ======================================  ================================

``fp8`` (per channel elsewhere) is written as ``fp8-tensor``: ComfyUI's fp8 layers take one
scalar scale. Swizzled block scales are padded to (roundup(rows, 128), roundup(cols, 4)) in
cuBLAS's 128x4 order (``weightsmith.kernels.microscale_comfy``); padded layers' true shapes are
recorded in the header (``weightsmith.shapes``) for our reader; ComfyUI takes them from the model.

Activation handling (``ComfyMatmul``): with an activation abs-max from calibration
(``LinearOptions.activation_absmax``), fp8 layers get ``input_scale = absmax / fp8 max`` and
nvfp4 layers ``input_scale = absmax / (448 * 6)`` (comfy-kitchen's per-tensor nvfp4 scale), and
no ``full_precision_matrix_mult``: fp8/fp4 GPUs then quantize activations with that scale.
Every other quantized layer is marked ``full_precision_matrix_mult`` (computed in the compute
dtype after dequantizing): uncalibrated fp8/nvfp4, the most sensitive layers named by
``--fp-layers`` and int8_tensorwise / mxfp8, which weightsmith writes weight-only.

Legacy scaled fp8 (``--format comfy-legacy``): ``L.weight`` e4m3, ``L.scale_weight`` float32
``()`` and one empty ``scaled_fp8`` marker of the weights' fp8 dtype. ComfyUI marks every legacy
layer float8_e4m3fn, so only e4m3 is written this way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from weightsmith.errors import QuantizationError, UsageError
from weightsmith.io.quantized import COMFY_MARKER, COMFY_QUANT_FORMATS, COMFY_QUANT_SUFFIX
from weightsmith.kernels.linear import LINEAR_SCHEMES, LinearScheme, QuantizedWeight
from weightsmith.kernels.microscale import NVFP4_GLOBAL_DIVISOR
from weightsmith.kernels.microscale_comfy import comfy_storage

SpecT = tuple[str, tuple[int, ...], torch.dtype]
# comfy_quant format of each scheme written in it; ``fp8`` is written as ``fp8-tensor``.
_FORMAT_OF = {scheme: fmt for fmt, (scheme, _) in COMFY_QUANT_FORMATS.items()}
_AS_PER_TENSOR = {"fp8": "fp8-tensor"}


def comfy_scheme(scheme: LinearScheme) -> LinearScheme:
    """The scheme a ComfyUI file holds for ``scheme``: ``fp8`` becomes ``fp8-tensor``."""
    return LINEAR_SCHEMES.get(_AS_PER_TENSOR.get(scheme.name, ""), scheme)


def comfy_quant_format(scheme: LinearScheme) -> str:
    """ComfyUI's format name for ``scheme`` (after ``comfy_scheme``)."""
    fmt = _FORMAT_OF.get(scheme.name)
    if fmt is None:
        raise UsageError(
            f"--scheme {scheme.name} cannot be written as comfy: ComfyUI has no format for it",
            hint="use --scheme fp8, fp8-e5m2, int8-tensor, mxfp8 or nvfp4 with --format comfy",
        )
    return fmt


@dataclass(frozen=True)
class ComfyMatmul:
    """How ComfyUI computes one quantized layer: the activation scale, else full precision."""

    input_scale: float | None
    why: str  # recorded in DST.layers.json

    @property
    def full_precision(self) -> bool:
        return self.input_scale is None


def activation_divisor(scheme: LinearScheme) -> float | None:
    """absmax / divisor = ComfyUI's input_scale; None for formats that take none."""
    if scheme.nvfp4:
        return NVFP4_GLOBAL_DIVISOR
    if scheme.kind == "float" and scheme.granularity == "tensor":
        return scheme.fmax
    return None


def plan_matmul(
    scheme: LinearScheme,
    module: str,
    absmax: Mapping[str, float] | None,
    full_precision: Mapping[str, str],
) -> ComfyMatmul:
    """One layer's ``ComfyMatmul``: ``module`` is its Diffusers module name; ``full_precision``
    maps the modules --fp-layers keeps in full precision to why."""
    divisor = activation_divisor(scheme)
    if divisor is None:
        return ComfyMatmul(None, f"full precision matmul ({comfy_quant_format(scheme)} written weight-only)")
    if module in full_precision:
        return ComfyMatmul(None, f"full precision matmul ({full_precision[module]})")
    if absmax is None:
        return ComfyMatmul(None, "full precision matmul (no activation calibration)")
    amax = absmax.get(module)
    if amax is None or not amax > 0 or amax == float("inf"):
        return ComfyMatmul(None, "full precision matmul (no calibrated activation range for this layer)")
    scale = float(torch.tensor(amax / divisor, dtype=torch.float32))
    return ComfyMatmul(scale, f"input_scale {scale:.6g} (activation abs-max {amax:.6g})")


def comfy_quant_json(scheme: LinearScheme, mm: ComfyMatmul) -> bytes:
    """The bytes of one layer's ``comfy_quant`` tensor (UTF-8 JSON, as ComfyUI's writer emits it)."""
    conf: dict[str, object] = {"format": comfy_quant_format(scheme)}
    if mm.full_precision:
        conf["full_precision_matrix_mult"] = True
    return json.dumps(conf, separators=(",", ":")).encode()


def comfy_quant_specs(
    layer: str, shape: tuple[int, ...], scheme: LinearScheme, mm: ComfyMatmul
) -> list[SpecT]:
    """Names, shapes and dtypes one quantized Linear ``layer`` is stored as (write order)."""
    out, inn = shape
    n = len(comfy_quant_json(scheme, mm))
    if scheme.microscaled:
        st = comfy_storage(scheme.nvfp4, (out, inn))
        specs: list[SpecT] = [(f"{layer}.weight", *st.data), (f"{layer}.weight_scale", *st.scale)]
        if scheme.nvfp4:
            specs.append((f"{layer}.weight_scale_2", (), torch.float32))
    else:
        specs = [
            (f"{layer}.weight", (out, inn), _stored_dtype(scheme)),
            (f"{layer}.weight_scale", (), torch.float32),
        ]
    if mm.input_scale is not None:
        specs.append((f"{layer}.input_scale", (), torch.float32))
    return [*specs, (f"{layer}{COMFY_QUANT_SUFFIX}", (n,), torch.uint8)]


def comfy_quant_tensors(layer: str, qw: QuantizedWeight, mm: ComfyMatmul) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``comfy_quant_specs``, in the same order."""
    raw = torch.frombuffer(bytearray(comfy_quant_json(qw.scheme, mm)), dtype=torch.uint8)
    items = [(f"{layer}.weight", qw.data)]
    if qw.scheme.microscaled:
        items.append((f"{layer}.weight_scale", qw.scale))
        if qw.global_scale is not None:
            items.append((f"{layer}.weight_scale_2", qw.global_scale.to(torch.float32).reshape(())))
    else:
        items.append((f"{layer}.weight_scale", qw.scale.to(torch.float32).reshape(())))
    if mm.input_scale is not None:
        items.append((f"{layer}.input_scale", torch.tensor(mm.input_scale, dtype=torch.float32)))
    return [*items, (f"{layer}{COMFY_QUANT_SUFFIX}", raw)]


def _stored_dtype(scheme: LinearScheme) -> torch.dtype:
    return scheme.fp8_dtype if scheme.kind == "float" else torch.int8  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Legacy scaled fp8


def check_comfy_legacy(scheme: LinearScheme) -> None:
    """The legacy layout holds per-tensor e4m3 only: ComfyUI marks every legacy layer
    float8_e4m3fn and value-casts its weight, so e5m2 would lose everything beyond +-448."""
    if scheme.fp8_dtype == torch.float8_e5m2:
        raise UsageError(
            f"--scheme {scheme.name} cannot be written as comfy-legacy: ComfyUI reads every legacy "
            "scaled-fp8 layer as float8_e4m3fn and casts e5m2 weights to it, losing all beyond +-448",
            hint="use --format comfy (its comfy_quant metadata records float8_e5m2)",
        )
    if scheme.kind != "float" or scheme.granularity != "tensor":
        raise UsageError(
            f"--scheme {scheme.name} cannot be written as comfy-legacy: the scaled-fp8 layout holds "
            "e4m3 weights with one scale per tensor",
            hint="use --scheme fp8-tensor with --format comfy-legacy, or --format comfy",
        )


def comfy_specs(layer: str, shape: tuple[int, ...], scheme: LinearScheme) -> list[SpecT]:
    """Legacy scaled fp8: e4m3 weights with one scale per tensor (see ``check_comfy_legacy``)."""
    check_comfy_legacy(scheme)
    return [(f"{layer}.weight", tuple(shape), scheme.fp8_dtype), (f"{layer}.scale_weight", (), torch.float32)]  # type: ignore[list-item]


def comfy_tensors(layer: str, qw: QuantizedWeight) -> list[tuple[str, torch.Tensor]]:
    return [(f"{layer}.weight", qw.data), (f"{layer}.scale_weight", qw.scale.reshape(()))]


def comfy_marker_spec(scheme: LinearScheme, prefix: str = "") -> tuple[SpecT, torch.Tensor]:
    dtype = scheme.fp8_dtype
    if dtype is None:
        raise QuantizationError(
            f"{scheme.name} is no fp8 scheme: ComfyUI's scaled-fp8 marker names an fp8 dtype",
            hint="this is a bug in weightsmith; report it",
        )
    return (f"{prefix}{COMFY_MARKER}", (0,), dtype), torch.empty(0, dtype=dtype)
