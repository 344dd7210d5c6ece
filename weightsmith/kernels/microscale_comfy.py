"""NVFP4 and MXFP8 weights stored the way ComfyUI's loader reads them (reference comfy-quant.md).

The arithmetic is ``microscale``'s (comfy-kitchen's convention); this module only puts it in
ComfyUI's storage: the weight zero-padded to multiples of 16 (nvfp4) or 32 (mxfp8) in both
dimensions, nvfp4 codes two per byte with the even column in the high nibble, and the block
scales padded to (roundup(rows, 128), roundup(cols, 4)) in cuBLAS's 128x4 tile order
(``swizzle_128x4``). nvfp4 block scales are float8_e4m3fn, mxfp8's E8M0 exponents uint8 (ComfyUI's
GPU-path file reader has no F8_E8M0), nvfp4's ``weight_scale_2`` a float32 scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weightsmith.errors import QuantizationError
from weightsmith.kernels.microscale import (
    MX,
    MX_BLOCK,
    NVFP4,
    NVFP4_BLOCK,
    dequantize_mx,
    dequantize_nvfp4,
    quantize_mxfp8,
    quantize_nvfp4,
)
from weightsmith.kernels.microscale_layout import (
    pack_nibbles,
    roundup,
    swizzle_128x4,
    unpack_nibbles,
    unswizzle_128x4,
)


@dataclass(frozen=True)
class ComfyStorage:
    """Shapes and dtypes of one microscaled ComfyUI weight: data, block scales (swizzled)."""

    data: tuple[tuple[int, int], torch.dtype]
    scale: tuple[tuple[int, int], torch.dtype]


def comfy_storage(nvfp4: bool, shape: tuple[int, int]) -> ComfyStorage:
    """What ``quantize_comfy`` stores for a weight of ``shape`` (known before quantizing)."""
    block = NVFP4_BLOCK if nvfp4 else MX_BLOCK
    rows, cols = roundup(shape[0], block), roundup(shape[1], block)
    scale_shape = (roundup(rows, 128), roundup(cols // block, 4))
    if nvfp4:
        return ComfyStorage(((rows, cols // 2), torch.uint8), (scale_shape, torch.float8_e4m3fn))
    return ComfyStorage(((rows, cols), torch.float8_e4m3fn), (scale_shape, torch.uint8))


def quantize_comfy(
    w: torch.Tensor, nvfp4: bool, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(weight, swizzled block scales, nvfp4's weight_scale_2 or None) as ComfyUI stores them."""
    if nvfp4:
        q = quantize_nvfp4(w, convention="comfy", pad=NVFP4_BLOCK, name=name)
        return pack_nibbles(q.codes, even_high=True), swizzle_128x4(q.scales), q.global_scale.reshape(())
    m = quantize_mxfp8(w, pad=MX_BLOCK, name=name)
    return m.values, swizzle_128x4(m.exponents), None


def dequantize_comfy(
    data: torch.Tensor,
    scale: torch.Tensor,
    global_scale: torch.Tensor | None,
    shape: tuple[int, int],
    nvfp4: bool,
) -> torch.Tensor:
    """Float32 weight of ``shape`` from ComfyUI's stored nvfp4/mxfp8 tensors (padding sliced off)."""
    rows = data.shape[0]
    if nvfp4:
        cols = data.shape[1] * 2
        if global_scale is None:
            raise QuantizationError(
                f"nvfp4 weight of shape {list(shape)} has no weight_scale_2",
                hint="the file lacks weight_scale_2; re-export it or use the unquantized checkpoint",
            )
        codes = unpack_nibbles(data.view(torch.uint8), even_high=True)
        scales = unswizzle_128x4(scale.view(torch.uint8), rows, cols // NVFP4_BLOCK).view(torch.float8_e4m3fn)
        g = global_scale.to(torch.float32).reshape(())
        return dequantize_nvfp4(NVFP4(codes, scales, g, shape, "comfy"))
    cols = data.shape[1]
    exps = unswizzle_128x4(scale.view(torch.uint8), rows, cols // MX_BLOCK)
    return dequantize_mx(MX(data.view(torch.float8_e4m3fn), exps, shape, "e4m3"))


def comfy_values(data: torch.Tensor, shape: tuple[int, int], nvfp4: bool) -> torch.Tensor:
    """The stored element values without padding: E2M1 codes (uint8) or fp8 values."""
    v = unpack_nibbles(data, even_high=True) if nvfp4 else data
    return v[: shape[0], : shape[1]]
