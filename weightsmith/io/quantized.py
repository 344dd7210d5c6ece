"""Reading INT8/FP8/INT4/FP4 artifacts: a compressed-tensors folder or a ComfyUI file (comfy_quant's
float8_e4m3fn / float8_e5m2 / int8_tensorwise / mxfp8 / nvfp4 layers, or legacy scaled fp8; ours
and other tools') opens as the plain checkpoint it encodes, each quantized weight dequantized on
read, as ``GGUFCheckpoint`` does for GGUF. ComfyUI files are read by ``weightsmith.io.comfy_quant``
with ComfyUI's rules (reference comfy-quant.md).
compressed-tensors' ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized`` weights dequantize to
float32 by ``weightsmith.kernels.microscale`` (exact: what compressed-tensors' bf16 decompression
rounds).

``open_checkpoint`` hands every component checkpoint to ``dequantizing_view``: an artifact of one
of these formats comes back as a ``DequantizingView`` (scales, zero points, shapes and markers
hidden; each quantized weight under its plain name, shape and the model's precision), anything
else as it was. ``DequantizingView.quantized(name)`` gives the stored numbers to loaders that
keep weights quantized. The layouts are described in ``weightsmith.quantize.linear.formats``
and ``weightsmith.quantize.linear.comfy``, which write them.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from weightsmith.errors import UnsupportedFormatError
from weightsmith.io.base import Checkpoint, dtype_name
from weightsmith.io.comfy_quant import COMFY_QUANT_FORMATS, SHAPES_KEY, _comfy_view
from weightsmith.io.ct_args import activations_of, scheme_from_ct_args
from weightsmith.io.quantized_kind import (
    COMFY_MARKER,
    COMFY_QUANT_SUFFIX,
    SCHEME_KEY,
    SOURCE_DTYPE_KEY,
    ct_config,
    quantized_kind,
)
from weightsmith.io.quantized_view import DequantizingView, _Layer
from weightsmith.kernels.linear import LinearScheme

__all__ = [
    "COMFY_MARKER",
    "COMFY_QUANT_FORMATS",
    "COMFY_QUANT_SUFFIX",
    "SCHEME_KEY",
    "SHAPES_KEY",
    "SOURCE_DTYPE_KEY",
    "DequantizingView",
    "dequantizing_view",
    "open_view",
]


def _target_matches(target: str, module: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target == module


def _ct_group(groups: dict[str, Any], module: str) -> dict[str, Any]:
    named = [g for g in groups.values() if any(_target_matches(t, module) for t in g.get("targets", []))]
    if named:
        return named[0]
    generic = [g for g in groups.values() if "Linear" in g.get("targets", [])]
    if generic:
        return generic[0]
    raise UnsupportedFormatError(
        f"no compressed-tensors config group targets {module!r}",
        hint="the file's quantization_config does not cover this layer; re-export it or use the unquantized checkpoint",
    )


def _ct_view(ck: Checkpoint, qc: dict[str, Any]) -> DequantizingView:
    groups = qc.get("config_groups") or {}
    infos = ck.infos
    layers: dict[str, _Layer] = {}
    hidden: set[str] = set()
    acts: set[str | None] = set()
    modules = sorted({k.rsplit(".", 1)[0] for k in infos if k.endswith((".weight_packed", ".weight_scale"))})
    for m in modules:
        if f"{m}.weight_g_idx" in infos:
            raise UnsupportedFormatError(
                f"{ck.path}: {m} uses activation reordering (weight_g_idx)",
                hint="not supported by weightsmith",
            )
        g = _ct_group(groups, m)
        if not g.get("weights"):
            continue
        scheme = scheme_from_ct_args(g["weights"], f"{ck.path}: {m}")
        acts.add(activations_of(g.get("input_activations")))
        zp = f"{m}.weight_zero_point" if f"{m}.weight_zero_point" in infos else None
        if scheme.kind == "fp4":
            lay = _fp4_layer(ck, m, scheme, activations_of(g.get("input_activations")) == "nvfp4")
            hidden |= {lay.data} | ({lay.global_scale} if lay.global_scale else set())
        elif f"{m}.weight_packed" in infos:
            shape_key = f"{m}.weight_shape"
            if shape_key not in infos:
                raise UnsupportedFormatError(
                    f"{ck.path}: {m}.weight_packed has no {shape_key}",
                    hint="the file's compressed-tensors data is incomplete; re-export it or use the unquantized checkpoint",
                )
            shape = tuple(int(v) for v in ck.get(shape_key).tolist())
            lay = _Layer(
                scheme, shape, f"{m}.weight_packed", f"{m}.weight_scale", zp, scheme.bits, zp is not None
            )
            hidden |= {f"{m}.weight_packed", shape_key}
        else:
            data = f"{m}.weight"
            if data not in infos:
                raise UnsupportedFormatError(
                    f"{ck.path}: {m}.weight_scale has no {data} beside it",
                    hint="the file's compressed-tensors data is incomplete; re-export it or use the unquantized checkpoint",
                )
            lay = _Layer(scheme, tuple(infos[data].shape), data, f"{m}.weight_scale", zp)
        if scheme.granularity == "group" and lay.shape[-1] % (scheme.group_size or 1):
            raise UnsupportedFormatError(
                f"{ck.path}: {m} row {lay.shape[-1]} does not split into groups",
                hint="the group size does not fit this layer; re-export it or use the unquantized checkpoint",
            )
        hidden |= {f"{m}.weight_scale"} | ({zp} if zp else set())
        layers[f"{m}.weight"] = lay
    for k in infos:  # static activation scales etc. belong to the format, not the model
        if k.endswith((".input_scale", ".input_zero_point", ".input_global_scale", ".output_scale")):
            hidden.add(k)
    act = next(iter(acts)) if len(acts) == 1 else None
    return DequantizingView(ck, "compressed-tensors", layers, hidden, act)


def _fp4_layer(ck: Checkpoint, m: str, scheme: LinearScheme, w4a4: bool = False) -> _Layer:
    """An nvfp4/mxfp4 layer: uint8 packed codes [out, in/2], block scales [out, in/block], nvfp4's
    global scale, and with nvfp4 activations (``w4a4``) the layer's ``input_global_scale``."""
    infos, block = ck.infos, scheme.group_size or 1
    packed, scale, gs = f"{m}.weight_packed", f"{m}.weight_scale", f"{m}.weight_global_scale"
    igs = f"{m}.input_global_scale"
    want_scale = torch.float8_e4m3fn if scheme.nvfp4 else torch.uint8
    p, s = infos.get(packed), infos.get(scale)
    shape = (p.shape[0], p.shape[1] * 2) if p is not None and len(p.shape) == 2 else None
    problem = None
    if p is None or s is None or shape is None or p.dtype != torch.uint8:
        problem = f"{packed} is missing or not 2-D uint8"
    elif s.dtype != want_scale or tuple(s.shape) != (shape[0], shape[1] // block) or shape[1] % block:
        problem = f"{scale} is {dtype_name(s.dtype)} {list(s.shape)}, not {dtype_name(want_scale)} [{shape[0]}, {shape[1] // block}]"
    elif scheme.nvfp4 and (
        gs not in infos or infos[gs].dtype != torch.float32 or math.prod(infos[gs].shape) != 1
    ):
        problem = f"{gs} is missing or not one float32"
    elif w4a4 and (igs not in infos or infos[igs].dtype != torch.float32 or math.prod(infos[igs].shape) != 1):
        problem = f"{igs} (nvfp4 activations) is missing or not one float32"
    if problem is not None:
        raise UnsupportedFormatError(
            f"{ck.path}: {scheme.name} layer {m}: {problem}",
            hint="the file's compressed-tensors data is incomplete; re-export it or use the unquantized checkpoint",
        )
    return _Layer(
        scheme,
        shape,
        packed,
        scale,
        global_scale=gs if scheme.nvfp4 else None,
        input_global_scale=igs if w4a4 else None,
    )  # type: ignore[arg-type]


def open_view(ck: Checkpoint) -> DequantizingView | None:
    """The dequantizing view of a compressed-tensors or ComfyUI (comfy_quant, scaled fp8) artifact, or None for others."""
    if isinstance(ck, DequantizingView):
        return ck
    kind = quantized_kind(ck)
    qc = ct_config(ck)
    if kind == "compressed-tensors" and qc is not None:
        return _ct_view(ck, qc)
    if kind in ("comfy-scaled-fp8", "comfy-quant"):
        return _comfy_view(ck)
    return None


def dequantizing_view(ck: Checkpoint) -> Checkpoint:
    """``ck`` as the plain checkpoint it encodes: what ``open_checkpoint`` hands out. A view that
    cannot be built (a malformed artifact) closes the file before the error propagates."""
    try:
        view = open_view(ck)
    except BaseException:
        ck.close()
        raise
    return ck if view is None else view


def dequantized_lines(ck: Checkpoint, cast: torch.dtype | None) -> list[str]:
    """What a conversion's summary says about reading a quantized artifact (nothing for others)."""
    if not isinstance(ck, DequantizingView):
        return []
    to = str(cast or ck.logical_dtype).removeprefix("torch.")
    return [f"  dequantized {len(ck.layers)} {ck.scheme_name} weights ({ck.kind}) to {to}"]
