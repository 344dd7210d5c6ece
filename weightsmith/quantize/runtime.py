"""Run INT8/FP8/INT4 artifacts: load a compressed-tensors folder or a ComfyUI fp8 file into the
family's diffusers class, and dequantize any of them back into a plain checkpoint.

Two paths compute each quantized Linear:

* reference (``QuantLinear``): the stored numbers stay as they are (int4 packed in int32 words,
  int8, fp8) and are dequantized at every forward with the same function ``convert`` uses, on
  any device; optional W8A8 emulates dynamic per-token activation quantization in float;
* torchao: each weight becomes a torchao quantized tensor *built from our stored integers and
  scales* (``Int8Tensor`` for int8 per channel, ``Float8Tensor`` for fp8, ``IntxUnpackedToInt8Tensor``
  for int4 and the other integer layouts, which runs on CPU too); with ``activations`` the int8
  and fp8 tensors quantize activations per token at run time (int8 ``_int_mm``, fp8
  ``_scaled_mm``). Nothing is re-quantized from float: in float32 their ``dequantize()`` equals
  the reference weight bit for bit.

``backend="auto"`` takes torchao where it is installed and runs the layout on the device, else
the reference path. Importing this module is cheap: torchao is imported only when used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weightsmith.convert.ops import Rename
from weightsmith.errors import ConversionError, UsageError, WeightsmithError
from weightsmith.io import Checkpoint, PipelineCheckpoint, open_checkpoint, open_single
from weightsmith.quantize.linear_formats import (
    ACTIVATIONS,
    DequantizingView,
    ct_config,
    open_view,
    quantized_kind,
)
from weightsmith.quantize.linear_schemes import LinearScheme, QuantizedWeight, dequantize

BACKENDS = ("auto", "reference", "torchao")


# ---------------------------------------------------------------------------------------------
# Reference path


def quantize_activations(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Dynamic per-token activation quantization, returned dequantized (float32).

    Mirrors torchao's conventions so both paths agree: int8 symmetric with scale
    absmax / 127.5 over [-128, 127]; fp8 e4m3 with scale absmax / 448."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    if kind == "int8":
        scale = (amax / 127.5).clamp(min=torch.finfo(torch.float32).eps)
        return torch.clamp(torch.round(xf * (1.0 / scale)), -128, 127) * scale
    fmax = float(torch.finfo(torch.float8_e4m3fn).max)
    scale = (amax / fmax).clamp(min=torch.finfo(torch.float32).tiny)
    return (xf / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn).float() * scale


class QuantLinear(nn.Module):
    """A Linear layer whose weight stays in its stored quantized form, dequantized per forward."""

    def __init__(
        self,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype = torch.float32,
        activations: str | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.scheme: LinearScheme = qw.scheme
        self.packed_bits = qw.packed_bits
        self.register_buffer("qdata", qw.data)
        self.register_buffer("scale", qw.scale)
        self.register_buffer("zero_point", qw.zero_point)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.compute_dtype = compute_dtype
        self.activations = activations

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.scheme,
            self.qdata,
            self.scale,
            self.zero_point,
            (self.out_features, self.in_features),
            self.packed_bits,
        )

    def dequantized_weight(self) -> torch.Tensor:
        qw = self.quantized_weight()
        return dequantize(qw.values(), qw.scale, qw.zero_point, qw.scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        w = self.dequantized_weight().to(dtype)
        xin = x.to(dtype)
        if self.activations:
            xin = quantize_activations(xin, self.activations).to(dtype)
        b = self.bias.to(dtype) if self.bias is not None else None
        return F.linear(xin, w, b).to(x.dtype)

    def extra_repr(self) -> str:
        acts = f", activations={self.activations}" if self.activations else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.name}{acts}"


# ---------------------------------------------------------------------------------------------
# torchao path


def torchao_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def torchao_unsupported(
    scheme: LinearScheme, activations: str | None, device: torch.device, compute_dtype: torch.dtype
) -> str | None:
    """Why torchao cannot run this layout here (None when it can)."""
    if not torchao_available():
        return "torchao is not installed"
    if activations == "int8" and not (
        scheme.kind == "int" and scheme.bits == 8 and scheme.granularity == "channel"
    ):
        return "int8 activations need int8 per-channel weights"
    if activations == "fp8":
        if device.type == "cuda":
            if torch.cuda.get_device_capability(device) < (8, 9):
                return "fp8 matmuls need a GPU of compute capability 8.9 or newer"
            if compute_dtype != torch.bfloat16:
                return (
                    "torchao's row-wise fp8 matmul on CUDA computes in bfloat16 (pass dtype=torch.bfloat16)"
                )
        elif device.type != "cpu":
            return f"no fp8 matmul on {device.type}"
    if scheme.kind == "float" and device.type not in ("cpu", "cuda"):
        return f"no float8 tensors on {device.type}"
    return None


def torchao_weight(
    qw: QuantizedWeight, compute_dtype: torch.dtype, activations: str | None = None
) -> torch.Tensor:
    """A torchao quantized tensor holding exactly ``qw``'s integers (or fp8 values) and scales."""
    s = qw.scheme
    out, inn = qw.shape
    if s.kind == "float":
        from torchao.float8.inference import Float8MMConfig
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quantize_.workflows.float8.float8_tensor import (
            Float8Tensor,
            QuantizeTensorToFloat8Kwargs,
        )

        # One scale per row (a per-tensor scale repeated): the same weight, and the layout
        # torchao's row-wise matmul with per-token activations takes.
        scale = qw.scale.float().reshape(-1, 1).expand(out, 1).contiguous()
        act = QuantizeTensorToFloat8Kwargs(granularity=PerRow()) if activations == "fp8" else None
        return Float8Tensor(
            qw.data,
            scale,
            block_size=[1, inn],
            mm_config=Float8MMConfig(use_fast_accum=True),
            act_quant_kwargs=act,
            dtype=compute_dtype,
        )
    q = qw.values()
    if s.bits == 8 and s.granularity == "channel" and s.symmetric:
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import (
            Int8Tensor,
            QuantizeTensorToInt8Kwargs,
        )

        act = QuantizeTensorToInt8Kwargs(granularity=PerRow()) if activations == "int8" else None
        return Int8Tensor(q, qw.scale.reshape(out, 1), [1, inn], compute_dtype, act_quant_kwargs=act)
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
    )

    block = {"group": [1, s.group_size], "channel": [1, inn], "tensor": [out, inn]}[s.granularity]
    nblocks = (out // block[0], inn // block[1])
    scale = qw.scale.reshape(nblocks)
    zp = (
        qw.zero_point.reshape(nblocks)
        if qw.zero_point is not None
        else torch.zeros_like(scale, dtype=torch.int8)
    )
    return IntxUnpackedToInt8Tensor(q, scale, zp, getattr(torch, f"int{s.bits}"), block, compute_dtype, None)


def _torchao_linear(
    qw: QuantizedWeight, bias: torch.Tensor | None, compute_dtype: torch.dtype, activations: str | None
) -> nn.Linear:
    out, inn = qw.shape
    lin = nn.Linear(inn, out, bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(torchao_weight(qw, compute_dtype, activations), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(compute_dtype), requires_grad=False)
    return lin


# ---------------------------------------------------------------------------------------------
# Loading


def _check_activations(scheme: LinearScheme, activations: str | None) -> None:
    if activations is None:
        return
    if activations not in ACTIVATIONS:
        raise UsageError(f"unknown activations {activations!r}", hint="choose int8, fp8 or none")
    if (activations == "int8" and not (scheme.kind == "int" and scheme.bits == 8)) or (
        activations == "fp8" and scheme.fp8_dtype != torch.float8_e4m3fn
    ):
        raise UsageError(
            f"{activations} activations do not go with {scheme.name} weights",
            hint="int8 activations need int8 weights, fp8 activations e4m3 fp8 weights",
        )


def _merge_config(ck: Checkpoint, config: dict[str, Any] | None) -> None:
    """A caller's config replaces the Diffusers part, never the folder's quantization_config."""
    own = dict(ck.config or {})
    if not own.get("quantization_config") and ck.path.is_dir() and (ck.path / "config.json").is_file():
        from weightsmith.io.structured import read_json_file

        own = read_json_file(ck.path / "config.json", hint="fix or re-export the folder's config.json")
        if not isinstance(own, dict):
            own = {}
    if config is not None:
        qc = own.get("quantization_config")
        own = dict(config)
        if qc is not None and "quantization_config" not in own:
            own["quantization_config"] = qc
    ck.config = own or None


def _open(path: str | Path, config: dict[str, Any] | None) -> DequantizingView:
    ck = open_single(path)
    _merge_config(ck, config)
    view = open_view(ck)
    if view is None:
        ck.close()
        raise UsageError(
            f"{path} is not a compressed-tensors folder or a ComfyUI fp8 file",
            hint="load it with weightsmith.load.load_model",
        )
    return view


def load_quantized(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: dict[str, Any] | None = None,
    family: str | None = None,
    backend: str = "auto",
    activations: str | None = None,
) -> nn.Module:
    """The family's diffusers model with this artifact's quantized Linear layers kept quantized.

    ``dtype`` is the compute dtype of quantized layers (default: the model's recorded precision)
    and, when given, the dtype plain weights are cast to. ``activations``: None follows the artifact (W8A8 when it
    records dynamic activation quantization), ``"none"`` forces weight-only, ``"int8"``/``"fp8"``
    asks for W8A8. ``backend``: ``auto``, ``reference`` or ``torchao`` (see the module docstring).
    """
    from accelerate import init_empty_weights

    from weightsmith.convert.engine import make_plan, resolve_detection
    from weightsmith.convert.run import output_config
    from weightsmith.families import get_component

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", hint=f"choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device)
    view = _open(path, config)
    compute = dtype or view.logical_dtype
    try:
        acts = view.activations if activations is None else (None if activations == "none" else activations)
        det = resolve_detection(view, family)
        plan = make_plan(view, "diffusers", detection=det)
        cfg = {k: v for k, v in output_config(plan).items() if not k.startswith("_")}
        cls = get_component(det.family, det.component).model_class(det.variant)
        with init_empty_weights(include_buffers=False):
            model = cls(**cfg)
        floats: dict[str, torch.Tensor] = {}
        quantized: dict[str, QuantizedWeight] = {}
        for op in plan.ops:
            if not op.outputs:
                continue
            if isinstance(op, Rename) and view.is_quantized(op.src):
                quantized[op.dst] = view.quantized(op.src)
            else:  # plain tensors, or a quantized one a plan reshapes: dequantized here, once
                for name, t in zip(op.outputs, op.apply([view.get(k) for k in op.inputs])):
                    floats[name] = t
    finally:
        view.close()
    _install(model, floats, quantized, dev, dtype, compute, acts, backend)
    return model.to(dev).eval()


def _install(
    model: nn.Module,
    floats: dict[str, torch.Tensor],
    quantized: dict[str, QuantizedWeight],
    device: torch.device,
    dtype: torch.dtype | None,
    compute: torch.dtype,
    activations: str | None,
    backend: str,
) -> None:
    modules = dict(model.named_modules())
    for name, qw in quantized.items():
        mod_name = name.removesuffix(".weight")
        mod = modules.get(mod_name)
        if not (name.endswith(".weight") and isinstance(mod, nn.Linear) and len(qw.shape) == 2):
            floats[name] = qw.dequantize()  # a quantized tensor outside a Linear: plain from here on
            continue
        _check_activations(qw.scheme, activations)
        bias = floats.pop(f"{mod_name}.bias", None)
        bias = bias.to(device) if bias is not None else None
        qw = qw.to(device)
        why = torchao_unsupported(qw.scheme, activations, device, compute) if backend != "reference" else ""
        if backend == "torchao" and why:
            raise UsageError(
                f"torchao cannot run {qw.scheme.name} here: {why}", hint="use backend='reference'"
            )
        new: nn.Module
        if why is None:
            new = _torchao_linear(qw, bias, compute, activations)
        else:
            if qw.packed_bits == 8:  # same bytes unpacked: no unpacking per forward
                qw = QuantizedWeight(qw.scheme, qw.values(), qw.scale, qw.zero_point, qw.shape)
            new = QuantLinear(qw, bias, compute, activations)
        parent, _, child = mod_name.rpartition(".")
        setattr(modules[parent] if parent else model, child, new)
    expected = dict(model.state_dict(keep_vars=True))
    missing = [k for k, v in expected.items() if k not in floats and v.device.type == "meta"]
    unexpected = [k for k in floats if k not in expected]
    if missing or unexpected:
        raise ConversionError(
            f"quantized artifact does not fit {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}",
            hint="check that the artifact and its config belong together",
        )
    for k, v in floats.items():
        if dtype is not None and v.is_floating_point():
            floats[k] = v.to(dtype)
    model.load_state_dict(floats, strict=False, assign=True)


# ---------------------------------------------------------------------------------------------
# Dequantizing back to a plain checkpoint (the `convert` entry for quantized artifacts)


def quantized_artifact_kind(src: str | Path) -> str | None:
    """What kind of INT8/FP8/INT4 artifact ``src`` is (None for anything else, GGUF included:
    GGUF tensors are dequantized by its reader)."""
    try:
        ck = open_checkpoint(src)
    except (WeightsmithError, OSError):
        return None  # convert reports it
    try:
        if isinstance(ck, PipelineCheckpoint):
            return None
        _merge_config(ck, None)
        return quantized_kind(ck)
    finally:
        ck.close()


def plain_view(ck: Checkpoint) -> Checkpoint:
    """``ck`` as the plain checkpoint it encodes (quantized artifacts dequantize on read)."""
    view = open_view(ck)
    return view if view is not None else ck


def dequantize_to_plain(
    src: str | Path,
    dst: str | Path,
    *,
    to: str = "diffusers",
    dtype: str = "fp32",
    family: str | None = None,
    shard_size: str = "5GB",
    prefix: str = "",
    overwrite: bool = False,
    progress: bool = True,
    config: str | Path | None = None,
    loras: Sequence[tuple[str, float]] = (),
) -> Any:
    """Write a compressed-tensors or ComfyUI fp8 artifact as a plain checkpoint in layout ``to``.

    Each quantized weight is ``(q - zero_point) * scale`` computed as compressed-tensors does, then
    cast to ``dtype`` (``keep``: the model's recorded precision). LoRAs fuse in the Diffusers layout.
    """
    from weightsmith.convert.engine import make_plan, summary_lines
    from weightsmith.convert.run import LAYOUTS, ConvertResult, load_config, write_plan
    from weightsmith.io.writers import parse_size

    if to not in LAYOUTS:
        raise UsageError(f"unknown layout {to!r}", hint=f"choose one of {', '.join(LAYOUTS)}")
    if loras and to != "diffusers":
        raise UsageError(
            "LoRAs fuse into a dequantized artifact in the Diffusers layout",
            hint="convert with --to diffusers --lora ..., then convert that folder",
        )
    parse_size(shard_size)
    view = _open(src, load_config(config) if config is not None else None)
    try:
        plan = make_plan(view, to, family=family, dtype=dtype, prefix=prefix)
        tensors = None
        extra: list[str] = []
        if loras:
            from weightsmith.lora import fused_stream

            tensors = fused_stream(plan, list(loras), progress=progress)
            extra = list(tensors.lines)
        write_plan(
            plan, Path(dst), shard_size=shard_size, overwrite=overwrite, progress=progress, tensors=tensors
        )
        cast = (
            str(plan.cast).removeprefix("torch.")
            if plan.cast
            else str(view.logical_dtype).removeprefix("torch.")
        )
        lines = [
            *summary_lines(plan),
            f"  dequantized {len(view.layers)} {view.scheme_name} weights ({view.kind}) to {cast}",
            *extra,
        ]
    finally:
        view.close()
    return ConvertResult(Path(dst), lines)


def _register() -> None:
    from weightsmith.load import ArtifactLoader, register_loader

    def load(
        path: Path, *, device: Any, dtype: torch.dtype | None, config: Any, family: str | None
    ) -> nn.Module:
        return load_quantized(path, device=device, dtype=dtype, config=config, family=family)

    def claims(kinds: tuple[str, ...]) -> Any:
        def check(ck: Checkpoint) -> bool:
            if ct_config(ck) is None and "compressed-tensors" in kinds and ck.path.is_dir():
                _merge_config(ck, ck.config)
            return quantized_kind(ck) in kinds

        return check

    register_loader(ArtifactLoader("compressed-tensors", claims(("compressed-tensors",)), load))
    register_loader(ArtifactLoader("comfy-fp8", claims(("comfy-scaled-fp8", "comfy-quant")), load))


_register()
