"""Where INT8/FP8/INT4/FP4 weights are stored in compressed-tensors folders, written the way its
own loaders read them. Reading them back (ours and other tools') is the
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
  ``M.weight_global_scale`` float32 [1]; no ``weight_shape`` (the compressor infers it). nvfp4
  W4A4 (compressed-tensors' NVFP4 preset) adds ``M.input_global_scale`` float32 [1]: ``2688 /
  absmax`` of the layer's calibrated input (``kernels.microscale.nvfp4_global_scale``);
* config.json carries ``quantization_config`` (quant_method ``compressed-tensors``, the format,
  one config group targeting ``Linear``, and an ``ignore`` list naming every module whose
  ``.weight`` is not quantized, so model-free tools never mistake a norm or conv for one).

ComfyUI's files (``--format comfy`` and ``comfy-legacy``) are written by
``weightsmith.quantize.linear.comfy``.
"""

from __future__ import annotations

from typing import Any

import torch

from weightsmith.errors import UsageError
from weightsmith.io.quantized_kind import SCHEME_KEY, SOURCE_DTYPE_KEY
from weightsmith.kernels.linear import (
    ACTIVATIONS,
    LinearScheme,
    QuantizedWeight,
    pack_int32,
    packed_cols,
)

__all__ = ["ACTIVATIONS", "SCHEME_KEY", "SOURCE_DTYPE_KEY"]

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


def ct_format(scheme: LinearScheme, activations: str | None, packed: bool = True) -> str:
    """The format name compressed-tensors itself infers for this scheme (its priority order).

    ``packed=False`` (``QuantSpec.ct_packed``): weight-only int weights as ``int-quantized`` (an
    int8 ``.weight``) instead of ``pack-quantized``'s ``weight_packed``, for model classes whose
    code reads ``Linear.weight`` (transformers' T5/UMT5 ``_init_weights``)."""
    if scheme.kind == "fp4":
        return NVFP4_PACK if scheme.nvfp4 else MXFP4_PACK
    if activations is None:
        return (PACK if packed else INT_Q) if scheme.kind == "int" else NAIVE
    return INT_Q if scheme.kind == "int" else FLOAT_Q


def check_activations(scheme: LinearScheme, activations: str | None, fmt: str) -> None:
    """W8A8 pairs int8 activations with int8 weights and fp8 activations with e4m3 weights;
    W4A4 pairs nvfp4 activations with nvfp4 weights (static input global scales: --calibrate)."""
    if activations is None:
        return
    if activations not in ACTIVATIONS:
        raise UsageError(f"unknown --activations {activations!r}", hint="choose int8, fp8 or nvfp4")
    if fmt != "compressed-tensors":
        raise UsageError(
            "--activations is recorded in the compressed-tensors layout only",
            hint="ComfyUI decides fp8 compute itself; drop --activations",
        )
    if scheme.kind == "fp4" or activations == "nvfp4":
        if scheme.nvfp4 and activations == "nvfp4":
            return
        raise UsageError(
            f"--activations {activations} does not go with --scheme {scheme.name}: fp4 weights are "
            "written weight-only (W4A16) or, for nvfp4, with nvfp4 activations (W4A4)",
            hint="drop --activations, or use --scheme nvfp4 --activations nvfp4 --calibrate",
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
    """The ``input_activations`` QuantizationArgs: dynamic per token for W8A8; for nvfp4 (W4A4)
    compressed-tensors' NVFP4 preset's: e4m3 scales per block of 16 computed at run time
    (``dynamic: local``) under a static, calibrated ``input_global_scale`` per layer."""
    if activations is None:
        return None
    if activations == "nvfp4":
        return {
            "num_bits": 4,
            "type": "float",
            "symmetric": True,
            "group_size": 16,
            "strategy": "tensor_group",
            "dynamic": "local",
            "observer": "static_minmax",
            "scale_dtype": "torch.float8_e4m3fn",
        }
    return {
        "num_bits": 8,
        "type": "int" if activations == "int8" else "float",
        "symmetric": True,
        "group_size": None,
        "strategy": "token",
        "dynamic": True,
    }


def ct_quantization_config(
    scheme: LinearScheme, activations: str | None, ignore: list[str], packed: bool = True
) -> dict[str, Any]:
    """The ``quantization_config`` object of config.json, keyed as compressed-tensors writes it."""
    fmt = ct_format(scheme, activations, packed)
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


def ct_mixed_quantization_config(
    layers: dict[str, LinearScheme], ignore: list[str], packed: bool = True
) -> dict[str, Any]:
    """``quantization_config`` for one scheme per layer (weight-only): one config group per scheme
    whose ``targets`` are its layers' module names, each group with its own format, and the top
    level format ``mixed-precision`` when the groups' formats differ (compressed-tensors' way)."""
    by: dict[str, list[str]] = {}
    schemes: dict[str, LinearScheme] = {}
    for weight, ls in sorted(layers.items()):
        by.setdefault(ls.name, []).append(weight.removesuffix(".weight"))
        schemes[ls.name] = ls
    groups = {}
    for i, name in enumerate(sorted(by)):
        ls = schemes[name]
        groups[f"group_{i}"] = {
            "targets": by[name],
            "weights": ct_weight_args(ls),
            "input_activations": None,
            "output_activations": None,
            "format": ct_format(ls, None, packed),
        }
    formats = {g["format"] for g in groups.values()}
    return {
        "version": CT_LAYOUT_VERSION,
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": groups,
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


def ct_specs(
    module: str, shape: tuple[int, int], scheme: LinearScheme, fmt: str, activations: str | None = None
) -> list[SpecT]:
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
        if activations == "nvfp4":
            fp4.append((f"{module}.input_global_scale", (1,), torch.float32))
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


def ct_tensors(
    module: str, qw: QuantizedWeight, fmt: str, input_global_scale: torch.Tensor | None = None
) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``ct_specs``, in the same order (``input_global_scale``: W4A4's, float32 [1])."""
    s = qw.scheme
    if s.kind == "fp4":
        out = [(f"{module}.weight_packed", qw.data), (f"{module}.weight_scale", qw.scale)]
        if qw.global_scale is not None:
            out.append((f"{module}.weight_global_scale", qw.global_scale))
        if input_global_scale is not None:
            out.append((f"{module}.input_global_scale", input_global_scale.to(torch.float32).reshape(1)))
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
