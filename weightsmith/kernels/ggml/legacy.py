"""ggml's legacy 32-element block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Without an importance matrix these follow ``quantize_row_qX_Y_ref`` (one scale from the block's
extreme value, then truncation ``(int8_t)(x*id + 8.5f)``). With one, they follow
``quantize_row_qX_Y_impl``: weights ``qw * sqrt(sigma2 + x^2)`` with sigma2 the mean square of the
whole row, then ``make_qx_quants`` (symmetric types) or ``make_qkx3_quants`` (types with a min).
Q8_0 ignores the importance matrix, as ggml does.
"""

from __future__ import annotations

import math

import gguf
import torch

from .common import (
    F32,
    fdiv,
    first_min_rows,
    non_finite_error,
    pack_bit_plane,
    pack_nibbles,
    recip_or_zero_fast,
    require_finite,
    scratch,
    seq_sum,
    signed_absmax_rows,
    sqrtf,
    unpack_bits_le,
)
from .search import make_qkx_quants, make_qx_quants
from .types import GGMLKernel, register

T = gguf.GGMLQuantizationType
QK = 32


def _row_weights(x: torch.Tensor, imatrix: torch.Tensor) -> torch.Tensor:
    """``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with ``sigma2 = sum(x^2)/n_per_row`` (sequential sum)."""
    xt = x.t().contiguous()
    sigma2 = fdiv(seq_sum(xt * xt), float(x.shape[1]))
    return imatrix[None, :] * sqrtf(sigma2[:, None] + x * x)


def _blocks_t(t: torch.Tensor) -> torch.Tensor:
    """(R, n) row data -> (32, B) element-first blocks."""
    return t.reshape(-1, QK).t().contiguous()


def _put_nibbles(out: torch.Tensor, col: int, q: torch.Tensor) -> None:
    """(B, 32) uint8 levels -> 16 bytes at ``col``: ``q[j] & 15 | (q[j+16] & 15) << 4``."""
    out[:, col : col + 16] = pack_nibbles(q, 16)


def _put_high_bits(out: torch.Tensor, col: int, q: torch.Tensor) -> None:
    """(B, 32) 5-bit levels -> ``qh`` (u32 LE) at ``col``: bit j = bit 4 of q[j]."""
    out[:, col : col + 4] = pack_bit_plane(q, 4)


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(B, 16) bytes -> (B, 32) ints (low nibbles first, then high nibbles)."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def _check_scales(d: torch.Tensor, name: str) -> None:
    """Block scales are NaN/inf exactly when their block holds NaN/inf (min/max propagate both)."""
    if not math.isfinite(float(d.sum())) and not bool(torch.isfinite(d).all()):
        raise non_finite_error(name)


def _work(xb: torch.Tensor) -> torch.Tensor:
    """Float scratch of ``xb``'s shape."""
    return scratch("legacy_f", xb.shape, F32, xb.device)


def _put_f16(out: torch.Tensor, col: int, t: torch.Tensor) -> None:
    """Write fp16(t) little-endian into bytes ``col, col+1`` of every block (col even)."""
    out.view(torch.int16)[:, col // 2].copy_(t.to(torch.float16).view(torch.int16))


class _LegacyKernel(GGMLKernel):
    """Shared plumbing: quantize_rows allocates, quantize_into writes blocks in place.

    Finiteness is checked on the block scales (non-finite exactly when a block holds NaN/inf),
    which saves a pass over the input; the importance-matrix paths check the input.
    """

    chunk_elems = 1 << 18
    checks_finite = True

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty((x.shape[0], x.shape[1] // QK * cls.type_size), dtype=torch.uint8, device=x.device)
        cls.quantize_into(x, imatrix, out)
        return out

    @classmethod
    def quantize_into(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        cls._write(x, imatrix, out.view(-1, cls.type_size))

    @classmethod
    def _write(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        raise NotImplementedError


@register
class Q8_0(_LegacyKernel):
    """Layout: d (fp16), qs[32] (int8). ``d = max|x|/127``, ``q = roundf(x/d)``."""

    qtype = T.Q8_0
    uses_imatrix = False

    @classmethod
    def _write(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        xb = x.reshape(-1, QK)
        v = _work(xb)
        amax = torch.maximum(xb.amax(1), xb.amin(1).neg_()).abs_()  # max |x| (abs: +0 for all-zero)
        d = fdiv(amax, 127.0)
        _check_scales(d, cls.name)
        torch.mul(xb, recip_or_zero_fast(d)[:, None], out=v)
        # roundf (half away from zero) = trunc(2v) - trunc(v): 2v is exact and its truncation adds
        # trunc(2*frac) in {-1, 0, 1}; integer conversions truncate, |2v| <= 255 fits int16
        t = v.to(torch.int8)
        q = v.add_(v).to(torch.int16).sub_(t)
        out[:, 2:].view(torch.int8).copy_(q)
        _put_f16(out, 0, d)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        q = b[:, 2:].contiguous().view(torch.int8).to(F32)
        return (q * d).reshape(data.shape[0], -1)


class _SymmetricLegacy(_LegacyKernel):
    """Q4_0 / Q5_0: ``x = d * (q - 2**(bits-1))``."""

    bits: int

    @classmethod
    def _levels(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale d (B,) and levels q (B, 32) uint8 in [0, 2**bits)."""
        half = 1 << (cls.bits - 1)
        if imatrix is not None:
            require_finite(x, cls.name)
            w = _blocks_t(_row_weights(x, imatrix))
            d, L = make_qx_quants(_blocks_t(x), half, w)
            return d, L.t().to(torch.uint8)
        xb = x.reshape(-1, QK)
        v = _work(xb)
        d = fdiv(signed_absmax_rows(xb), -float(half))
        _check_scales(d, cls.name)
        inv = recip_or_zero_fast(d)
        torch.mul(xb, inv[:, None], out=v)
        v.add_(half + 0.5)  # (x*id) + 8.5f: two roundings, as in C
        q = v.to(torch.int8).clamp_(max=(1 << cls.bits) - 1)  # (int8_t) truncates toward zero; v > 0
        overflow = (inv == 0) & (d != 0)  # subnormal d: 1/d = inf, and x86 converts inf to 0
        if bool(overflow.any()):
            q[overflow] = 0
        return d, q.view(torch.uint8)


class _AffineLegacy(_LegacyKernel):
    """Q4_1 / Q5_1: ``x = d * q + m``."""

    bits: int

    @classmethod
    def _levels(
        cls, x: torch.Tensor, imatrix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale d (B,), offset m (B,) and levels q (B, 32) uint8."""
        nmax = (1 << cls.bits) - 1
        if imatrix is not None:
            require_finite(x, cls.name)
            w = _blocks_t(_row_weights(x, imatrix))
            d, the_min, L = make_qkx_quants(_blocks_t(x), w, nmax, -0.9, 0.05, 36, False, guarded=True)
            return d, -the_min, L.t().to(torch.uint8)
        xb = x.reshape(-1, QK)
        v = _work(xb)
        mn, mx = first_min_rows(xb)
        d = fdiv(mx - mn, float(nmax))
        _check_scales(d, cls.name)
        torch.sub(xb, mn[:, None], out=v)
        v.mul_(recip_or_zero_fast(d)[:, None]).add_(0.5)
        q = v.to(torch.int8)  # (uint8_t) truncation toward zero; 0 <= v < 32
        if cls.bits == 4:  # Q4_1 clamps with MIN(15, .); Q5_1 keeps the low 5 bits of a uint8
            q.clamp_(max=nmax)
        return d, mn, q.view(torch.uint8)


@register
class Q4_0(_SymmetricLegacy):
    """Layout: d (fp16), qs[16] (element j low nibble, j+16 high nibble)."""

    qtype = T.Q4_0
    bits = 4

    @classmethod
    def _write(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        d, q = cls._levels(x, imatrix)
        _put_f16(out, 0, d)
        _put_nibbles(out, 2, q)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        q = _unpack_nibbles(b[:, 2:]).to(torch.int8) - 8
        return (d * q.to(F32)).reshape(data.shape[0], -1)


@register
class Q5_0(_SymmetricLegacy):
    """Layout: d (fp16), qh (u32 LE: bit j = bit 4 of level j), qs[16] (low nibbles)."""

    qtype = T.Q5_0
    bits = 5

    @classmethod
    def _write(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        d, q = cls._levels(x, imatrix)
        _put_f16(out, 0, d)
        _put_high_bits(out, 2, q)
        _put_nibbles(out, 6, q)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        qh = unpack_bits_le(b[:, 2:6])
        q = (_unpack_nibbles(b[:, 6:]) | (qh << 4)).to(torch.int8) - 16
        return (d * q.to(F32)).reshape(data.shape[0], -1)


@register
class Q4_1(_AffineLegacy):
    """Layout: d (fp16), m (fp16), qs[16]."""

    qtype = T.Q4_1
    bits = 4

    @classmethod
    def _write(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        d, m, q = cls._levels(x, imatrix)
        _put_f16(out, 0, d)
        _put_f16(out, 2, m)
        _put_nibbles(out, 4, q)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        m = b[:, 2:4].contiguous().view(torch.float16).to(F32)
        q = _unpack_nibbles(b[:, 4:]).to(F32)
        return (d * q + m).reshape(data.shape[0], -1)


@register
class Q5_1(_AffineLegacy):
    """Layout: d (fp16), m (fp16), qh (u32 LE), qs[16]."""

    qtype = T.Q5_1
    bits = 5

    @classmethod
    def _write(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        d, m, q = cls._levels(x, imatrix)
        _put_f16(out, 0, d)
        _put_f16(out, 2, m)
        _put_high_bits(out, 4, q)
        _put_nibbles(out, 8, q)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        m = b[:, 2:4].contiguous().view(torch.float16).to(F32)
        qh = unpack_bits_le(b[:, 4:8])
        q = (_unpack_nibbles(b[:, 8:]) | (qh << 4)).to(F32)
        return (d * q + m).reshape(data.shape[0], -1)
