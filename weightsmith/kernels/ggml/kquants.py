"""ggml's K-quants: 256-element super-blocks with quantized sub-block scales (Q2_K .. Q6_K).

Each type follows ``quantize_row_qX_K_ref`` without an importance matrix and
``quantize_row_qX_K_impl`` with one. Common shape of the algorithms: fit a scale (and for Q2/Q4/Q5 a
min) per sub-block, quantize those to 4/6/8 bits against one fp16 super-block scale, then requantize
every element with the *fp16-rounded* scales, except in sub-blocks whose scale came out 0, where the
levels of the first fit stay (ggml's ``if (!d) continue``).
"""

from __future__ import annotations

import math

import gguf
import torch

from .common import (
    F32,
    GROUP_MAX_EPS,
    fconst,
    fdiv,
    first_absmax,
    fp16_bytes,
    fp16_round,
    nearest_int,
    pack_low_high,
    seq_sum,
    sqrtf,
    where_blocks,
)
from .search import make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants
from .types import GGMLKernel, register

T = gguf.GGMLQuantizationType
QK_K = 256


def _sub_t(t: torch.Tensor, n: int) -> torch.Tensor:
    """(R, cols) -> element-first sub-blocks (n, R*cols/n); column b*k + j is sub-block j of super-block b."""
    return t.reshape(-1, n).t().contiguous()


def _sigma2(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor*sum(x^2)/256`` per super-block (sequential sum), broadcastable over (NB, 256)."""
    xt = x.reshape(-1, QK_K).t().contiguous()
    s = seq_sum(xt * xt)
    if factor != 1.0:
        s = s * factor
    return fdiv(s, float(QK_K))[:, None]


def _imatrix_weights(x: torch.Tensor, imatrix: torch.Tensor, factor: float) -> torch.Tensor:
    """``qw[j] * sqrtf(sigma2 + x[j]*x[j])`` as (NB, 256)."""
    xs = x.reshape(-1, QK_K)
    qw = imatrix.reshape(-1, QK_K).repeat(x.shape[0], 1)
    return qw * sqrtf(_sigma2(x, factor) + xs * xs)


def _positive_max(t: torch.Tensor) -> torch.Tensor:
    """Running ``if (v > m) m = v`` from 0 over dim 1: the max, or +0 when nothing is positive."""
    m = torch.nan_to_num(t, nan=0.0, posinf=math.inf, neginf=-math.inf).amax(1)  # NaN never wins in C
    return torch.where(m > 0, m, fconst(0.0, t))


def _requant(
    x: torch.Tensor, L: torch.Tensor, dj: torch.Tensor, dm: torch.Tensor | None, lo: int, hi: int
) -> torch.Tensor:
    """Levels ``clamp(nearest_int((x + dm)/dj), lo, hi)`` for sub-blocks with ``dj != 0``; others keep L.

    x, L: (NB, k, n); dj, dm: (NB, k). Returns int32 levels (before any +offset).
    """
    num = x if dm is None else x + dm[..., None]
    q = nearest_int(fdiv(num, dj[..., None])).clamp_(lo, hi)
    return where_blocks((dj == 0)[..., None], L, q)


def _pack_2bit(L: torch.Tensor) -> torch.Tensor:
    """(NB, 256) levels 0..3 -> (NB, 64): ``qs[32h + l] = sum_m L[128h + 32m + l] << 2m``."""
    v = L.to(torch.uint8).reshape(-1, 2, 4, 32)
    out = v[:, :, 0] | (v[:, :, 1] << 2) | (v[:, :, 2] << 4) | (v[:, :, 3] << 6)
    return out.reshape(-1, 64)


def _unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pack_2bit`: (NB, 64) -> (NB, 256)."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=qs.device).view(1, 1, 4, 1)
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


def _fp16_bytes_pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([fp16_bytes(a), fp16_bytes(b)], dim=1)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(NB, 2) little-endian fp16 bytes -> (NB, 1) float32."""
    return b.contiguous().view(torch.float16).to(F32)


# ------------------------------------------------------------------------------------------ Q2_K


@register
class Q2_K(GGMLKernel):
    """16 sub-blocks of 16: 2-bit levels, 4-bit scale and 4-bit min per sub-block, fp16 d and dmin.

    Layout: scales[16] (scale | min << 4), qs[64], d, dmin.
    """

    qtype = T.Q2_K
    chunk_elems = 1 << 18

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        xs = x.reshape(-1, QK_K)
        nb = xs.shape[0]
        sub = _sub_t(x, 16)
        zero = fconst(0.0, x)
        if imatrix is None:
            w = sub.abs()
            scales, mins, L = make_qkx_quants(sub, w, 3, -0.5, 0.1, 15, True, guarded=False)
            scales, mins = scales.view(nb, 16), mins.view(nb, 16)
            max_scale, max_min = _positive_max(scales), _positive_max(mins)
            has_s, has_m = max_scale > 0, max_min > 0
            ls = nearest_int(fdiv(15.0, max_scale)[:, None] * scales)
            lm = nearest_int(fdiv(15.0, max_min)[:, None] * mins)
            ls = torch.where(has_s[:, None], ls & 0xFF, 0)
            sc = torch.where(has_m[:, None], (ls | (lm << 4)) & 0xFF, ls)
            d = torch.where(has_s, fdiv(max_scale, 15.0), zero)
            dmin = torch.where(has_m, fdiv(max_min, 15.0), zero)
        else:
            wt = _sub_t(_imatrix_weights(x, imatrix, 1.0), 16)
            sw = seq_sum(wt).view(nb, 16).t()
            scales, mins, L = make_qkx_quants(sub, wt, 3, -0.9, 0.05, 36, False, guarded=True)
            d, Ls = make_qp_quants(scales.view(nb, 16).t(), 15, sw)
            dmin, Lm = make_qp_quants(mins.view(nb, 16).t(), 15, sw)
            sc = (Ls.t().to(torch.int32) | (Lm.t().to(torch.int32) << 4)) & 0xFF
        d16, dmin16 = fp16_round(d), fp16_round(dmin)
        dj = d16[:, None] * (sc & 0xF).to(F32)
        dm = dmin16[:, None] * (sc >> 4).to(F32)
        L = L.t().reshape(nb, 16, 16).to(torch.int32)
        L = _requant(xs.view(nb, 16, 16), L, dj, dm, 0, 3).reshape(nb, QK_K)
        out = torch.cat([sc.to(torch.uint8), _pack_2bit(L), _fp16_bytes_pair(d, dmin)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        sc = b[:, :16]
        d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
        dl = (d * (sc & 0xF).to(F32)).unsqueeze(-1)
        ml = (dmin * (sc >> 4).to(F32)).unsqueeze(-1)
        q = _unpack_2bit(b[:, 16:80]).reshape(-1, 16, 16).to(F32)
        return (dl * q - ml).reshape(data.shape[0], -1)


# ------------------------------------------------------------------------------------------ Q3_K


def _pack_q3_scales(l6: torch.Tensor) -> torch.Tensor:
    """(NB, 16) 6-bit values -> 12 bytes: low nibbles of j and j+8 in byte j<8, 2-bit highs in 8..11."""
    lo = l6 & 0xF
    hi = (l6 >> 4) & 3
    low = lo[:, :8] | (lo[:, 8:] << 4)
    h = hi.reshape(-1, 4, 4)  # h[:, k, i] = high bits of j = 4k + i
    high = h[:, 0] | (h[:, 1] << 2) | (h[:, 2] << 4) | (h[:, 3] << 6)
    return torch.cat([low, high], dim=1).to(torch.uint8)


def _unpack_q3_scales(b: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pack_q3_scales`: (NB, 12) -> (NB, 16) int32 in 0..63."""
    b = b.to(torch.int32)
    lo = torch.cat([b[:, :8] & 0xF, b[:, :8] >> 4], dim=1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32, device=b.device).view(1, 4, 1)
    hi = ((b[:, 8:12].unsqueeze(1) >> shifts) & 3).reshape(-1, 16)
    return lo | (hi << 4)


@register
class Q3_K(GGMLKernel):
    """16 sub-blocks of 16: 3-bit levels (2 low bits in qs, high bit in hmask), 6-bit signed scales.

    Layout: hmask[32], qs[64], scales[12], d.
    """

    qtype = T.Q3_K
    chunk_elems = 1 << 18

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        xs = x.reshape(-1, QK_K)
        nb = xs.shape[0]
        sub = _sub_t(x, 16)
        zero = fconst(0.0, x)
        if imatrix is None:
            scales, L = make_q3_quants(sub, 4)
            scales = scales.view(nb, 16)
            _, max_scale = first_absmax(scales.t())
            nonzero = max_scale != 0
            iscale = fdiv(-32.0, max_scale)
            l6 = nearest_int(iscale[:, None] * scales)
            l6 = ((l6 & 0xFF) ^ 0x80) - 0x80  # stored in an int8_t first
            l6 = torch.where(nonzero[:, None], l6.clamp_(-32, 31) + 32, 0)
            d = torch.where(nonzero, fdiv(1.0, iscale), zero)
        else:
            wt = _sub_t(_imatrix_weights(x, imatrix, 2.0), 16)
            sw = seq_sum(wt).view(nb, 16).t()
            scales, L = make_qx_quants(sub, 4, wt)
            d, Ls = make_qx_quants(scales.view(nb, 16).t(), 32, sw)
            l6 = Ls.t().to(torch.int32)
        packed = _pack_q3_scales(l6)
        sc = _unpack_q3_scales(packed) - 32
        dj = fp16_round(d)[:, None] * sc.to(F32)
        L = L.t().reshape(nb, 16, 16).to(torch.int32)
        L = _requant(xs.view(nb, 16, 16), L - 4, dj, None, -4, 3).reshape(nb, QK_K) + 4
        hbit = (L > 3).to(torch.uint8).reshape(nb, 8, 32)
        shifts = torch.arange(8, dtype=torch.uint8, device=x.device).view(1, 8, 1)
        hmask = (hbit << shifts).sum(1, dtype=torch.uint8)
        out = torch.cat([hmask, _pack_2bit(L & 3), packed, fp16_bytes(d)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        hmask, qs, scales = b[:, :32], b[:, 32:96], b[:, 96:108]
        d = _f16(b[:, 108:110])
        dl = (d * (_unpack_q3_scales(scales) - 32).to(F32)).unsqueeze(-1)
        shifts = torch.arange(8, dtype=torch.uint8, device=b.device).view(1, 8, 1)
        hbit = ((hmask.unsqueeze(1) >> shifts) & 1).reshape(-1, QK_K)
        q = _unpack_2bit(qs).to(torch.int8) - ((hbit ^ 1) << 2).to(torch.int8)
        return (dl * q.reshape(-1, 16, 16).to(F32)).reshape(data.shape[0], -1)


# ------------------------------------------------------------------------------------ Q4_K, Q5_K


def _pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """(NB, 8) 6-bit scales and mins -> 12 bytes (ggml's K_SCALE_SIZE packing for Q4_K/Q5_K)."""
    ls, lm = ls.to(torch.int32), lm.to(torch.int32)
    first = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    second = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    third = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return (torch.cat([first, second, third], dim=1) & 0xFF).to(torch.uint8)


def _unpack_k4_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``get_scale_min_k4`` for all 8 sub-blocks: (NB, 12) -> scales, mins (NB, 8) int32."""
    b = b.to(torch.int32)
    d, m, md = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = torch.cat([d & 63, (md & 0xF) | ((d >> 6) << 4)], dim=1)
    mn = torch.cat([m & 63, (md >> 4) | ((m >> 6) << 4)], dim=1)
    return sc, mn


class _Q45K(GGMLKernel):
    """Shared Q4_K / Q5_K: 8 sub-blocks of 32, 6-bit scales and mins, fp16 d and dmin."""

    nmax: int
    rmin: float
    nstep: int
    chunk_elems = 1 << 18

    @classmethod
    def _levels(
        cls, x: torch.Tensor, imatrix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Levels L (NB, 256) int32, packed scales (NB, 12), d and dmin (NB,) float32."""
        xs = x.reshape(-1, QK_K)
        nb = xs.shape[0]
        sub = _sub_t(x, 32)
        zero = fconst(0.0, x)
        if imatrix is None:
            av_x = sqrtf(fdiv(seq_sum(sub * sub), 32.0))
            w = av_x + sub.abs()
            scales, mins, L = make_qkx_quants(
                sub, w, cls.nmax, cls.rmin, 0.1, cls.nstep, False, guarded=False
            )
            scales, mins = scales.view(nb, 8), mins.view(nb, 8)
            max_scale, max_min = _positive_max(scales), _positive_max(mins)
            inv_scale = torch.where(max_scale > 0, fdiv(63.0, max_scale), zero)
            inv_min = torch.where(max_min > 0, fdiv(63.0, max_min), zero)
            # (uint8_t)nearest_int(.) then MIN(63, .)
            ls = (nearest_int(inv_scale[:, None] * scales) & 0xFF).clamp_(max=63)
            lm = (nearest_int(inv_min[:, None] * mins) & 0xFF).clamp_(max=63)
            d, dmin = fdiv(max_scale, 63.0), fdiv(max_min, 63.0)
        else:
            wt = _sub_t(_imatrix_weights(x, imatrix, 2.0), 32)
            sw = seq_sum(wt).view(nb, 8).t()
            scales, mins, L = make_qkx_quants(sub, wt, cls.nmax, -0.9, 0.05, 36, False, guarded=True)
            d, Ls = make_qp_quants(scales.view(nb, 8).t(), 63, sw)
            dmin, Lm = make_qp_quants(mins.view(nb, 8).t(), 63, sw)
            ls, lm = Ls.t().to(torch.int32), Lm.t().to(torch.int32)
            if cls.nmax == 31:  # only the Q5_K impl clamps with MIN(63, .)
                ls, lm = ls.clamp(max=63), lm.clamp(max=63)
        packed = _pack_k4_scales(ls, lm)
        sc, mn = _unpack_k4_scales(packed)
        dj = fp16_round(d)[:, None] * sc.to(F32)
        dm = fp16_round(dmin)[:, None] * mn.to(F32)
        L = L.t().reshape(nb, 8, 32).to(torch.int32)
        L = _requant(xs.view(nb, 8, 32), L, dj, dm, 0, cls.nmax).reshape(nb, QK_K)
        return L, packed, d, dmin

    @classmethod
    def _dequant(cls, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc, mn = _unpack_k4_scales(b[:, 4:16])
        dl = (d * sc.to(F32)).unsqueeze(-1)
        ml = (dmin * mn.to(F32)).unsqueeze(-1)
        return (dl * q.reshape(-1, 8, 32).to(F32) - ml).reshape(b.shape[0], -1)


def _pack_4bit_k(L: torch.Tensor) -> torch.Tensor:
    """(NB, 256) -> (NB, 128): ``qs[32c + l] = L[64c + l] & 15 | (L[64c + 32 + l] & 15) << 4``."""
    v = L.reshape(-1, 4, 2, 32)
    return pack_low_high(v[:, :, 0] & 0xF, v[:, :, 1] & 0xF, 4).reshape(-1, 128)


def _unpack_4bit_k(qs: torch.Tensor) -> torch.Tensor:
    v = qs.reshape(-1, 4, 1, 32)
    return torch.cat([v & 0xF, v >> 4], dim=2).reshape(-1, QK_K)


@register
class Q4_K(_Q45K):
    """Layout: d, dmin, scales[12], qs[128]."""

    qtype = T.Q4_K
    nmax = 15
    rmin = -1.0
    nstep = 20

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        L, packed, d, dmin = cls._levels(x, imatrix)
        out = torch.cat([_fp16_bytes_pair(d, dmin), packed, _pack_4bit_k(L)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        return cls._dequant(b, _unpack_4bit_k(b[:, 16:])).reshape(data.shape[0], -1)


@register
class Q5_K(_Q45K):
    """Layout: d, dmin, scales[12], qh[32] (bit c of qh[l] = bit 4 of L[32c + l]), qs[128]."""

    qtype = T.Q5_K
    nmax = 31
    rmin = -0.5
    nstep = 15

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        L, packed, d, dmin = cls._levels(x, imatrix)
        hb = ((L >> 4) & 1).to(torch.uint8).reshape(-1, 8, 32)
        shifts = torch.arange(8, dtype=torch.uint8, device=x.device).view(1, 8, 1)
        qh = (hb << shifts).sum(1, dtype=torch.uint8)
        out = torch.cat([_fp16_bytes_pair(d, dmin), packed, qh, _pack_4bit_k(L)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        shifts = torch.arange(8, dtype=torch.uint8, device=b.device).view(1, 8, 1)
        hb = ((b[:, 16:48].unsqueeze(1) >> shifts) & 1).reshape(-1, QK_K)
        q = _unpack_4bit_k(b[:, 48:]) | (hb << 4)
        return cls._dequant(b, q).reshape(data.shape[0], -1)


# ------------------------------------------------------------------------------------------ Q6_K


@register
class Q6_K(GGMLKernel):
    """16 sub-blocks of 16: 6-bit levels (4 low bits in ql, 2 high in qh), int8 scales, fp16 d.

    Layout: ql[128], qh[64], scales[16] (int8), d.
    """

    qtype = T.Q6_K
    chunk_elems = 1 << 17

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        xs = x.reshape(-1, QK_K)
        nb = xs.shape[0]
        sub = _sub_t(x, 16)
        qw = None if imatrix is None else _sub_t(imatrix.reshape(1, -1).expand(x.shape[0], -1), 16)
        scales, L = make_qx_quants(sub, 32, qw)
        scales = scales.view(nb, 16)
        max_abs, max_scale = first_absmax(scales.t())
        iscale = fdiv(-128.0, max_scale)
        d = fdiv(1.0, iscale)
        sc = nearest_int(iscale[:, None] * scales).clamp_(max=127)
        dj = fp16_round(d)[:, None] * sc.to(F32)
        L = L.t().reshape(nb, 16, 16).to(torch.int32)
        L = _requant(xs.view(nb, 16, 16), L - 32, dj, None, -32, 31).reshape(nb, QK_K) + 32
        v = L.reshape(nb, 2, 4, 32)
        ql = torch.cat([pack_low_high(v[:, :, 0] & 0xF, v[:, :, 2] & 0xF, 4),
                        pack_low_high(v[:, :, 1] & 0xF, v[:, :, 3] & 0xF, 4)], dim=2)  # fmt: skip
        h = (v >> 4).to(torch.uint8)
        qh = h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)
        out = torch.cat([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.to(torch.int8).view(torch.uint8),
                         fp16_bytes(d)], dim=1)  # fmt: skip
        out = where_blocks((max_abs < GROUP_MAX_EPS)[:, None], 0, out)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        b = data.reshape(-1, cls.type_size)
        ql, qh = b[:, :128].reshape(-1, 2, 1, 64), b[:, 128:192].reshape(-1, 2, 1, 32)
        sc = b[:, 192:208].contiguous().view(torch.int8).to(F32)
        d = _f16(b[:, 208:210])
        lo = torch.cat([ql & 0xF, ql >> 4], dim=2).reshape(-1, 2, 4, 32)
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).view(1, 1, 4, 1)
        hi = (qh >> shifts) & 3
        q = (lo | (hi << 4)).to(torch.int8) - 32
        dl = (d * sc).unsqueeze(-1)
        return (dl * q.reshape(-1, 16, 16).to(F32)).reshape(data.shape[0], -1)
