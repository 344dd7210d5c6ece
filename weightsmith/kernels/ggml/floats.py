"""The unquantized ggml types: F32, F16 and BF16 (block size 1).

Each converts straight into the output rows (a typed view of the uint8 buffer), so storing a
tensor costs one pass.
"""

from __future__ import annotations

import math

import gguf
import torch

from .common import F32
from .types import GGMLKernel, register

T = gguf.GGMLQuantizationType


class _FloatKernel(GGMLKernel):
    """Block size 1: the stored row is the values in ``dtype``, little-endian."""

    dtype: torch.dtype
    uses_imatrix = False
    needs_finite = False
    chunk_elems = 1 << 22

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty((x.shape[0], x.shape[1] * cls.type_size), dtype=torch.uint8, device=x.device)
        cls.quantize_into(x, imatrix, out)
        return out

    @classmethod
    def quantize_into(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        out.view(cls.dtype).copy_(x)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        return data.contiguous().view(cls.dtype).to(F32)


@register
class F32Kernel(_FloatKernel):
    qtype = T.F32
    dtype = torch.float32

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        return data.contiguous().view(F32).clone()


@register
class F16Kernel(_FloatKernel):
    """Round to nearest even, like GGML_FP32_TO_FP16 and numpy's ``astype(float16)``."""

    qtype = T.F16
    dtype = torch.float16


@register
class BF16Kernel(_FloatKernel):
    """ggml_compute_fp32_to_bf16: round to nearest even on the upper 16 bits, NaN -> quiet NaN.

    torch's cast rounds the same way (subnormals included) but makes every NaN 0xFFFF, where ggml
    keeps sign and payload and sets the quiet bit; NaNs are redone afterwards.
    """

    qtype = T.BF16
    dtype = torch.bfloat16

    @classmethod
    def quantize_into(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        out.view(torch.bfloat16).copy_(x)
        if math.isfinite(float(x.sum())):  # one cheap pass rules out NaN in the common case
            return
        nan = torch.isnan(x)
        if bool(nan.any()):
            o = out.view(torch.int16)
            o[nan] = ((x.contiguous().view(torch.int32)[nan] >> 16) | 64).to(torch.int16)
