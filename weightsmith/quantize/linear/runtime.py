"""Run INT8/FP8/INT4 artifacts: the Linear layers that keep a compressed-tensors or ComfyUI
(comfy_quant or scaled fp8) artifact's weights quantized inside the family's diffusers class (``weightsmith.load`` builds the
model; ``LinearWeights`` tells it which weights stay quantized and how).

Two paths compute each quantized Linear:

* reference (``QuantLinear``): the stored numbers stay as they are (int4 packed in int32 words,
  int8, fp8) and are dequantized at every forward with the same function ``convert`` uses, on
  any device; optional W8A8 emulates dynamic per-token activation quantization in float;
  nvfp4/mxfp4 keep their packed uint8 codes and block scales; nvfp4 W4A4 (``activations="nvfp4"``)
  fake-quantizes each input to NVFP4 under the layer's calibrated ``input_global_scale`` exactly as
  compressed-tensors' NVFP4 scheme does (``kernels.microscale.fake_quantize_nvfp4``), so the
  reference output is what a W4A4 kernel computes, up to the matmul's float sums;
* torchao: each weight becomes a torchao quantized tensor *built from our stored integers and
  scales* (``Int8Tensor`` for int8 per channel, ``Float8Tensor`` for fp8, ``IntxUnpackedToInt8Tensor``
  for int4 and the other integer layouts, which runs on CPU too); with ``activations`` the int8
  and fp8 tensors quantize activations per token at run time (int8 ``_int_mm``, fp8
  ``_scaled_mm``). Nothing is re-quantized from float: in float32 their ``dequantize()`` equals
  the reference weight bit for bit. nvfp4 becomes torchao's ``NVFP4Tensor`` (our packed codes and
  e4m3 scales as they are, ``per_tensor_scale = 1 / weight_global_scale``, and for W4A4
  ``act_per_tensor_scale = 1 / input_global_scale``) only on CUDA GPUs of compute capability 10.0
  or newer, where its fp4 ``_scaled_mm`` runs; torchao multiplies the two scales in the other
  order, so its weights equal ours to a float32 ulp, not bit for bit. mxfp4 stays on the
  reference path everywhere: torchao's ``MXTensor`` has no weight-only linear (it would quantize
  the activations to MX as well, which an MXFP4A16 file does not ask for).

ComfyUI files: a layer with an ``input_scale`` (fp8 or nvfp4, no ``full_precision_matrix_mult``)
has its inputs quantized with that static scale before the matmul, as ComfyUI's fp8/nvfp4 ops do
on GPUs that have those matmuls (``microscale_comfy.fake_quantize_comfy_input``, equal to
comfy-kitchen's quantize-dequantize bit for bit); fp8 ones take the reference path, nvfp4 ones
torchao's ``NVFP4Tensor`` where it runs (``runtime_fp4``: ComfyUI's storage in row-major form,
``input_scale`` as its activation scale); ``activations="none"`` (or any explicit activations)
replaces it. ComfyUI mxfp8 stays on the reference path (torchao's MX linear has no weight-only mode).

``backend="auto"`` takes torchao where it is installed and runs the layout on the device, else
the reference path. Importing this module is cheap: torchao is imported only when used.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from weightsmith.errors import UsageError
from weightsmith.families.ops import Op, Rename
from weightsmith.io.quantized import DequantizingView
from weightsmith.kernels.linear import ACTIVATIONS, LinearScheme, QuantizedWeight
from weightsmith.kernels.microscale import fake_quantize_nvfp4
from weightsmith.kernels.microscale_comfy import fake_quantize_comfy_input
from weightsmith.quantize.linear.runtime_fp4 import fp4_torchao_unsupported, nvfp4_torchao_weight

BACKENDS = ("auto", "reference", "torchao")


# ---------------------------------------------------------------------------------------------
# Reference path


def quantize_activations(
    x: torch.Tensor, kind: str, global_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Activation quantization, returned dequantized (float32).

    Mirrors torchao's conventions so both paths agree: int8 symmetric with scale
    absmax / 127.5 over [-128, 127]; fp8 e4m3 with scale absmax / 448 (both per token);
    nvfp4: compressed-tensors' NVFP4 activations under the static ``global_scale``."""
    if kind == "nvfp4":
        if global_scale is None:
            raise UsageError(
                "nvfp4 activations need the layer's input_global_scale",
                hint="quantize with --activations nvfp4 --calibrate, or load weight-only (activations='none')",
            )
        return fake_quantize_nvfp4(x, global_scale)
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    if kind == "int8":
        scale = (amax / 127.5).clamp(min=torch.finfo(torch.float32).eps)
        return torch.clamp(torch.round(xf * (1.0 / scale)), -128, 127) * scale
    fmax = float(torch.finfo(torch.float8_e4m3fn).max)
    scale = (amax / fmax).clamp(min=torch.finfo(torch.float32).tiny)
    return (xf / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn).float() * scale


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype.is_floating_point and t.element_size() == 1 else t


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
        self.layout = qw.layout
        # One-byte float buffers (fp8 values, e4m3 block scales) are held as uint8 views, so that a
        # model-wide ``.to(dtype)`` cannot value-cast the stored numbers.
        self.qdata_dtype, self.scale_dtype = qw.data.dtype, qw.scale.dtype
        self.register_buffer("qdata", _as_bytes(qw.data))
        self.register_buffer("scale", _as_bytes(qw.scale))
        self.register_buffer("zero_point", qw.zero_point)
        self.register_buffer("global_scale", qw.global_scale)
        self.register_buffer("input_global_scale", qw.input_global_scale)
        self.register_buffer("input_scale", qw.input_scale)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.compute_dtype = compute_dtype
        self.activations = activations

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.scheme,
            self.qdata.view(self.qdata_dtype),
            self.scale.view(self.scale_dtype),
            self.zero_point,
            (self.out_features, self.in_features),
            self.packed_bits,
            self.global_scale,
            self.input_global_scale,
            self.layout,
            self.input_scale,
        )

    def dequantized_weight(self) -> torch.Tensor:
        return self.quantized_weight().dequantize()

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the compute dtype. Model code reads it: transformers' T5 FFN
        casts its input to ``wo.weight.dtype`` every forward (one more dequantization there)."""
        return self.dequantized_weight().to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        w = self.dequantized_weight().to(dtype)
        xin = x.to(dtype)
        if self.activations:
            xin = quantize_activations(xin, self.activations, self.input_global_scale).to(dtype)
        elif self.input_scale is not None:  # ComfyUI's static input quantization
            kind = "nvfp4" if self.scheme.nvfp4 else self.qdata_dtype
            xin = fake_quantize_comfy_input(xin, self.input_scale, kind).to(dtype)
        b = self.bias.to(dtype) if self.bias is not None else None
        return F.linear(xin, w, b).to(x.dtype)

    def extra_repr(self) -> str:
        acts = f", activations={self.activations}" if self.activations else ""
        if not acts and self.input_scale is not None:
            acts = ", activations=static input_scale"
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.name}{acts}"


# ---------------------------------------------------------------------------------------------
# torchao path


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def torchao_unsupported(
    scheme: LinearScheme,
    activations: str | None,
    device: torch.device,
    compute_dtype: torch.dtype,
    shape: tuple[int, int] | None = None,
    layout: str = "compressed-tensors",
) -> str | None:
    """Why torchao cannot run this layout here (None when it can)."""
    if layout == "comfy" and not scheme.nvfp4:  # ComfyUI's mxfp8
        return (
            "mxfp8 runs on the reference path: torchao's MX linear also quantizes activations to MX, "
            "which a full-precision-matmul layer does not ask for"
        )
    if scheme.kind == "fp4":
        return fp4_torchao_unsupported(scheme, device, shape, compute_dtype)
    if scheme.microscaled:
        return microscaled_unsupported(device)
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


def microscaled_unsupported(device: torch.device) -> str:
    """Why nvfp4/mxfp4/mxfp8 weights take the reference path on ``device``.

    torchao's MX/NVFP4 tensors only pay off with the block-scaled matmuls of compute capability
    10.0 GPUs (Blackwell); everywhere else they dequantize like the reference path does."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (10, 0):
        return "microscaled weights need a GPU of compute capability 10.0+ for torchao's MX/NVFP4 matmuls"
    return (
        "torchao's MX/NVFP4 tensors are not wired to stored weights yet: the reference path dequantizes them"
    )


def torchao_weight(
    qw: QuantizedWeight, compute_dtype: torch.dtype, activations: str | None = None
) -> torch.Tensor:
    """A torchao quantized tensor holding exactly ``qw``'s integers (or fp8/fp4 values) and scales."""
    s = qw.scheme
    out, inn = qw.shape
    if s.kind == "fp4":
        return nvfp4_torchao_weight(qw, compute_dtype, activations)
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
# What ``weightsmith.load.build_model`` needs to keep an artifact's Linear weights quantized


def check_activations(scheme: LinearScheme, activations: str | None) -> None:
    if activations is None:
        return
    if activations not in ACTIVATIONS:
        raise UsageError(f"unknown activations {activations!r}", hint="choose int8, fp8, nvfp4 or none")
    if (
        (activations == "int8" and not (scheme.kind == "int" and scheme.bits == 8))
        or (activations == "fp8" and scheme.fp8_dtype != torch.float8_e4m3fn)
        or (activations == "nvfp4" and not scheme.nvfp4)
    ):
        raise UsageError(
            f"{activations} activations do not go with {scheme.name} weights",
            hint="int8 activations need int8 weights, fp8 activations e4m3 fp8 weights, nvfp4 nvfp4",
        )


class LinearWeights:
    """How ``build_model`` loads a dequantizing view: weights the plan only renames stay in their
    stored form (``view.quantized``) inside ``QuantLinear`` or torchao Linear layers; anything a
    plan reshapes, and quantized tensors outside a Linear, are dequantized once at load.

    ``dtype``: compute dtype of quantized layers (default: the model's recorded precision) and,
    when given, the dtype plain weights are cast to. ``activations``: None follows the artifact,
    ``"none"`` forces weight-only, ``"int8"``/``"fp8"`` asks for W8A8, ``"nvfp4"`` for W4A4 (the
    artifact must hold calibrated ``input_global_scale``s). ``backend``: ``auto``,
    ``reference`` or ``torchao`` (see the module docstring).
    """

    label = "quantized artifact"
    hint = "check that the artifact and its config belong together"

    def __init__(
        self,
        view: DequantizingView,
        device: torch.device,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        activations: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}", hint=f"choose one of {', '.join(BACKENDS)}")
        self.view, self.device, self.dtype, self.backend = view, device, dtype, backend
        self.compute = dtype or view.logical_dtype
        self.activations = (
            view.activations if activations is None else (None if activations == "none" else activations)
        )
        # Following the artifact: a ComfyUI file's input_scale layers quantize their inputs.
        self.static_inputs = activations is None

    def take(self, op: Op) -> dict[str, QuantizedWeight] | None:
        if isinstance(op, Rename) and self.view.is_quantized(op.src):
            return {op.dst: self.view.quantized(op.src)}
        return None

    def module(
        self, name: str, mod: nn.Module, qw: QuantizedWeight, floats: dict[str, torch.Tensor]
    ) -> nn.Module | None:
        """The layer that replaces Linear ``mod`` (its bias taken from ``floats``), or None."""
        if not (name.endswith(".weight") and isinstance(mod, nn.Linear) and len(qw.shape) == 2):
            return None
        check_activations(qw.scheme, self.activations)
        if self.activations == "nvfp4" and qw.input_global_scale is None:
            raise UsageError(
                f"{name}: nvfp4 activations need the layer's calibrated input_global_scale; this artifact is weight-only",
                hint="load it weight-only (activations='none'), or quantize with --activations nvfp4 --calibrate",
            )
        bias = floats.pop(name.removesuffix(".weight") + ".bias", None)
        bias = bias.to(self.device) if bias is not None else None
        if qw.input_scale is not None and not self.static_inputs:
            qw = dataclasses.replace(qw, input_scale=None)  # activations asked for: they replace it
        qw = qw.to(self.device)
        why = (
            torchao_unsupported(qw.scheme, self.activations, self.device, self.compute, qw.shape, qw.layout)
            if self.backend != "reference"
            else ""
        )
        if why is None and qw.input_scale is not None and not qw.scheme.nvfp4:
            why = "ComfyUI's static fp8 input_scale is emulated on the reference path"
        if self.backend == "torchao" and why:
            raise UsageError(
                f"torchao cannot run {qw.scheme.name} here: {why}", hint="use backend='reference'"
            )
        if why is None:
            return _torchao_linear(qw, bias, self.compute, self.activations)
        if qw.packed_bits == 8:  # same bytes unpacked: no unpacking per forward
            qw = QuantizedWeight(qw.scheme, qw.values(), qw.scale, qw.zero_point, qw.shape)
        return QuantLinear(qw, bias, self.compute, self.activations)

    def dequantize(self, name: str, qw: QuantizedWeight, model: nn.Module) -> torch.Tensor:
        """A quantized tensor outside a Linear: plain from here on."""
        return qw.dequantize()

    def cast(self, v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return v.to(self.dtype) if self.dtype is not None and v.is_floating_point() else v
