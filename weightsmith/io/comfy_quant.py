"""Reading ComfyUI files: the current comfy_quant format (per-layer ``comfy_quant`` JSON or the
``_quantization_metadata`` header) and the legacy scaled fp8 (a ``scaled_fp8`` marker), by
ComfyUI's loading rules (reference comfy-quant.md):

* float8_e4m3fn / float8_e5m2 / int8_tensorwise: ``weight.to(float32) * weight_scale.to(float32)``;
* nvfp4 / mxfp8: the padded weight and its 128x4-swizzled block scales decoded by
  ``weightsmith.kernels.microscale_comfy`` and sliced to the layer's shape;
* ``input_scale`` (activation calibration) and ``weight_scale_2`` belong to the format, not the
  model: hidden; an fp8/nvfp4 layer's ``input_scale`` (without ``full_precision_matrix_mult``) is
  carried in ``QuantizedWeight.input_scale`` so the runtime quantizes its inputs as ComfyUI does. convrot_w4a4 is refused by name, unknown formats too (never loaded raw).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from weightsmith.errors import UnsupportedFormatError
from weightsmith.io.base import Checkpoint, TensorInfo, dtype_name
from weightsmith.io.quantized_kind import COMFY_LAYERS_KEY, COMFY_QUANT_SUFFIX, comfy_marker
from weightsmith.io.quantized_view import DequantizingView, _Layer
from weightsmith.io.structured import parse_json
from weightsmith.kernels.linear import LINEAR_SCHEMES
from weightsmith.kernels.microscale import MX_BLOCK, NVFP4_BLOCK
from weightsmith.kernels.microscale_layout import roundup

# Padded nvfp4/mxfp8 layers' true [rows, columns], JSON in the header (weightsmith's own files).
SHAPES_KEY = "weightsmith.shapes"
# ComfyUI's comfy_quant format names weightsmith reads, with the scheme and the stored weight
# dtype each implies (reference comfy-quant.md); ComfyUI value-casts a weight to that dtype.
COMFY_QUANT_FORMATS: dict[str, tuple[str, torch.dtype]] = {
    "float8_e4m3fn": ("fp8-tensor", torch.float8_e4m3fn),
    "float8_e5m2": ("fp8-e5m2", torch.float8_e5m2),
    "int8_tensorwise": ("int8-tensor", torch.int8),
    "mxfp8": ("mxfp8", torch.float8_e4m3fn),
    "nvfp4": ("nvfp4", torch.uint8),
}
MICROSCALED = ("mxfp8", "nvfp4")
# Formats whose matmul quantizes activations with a stored input_scale (int8/mxfp8: dynamically).
STATIC_INPUT = ("float8_e4m3fn", "float8_e5m2", "nvfp4")
# Registered in ComfyUI but not read here: refused by name, never loaded as raw values.
COMFY_QUANT_LATER = ("convrot_w4a4",)
_COMFY_QUANT_MAX_BYTES = 1 << 16
_BROKEN_COMFY = (
    "the file's ComfyUI quantization metadata is broken; re-export it or use the unquantized checkpoint"
)


def _comfy_quant_layers(ck: Checkpoint) -> dict[str, dict[str, Any]] | None:
    raw = ck.metadata.get(COMFY_LAYERS_KEY)
    if raw is not None:
        doc = parse_json(raw, f"{ck.path}: _quantization_metadata", error=UnsupportedFormatError, hint=None)
        layers = doc.get("layers") if isinstance(doc, dict) else None
        if not isinstance(layers, dict):
            raise UnsupportedFormatError(
                f"{ck.path}: _quantization_metadata has no 'layers' table",
                hint="the file's ComfyUI quantization metadata is broken; re-export it or use the unquantized checkpoint",
            )
        bad = next((k for k, v in layers.items() if not isinstance(v, (str, dict))), None)
        if bad is not None:
            raise UnsupportedFormatError(
                f"{ck.path}: _quantization_metadata layer {bad[:80]!r} is not a format",
                hint="the file's ComfyUI quantization metadata is broken; re-export it or use the unquantized checkpoint",
            )
        return {k: ({"format": v} if isinstance(v, str) else dict(v)) for k, v in layers.items()}
    tagged = [k for k in ck.keys() if k.endswith(COMFY_QUANT_SUFFIX)]
    if not tagged:
        return None
    out = {}
    for k in tagged:
        info = ck.infos[k]
        if info.dtype != torch.uint8 or len(info.shape) != 1 or info.shape[0] > _COMFY_QUANT_MAX_BYTES:
            raise UnsupportedFormatError(
                f"{ck.path}: {k} is {dtype_name(info.dtype)} {list(info.shape)}, not 1-D uint8 JSON",
                hint=_BROKEN_COMFY,
            )
        value = parse_json(
            bytes(ck.get(k).tolist()), f"{ck.path}: {k}", error=UnsupportedFormatError, hint=None
        )
        if not isinstance(value, dict):
            raise UnsupportedFormatError(
                f"{ck.path}: {k} is not a JSON object",
                hint="the file's ComfyUI quantization metadata is broken; re-export it or use the unquantized checkpoint",
            )
        out[k.removesuffix(COMFY_QUANT_SUFFIX)] = value
    return out


def _comfy_view(ck: Checkpoint) -> DequantizingView:
    """A legacy scaled-fp8 file (marker tensor) or a comfy_quant file, read by ComfyUI's rules:
    weight.to(format's dtype).to(float32) * weight_scale.to(float32)."""
    infos = ck.infos
    hidden: set[str] = set()
    marker = comfy_marker(ck)
    named: list[tuple[str, str, str]] = []  # (layer, scale key, format)
    static: set[str] = set()  # layers whose matmul quantizes inputs with a stored input_scale
    if marker is not None:
        # ComfyUI renames scale_weight -> weight_scale and marks every such layer e4m3 (an e5m2
        # weight is value-cast there); weightsmith reads the values as stored, as it always has:
        # the legacy writer now refuses e5m2, and older e5m2 files keep their intended weights.
        hidden.add(marker)
        input_suffix, kind = ".scale_input", "comfy-scaled-fp8"
        for k in infos:
            if k.endswith(".scale_weight"):
                layer = k.removesuffix(".scale_weight")
                w = infos.get(f"{layer}.weight")
                e5m2 = w is not None and w.dtype == torch.float8_e5m2
                named.append((layer, k, "float8_e5m2" if e5m2 else "float8_e4m3fn"))
    else:
        input_suffix, kind = ".input_scale", "comfy-quant"
        confs = _comfy_quant_layers(ck) or {}
        prefix = _common_prefix(infos, confs)
        for layer, conf in sorted(confs.items()):
            fmt = conf.get("format")
            if fmt in COMFY_QUANT_LATER:
                raise UnsupportedFormatError(
                    f"{ck.path}: ComfyUI quantization format {fmt!r} (layer {layer[:80]}) is not supported yet",
                    hint=f"weightsmith reads {', '.join(COMFY_QUANT_FORMATS)}; use the unquantized checkpoint",
                )
            if fmt not in COMFY_QUANT_FORMATS:
                raise UnsupportedFormatError(
                    f"{ck.path}: unknown ComfyUI quantization format {str(fmt)[:40]!r} (layer {layer[:80]})",
                    hint=f"weightsmith reads {', '.join(COMFY_QUANT_FORMATS)}; use the unquantized checkpoint",
                )
            named.append((prefix + layer, f"{prefix}{layer}.weight_scale", fmt))
            if not conf.get("full_precision_matrix_mult") and fmt in STATIC_INPUT:
                static.add(prefix + layer)
        hidden |= {k for k in infos if k.endswith(COMFY_QUANT_SUFFIX)}
    shapes = _recorded_shapes(ck)
    layers: dict[str, _Layer] = {}
    for layer, s, fmt in named:
        w = f"{layer}.weight"
        if w not in infos or s not in infos:
            raise UnsupportedFormatError(
                f"{ck.path}: ComfyUI layer {layer[:80]} ({fmt}) lacks {w if w not in infos else s}",
                hint=_BROKEN_COMFY,
            )
        _check_weight(ck, w, fmt)
        lay = _microscaled(ck, layer, fmt, shapes) if fmt in MICROSCALED else _per_tensor(ck, w, s, fmt)
        if layer in static and f"{layer}{input_suffix}" in infos:
            lay = replace(lay, input_scale=_input_scale(ck, f"{layer}{input_suffix}"))
        layers[w] = lay
        hidden.add(s)
        hidden |= {k for k in (lay.global_scale, f"{layer}{input_suffix}") if k is not None and k in infos}
    return DequantizingView(ck, kind, layers, hidden)


def _input_scale(ck: Checkpoint, key: str) -> str:
    """A static activation scale ComfyUI's fp8/nvfp4 matmul divides inputs by: one positive float."""
    info = ck.infos[key]
    ok = info.dtype.is_floating_point and math.prod(info.shape) == 1
    value = float(ck.get(key).reshape(())) if ok else 0.0
    if not (ok and math.isfinite(value) and value > 0):
        raise UnsupportedFormatError(
            f"{ck.path}: {key} is {dtype_name(info.dtype)} {list(info.shape)}"
            + (f" = {value:g}" if ok else "")
            + ", not one positive finite float",
            hint=_BROKEN_COMFY,
        )
    return key


def _check_weight(ck: Checkpoint, w: str, fmt: str) -> None:
    stored, info = COMFY_QUANT_FORMATS[fmt][1], ck.infos[w]
    if info.dtype != stored or len(info.shape) != 2:
        raise UnsupportedFormatError(
            f"{ck.path}: {w} is {dtype_name(info.dtype)} {list(info.shape)}, "
            f"not the 2-D {dtype_name(stored)} weight {fmt} needs",
            hint="ComfyUI would value-cast it; re-export the file with matching dtypes",
        )


def _per_tensor(ck: Checkpoint, w: str, s: str, fmt: str) -> _Layer:
    """fp8 e4m3/e5m2 and int8 tensorwise: one float scale (int8 per row also dequantizes)."""
    infos = ck.infos
    scheme_name, stored = COMFY_QUANT_FORMATS[fmt]
    shape = tuple(infos[w].shape)
    sshape, sdtype = tuple(infos[s].shape), infos[s].dtype
    if not sdtype.is_floating_point:
        raise UnsupportedFormatError(
            f"{ck.path}: {s} is {dtype_name(sdtype)}, not a float scale", hint=_BROKEN_COMFY
        )
    if math.prod(sshape) == 1 and len(sshape) <= 2:
        scheme = LINEAR_SCHEMES[scheme_name]
    elif stored == torch.int8 and sshape == (shape[0], 1):  # per-row int8 also dequantizes
        scheme = LINEAR_SCHEMES["int8"]
    else:
        raise UnsupportedFormatError(
            f"{ck.path}: {s} has shape {list(sshape)}; {fmt} holds one scale per tensor",
            hint=_BROKEN_COMFY,
        )
    return _Layer(scheme, shape, w, s, float32_scale=True)


def _microscaled(ck: Checkpoint, layer: str, fmt: str, shapes: dict[str, list[int]]) -> _Layer:
    """nvfp4 / mxfp8: a padded weight, swizzled one-byte block scales, nvfp4's weight_scale_2.

    The file stores the padded weight; the unpadded shape is the model's (ComfyUI takes it from
    the layer). Here it comes from weightsmith's record when the file has one, else the rows from
    the layer's bias and the columns as stored (unpadded in every released Wan size)."""
    infos, w, s = ck.infos, f"{layer}.weight", f"{layer}.weight_scale"
    nvfp4 = fmt == "nvfp4"
    block = NVFP4_BLOCK if nvfp4 else MX_BLOCK
    rows, cols = infos[w].shape[0], infos[w].shape[1] * (2 if nvfp4 else 1)
    bias = infos.get(f"{layer}.bias")
    rec = shapes.get(w)
    shape = (int(rec[0]), int(rec[1])) if rec else (bias.shape[0] if bias is not None else rows, cols)
    problem = None
    if rows % block or cols % block:
        problem = f"{w} is {rows}x{cols} (stored), not padded to multiples of {block}"
    elif not (
        0 < shape[0] <= rows and rows - shape[0] < block and 0 < shape[1] <= cols and cols - shape[1] < block
    ):
        problem = f"{w} of {rows}x{cols} (stored) cannot hold a {shape[0]}x{shape[1]} weight"
    elif infos[s].dtype.itemsize != 1 or len(infos[s].shape) != 2:
        problem = f"{s} is {dtype_name(infos[s].dtype)} {list(infos[s].shape)}, not 2-D one-byte block scales"
    elif math.prod(infos[s].shape) != roundup(rows, 128) * roundup(cols // block, 4):
        problem = (
            f"{s} has {math.prod(infos[s].shape)} block scales; {rows}x{cols} needs "
            f"{roundup(rows, 128)}x{roundup(cols // block, 4)} (padded, 128x4-swizzled)"
        )
    gs = f"{layer}.weight_scale_2"
    if problem is None and nvfp4:
        g = infos.get(gs)
        if g is None or not g.dtype.is_floating_point or math.prod(g.shape) != 1:
            problem = f"{gs} is missing or not one float"
    if problem is not None:
        raise UnsupportedFormatError(f"{ck.path}: {fmt} layer {layer[:80]}: {problem}", hint=_BROKEN_COMFY)
    scheme = LINEAR_SCHEMES[COMFY_QUANT_FORMATS[fmt][0]]
    return _Layer(scheme, shape, w, s, global_scale=gs if nvfp4 else None, layout="comfy")


def _recorded_shapes(ck: Checkpoint) -> dict[str, list[int]]:
    """weightsmith's record of padded layers' true shapes (``weightsmith.shapes``), if any."""
    raw = ck.metadata.get(SHAPES_KEY)
    if raw is None:
        return {}
    doc = parse_json(raw, f"{ck.path}: {SHAPES_KEY}", error=UnsupportedFormatError, hint=None)
    ok = isinstance(doc, dict) and all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) for n in v) for v in doc.values()
    )
    if not ok:
        raise UnsupportedFormatError(
            f"{ck.path}: {SHAPES_KEY} is not a table of [rows, columns]", hint=_BROKEN_COMFY
        )
    return doc  # type: ignore[return-value]


def _common_prefix(infos: dict[str, TensorInfo], confs: dict[str, Any]) -> str:
    """comfy_quant metadata may name layers without the file's ``model.diffusion_model.`` prefix."""
    for layer in confs:
        if f"{layer}.weight" in infos:
            return ""
        for k in infos:
            if k.endswith(f".{layer}.weight") or k == f"{layer}.weight":
                return k[: -len(f"{layer}.weight")]
    return ""
