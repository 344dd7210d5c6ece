"""ggml's non-linear 4-bit types IQ4_NL (blocks of 32) and IQ4_XS (256 with 6-bit sub-block scales).

Both follow ``quantize_row_iq4_nl_impl`` as ``quantize_iq4_nl`` / ``quantize_iq4_xs`` call it (with
``ntry = 7`` whether or not an importance matrix is given): per 32-block, a weighted fit of the scale
over 16 trial inverse scales, each element mapped to the nearest of 16 fixed levels.
"""

from __future__ import annotations

import gguf
import torch

from .common import (
    F32,
    GROUP_MAX_EPS,
    fconst,
    fdiv,
    first_absmax,
    fp16_bytes,
    nearest_int,
    pack_low_high,
    recip_or_zero,
    scratch,
    seq_sum,
    sqrtf,
)
from .types import GGMLKernel, register

T = gguf.GGMLQuantizationType
KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
NTRY = 7


# best_index_int8 picks level k once 2v >= val[k-1] + val[k]; those sums are integers, so the level
# depends only on floor(2v), which a lookup table over [_LO, _HI] maps to the level (and its value).
_LO = KVALUES[0] + KVALUES[1] - 1
_HI = KVALUES[-2] + KVALUES[-1]
_LUTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _luts(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(level index, level value) for every ``floor(2v)`` in ``[_LO, _HI]``."""
    if device not in _LUTS:
        values = torch.tensor(KVALUES, dtype=F32)
        mids2 = values[:-1] + values[1:]
        f = torch.arange(_LO, _HI + 1, dtype=F32)
        idx = (f[:, None] >= mids2[None, :]).sum(1)
        _LUTS[device] = (idx.to(torch.uint8).to(device), values[idx].to(device))
    return _LUTS[device]


def _lut_pos(v: torch.Tensor) -> torch.Tensor:
    """Flat table positions of ``floor(2v)``; NaN maps to level 0 as in C (all tests false)."""
    f = torch.floor(v + v)
    torch.nan_to_num_(f, nan=float(_LO), posinf=float(_HI), neginf=float(_LO))
    return f.clamp_(_LO, _HI).sub_(_LO).to(torch.int32).view(-1)


def best_index(v: torch.Tensor) -> torch.Tensor:
    """ggml ``best_index_int8`` over the IQ4 levels (uint8 indices, same shape as v).

    Current ggml compares ``2v`` with the integer midpoints; the older binary search with a float
    distance test gives the same level for every finite float32 (checked exhaustively on
    [-140, 140]), and differs only for NaN (level 15 there, 0 here), i.e. for overflowing data.
    """
    return _luts(v.device)[0].index_select(0, _lut_pos(v)).view(v.shape)


def _level_values(v: torch.Tensor) -> torch.Tensor:
    """``values[best_index(v)]`` as float32."""
    return _luts(v.device)[1].index_select(0, _lut_pos(v)).view(v.shape)


def _block_scales(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per 32-block scale ``d`` (B,) from the initial guess and the 2*NTRY+1 trials; x, w: (32, B).

    Trials are independent (the max they divide by is fixed), so each is one vectorised pass; the
    acceptance ``sumqx^2 > best*sumq2`` is replayed in order.
    """
    amax, mx = first_absmax(x)
    zero = fconst(0.0, x)
    n, nb = x.shape
    prods = scratch("iq4_prods", (n, 2, nb), F32, x.device)
    d = best = zero
    inv = [fdiv(1.0, fdiv(-mx, float(KVALUES[0])))]  # ntry > 0: d = -max/values[0]
    inv += [fdiv(float(itry + KVALUES[0]), mx) for itry in range(-NTRY, NTRY + 1)]
    for k, ids in enumerate(inv):
        q = _level_values(x * ids)
        torch.mul(w, q, out=prods[:, 1])  # w*q, then (w*q)*x and (w*q)*q as in C
        torch.mul(prods[:, 1], x, out=prods[:, 0])
        prods[:, 1].mul_(q)
        sumqx, sumq2 = seq_sum(prods)
        if k == 0:
            d = torch.where(sumq2 > 0, fdiv(sumqx, sumq2), zero)
            best = d * sumqx
            continue
        take = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = torch.where(take, fdiv(sumqx, sumq2), d)
        best = torch.where(take, d * sumqx, best)
    return torch.where(amax < GROUP_MAX_EPS, zero, d)


def _weights(x: torch.Tensor, imatrix: torch.Tensor | None, super_block: int) -> torch.Tensor:
    """(R, n) weights: ``qw * sqrtf(sigma2 + x^2)``, sigma2 = 2/super_block * sum x^2 per super-block; else x^2."""
    if imatrix is None:
        return x * x
    xs = x.reshape(-1, super_block)
    xt = xs.t().contiguous()
    sigma2 = seq_sum(xt * xt) * fconst(2.0 / super_block, x)
    qw = imatrix.reshape(-1, super_block).repeat(x.shape[0], 1)
    return (qw * sqrtf(sigma2[:, None] + xs * xs)).reshape(x.shape)


def _pack_q4(L: torch.Tensor) -> torch.Tensor:
    """(B, 32) level indices -> (B, 16): ``L[j] | L[j+16] << 4``."""
    return pack_low_high(L[:, :16], L[:, 16:], 4)


def _unpack_q4(qs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(B, 16) -> (B, 32) level values as float32."""
    return values[torch.cat([qs & 0xF, qs >> 4], dim=-1).long()]


@register
class IQ4_NL(GGMLKernel):
    """Layout: d (fp16), qs[16] (level indices, element j low nibble / j+16 high nibble)."""

    qtype = T.IQ4_NL
    chunk_elems = 1 << 16

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        xt = x.reshape(-1, 32).t().contiguous()
        wt = _weights(x, imatrix, 32).reshape(-1, 32).t().contiguous()
        d = _block_scales(xt, wt)
        L = best_index(x.reshape(-1, 32) * recip_or_zero(d)[:, None])
        out = torch.cat([fp16_bytes(d), _pack_q4(L)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        values = _luts(data.device)[1].new_tensor(KVALUES)
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        return (d * _unpack_q4(b[:, 2:], values)).reshape(data.shape[0], -1)


@register
class IQ4_XS(GGMLKernel):
    """Layout: d (fp16), scales_h (u16: 2 high bits per sub-block), scales_l[4] (low nibbles), qs[128].

    Sub-block scale ``(ls - 32) * d`` with 6-bit ls.
    """

    qtype = T.IQ4_XS
    chunk_elems = 1 << 16

    @classmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        xt = x.reshape(-1, 32).t().contiguous()
        wt = _weights(x, imatrix, 256).reshape(-1, 32).t().contiguous()
        scales = _block_scales(xt, wt).view(-1, 8)
        nb = scales.shape[0]
        _, max_scale = first_absmax(scales.t())
        d = fdiv(-max_scale, 32.0)
        ls = nearest_int(recip_or_zero(d)[:, None] * scales).clamp_(-32, 31)
        dl = d[:, None] * ls.to(F32)
        L = best_index(x.reshape(nb, 8, 32) * recip_or_zero(dl)[..., None]).reshape(-1, 32)
        ls = ls + 32
        lo = ls & 0xF
        scales_l = (lo[:, 0::2] | (lo[:, 1::2] << 4)).to(torch.uint8)
        shifts = torch.arange(0, 16, 2, dtype=torch.int32, device=x.device)
        scales_h = ((ls >> 4) << shifts).sum(1, dtype=torch.int32)
        scales_h = torch.stack([scales_h & 0xFF, scales_h >> 8], dim=1).to(torch.uint8)
        out = torch.cat([fp16_bytes(d), scales_h, scales_l, _pack_q4(L).reshape(nb, 128)], dim=1)
        return out.reshape(x.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        values = _luts(data.device)[1].new_tensor(KVALUES)
        b = data.reshape(-1, cls.type_size)
        d = b[:, :2].contiguous().view(torch.float16).to(F32)
        sh = b[:, 2].to(torch.int32) | (b[:, 3].to(torch.int32) << 8)
        shifts = torch.arange(0, 16, 2, dtype=torch.int32, device=b.device)
        hi = (sh[:, None] >> shifts) & 3
        sl = b[:, 4:8]
        lo = torch.stack([sl & 0xF, sl >> 4], dim=2).reshape(-1, 8).to(torch.int32)
        dl = (d * ((lo | (hi << 4)) - 32).to(F32)).unsqueeze(-1)
        q = _unpack_q4(b[:, 8:].reshape(-1, 16), values).reshape(-1, 8, 32)
        return (dl * q).reshape(data.shape[0], -1)
