"""The unquantized ggml types: F32, F16 and BF16 (block size 1)."""

from __future__ import annotations

import math

import gguf
import torch

from .common import F32
from .types import GGMLKernel, register

T = gguf.GGMLQuantizationType


@register
class F32Kernel(GGMLKernel):
    qtype = T.F32
    uses_imatrix = False
    needs_finite = False
    chunk_elems = 1 << 24

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        return x.contiguous().view(torch.uint8)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        return data.contiguous().view(F32).clone()


@register
class F16Kernel(GGMLKernel):
    qtype = T.F16
    uses_imatrix = False
    needs_finite = False
    chunk_elems = 1 << 24

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        # round to nearest even, like GGML_FP32_TO_FP16 and numpy's astype(float16)
        return x.to(torch.float16).view(torch.uint8)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        return data.contiguous().view(torch.float16).to(F32)


@register
class BF16Kernel(GGMLKernel):
    qtype = T.BF16
    uses_imatrix = False
    needs_finite = False
    chunk_elems = 1 << 22

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        # ggml_compute_fp32_to_bf16: round to nearest even on the upper 16 bits (torch's cast does
        # the same, subnormals included), NaN -> quiet NaN keeping sign and payload (torch's cast
        # makes every NaN 0xFFFF, so NaNs are redone here)
        out = x.to(torch.bfloat16).view(torch.int16)
        if not math.isfinite(float(x.sum())):
            nan = torch.isnan(x)
            if bool(nan.any()):
                out = out.clone()
                out[nan] = ((x.contiguous().view(torch.int32)[nan] >> 16) | 64).to(torch.int16)
        return out.view(torch.uint8)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        return (data.contiguous().view(torch.int16).to(torch.int32) << 16).view(F32)
