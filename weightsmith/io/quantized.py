"""Reading INT8/FP8/INT4 artifacts: a compressed-tensors folder or a ComfyUI file (comfy_quant's
float8_e4m3fn / float8_e5m2 / int8_tensorwise layers, or legacy scaled fp8; ours and other
tools') opens as the plain checkpoint it encodes, each quantized weight dequantized on read, as
``GGUFCheckpoint`` does for GGUF. ComfyUI files follow its rules (reference comfy-quant.md):
``weight.to(float32) * weight_scale.to(float32)``; formats not read yet (mxfp8, nvfp4) are refused.
compressed-tensors' ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized`` weights dequantize to
float32 by ``weightsmith.kernels.microscale`` (exact: what compressed-tensors' bf16 decompression
rounds).

``open_checkpoint`` hands every component checkpoint to ``dequantizing_view``: an artifact of one
of these formats comes back as a ``DequantizingView`` (scales, zero points, shapes and markers
hidden; each quantized weight under its plain name, shape and the model's precision), anything
else as it was. ``DequantizingView.quantized(name)`` gives the stored numbers to loaders that
keep weights quantized. The layouts are described in ``weightsmith.quantize.linear.formats``,
which writes them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from weightsmith.errors import UnsupportedFormatError
from weightsmith.io.base import NAME_DTYPES, Checkpoint, TensorInfo, dtype_name
from weightsmith.io.quantized_kind import (
    COMFY_LAYERS_KEY,
    COMFY_QUANT_SUFFIX,
    SOURCE_DTYPE_KEY,
    comfy_marker,
    ct_config,
    quantized_kind,
)
from weightsmith.kernels.linear import LINEAR_SCHEMES, LinearScheme, QuantizedWeight, unpack_int32

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# ComfyUI's comfy_quant format names weightsmith reads, with the scheme and the stored weight
# dtype each implies (reference comfy-quant.md); ComfyUI value-casts a weight to that dtype.
COMFY_QUANT_FORMATS: dict[str, tuple[str, torch.dtype]] = {
    "float8_e4m3fn": ("fp8-tensor", torch.float8_e4m3fn),
    "float8_e5m2": ("fp8-e5m2", torch.float8_e5m2),
    "int8_tensorwise": ("int8-tensor", torch.int8),
}
# Registered in ComfyUI but not (yet) read here: refused by name, never loaded as raw values.
COMFY_QUANT_LATER = ("mxfp8", "nvfp4", "convrot_w4a4")
_COMFY_QUANT_MAX_BYTES = 1 << 16
_BROKEN_COMFY = (
    "the file's ComfyUI quantization metadata is broken; re-export it or use the unquantized checkpoint"
)


def _comfy_quant_layers(ck: Checkpoint) -> dict[str, dict[str, Any]] | None:
    raw = ck.metadata.get(COMFY_LAYERS_KEY)
    if raw is not None:
        from weightsmith.io.structured import parse_json

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
        from weightsmith.io.structured import parse_json

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


@dataclass(frozen=True)
class _Layer:
    scheme: LinearScheme
    shape: tuple[int, ...]
    data: str
    scale: str
    zero_point: str | None = None
    packed_bits: int | None = None
    zp_packed: bool = False
    float32_scale: bool = False  # ComfyUI casts a layer's scale to float32 before multiplying
    global_scale: str | None = None  # nvfp4's weight_global_scale


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


def _act_name(a: dict[str, Any] | None) -> str | None:
    if not a or not a.get("dynamic") or int(a.get("num_bits", 8)) != 8:
        return None
    return "int8" if str(a.get("type", "int")) == "int" else "fp8"


class DequantizingView(Checkpoint):
    """A quantized artifact seen as the plain checkpoint it encodes.

    The format's extra tensors (scales, zero points, shapes, markers) are hidden; each quantized
    weight appears under its plain name and shape and is dequantized when read, in the
    source model's precision (recorded at quantization, else the most common float dtype of the
    file's unquantized tensors). ``quantized(name)`` gives the stored numbers instead.
    """

    def __init__(
        self,
        inner: Checkpoint,
        kind: str,
        layers: dict[str, _Layer],
        hidden: set[str],
        activations: str | None = None,
        scheme_name: str | None = None,
    ) -> None:
        cfg = {k: v for k, v in (inner._config or {}).items() if k not in ("quantization_config",)}
        super().__init__(
            inner.path, f"{inner.container} [{kind}]", metadata=inner.metadata, files=inner.files
        )
        # Checked against the plain names and shapes on first use, like any config.
        self.set_config(cfg or None, inner._config_source)
        self.inner, self.kind, self.layers, self.hidden = inner, kind, layers, hidden
        self.activations = activations
        self.scheme_name = scheme_name or ",".join(sorted({lay.scheme.name for lay in layers.values()}))
        self.logical_dtype = self._logical_dtype()

    def _logical_dtype(self) -> torch.dtype:
        rec = self.inner.metadata.get(SOURCE_DTYPE_KEY)
        if rec in NAME_DTYPES and NAME_DTYPES[rec].is_floating_point:
            return NAME_DTYPES[rec]
        seen = Counter(
            i.dtype
            for k, i in self.inner.infos.items()
            if k not in self.hidden
            and k not in self.layers
            and i.dtype in (torch.float32, torch.float16, torch.bfloat16)
        )
        return seen.most_common(1)[0][0] if seen else torch.float32

    def _load_infos(self) -> dict[str, TensorInfo]:
        out = {k: i for k, i in self.inner.infos.items() if k not in self.hidden and k not in self.layers}
        size = torch.empty((), dtype=self.logical_dtype).element_size()
        for k, lay in self.layers.items():
            src = self.inner.infos[lay.data].source
            out[k] = TensorInfo(
                k, lay.shape, self.logical_dtype, lay.scheme.name, math.prod(lay.shape) * size, src
            )
        return dict(sorted(out.items()))

    def is_quantized(self, name: str) -> bool:
        return name in self.layers

    def quantized(self, name: str) -> QuantizedWeight:
        """The stored numbers of one quantized weight (packed int4 stays packed)."""
        lay = self.layers[name]
        scale = self.inner.get(lay.scale)
        if lay.float32_scale:
            scale = scale.to(torch.float32)
        zp = None
        if lay.zero_point is not None:
            zp = self.inner.get(lay.zero_point)
            if lay.zp_packed:
                zp = unpack_int32(zp, lay.scheme.bits, lay.shape[0], dim=0)
        gs = self.inner.get(lay.global_scale) if lay.global_scale is not None else None
        return QuantizedWeight(
            lay.scheme, self.inner.get(lay.data), scale, zp, lay.shape, lay.packed_bits, gs
        )  # type: ignore[arg-type]

    def _read(self, name: str) -> torch.Tensor:
        if name in self.layers:
            return self.quantized(name).dequantize().to(self.logical_dtype)
        return self.inner.get(name)

    def close(self) -> None:
        self.inner.close()


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
        acts.add(_act_name(g.get("input_activations")))
        zp = f"{m}.weight_zero_point" if f"{m}.weight_zero_point" in infos else None
        if scheme.kind == "fp4":
            lay = _fp4_layer(ck, m, scheme)
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


def _fp4_layer(ck: Checkpoint, m: str, scheme: LinearScheme) -> _Layer:
    """An nvfp4/mxfp4 layer: uint8 packed codes [out, in/2], block scales [out, in/block], nvfp4's global scale."""
    infos, block = ck.infos, scheme.group_size or 1
    packed, scale, gs = f"{m}.weight_packed", f"{m}.weight_scale", f"{m}.weight_global_scale"
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
    if problem is not None:
        raise UnsupportedFormatError(
            f"{ck.path}: {scheme.name} layer {m}: {problem}",
            hint="the file's compressed-tensors data is incomplete; re-export it or use the unquantized checkpoint",
        )
    return _Layer(scheme, shape, packed, scale, global_scale=gs if scheme.nvfp4 else None)  # type: ignore[arg-type]


def _comfy_view(ck: Checkpoint) -> DequantizingView:
    """A legacy scaled-fp8 file (marker tensor) or a comfy_quant file, read by ComfyUI's rules:
    weight.to(format's dtype).to(float32) * weight_scale.to(float32)."""
    infos = ck.infos
    hidden: set[str] = set()
    marker = comfy_marker(ck)
    named: list[tuple[str, str, str]] = []  # (layer, scale key, format)
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
                    hint="weightsmith reads float8_e4m3fn, float8_e5m2 and int8_tensorwise; "
                    "use the unquantized checkpoint",
                )
            if fmt not in COMFY_QUANT_FORMATS:
                raise UnsupportedFormatError(
                    f"{ck.path}: unknown ComfyUI quantization format {str(fmt)[:40]!r} (layer {layer[:80]})",
                    hint="weightsmith reads float8_e4m3fn, float8_e5m2 and int8_tensorwise; "
                    "use the unquantized checkpoint",
                )
            named.append((prefix + layer, f"{prefix}{layer}.weight_scale", fmt))
        hidden |= {k for k in infos if k.endswith(COMFY_QUANT_SUFFIX)}
    layers: dict[str, _Layer] = {}
    for layer, s, fmt in named:
        w = f"{layer}.weight"
        scheme_name, stored = COMFY_QUANT_FORMATS[fmt]
        if w not in infos or s not in infos:
            raise UnsupportedFormatError(
                f"{ck.path}: ComfyUI layer {layer[:80]} ({fmt}) lacks {w if w not in infos else s}",
                hint=_BROKEN_COMFY,
            )
        if infos[w].dtype != stored or len(infos[w].shape) != 2:
            raise UnsupportedFormatError(
                f"{ck.path}: {w} is {dtype_name(infos[w].dtype)} {list(infos[w].shape)}, "
                f"not the 2-D {dtype_name(stored)} weight {fmt} needs",
                hint="ComfyUI would value-cast it; re-export the file with matching dtypes",
            )
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
        layers[w] = _Layer(scheme, shape, w, s, float32_scale=True)
        hidden.add(s)
        if f"{layer}{input_suffix}" in infos:
            hidden.add(f"{layer}{input_suffix}")
    return DequantizingView(ck, kind, layers, hidden)


def _common_prefix(infos: dict[str, TensorInfo], confs: dict[str, Any]) -> str:
    """comfy_quant metadata may name layers without the file's ``model.diffusion_model.`` prefix."""
    for layer in confs:
        if f"{layer}.weight" in infos:
            return ""
        for k in infos:
            if k.endswith(f".{layer}.weight") or k == f"{layer}.weight":
                return k[: -len(f"{layer}.weight")]
    return ""


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
