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
    E2M1_MAX,
    MX,
    MX_BLOCK,
    NVFP4,
    NVFP4_BLOCK,
    comfy_nvfp4_blocks,
    dequantize_mx,
    dequantize_nvfp4,
    e2m1_decode,
    e2m1_encode,
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


def fake_quantize_comfy_input(
    x: torch.Tensor, input_scale: torch.Tensor, kind: str | torch.dtype
) -> torch.Tensor:
    """What ComfyUI's quantized matmul does to a layer's input when the file gives an
    ``input_scale`` and no ``full_precision_matrix_mult``, returned dequantized in float32.

    fp8 (``kind`` the layer's fp8 dtype): one static per-tensor scale, ``x * (1 / input_scale)``
    clamped to the format's range and cast (comfy-kitchen's ``quantize_per_tensor_fp8``); values
    beyond ``absmax`` clip. ``"nvfp4"``: ``input_scale`` is the per-tensor scale of
    comfy-kitchen's ``quantize_nvfp4`` (e4m3 block scales per 16 inputs, E2M1 values; the feature
    dimension zero-padded to 16 as ComfyUI pads)."""
    xf = x.to(torch.float32)
    g = input_scale.to(device=xf.device, dtype=torch.float32).reshape(())
    if kind != "nvfp4":
        fmax = float(torch.finfo(kind).max)
        return (xf * (1.0 / g)).clamp(-fmax, fmax).to(kind).to(torch.float32) * g
    n = xf.shape[-1]
    pad = roundup(n, NVFP4_BLOCK) - n
    flat = torch.nn.functional.pad(xf.reshape(-1, n), (0, pad))
    blocks = flat.reshape(flat.shape[0], -1, NVFP4_BLOCK)
    scales, scaled = comfy_nvfp4_blocks(blocks, g)
    codes = e2m1_encode(scaled.clamp(-E2M1_MAX, E2M1_MAX))
    out = e2m1_decode(codes) * (g * scales.to(torch.float32)).unsqueeze(-1)
    return out.reshape(flat.shape)[:, :n].reshape(xf.shape)


def comfy_nvfp4_rowmajor(
    data: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ComfyUI nvfp4 weight in the unpadded row-major form compressed-tensors and torchao's
    ``NVFP4Tensor`` hold: codes [rows, cols / 2] with the even column in the low nibble, e4m3 block
    scales [rows, cols / 16] unswizzled. The same numbers (``weight_scale_2`` unchanged), so a
    dequantization that multiplies ``weight_scale_2 * scale`` gives the same weight bit for bit.
    ``cols`` must be a multiple of 16 (else the layer only exists padded)."""
    rows, cols = shape
    if cols % NVFP4_BLOCK:
        raise QuantizationError(
            f"nvfp4 weight of shape {list(shape)}: {cols} columns only exist padded",
            hint="keep this layer on the reference path (it dequantizes the padded form)",
        )
    codes = unpack_nibbles(data.view(torch.uint8), even_high=True)[:rows, :cols]
    blocks = unswizzle_128x4(scale.view(torch.uint8), data.shape[0], data.shape[1] * 2 // NVFP4_BLOCK)
    scales = blocks[:rows, : cols // NVFP4_BLOCK].contiguous().view(torch.float8_e4m3fn)
    return pack_nibbles(codes.contiguous(), even_high=False), scales
