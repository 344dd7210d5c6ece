"""Where INT8/FP8/INT4 weights are stored: the compressed-tensors layout and ComfyUI's scaled fp8,
written the way their own loaders read them, and read back (ours and other tools') as the plain
checkpoint they encode.

compressed-tensors (reference quantization-and-onnx.md section 2), per quantized Linear ``M``:

* ``pack-quantized`` (int weights, no activation quantization: int8 W8A16, int4 W4A16):
  ``M.weight_packed`` int32 (values + 2**(bits-1), LSB first, 32/bits per word), ``M.weight_scale``
  float32 (out, 1) or (out, in/group), ``M.weight_shape`` int64 (2,), and for zero points
  ``M.weight_zero_point`` packed the same way along the output dimension;
* ``naive-quantized`` (fp8 weight-only), ``int-quantized`` / ``float-quantized`` (W8A8 with
  dynamic per-token activations): ``M.weight`` int8 or float8_e4m3fn, ``M.weight_scale`` float32
  (out, 1) or (1,) per tensor;
* config.json carries ``quantization_config`` (quant_method ``compressed-tensors``, the format,
  one config group targeting ``Linear``, and an ``ignore`` list naming every module whose
  ``.weight`` is not quantized, so model-free tools never mistake a norm or conv for one).

ComfyUI scaled fp8 (reference section 3.1), per quantized Linear ``L`` in the original layout:
``L.weight`` fp8, ``L.scale_weight`` float32 scalar (shape ``()``), and one marker tensor
``scaled_fp8``: empty, of the fp8 dtype the weights use (ComfyUI reads the flavour from it; two
elements would ask for full-precision matmuls, so it has none).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from weightsmith.errors import UnsupportedFormatError, UsageError
from weightsmith.io.base import NAME_DTYPES, Checkpoint, TensorInfo
from weightsmith.quantize.linear_schemes import (
    LINEAR_SCHEMES,
    LinearScheme,
    QuantizedWeight,
    pack_int32,
    packed_cols,
    unpack_int32,
)

SpecT = tuple[str, tuple[int, ...], torch.dtype]

PACK = "pack-quantized"
NAIVE = "naive-quantized"
INT_Q = "int-quantized"
FLOAT_Q = "float-quantized"
CT_FORMATS = (PACK, NAIVE, INT_Q, FLOAT_Q)
# The compressed-tensors release whose on-disk layout this module writes and was tested against.
CT_LAYOUT_VERSION = "0.20.0"
COMFY_MARKER = "scaled_fp8"
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SOURCE_DTYPE_KEY = "weightsmith.source_dtype"
SCHEME_KEY = "weightsmith.scheme"
ACTIVATIONS = ("int8", "fp8")


# ---------------------------------------------------------------------------------------------
# compressed-tensors: writing


def ct_format(scheme: LinearScheme, activations: str | None) -> str:
    """The format name compressed-tensors itself infers for this scheme (its priority order)."""
    if activations is None:
        return PACK if scheme.kind == "int" else NAIVE
    return INT_Q if scheme.kind == "int" else FLOAT_Q


def check_activations(scheme: LinearScheme, activations: str | None, fmt: str) -> None:
    """W8A8 pairs int8 activations with int8 weights and fp8 activations with e4m3 weights."""
    if activations is None:
        return
    if activations not in ACTIVATIONS:
        raise UsageError(f"unknown --activations {activations!r}", hint="choose int8 or fp8")
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
    if scheme.kind != "float" or scheme.granularity != "tensor":
        raise UsageError(
            f"ComfyUI's scaled-fp8 layout holds one fp8 scale per tensor; {scheme.name} is not that",
            hint="use --scheme fp8-tensor or fp8-e5m2 with --format comfy",
        )
    return [(f"{layer}.weight", tuple(shape), scheme.fp8_dtype), (f"{layer}.scale_weight", (), torch.float32)]  # type: ignore[list-item]


def comfy_tensors(layer: str, qw: QuantizedWeight) -> list[tuple[str, torch.Tensor]]:
    return [(f"{layer}.weight", qw.data), (f"{layer}.scale_weight", qw.scale.reshape(()))]


def comfy_marker_spec(scheme: LinearScheme, prefix: str = "") -> tuple[SpecT, torch.Tensor]:
    dtype = scheme.fp8_dtype
    assert dtype is not None
    return (f"{prefix}{COMFY_MARKER}", (0,), dtype), torch.empty(0, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Reading: any of these artifacts, seen as the plain checkpoint it encodes


def ct_config(ck: Checkpoint) -> dict[str, Any] | None:
    """The compressed-tensors ``quantization_config`` of a checkpoint's config, if it has one."""
    cfg = ck.config or {}
    qc = cfg.get("quantization_config") or cfg.get("compression_config")
    if isinstance(qc, dict) and qc.get("quant_method", "compressed-tensors") == "compressed-tensors":
        return qc if "config_groups" in qc else None
    return None


def comfy_marker(ck: Checkpoint) -> str | None:
    for k in ck.infos:
        if k == COMFY_MARKER or k.endswith("." + COMFY_MARKER):
            return k
    return None


def _comfy_quant_layers(ck: Checkpoint) -> dict[str, dict[str, Any]] | None:
    raw = ck.metadata.get("_quantization_metadata")
    if raw is not None:
        from weightsmith.io.structured import parse_json

        doc = parse_json(raw, f"{ck.path}: _quantization_metadata", error=UnsupportedFormatError, hint=None)
        layers = doc.get("layers") if isinstance(doc, dict) else None
        if not isinstance(layers, dict):
            raise UnsupportedFormatError(f"{ck.path}: _quantization_metadata has no 'layers' table")
        bad = next((k for k, v in layers.items() if not isinstance(v, (str, dict))), None)
        if bad is not None:
            raise UnsupportedFormatError(
                f"{ck.path}: _quantization_metadata layer {bad[:80]!r} is not a format"
            )
        return {k: ({"format": v} if isinstance(v, str) else dict(v)) for k, v in layers.items()}
    tagged = [k for k in ck.infos if k.endswith(".comfy_quant")]
    if not tagged:
        return None
    out = {}
    for k in tagged:
        from weightsmith.io.structured import parse_json

        value = parse_json(
            bytes(ck.get(k).tolist()), f"{ck.path}: {k}", error=UnsupportedFormatError, hint=None
        )
        if not isinstance(value, dict):
            raise UnsupportedFormatError(f"{ck.path}: {k} is not a JSON object")
        out[k.removesuffix(".comfy_quant")] = value
    return out


def quantized_kind(ck: Checkpoint) -> str | None:
    """``compressed-tensors``, ``comfy-scaled-fp8``, ``comfy-quant`` or None (GGUF is read natively)."""
    if ct_config(ck) is not None:
        return "compressed-tensors"
    if comfy_marker(ck) is not None:
        return "comfy-scaled-fp8"
    if "_quantization_metadata" in ck.metadata or any(k.endswith(".comfy_quant") for k in ck.infos):
        return "comfy-quant"
    return None


@dataclass(frozen=True)
class _Layer:
    scheme: LinearScheme
    shape: tuple[int, ...]
    data: str
    scale: str
    zero_point: str | None = None
    packed_bits: int | None = None
    zp_packed: bool = False


def scheme_from_ct_args(w: dict[str, Any], where: str = "") -> LinearScheme:
    """Our scheme for a compressed-tensors ``weights`` QuantizationArgs (a registered one if equal)."""
    kind = str(w.get("type", "int")).lower()
    bits = int(w.get("num_bits", 8))
    group = w.get("group_size")
    strategy = w.get("strategy") or ("tensor" if group is None else "group" if group > 0 else "channel")
    sym = bool(w.get("symmetric", True))
    if strategy not in ("channel", "tensor", "group") or (kind == "int" and bits not in (4, 8)):
        raise UnsupportedFormatError(
            f"{where}: compressed-tensors {kind}{bits} with strategy {strategy!r} is not supported",
            hint="weightsmith reads int4/int8/fp8 weights per tensor, channel or group",
        )
    if kind == "float" and (bits != 8 or not sym):
        raise UnsupportedFormatError(f"{where}: compressed-tensors float{bits} weights are not supported")
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
    raise UnsupportedFormatError(f"no compressed-tensors config group targets {module!r}")


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
        cfg = {k: v for k, v in (inner.config or {}).items() if k not in ("quantization_config",)}
        super().__init__(
            inner.path,
            f"{inner.container} [{kind}]",
            metadata=inner.metadata,
            config=cfg or None,
            files=inner.files,
        )
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
        zp = None
        if lay.zero_point is not None:
            zp = self.inner.get(lay.zero_point)
            if lay.zp_packed:
                zp = unpack_int32(zp, lay.scheme.bits, lay.shape[0], dim=0)
        return QuantizedWeight(lay.scheme, self.inner.get(lay.data), scale, zp, lay.shape, lay.packed_bits)  # type: ignore[arg-type]

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
        if f"{m}.weight_packed" in infos:
            shape_key = f"{m}.weight_shape"
            if shape_key not in infos:
                raise UnsupportedFormatError(f"{ck.path}: {m}.weight_packed has no {shape_key}")
            shape = tuple(int(v) for v in ck.get(shape_key).tolist())
            lay = _Layer(
                scheme, shape, f"{m}.weight_packed", f"{m}.weight_scale", zp, scheme.bits, zp is not None
            )
            hidden |= {f"{m}.weight_packed", shape_key}
        else:
            data = f"{m}.weight"
            if data not in infos:
                raise UnsupportedFormatError(f"{ck.path}: {m}.weight_scale has no {data} beside it")
            lay = _Layer(scheme, tuple(infos[data].shape), data, f"{m}.weight_scale", zp)
        if scheme.granularity == "group" and lay.shape[-1] % (scheme.group_size or 1):
            raise UnsupportedFormatError(f"{ck.path}: {m} row {lay.shape[-1]} does not split into groups")
        hidden |= {f"{m}.weight_scale"} | ({zp} if zp else set())
        layers[f"{m}.weight"] = lay
    for k in infos:  # static activation scales etc. belong to the format, not the model
        if k.endswith((".input_scale", ".input_zero_point", ".input_global_scale", ".output_scale")):
            hidden.add(k)
    act = next(iter(acts)) if len(acts) == 1 else None
    return DequantizingView(ck, "compressed-tensors", layers, hidden, act)


def _comfy_view(ck: Checkpoint) -> DequantizingView:
    infos = ck.infos
    layers: dict[str, _Layer] = {}
    hidden: set[str] = set()
    marker = comfy_marker(ck)
    if marker is not None:
        hidden.add(marker)
        scale_suffix, input_suffix, kind = ".scale_weight", ".scale_input", "comfy-scaled-fp8"
        names = [k.removesuffix(scale_suffix) for k in infos if k.endswith(scale_suffix)]
    else:
        scale_suffix, input_suffix, kind = ".weight_scale", ".input_scale", "comfy-quant"
        confs = _comfy_quant_layers(ck) or {}
        prefix = _common_prefix(infos, confs)
        names = []
        for layer, conf in sorted(confs.items()):
            fmt = conf.get("format")
            if fmt not in ("float8_e4m3fn", "float8_e5m2"):
                raise UnsupportedFormatError(
                    f"{ck.path}: ComfyUI quantization format {fmt!r} (layer {layer}) is not supported",
                    hint="weightsmith reads ComfyUI's float8_e4m3fn and float8_e5m2 layers",
                )
            names.append(prefix + layer)
        hidden |= {k for k in infos if k.endswith(".comfy_quant")}
    for layer in names:
        w, s = f"{layer}.weight", f"{layer}{scale_suffix}"
        if w not in infos or s not in infos or infos[w].dtype not in FP8_DTYPES:
            raise UnsupportedFormatError(f"{ck.path}: {s} has no fp8 {w} beside it")
        scheme = LINEAR_SCHEMES["fp8-tensor" if infos[w].dtype == torch.float8_e4m3fn else "fp8-e5m2"]
        layers[w] = _Layer(scheme, tuple(infos[w].shape), w, s)
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
    """The dequantizing view of a compressed-tensors or ComfyUI fp8 artifact, or None for others."""
    if isinstance(ck, DequantizingView):
        return ck
    kind = quantized_kind(ck)
    if kind == "compressed-tensors":
        qc = ct_config(ck)
        assert qc is not None
        return _ct_view(ck, qc)
    if kind in ("comfy-scaled-fp8", "comfy-quant"):
        return _comfy_view(ck)
    return None
