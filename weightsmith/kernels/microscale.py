"""Microscaled float formats (NVFP4, MXFP4, MXFP8): the arithmetic, independent of any file layout.

One implementation of E2M1 (FP4), E4M3 and E8M0 serves ComfyUI's ``nvfp4``/``mxfp8`` and
compressed-tensors' ``nvfp4-pack-quantized``/``mxfp4-pack-quantized``; how the results are stored
(nibble order, padding, the 128x4 scale swizzle) lives in ``microscale_layout``.

Everything is IEEE-exact torch (abs-max, single divisions and products in float32, comparisons,
casts to float8_e4m3fn, frexp, one float64 log2), so CPU and GPU give the same bytes. Codes are uint8 holding one
E2M1 value each (bit 3 sign, bits 0-2 magnitude index into 0, .5, 1, 1.5, 2, 3, 4, 6).

Conventions, as the consumers compute them:

* E2M1: round to nearest, ties to even code, saturate at +-6; the sign bit is kept (-0 is 0x8).
* NVFP4, ComfyUI (comfy-kitchen's eager ``quantize_nvfp4``): ``g = amax(W) / 2688`` (the stored
  ``weight_scale_2``), ``s = e4m3(min(amax(block) / 6 / g, 448))``, values ``e2m1(x / (g * s))``,
  a block whose ``g * s`` is 0 is all +0; dequantized as ``(g * s) * v``.
* NVFP4, compressed-tensors: the stored global scale is the inverse, ``G = 2688 / amax(W)``,
  ``s = e4m3(G * (amax(block) / 6))`` (0 becomes e4m3's eps 0.125, as its observer does), values
  ``e2m1(x / (s / G))``.
* MXFP8 (comfy-kitchen's ``quantize_mxfp8``): exponent ``ceil(log2(amax / 448)) + 127`` in
  [0, 254], with log2 rounded to float32 first as comfy-kitchen does (``ceil_log2_as_float32``);
  an all-zero block stores exponent 0 and +0 values.
* MXFP4 (compressed-tensors' observer): exponent ``floor(log2(p)) - 2 + 127`` where ``p`` is
  ``amax`` rounded to a power of two (up when its mantissa is >= 1.75), clamped to [0, 254].

Deliberate differences from the references, only where they produce NaN: an all-zero weight gets
``g = 1`` (comfy-kitchen divides 0 by 0), and an MXFP8 block with ``amax / 448 < 2**-127``
(exponent 0, which ComfyUI decodes as 0) is stored as +0 values (comfy-kitchen writes 448 or NaN
there); both dequantize to exactly what the reference dequantizes them to, zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weightsmith.errors import QuantizationError
from weightsmith.kernels.microscale_layout import pad_to

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_EPS = 0.125  # torch.finfo(torch.float8_e4m3fn).eps: compressed-tensors' stand-in for a 0 scale
E8M0_BIAS = 127
NVFP4_BLOCK = 16
MX_BLOCK = 32
NVFP4_GLOBAL_DIVISOR = E4M3_MAX * E2M1_MAX  # 2688
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Round-to-nearest-even decision points between consecutive magnitudes: (threshold, inclusive).
# A tie goes to the even code: 0.25 -> 0, 0.75 -> 1.0, 1.25 -> 1.0, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.
_E2M1_STEPS = (
    (0.25, False),
    (0.75, True),
    (1.25, False),
    (1.75, True),
    (2.5, False),
    (3.5, True),
    (5.0, False),
)


def check_finite(w: torch.Tensor, name: str = "weight") -> None:
    """Refuse NaN/Inf: every scale of the tensor would be poisoned silently."""
    if not bool(torch.isfinite(w).all()):
        raise QuantizationError(
            f"{name} has NaN or Inf values and cannot be quantized to a microscaled format",
            hint="fix the checkpoint, or keep this tensor in float with --keep",
        )


def _as_2d_float32(w: torch.Tensor, name: str) -> torch.Tensor:
    if w.dim() != 2 or not w.dtype.is_floating_point:
        raise QuantizationError(
            f"{name}: microscaled formats quantize 2-D float weights, got {tuple(w.shape)} {w.dtype}",
            hint="keep it with --keep, or quantize only 2-D Linear weights",
        )
    check_finite(w, name)
    return w.to(torch.float32)


# --- element and scale encodings -------------------------------------------------------------


def e2m1_encode(x: torch.Tensor, *, signed_zero: bool = True) -> torch.Tensor:
    """Float32 -> uint8 E2M1 codes (round to nearest even, saturating at +-6).

    A negative value that rounds to 0 keeps its sign (code 0x8) in both consumers; an input that
    is exactly -0.0 is 0x8 in comfy-kitchen but 0x0 in compressed-tensors (``signed_zero=False``),
    which multiplies by ``torch.sign``.
    """
    a = x.abs()
    mag = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for threshold, inclusive in _E2M1_STEPS:
        mag += (a >= threshold if inclusive else a > threshold).to(torch.uint8)
    negative = torch.signbit(x) if signed_zero else x < 0
    return mag | (negative.to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 E2M1 codes -> values (the sign of zero kept)."""
    lut = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=dtype, device=codes.device)
    return lut[(codes & 0x0F).long()]


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """Non-negative float32 scales -> float8_e4m3fn, saturating at 448 (torch's cast rounds to nearest even)."""
    return x.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)


def e8m0_decode(exponents: torch.Tensor, *, zero_is_zero: bool = True) -> torch.Tensor:
    """uint8 biased exponents -> float32 powers of two; ComfyUI decodes 0 as 0, compressed-tensors as 2**-127."""
    e = exponents.to(torch.int32) - E8M0_BIAS
    one = torch.ones(e.shape, dtype=torch.float32, device=e.device)
    out = torch.ldexp(one, e)
    return torch.where(exponents == 0, torch.zeros_like(out), out) if zero_is_zero else out


def ceil_log2_as_float32(x: torch.Tensor) -> torch.Tensor:
    """ceil of log2(x) rounded to float32, as int32: comfy-kitchen's ``ceil(torch.log2(x))``, made device-independent.

    A float32 log2 rounds to an integer k for x a few ulps above 2**k, so comfy-kitchen picks the
    scale 2**k there (and saturates that block's largest value at 448) where the exact ceil would
    pick 2**(k+1). float32 log2 differs between CPU and GPU libraries in the last ulp; log2 in
    float64 rounded once to float32 is what torch's CPU float32 log2 returns near every power of
    two (checked over 2**-133..2**40) and gives the same answer on every device.
    """
    return torch.ceil(torch.log2(x.to(torch.float64)).to(torch.float32)).to(torch.int32)


def floor_log2(x: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(x)) of positive float32 as int32, via frexp."""
    _, exponent = torch.frexp(x)
    return exponent.to(torch.int32) - 1


# --- NVFP4 -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NVFP4:
    """Unpacked NVFP4 weight: codes [R, C] (padded as asked), row-major e4m3 block scales [R, C/16], global scale."""

    codes: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor  # float32 scalar, in the convention's own sense (see the module docstring)
    shape: tuple[int, int]  # the weight's shape before padding
    convention: str  # "comfy" or "compressed-tensors"


def _check_blocks(x: torch.Tensor, block: int, name: str, fmt: str, hint: str) -> None:
    """QuantizationError unless ``x``'s rows split into whole blocks (a format that cannot pad them)."""
    if x.shape[1] % block:
        raise QuantizationError(
            f"{name}: {x.shape[1]} columns do not split into {fmt} blocks of {block}", hint=hint
        )


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, block)


def quantize_nvfp4(
    w: torch.Tensor, *, convention: str = "comfy", pad: int = NVFP4_BLOCK, name: str = "weight"
) -> NVFP4:
    """Quantize a 2-D weight to NVFP4 as ComfyUI or compressed-tensors compute it (``pad``: row/col multiple)."""
    x = _as_2d_float32(w, name)
    shape = (x.shape[0], x.shape[1])
    if pad % NVFP4_BLOCK:
        _check_blocks(
            x,
            NVFP4_BLOCK,
            name,
            "NVFP4",
            "keep this tensor in float, or write a format that pads (ComfyUI's nvfp4)",
        )
    x = pad_to(x, pad, pad)
    amax = x.abs().amax()
    block_amax = _blocks(x, NVFP4_BLOCK).abs().amax(dim=-1)
    if convention == "comfy":
        g = torch.where(amax == 0, torch.ones_like(amax), amax / NVFP4_GLOBAL_DIVISOR)
        scales = e4m3_encode(block_amax / E2M1_MAX / g)
        total = g * scales.to(torch.float32)
        zero = total == 0
        scaled = _blocks(x, NVFP4_BLOCK) / torch.where(zero, torch.ones_like(total), total).unsqueeze(-1)
        scaled = torch.where(zero.unsqueeze(-1), torch.zeros_like(scaled), scaled)
    elif convention == "compressed-tensors":
        g = nvfp4_global_scale(amax)
        scales = _ct_block_scales(block_amax, g)
        scaled = _blocks(x, NVFP4_BLOCK) / (scales.to(torch.float32) / g).unsqueeze(-1)
    else:
        raise QuantizationError(
            f"unknown NVFP4 convention {convention!r}",
            hint="use 'comfy' or 'compressed-tensors'; this is a bug in weightsmith",
        )
    signed_zero = convention == "comfy"
    codes = e2m1_encode(scaled.clamp(-E2M1_MAX, E2M1_MAX).reshape(x.shape), signed_zero=signed_zero)
    return NVFP4(codes, scales, g.to(torch.float32), shape, convention)


def nvfp4_global_scale(amax: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' global scale for a tensor whose largest |value| is ``amax``:
    ``2688 / amax`` in float32 (1 where that is not finite: amax 0, its uncalibrated fallback).
    The same rule gives a weight's ``weight_global_scale`` and a calibrated ``input_global_scale``."""
    amax = amax.to(torch.float32)
    g = NVFP4_GLOBAL_DIVISOR / amax.clamp(min=torch.finfo(torch.float32).tiny)
    return torch.where(torch.isfinite(g), g, torch.ones_like(g))


def _ct_block_scales(block_amax: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """e4m3 block scales as compressed-tensors computes them: ``e4m3(G * amax / 6)``, 0 -> eps."""
    raw = g * (block_amax / E2M1_MAX)
    scales = raw.clamp(min=-E4M3_MAX, max=E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)
    return torch.where(scales == 0, E4M3_EPS, scales).to(torch.float8_e4m3fn)


def fake_quantize_nvfp4(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """NVFP4 quantize-dequantize of activations as compressed-tensors runs its NVFP4 (W4A4)
    scheme: a static ``global_scale`` (the calibrated ``input_global_scale``), e4m3 scales computed
    per block of 16 along the last dimension at run time, E2M1 values; returned in float32.

    The last dimension must split into blocks of 16 (a Linear's in_features; the writer keeps
    layers that do not)."""
    xf = x.to(torch.float32)
    if xf.shape[-1] % NVFP4_BLOCK:
        raise QuantizationError(
            f"NVFP4 activations: {xf.shape[-1]} features do not split into blocks of {NVFP4_BLOCK}",
            hint="this layer cannot take fp4 activations; quantize it weight-only",
        )
    g = global_scale.to(device=xf.device, dtype=torch.float32).reshape(())
    blocks = xf.reshape(*xf.shape[:-1], -1, NVFP4_BLOCK)
    scale = _ct_block_scales(blocks.abs().amax(dim=-1), g).to(torch.float32) / g
    codes = e2m1_encode((blocks / scale.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX), signed_zero=False)
    return (e2m1_decode(codes) * scale.unsqueeze(-1)).reshape(xf.shape)


def dequantize_nvfp4(q: NVFP4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NVFP4 -> float weight of the original shape, with the convention's own order of operations."""
    values = _blocks(e2m1_decode(q.codes), NVFP4_BLOCK)
    s = q.scales.to(torch.float32)
    total = q.global_scale * s if q.convention == "comfy" else s / q.global_scale
    out = (values * total.unsqueeze(-1)).reshape(q.codes.shape)
    return out[: q.shape[0], : q.shape[1]].to(dtype)


# --- MXFP8 / MXFP4 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MX:
    """Unpacked MX weight: values [R, C] (float8_e4m3fn for MXFP8, uint8 E2M1 codes for MXFP4), E8M0 exponents [R, C/32]."""

    values: torch.Tensor
    exponents: torch.Tensor
    shape: tuple[int, int]
    element: str  # "e4m3" or "e2m1"


def mxfp8_exponents(block_amax: torch.Tensor) -> torch.Tensor:
    """E8M0 exponents of MXFP8 blocks, comfy-kitchen's: ceil(log2(amax / 448)) + 127 in [0, 254] (0 for amax 0)."""
    needed = (block_amax / E4M3_MAX).clamp(min=2.0**-127)
    return (ceil_log2_as_float32(needed) + E8M0_BIAS).clamp(0, 254).to(torch.uint8)


def mxfp4_exponents(block_amax: torch.Tensor) -> torch.Tensor:
    """E8M0 exponents of MXFP4 blocks, compressed-tensors' observer's: floor(log2(p)) - 2 + 127 in [0, 254].

    ``p`` is amax rounded to a power of two, up when its mantissa reaches 1.75 (float32 bit
    arithmetic, as compressed-tensors' ``round_to_power_2``); amax 0 (or subnormal) gives 0.
    """
    power = ((block_amax.view(torch.int32) + (1 << 21)) & 0x7F800000).view(torch.float32)
    exponents = torch.where(power > 0, floor_log2(power.clamp(min=2.0**-126)), -E8M0_BIAS) - 2 + E8M0_BIAS
    return exponents.clamp(0, 254).to(torch.uint8)


def quantize_mxfp8(w: torch.Tensor, *, pad: int = MX_BLOCK, name: str = "weight") -> MX:
    """MXFP8 as comfy-kitchen's eager backend computes it (``pad``: row/col multiple, 32 for ComfyUI)."""
    x = _as_2d_float32(w, name)
    shape = (x.shape[0], x.shape[1])
    if pad % MX_BLOCK:
        _check_blocks(
            x,
            MX_BLOCK,
            name,
            "MX",
            "keep this tensor in float, or write a format that pads (ComfyUI's mxfp8)",
        )
    x = pad_to(x, pad, pad)
    blocks = _blocks(x, MX_BLOCK)
    exponents = mxfp8_exponents(blocks.abs().amax(dim=-1))
    scale = e8m0_decode(exponents)
    empty = scale == 0  # all-zero blocks and those too small for any E8M0 scale ComfyUI decodes
    scaled = blocks / torch.where(empty, torch.ones_like(scale), scale).unsqueeze(-1)
    scaled = torch.where(empty.unsqueeze(-1), torch.zeros_like(scaled), scaled)
    values = scaled.clamp(-E4M3_MAX, E4M3_MAX).reshape(x.shape).to(torch.float8_e4m3fn)
    return MX(values, torch.where(empty, 0, exponents), shape, "e4m3")


def quantize_mxfp4(w: torch.Tensor, *, name: str = "weight") -> MX:
    """MXFP4 as compressed-tensors' observer and compressor compute it (no padding: columns must split into 32s)."""
    x = _as_2d_float32(w, name)
    _check_blocks(
        x, MX_BLOCK, name, "MXFP4", "keep this tensor in float (compressed-tensors' mxfp4 has no padding)"
    )
    blocks = _blocks(x, MX_BLOCK)
    exponents = mxfp4_exponents(blocks.abs().amax(dim=-1))
    scale = e8m0_decode(exponents, zero_is_zero=False)
    scaled = (blocks / scale.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX).reshape(x.shape)
    codes = e2m1_encode(scaled, signed_zero=False)
    return MX(codes, exponents, (x.shape[0], x.shape[1]), "e2m1")


def dequantize_mx(q: MX, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """MX -> float weight of the original shape (exponent 0 decodes as 0 for MXFP8, ComfyUI's rule)."""
    if q.element == "e4m3":
        values, scale = q.values.to(torch.float32), e8m0_decode(q.exponents)
    else:
        values, scale = e2m1_decode(q.values), e8m0_decode(q.exponents, zero_is_zero=False)
    out = (_blocks(values, MX_BLOCK) * scale.unsqueeze(-1)).reshape(values.shape)
    return out[: q.shape[0], : q.shape[1]].to(dtype)
