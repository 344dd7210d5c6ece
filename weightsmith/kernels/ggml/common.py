"""Batched float32 primitives of ggml's quantizers, written so that every rounding matches the C code.

Bit-exactness with ggml (built without floating-point contraction) rests on a few rules kept
throughout this package:

* every arithmetic step is a separate torch op in the C evaluation order: ``a*b + c`` is never fused,
  ``w*x*l`` is ``(w*x)*l``;
* sums are sequential float32 accumulations (``seq_sum``), never torch's pairwise/vectorised sums;
* square roots are correctly rounded (``sqrtf``; torch's own CPU sqrt is not always);
* divisions are true divisions by device tensors (``fdiv``): ``c / t`` in torch is ``c * (1/t)``,
  and CUDA turns ``t / scalar`` into a multiplication by the reciprocal;
* ties follow the C loops: the first element wins a strict ``>`` search, a NaN never wins one, and
  the sequential "accept if better" selections are replayed trial by trial;
* ``nearest_int`` is emulated bit for bit wherever its argument is not provably within
  +-4194303 (there it wraps around instead of rounding).

Block data is laid out element-first, ``(n, B)`` for B blocks of n elements, so that the per-element
slices of a sequential sum are contiguous. The trials of a scale search run one after the other, each
vectorised over all blocks of a chunk (in qkx searches a kept trial changes what the next one computes).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch

from .native import non_finite_error

F32 = torch.float32
#: ggml's "all zero" threshold (GROUP_MAX_EPS)
GROUP_MAX_EPS = 1e-15


_scratch = threading.local()


def scratch(name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable per-thread work buffer (contents undefined).

    Chunked kernels ask for the same sizes over and over; reusing buffers avoids the allocator
    handing back fresh pages (glibc maps big blocks anew), which on CPU costs more than the ops.
    """
    cache: dict = _scratch.__dict__.setdefault("buffers", {})
    n = 1
    for s in shape:
        n *= s
    key = (name, dtype, device)
    buf = cache.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype, device=device)
        cache[key] = buf
    return buf[:n].view(tuple(shape))


def require_finite(x: torch.Tensor, name: str) -> None:
    """Raise unless x is all finite; a plain sum settles the common case in one cheap pass."""
    if not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
        raise non_finite_error(name)


def fconst(value: float, like: torch.Tensor) -> torch.Tensor:
    """A float32 0-d tensor on ``like``'s device (so that ops with it are plain tensor-tensor ops)."""
    return torch.full((), value, dtype=F32, device=like.device)


def fdiv(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """IEEE float32 ``a / b``; scalars are turned into device tensors first (see module docstring)."""
    if not isinstance(a, torch.Tensor):
        a = fconst(a, b)  # type: ignore[arg-type]
    if not isinstance(b, torch.Tensor):
        b = fconst(b, a)
    return torch.div(a, b)


def recip_or_zero(d: torch.Tensor) -> torch.Tensor:
    """``d ? 1/d : 0`` as in ggml (``-0.0`` counts as zero)."""
    return torch.where(d != 0, fdiv(1.0, d), fconst(0.0, d))


def where_blocks(mask: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, a, b)`` with a per-block mask broadcast over the leading dims of ``b``.

    torch's CPU ``where`` is slow on large tensors, and the masks here (all-zero blocks, zero
    scales) are nearly always uniform, so the select only runs when it changes something.
    """
    if not bool(mask.any()):
        return b
    if bool(mask.all()) and not isinstance(a, torch.Tensor):
        return torch.full_like(b, a)
    return torch.where(mask, a, b)


def nearest_int(f: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int``, bit for bit: ``bits(f + 1.5*2**23) & 0x7fffff - 0x400000`` (int32).

    It is round-half-even for ``|f| <= 4194303``; outside that range (and for NaN) it reproduces the
    C function's wrap-around, which ``torch.round`` would not.
    """
    v = f + 12582912.0
    return (v.view(torch.int32) & 0x7FFFFF) - 0x400000


def rint(f: torch.Tensor) -> torch.Tensor:
    """Round half to even in float; equals ``nearest_int`` where ``|f| <= 4194303`` (used when bounded)."""
    return torch.round(f)


def sqrtf(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root, like C's ``sqrtf``.

    torch's CPU kernel (SLEEF, AVX-512 builds) is off by one ulp for some inputs; the square root of a
    float32 taken in float64 and rounded once to float32 is always the correctly rounded result.
    """
    return torch.sqrt(t.to(torch.float64)).to(F32)


def fp16_round(t: torch.Tensor) -> torch.Tensor:
    """``GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(t))``: round to nearest even half, back to float32."""
    return t.to(torch.float16).to(F32)


def fp16_bytes(t: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 bytes of ``t`` (shape ``(*t.shape, 2)``, uint8)."""
    return t.to(torch.float16).unsqueeze(-1).view(torch.uint8)


def seq_sum(t: torch.Tensor, from_zero: bool = True) -> torch.Tensor:
    """Sequential float32 sum over dim 0, as a C ``for`` loop does it.

    ``from_zero`` starts from ``0.0f`` (``s = 0; s += t[i]``), which turns a leading ``-0.0`` into
    ``+0.0``; otherwise the sum starts from ``t[0]`` (``s = t[0]; s += t[i]`` for i >= 1).
    """
    rows = t.unbind(0)
    acc = rows[0] + 0.0 if from_zero else rows[0].clone()
    for r in rows[1:]:
        acc.add_(r)
    return acc


def _absmax_from_extremes(
    mn: torch.Tensor, mx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(amax, signed max, tie)`` from per-block min and max; ``tie`` marks blocks holding +a and -a."""
    amn, amx = mn.abs(), mx.abs()
    amax = torch.maximum(amn, amx)
    smax = torch.where(amn > amx, mn, mx)
    smax = torch.where(amax > 0, smax, fconst(0.0, mn))  # all-zero block: +0.0
    return amax, smax, (mn == -mx) & (mx > 0)


def first_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(amax, max)`` over dim 0: the largest |x| and the signed value where it first occurs.

    Matches ``if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` starting from
    ``amax = max = 0.0f`` (an all-zero block keeps ``max = +0.0``). Computed from min and max
    (torch's argmax is slow); only blocks holding both +a and -a need the first-occurrence rule,
    and get it from an argmax on that subset.
    """
    if not math.isfinite(float(x.sum())):  # NaN never wins ``fabsf(x) > amax`` in C; torch's max keeps it
        x = torch.nan_to_num(x, nan=0.0, posinf=math.inf, neginf=-math.inf)
    amax, smax, tie = _absmax_from_extremes(x.amin(0), x.amax(0))
    if bool(tie.any()):
        idx = tie.nonzero().squeeze(1)
        sub = x.index_select(1, idx)
        first = sub.gather(0, sub.abs().argmax(0, keepdim=True))[0]
        smax = smax.index_copy(0, idx, first)
    return amax, smax


def signed_absmax_rows(xb: torch.Tensor) -> torch.Tensor:
    """:func:`first_absmax`'s signed max for the rows of ``xb`` (B, n), from one min and one max.

    ``max + min`` has the sign of the extreme with the larger magnitude (exactly: a float sum of
    two values of different magnitude never rounds to the other sign or to 0). Where it is 0 the
    block holds +a and -a, or is all zero; those blocks take the first-occurrence rule on a subset.
    """
    mn, mx = xb.amin(1), xb.amax(1)
    s = mx + mn
    smax = torch.copysign(torch.maximum(mx, -mn), s)
    if float(s.abs().amin()) == 0:
        idx = (s == 0).nonzero().squeeze(1)
        _, first = first_absmax(xb.index_select(0, idx).t())
        smax = smax.index_copy(0, idx, first)
    return smax


def recip_or_zero_fast(d: torch.Tensor) -> torch.Tensor:
    """``d ? 1/d : 0`` where ``1/d`` is finite; also 0 where it overflows (|d| < 2**-128, C's
    conversions of the resulting inf are undefined there anyway)."""
    return torch.nan_to_num(fdiv(1.0, d), posinf=0.0, neginf=0.0)


def first_min(x: torch.Tensor) -> torch.Tensor:
    """Minimum over dim 0 with the sign of zero of its first occurrence (``if (x[i] < min) min = x[i]``)."""
    mn = x.amin(0)
    zero = mn == 0
    if bool(zero.any()):
        idx = zero.nonzero().squeeze(1)
        sub = x.index_select(1, idx)
        mn = mn.index_copy(0, idx, sub.gather(0, sub.argmin(0, keepdim=True))[0])
    return mn


def first_min_rows(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of the rows of ``xb`` (B, n); a zero min carries the sign of its first occurrence."""
    mn = xb.amin(1)
    if float(mn.abs().amin()) == 0:
        idx = (mn == 0).nonzero().squeeze(1)
        mn = mn.index_copy(0, idx, first_min(xb.index_select(0, idx).t()))
    return mn, xb.amax(1)


def pack_low_high(lo: torch.Tensor, hi: torch.Tensor, shift: int) -> torch.Tensor:
    """``lo | hi << shift`` as uint8 (inputs hold small non-negative ints of any dtype)."""
    return (lo.to(torch.uint8) | (hi.to(torch.uint8) << shift)).to(torch.uint8)


_BYTE_BITS_MAGIC = 0x0102040810204080  # gathers bit 0 of each byte of a u64 into its top byte
_LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F
_BYTE_LOW_BITS = 0x0101010101010101


def pack_bit_plane(q: torch.Tensor, bit: int) -> torch.Tensor:
    """Bit ``bit`` of every byte of uint8 ``q`` packed along the last dim (a multiple of 8): bit k of
    output byte b is bit ``bit`` of ``q[..., 8b + k]``.

    Works on 64-bit words: the eight selected bits ``sum b_k << 8k`` times the magic constant put
    ``sum b_k << k`` in the top byte without carries.
    """
    w = q.contiguous().view(torch.int64)
    return ((((w >> bit) & _BYTE_LOW_BITS) * _BYTE_BITS_MAGIC) >> 56).to(torch.uint8)


def pack_nibbles(q: torch.Tensor, half: int) -> torch.Tensor:
    """``q[..., j] & 15 | (q[..., j + half] & 15) << 4`` for j < half, on 64-bit words (half % 8 == 0).

    ``q`` is uint8 ``(B, 2*half)`` or ``(B, G, 2*half)``; the result has ``half`` bytes per group.
    """
    w = q.contiguous().view(torch.int64)
    k = half // 8
    w = w.view(*w.shape[:-1], 2, k) & _LOW_NIBBLES
    return (w[..., 0, :] | (w[..., 1, :] << 4)).view(torch.uint8)


def unpack_bits_le(data: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_bits_le`: ``(..., m)`` bytes -> ``(..., 8m)`` values 0/1 (uint8)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)
    return ((data.unsqueeze(-1) >> shifts) & 1).reshape(*data.shape[:-1], -1)
