"""ggml's legacy 32-element block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Without an importance matrix these follow ``quantize_row_qX_Y_ref`` (one scale from the block's
extreme value, then truncation ``(int8_t)(x*id + 8.5f)``). With one, they follow
``quantize_row_qX_Y_impl``: weights ``qw * sqrt(sigma2 + x^2)`` with sigma2 the mean square of the
whole row, then ``make_qx_quants`` (symmetric types) or ``make_qkx3_quants`` (types with a min).
Q8_0 ignores the importance matrix, as ggml does.
"""

from __future__ import annotations

import gguf
import torch

from .common import (
    F32,
    fdiv,
    first_absmax,
    first_min,
    fp16_bytes,
    make_qkx_quants,
    make_qx_quants,
    pack_bits_le,
    pack_low_high,
    recip_or_zero,
    seq_sum,
    unpack_bits_le,
)
from .types import GGMLKernel, register

T = gguf.GGMLQuantizationType
QK = 32


def _row_weights(x: torch.Tensor, imatrix: torch.Tensor) -> torch.Tensor:
    """``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` with ``sigma2 = sum(x^2)/n_per_row`` (sequential sum)."""
    xt = x.t().contiguous()
    sigma2 = fdiv(seq_sum(xt * xt), float(x.shape[1]))
    return imatrix[None, :] * torch.sqrt(sigma2[:, None] + x * x)


def _blocks_t(t: torch.Tensor) -> torch.Tensor:
    """(R, n) row data -> (32, B) element-first blocks."""
    return t.reshape(-1, QK).t().contiguous()


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """(B, 32) small ints -> (B, 16) bytes: ``q[j] | q[j+16] << 4``."""
    return pack_low_high(q[:, :16] & 0xF, q[:, 16:] & 0xF, 4)


def _high_bits(q: torch.Tensor) -> torch.Tensor:
    """(B, 32) 5-bit ints -> (B, 4) bytes of ``qh``: bit j = bit 4 of q[j] (little-endian u32)."""
    return pack_bits_le((q >> 4) & 1)


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(B, 16) bytes -> (B, 32) ints (low nibbles first, then high nibbles)."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def _trunc_q(v: torch.Tensor) -> torch.Tensor:
    """``(int8_t)v`` for v in [0, 32): truncation toward zero, as int32."""
    return v.trunc().to(torch.int32)


@register
class Q8_0(GGMLKernel):
    qtype = T.Q8_0
    uses_imatrix = False
    chunk_elems = 1 << 16

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        xb = x.reshape(-1, QK)
        amax = xb.abs().amax(1, keepdim=True)
        d = fdiv(amax, 127.0)
        v = xb * recip_or_zero(d)
        # roundf: half away from zero = trunc(v) + trunc(2*frac), frac = v - trunc(v) (both exact)
        t = v.trunc()
        frac = v - t
        q = (t + (frac + frac).trunc_()).to(torch.int8).view(torch.uint8)
        out = torch.cat([fp16_bytes(d[:, 0]), q], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        q = b[:, 2:].contiguous().view(torch.int8).to(F32)
        return (q * d).reshape(data.shape[0], -1)


class _SymmetricLegacy(GGMLKernel):
    """Q4_0 / Q5_0: ``x = d * (q - 2**(bits-1))``."""

    bits: int

    @classmethod
    def _levels(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale d (B,) and levels q (B, 32) in [0, 2**bits)."""
        half = 1 << (cls.bits - 1)
        if imatrix is not None:
            w = _blocks_t(_row_weights(x, imatrix))
            d, L = make_qx_quants(_blocks_t(x), half, w)
            return d, L.t().to(torch.int32)
        xb = x.reshape(-1, QK)
        _, mx = first_absmax(xb.t())
        d = fdiv(mx, -float(half))
        v = xb * recip_or_zero(d)[:, None]
        v += half + 0.5
        q = _trunc_q(v).clamp_(max=(1 << cls.bits) - 1)
        return d, q


class _AffineLegacy(GGMLKernel):
    """Q4_1 / Q5_1: ``x = d * q + m``."""

    bits: int

    @classmethod
    def _levels(
        cls, x: torch.Tensor, imatrix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale d (B,), offset m (B,) and levels q (B, 32)."""
        nmax = (1 << cls.bits) - 1
        if imatrix is not None:
            w = _blocks_t(_row_weights(x, imatrix))
            d, the_min, L = make_qkx_quants(_blocks_t(x), w, nmax, -0.9, 0.05, 36, False, guarded=True)
            return d, -the_min, L.t().to(torch.int32)
        xb = x.reshape(-1, QK)
        xt = xb.t()
        mn = first_min(xt)
        mx = xt.amax(0)
        d = fdiv(mx - mn, float(nmax))
        v = (xb - mn[:, None]) * recip_or_zero(d)[:, None]
        v += 0.5
        q = _trunc_q(v)
        if cls.bits == 4:  # Q4_1 clamps with MIN(15, .); Q5_1 keeps the low 5 bits of a uint8
            q = q.clamp_(max=nmax)
        return d, mn, q


@register
class Q4_0(_SymmetricLegacy):
    qtype = T.Q4_0
    bits = 4

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        d, q = cls._levels(x, imatrix)
        out = torch.cat([fp16_bytes(d), _nibbles(q)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        q = _unpack_nibbles(b[:, 2:]).to(torch.int8) - 8
        return (d * q.to(F32)).reshape(data.shape[0], -1)


@register
class Q5_0(_SymmetricLegacy):
    qtype = T.Q5_0
    bits = 5

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        d, q = cls._levels(x, imatrix)
        # layout: d (fp16), qh (u32: bit j = bit 4 of q[j]), qs[16] (low nibbles)
        out = torch.cat([fp16_bytes(d), _high_bits(q), _nibbles(q)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        qh = unpack_bits_le(b[:, 2:6])
        q = (_unpack_nibbles(b[:, 6:]) | (qh << 4)).to(torch.int8) - 16
        return (d * q.to(F32)).reshape(data.shape[0], -1)


@register
class Q4_1(_AffineLegacy):
    qtype = T.Q4_1
    bits = 4

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        d, m, q = cls._levels(x, imatrix)
        out = torch.cat([fp16_bytes(d), fp16_bytes(m), _nibbles(q)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        m = b[:, 2:4].contiguous().view(torch.float16).to(F32)
        q = _unpack_nibbles(b[:, 4:]).to(F32)
        return (d * q + m).reshape(data.shape[0], -1)


@register
class Q5_1(_AffineLegacy):
    qtype = T.Q5_1
    bits = 5

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        d, m, q = cls._levels(x, imatrix)
        out = torch.cat([fp16_bytes(d), fp16_bytes(m), _high_bits(q), _nibbles(q)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        m = b[:, 2:4].contiguous().view(torch.float16).to(F32)
        qh = unpack_bits_le(b[:, 4:8])
        q = (_unpack_nibbles(b[:, 8:]) | (qh << 4)).to(F32)
        return (d * q + m).reshape(data.shape[0], -1)
