"""Where INT8/FP8/INT4 weights are stored: the compressed-tensors layout and ComfyUI's scaled fp8,
written the way their own loaders read them. Reading them back (ours and other tools') is the
reader's job: ``weightsmith.io.quantized``.

compressed-tensors (reference quantization-and-onnx.md section 2), per quantized Linear ``M``:

* ``pack-quantized`` (int weights, no activation quantization: int8 W8A16, int4 W4A16):
  ``M.weight_packed`` int32 (values + 2**(bits-1), LSB first, 32/bits per word), ``M.weight_scale``
  float32 (out, 1) or (out, in/group), ``M.weight_shape`` int64 (2,), and for zero points
  ``M.weight_zero_point`` packed the same way along the output dimension;
* ``naive-quantized`` (fp8 weight-only), ``int-quantized`` / ``float-quantized`` (W8A8 with
  dynamic per-token activations): ``M.weight`` int8 or float8_e4m3fn, ``M.weight_scale`` float32
  (out, 1) or (1,) per tensor;
* ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized`` (fp4 weight-only, W4A16): ``M.weight_packed``
  uint8 [out, in/2] (two E2M1 codes a byte, even column in the low nibble), ``M.weight_scale``
  float8_e4m3fn [out, in/16] (nvfp4) or uint8 E8M0 exponents [out, in/32] (mxfp4), and for nvfp4
  ``M.weight_global_scale`` float32 [1]; no ``weight_shape`` (the compressor infers it);
* config.json carries ``quantization_config`` (quant_method ``compressed-tensors``, the format,
  one config group targeting ``Linear``, and an ``ignore`` list naming every module whose
  ``.weight`` is not quantized, so model-free tools never mistake a norm or conv for one).

ComfyUI comfy_quant (reference comfy-quant.md; ``--format comfy``), per quantized Linear ``L`` in
the original layout: ``L.weight`` (F8_E4M3, F8_E5M2 or I8, [out, in]), ``L.weight_scale`` float32
scalar (shape ``()``) and ``L.comfy_quant``: uint8 bytes of the JSON ``{"format": ...,
"full_precision_matrix_mult": true}``. Every layer is weight-only (no activation calibration
exists yet), so each asks ComfyUI to compute in the compute dtype after dequantizing; no
``input_scale`` is written. ComfyUI dequantizes ``weight.to(float32) * weight_scale``.

Legacy ComfyUI scaled fp8 (``--format comfy-legacy``; reference section 3.1 and comfy-quant.md),
per quantized Linear ``L`` in the original layout:
``L.weight`` fp8, ``L.scale_weight`` float32 scalar (shape ``()``), and one marker tensor
``scaled_fp8``: empty, of the fp8 dtype the weights use (ComfyUI reads the flavour from it; two
elements would ask for full-precision matmuls, so it has none). ComfyUI marks every legacy layer
float8_e4m3fn, so only e4m3 is written this way.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from weightsmith.errors import QuantizationError, UsageError
from weightsmith.io.quantized import COMFY_QUANT_FORMATS
from weightsmith.io.quantized_kind import COMFY_MARKER, COMFY_QUANT_SUFFIX, SCHEME_KEY, SOURCE_DTYPE_KEY
from weightsmith.kernels.linear import (
    ACTIVATIONS,
    LINEAR_SCHEMES,
    LinearScheme,
    QuantizedWeight,
    pack_int32,
    packed_cols,
)

__all__ = ["ACTIVATIONS", "COMFY_MARKER", "SCHEME_KEY", "SOURCE_DTYPE_KEY"]

SpecT = tuple[str, tuple[int, ...], torch.dtype]

PACK = "pack-quantized"
NAIVE = "naive-quantized"
INT_Q = "int-quantized"
FLOAT_Q = "float-quantized"
NVFP4_PACK = "nvfp4-pack-quantized"
MXFP4_PACK = "mxfp4-pack-quantized"
CT_FORMATS = (PACK, NAIVE, INT_Q, FLOAT_Q, NVFP4_PACK, MXFP4_PACK)
# The compressed-tensors release whose on-disk layout this module writes and was tested against.
CT_LAYOUT_VERSION = "0.20.0"


# ---------------------------------------------------------------------------------------------
# compressed-tensors: writing


def ct_format(scheme: LinearScheme, activations: str | None) -> str:
    """The format name compressed-tensors itself infers for this scheme (its priority order)."""
    if scheme.kind == "fp4":
        return NVFP4_PACK if scheme.nvfp4 else MXFP4_PACK
    if activations is None:
        return PACK if scheme.kind == "int" else NAIVE
    return INT_Q if scheme.kind == "int" else FLOAT_Q


def check_activations(scheme: LinearScheme, activations: str | None, fmt: str) -> None:
    """W8A8 pairs int8 activations with int8 weights and fp8 activations with e4m3 weights."""
    if activations is None:
        return
    if activations not in ACTIVATIONS:
        raise UsageError(f"unknown --activations {activations!r}", hint="choose int8 or fp8")
    if scheme.kind == "fp4":
        raise UsageError(
            f"--scheme {scheme.name} is written weight-only (W4A16); fp4 activations are not recorded yet",
            hint="drop --activations",
        )
    if fmt != "compressed-tensors":
        raise UsageError(
            "--activations is recorded in the compressed-tensors layout only",
            hint="ComfyUI decides fp8 compute itself; drop --activations",
        )
    ok = (activations == "int8" and scheme.kind == "int" and scheme.bits == 8) or (
        activations == "fp8" and scheme.fp8_dtype == torch.float8_e4m3fn
    )
    if not ok:
        raise UsageError(
            f"--activations {activations} does not go with --scheme {scheme.name}",
            hint="use int8 activations with --scheme int8, fp8 activations with fp8 or fp8-tensor",
        )


def ct_weight_args(scheme: LinearScheme) -> dict[str, Any]:
    """The ``weights`` QuantizationArgs; fp4's are compressed-tensors' NVFP4A16 / MXFP4A16 presets'."""
    if scheme.kind == "fp4":
        return {
            "num_bits": 4,
            "type": "float",
            "symmetric": True,
            "group_size": scheme.group_size,
            "strategy": "tensor_group" if scheme.nvfp4 else "group",
            "dynamic": False,
            "scale_dtype": "torch.float8_e4m3fn" if scheme.nvfp4 else "torch.uint8",
        }
    args: dict[str, Any] = {
        "num_bits": scheme.bits,
        "type": scheme.kind,
        "symmetric": scheme.symmetric,
        "group_size": scheme.group_size,
        "strategy": scheme.granularity,
        "dynamic": False,
    }
    return args


def ct_activation_args(activations: str | None) -> dict[str, Any] | None:
    if activations is None:
        return None
    return {
        "num_bits": 8,
        "type": "int" if activations == "int8" else "float",
        "symmetric": True,
        "group_size": None,
        "strategy": "token",
        "dynamic": True,
    }


def ct_quantization_config(
    scheme: LinearScheme, activations: str | None, ignore: list[str]
) -> dict[str, Any]:
    """The ``quantization_config`` object of config.json, keyed as compressed-tensors writes it."""
    fmt = ct_format(scheme, activations)
    return {
        "version": CT_LAYOUT_VERSION,
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": ct_weight_args(scheme),
                "input_activations": ct_activation_args(activations),
                "output_activations": None,
                "format": fmt,
            }
        },
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }


def _scale_shape(scheme: LinearScheme, out: int, inn: int) -> tuple[int, ...]:
    if scheme.granularity == "channel":
        return (out, 1)
    if scheme.granularity == "tensor":
        return (1,)
    return (out, inn // scheme.group_size)  # type: ignore[operator]


def ct_specs(module: str, shape: tuple[int, int], scheme: LinearScheme, fmt: str) -> list[SpecT]:
    """Names, shapes and dtypes one quantized Linear ``module`` is stored as (write order)."""
    out, inn = shape
    sshape = _scale_shape(scheme, out, inn)
    if scheme.kind == "fp4":
        fp4: list[SpecT] = [
            (f"{module}.weight_packed", (out, inn // 2), torch.uint8),
            (f"{module}.weight_scale", sshape, torch.float8_e4m3fn if scheme.nvfp4 else torch.uint8),
        ]
        if scheme.nvfp4:
            fp4.append((f"{module}.weight_global_scale", (1,), torch.float32))
        return fp4
    if fmt == PACK:
        specs: list[SpecT] = [
            (f"{module}.weight_packed", (out, packed_cols(inn, scheme.bits)), torch.int32),
            (f"{module}.weight_scale", sshape, torch.float32),
            (f"{module}.weight_shape", (2,), torch.int64),
        ]
        if not scheme.symmetric:
            specs.append(
                (f"{module}.weight_zero_point", (packed_cols(out, scheme.bits), sshape[1]), torch.int32)
            )
        return specs
    dtype = scheme.fp8_dtype if scheme.kind == "float" else torch.int8
    specs = [(f"{module}.weight", (out, inn), dtype), (f"{module}.weight_scale", sshape, torch.float32)]  # type: ignore[list-item]
    if not scheme.symmetric:
        specs.append((f"{module}.weight_zero_point", sshape, torch.int8))
    return specs


def ct_tensors(module: str, qw: QuantizedWeight, fmt: str) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``ct_specs``, in the same order."""
    s = qw.scheme
    if s.kind == "fp4":
        out = [(f"{module}.weight_packed", qw.data), (f"{module}.weight_scale", qw.scale)]
        if qw.global_scale is not None:
            out.append((f"{module}.weight_global_scale", qw.global_scale))
        return out
    if fmt == PACK:
        out = [
            (f"{module}.weight_packed", pack_int32(qw.values(), s.bits)),
            (f"{module}.weight_scale", qw.scale),
            (f"{module}.weight_shape", torch.tensor(qw.shape, dtype=torch.int64)),
        ]
        if qw.zero_point is not None:
            out.append((f"{module}.weight_zero_point", pack_int32(qw.zero_point, s.bits, dim=0)))
        return out
    out = [(f"{module}.weight", qw.values()), (f"{module}.weight_scale", qw.scale)]
    if qw.zero_point is not None:
        out.append((f"{module}.weight_zero_point", qw.zero_point))
    return out


# ---------------------------------------------------------------------------------------------
# ComfyUI scaled fp8: writing


def comfy_specs(layer: str, shape: tuple[int, ...], scheme: LinearScheme) -> list[SpecT]:
    """Legacy scaled fp8: e4m3 weights with one scale per tensor (see ``check_comfy_legacy``)."""
    check_comfy_legacy(scheme)
    return [(f"{layer}.weight", tuple(shape), scheme.fp8_dtype), (f"{layer}.scale_weight", (), torch.float32)]  # type: ignore[list-item]


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


# ---------------------------------------------------------------------------------------------
# ComfyUI comfy_quant: writing


def comfy_quant_format(scheme: LinearScheme) -> str:
    """ComfyUI's format name for ``scheme``'s numbers: per-tensor e4m3, e5m2 or int8 only."""
    for fmt, (name, stored) in COMFY_QUANT_FORMATS.items():
        reg = LINEAR_SCHEMES.get(name)
        if reg is not None and _same_numbers(scheme, reg) and _stored_dtype(scheme) == stored:
            return fmt
    raise UsageError(
        f"ComfyUI's comfy_quant layers hold one scale per tensor; {scheme.name} is not that",
        hint="use --scheme fp8-tensor, fp8-e5m2 or int8-tensor with --format comfy",
    )


def _same_numbers(a: LinearScheme, b: LinearScheme) -> bool:
    return (a.kind, a.bits, a.granularity, a.group_size, a.symmetric, a.fp8_dtype) == (
        b.kind,
        b.bits,
        b.granularity,
        b.group_size,
        b.symmetric,
        b.fp8_dtype,
    )


def _stored_dtype(scheme: LinearScheme) -> torch.dtype:
    return scheme.fp8_dtype if scheme.kind == "float" else torch.int8  # type: ignore[return-value]


def comfy_quant_json(scheme: LinearScheme) -> bytes:
    """The bytes of one layer's ``comfy_quant`` tensor (UTF-8 JSON; weight-only, so
    ``full_precision_matrix_mult``: fp8 GPUs would otherwise quantize activations uncalibrated)."""
    conf = {"format": comfy_quant_format(scheme), "full_precision_matrix_mult": True}
    return json.dumps(conf, separators=(",", ":")).encode()


def comfy_quant_specs(layer: str, shape: tuple[int, ...], scheme: LinearScheme) -> list[SpecT]:
    """Names, shapes and dtypes one quantized Linear ``layer`` is stored as (write order)."""
    n = len(comfy_quant_json(scheme))
    return [
        (f"{layer}.weight", tuple(shape), _stored_dtype(scheme)),
        (f"{layer}.weight_scale", (), torch.float32),
        (f"{layer}{COMFY_QUANT_SUFFIX}", (n,), torch.uint8),
    ]


def comfy_quant_tensors(layer: str, qw: QuantizedWeight) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``comfy_quant_specs``, in the same order."""
    raw = torch.frombuffer(bytearray(comfy_quant_json(qw.scheme)), dtype=torch.uint8)
    return [
        (f"{layer}.weight", qw.data),
        (f"{layer}.weight_scale", qw.scale.to(torch.float32).reshape(())),
        (f"{layer}{COMFY_QUANT_SUFFIX}", raw),
    ]
