"""The view every quantized artifact opens as: ``DequantizingView`` shows the plain checkpoint a
compressed-tensors folder or a ComfyUI file encodes, each quantized weight dequantized on read;
``_Layer`` says where one weight's stored numbers are. The formats' readers that build it live in
``weightsmith.io.quantized`` (compressed-tensors) and ``weightsmith.io.comfy_quant`` (ComfyUI)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from weightsmith.io.base import NAME_DTYPES, Checkpoint, TensorInfo
from weightsmith.io.quantized_kind import SOURCE_DTYPE_KEY
from weightsmith.kernels.linear import LinearScheme, QuantizedWeight, unpack_int32


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
    global_scale: str | None = None  # nvfp4's weight_global_scale (ComfyUI: weight_scale_2)
    layout: str = "compressed-tensors"  # or "comfy": ComfyUI's padded, swizzled nvfp4/mxfp8
    input_global_scale: str | None = None  # nvfp4 W4A4's calibrated input_global_scale
    input_scale: str | None = None  # ComfyUI's static activation scale (matmul quantizes inputs)


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
        gs, igs, ins = (
            self.inner.get(k) if k is not None else None
            for k in (lay.global_scale, lay.input_global_scale, lay.input_scale)
        )
        return QuantizedWeight(
            lay.scheme,
            self.inner.get(lay.data),
            scale,
            zp,
            lay.shape,
            lay.packed_bits,
            gs,
            igs,
            lay.layout,
            ins,
        )  # type: ignore[arg-type]

    def _read(self, name: str) -> torch.Tensor:
        if name in self.layers:
            return self.quantized(name).dequantize().to(self.logical_dtype)
        return self.inner.get(name)

    def close(self) -> None:
        self.inner.close()
