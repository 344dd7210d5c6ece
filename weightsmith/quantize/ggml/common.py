"""Batched float32 primitives of ggml's quantizers, written so that every rounding matches the C code.

Bit-exactness with ggml (built without floating-point contraction) rests on a few rules kept
throughout this package:

* every arithmetic step is a separate torch op in the C evaluation order: ``a*b + c`` is never fused,
  ``w*x*l`` is ``(w*x)*l``;
* sums are sequential float32 accumulations (``seq_sum``), never torch's pairwise/vectorised sums;
* divisions are true divisions by device tensors (``fdiv``): ``c / t`` in torch is ``c * (1/t)``,
  and CUDA turns ``t / scalar`` into a multiplication by the reciprocal;
* ties follow the C loops: the first element wins a strict ``>`` search (``argmax`` keeps the first),
  and the sequential "accept if better" selections are replayed step by step.

Block data is laid out element-first, ``(n, B)`` for B blocks of n elements, so that the per-element
slices of a sequential sum are contiguous. Search steps add an axis: ``(n, S, B)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

F32 = torch.float32
#: ggml's "all zero" threshold (GROUP_MAX_EPS)
GROUP_MAX_EPS = 1e-15


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


def steps_f32(values: Sequence[float]) -> torch.Tensor:
    """A 1-D float32 tensor of per-step constants computed elsewhere in float32."""
    return torch.tensor(list(values), dtype=F32)


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
    acc = t[0] + 0.0 if from_zero else t[0].clone()
    for i in range(1, t.shape[0]):
        acc += t[i]
    return acc


def first_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(amax, max)`` over dim 0: the largest |x| and the signed value where it first occurs.

    Matches ``if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` starting from 0.
    """
    ax = x.abs()
    idx = ax.argmax(0, keepdim=True)
    return ax.gather(0, idx)[0], x.gather(0, idx)[0]


def first_min(x: torch.Tensor) -> torch.Tensor:
    """Minimum over dim 0 with the sign of zero of its first occurrence (``if (x[i] < min) min = x[i]``)."""
    return x.gather(0, x.argmin(0, keepdim=True))[0]


def pack_low_high(lo: torch.Tensor, hi: torch.Tensor, shift: int) -> torch.Tensor:
    """``lo | hi << shift`` as uint8 (inputs hold small non-negative ints of any dtype)."""
    return (lo.to(torch.uint8) | (hi.to(torch.uint8) << shift)).to(torch.uint8)


def pack_bits_le(bits: torch.Tensor) -> torch.Tensor:
    """Pack 0/1 values along the last dim (a multiple of 8) into bytes, bit k of byte b = bits[8b+k]."""
    b = bits.to(torch.uint8).reshape(*bits.shape[:-1], -1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (b * weights).sum(-1, dtype=torch.uint8)


def unpack_bits_le(data: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_bits_le`: ``(..., m)`` bytes -> ``(..., 8m)`` values 0/1 (uint8)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)
    return ((data.unsqueeze(-1) >> shifts) & 1).reshape(*data.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------------
# Batched ports of ggml's scale searches. x, w: (n, B); results per block: (B,); L: (n, B).
# ---------------------------------------------------------------------------------------------------


def _gather_step(values: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Pick step ``sel[b]`` of ``values`` (n, S, B) for every block b -> (n, B)."""
    n, _, b = values.shape
    return values.gather(1, sel.view(1, 1, b).expand(n, 1, b))[:, 0]


def _qx_numerators(nmax: int, device: torch.device) -> torch.Tensor:
    """``-nmax`` then ``-(nmax + 0.1f*is)`` for is = -9..9 without 0, all in float32."""
    steps = torch.tensor([s for s in range(-9, 10) if s != 0], dtype=F32)
    nums = -(float(nmax) + torch.tensor(0.1, dtype=F32) * steps)
    return torch.cat([torch.tensor([-float(nmax)], dtype=F32), nums]).to(device)


def make_qx_quants(x: torch.Tensor, nmax: int, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: signed scale and ``L = l + nmax``.

    ``w=None`` means the rmse_type 1 weights ``x*x``. All-zero blocks (max |x| < 1e-15) give
    scale 0 and L = 0 (not ``nmax``), exactly as the C code leaves them.
    """
    n, nb = x.shape
    amax, mx = first_absmax(x)
    if w is None:
        w = x * x
    nums = _qx_numerators(nmax, x.device)
    iscale = nums[:, None] / mx[None, :]  # (S, B)
    # |iscale*x| <= nmax + 0.9, so rounding in float is nearest_int
    lv = rint(x[:, None, :] * iscale[None]).clamp_(-nmax, nmax - 1)  # (n, S, B)
    prods = torch.empty((n, 2, *lv.shape[1:]), dtype=F32, device=x.device)
    torch.mul((w * x)[:, None, :], lv, out=prods[:, 0])
    torch.mul(w[:, None, :] * lv, lv, out=prods[:, 1])
    sumlx, suml2 = seq_sum(prods)
    zero = fconst(0.0, x)
    scale = torch.where(suml2[0] != 0, fdiv(sumlx[0], suml2[0]), zero)
    best = scale * sumlx[0]
    sel = torch.zeros(nb, dtype=torch.int64, device=x.device)
    for k in range(1, nums.shape[0]):
        lx, l2 = sumlx[k], suml2[k]
        take = (l2 > 0) & (lx * lx > best * l2)
        scale = torch.where(take, fdiv(lx, l2), scale)
        best = torch.where(take, scale * lx, best)
        sel = torch.where(take, k, sel)
    L = _gather_step(lv, sel) + nmax
    is_zero = amax < GROUP_MAX_EPS
    L = torch.where(is_zero[None, :], zero, L)
    scale = torch.where(is_zero, zero, scale)
    return scale, L


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml ``make_q3_quants(n, nmax, x, L, do_rmse=true)``: weighted fit then coordinate descent.

    The descent is sequential over the elements of a block (each step sees the sums the previous one
    left), so it is a loop over n with every block advancing in lockstep. A pass that changes nothing
    leaves the state as it was, so stopping early per block (as C does) equals running all 5 passes.
    """
    n, _ = x.shape
    amax, mx = first_absmax(x)
    iscale = fdiv(-float(nmax), mx)
    L = rint(x * iscale).clamp_(-nmax, nmax - 1)  # |iscale*x| <= nmax
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(w * L * L)
    rows = [L[i].clone() for i in range(n)]
    for _ in range(5):
        changed_any = torch.zeros((), dtype=torch.bool, device=x.device)
        for i in range(n):
            li = rows[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new_l = nearest_int(fdiv(x[i] * sl2, slx)).clamp_(-nmax, nmax - 1).to(F32)
            cand = (slx > 0) & (new_l != li)
            slx = slx + wx[i] * new_l
            sl2 = sl2 + w[i] * new_l * new_l
            take = cand & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            rows[i] = torch.where(take, new_l, li)
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
            changed_any |= take.any()
        if not bool(changed_any):
            break
    L = torch.stack(rows) + nmax
    zero = fconst(0.0, x)
    scale = torch.where(suml2 > 0, fdiv(sumlx, suml2), zero)
    is_zero = amax < GROUP_MAX_EPS
    return torch.where(is_zero, zero, scale), torch.where(is_zero[None, :], zero, L)


def _qkx_numerators(nmax: int, rmin: float, rdelta: float, nstep: int, device: torch.device) -> torch.Tensor:
    """``rmin + rdelta*is + nmax`` for is = 0..nstep, evaluated left to right in float32."""
    steps = torch.arange(nstep + 1, dtype=F32)
    nums = (torch.tensor(rmin, dtype=F32) + torch.tensor(rdelta, dtype=F32) * steps) + float(nmax)
    return nums.to(device)


def make_qkx_quants(
    x: torch.Tensor,
    w: torch.Tensor,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
    guarded: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ggml ``make_qkx2_quants`` (``guarded=False``) / ``make_qkx3_quants`` (``guarded=True``).

    Affine fit ``x ~ scale*L + min`` with ``min <= 0``: a first guess from the range, then nstep+1 trial
    scales ``(rmin + rdelta*is + nmax)/(max - min)``, each refit by weighted least squares and kept if
    its weighted error is strictly smaller. A kept trial also moves ``min``, which the next trials
    divide by, so the trials run in order (each one vectorised over all blocks).
    Returns ``(scale, the_min, L)`` with ``the_min = -min >= 0``.
    """
    n, nb = x.shape
    zero = fconst(0.0, x)
    mn = first_min(x)
    mx = x.amax(0)
    sum_w = seq_sum(w, from_zero=False)
    sum_x = seq_sum(w * x, from_zero=False)
    mn = torch.where(mn > 0, zero, mn)
    degenerate = mx == mn
    iscale = fdiv(float(nmax), mx - mn)
    scale = fdiv(1.0, iscale)
    L = rint(iscale * (x - mn)).clamp_(0, nmax)  # 0 <= iscale*(x-min) <= nmax
    diff = scale * L + mn - x
    err = diff.abs() if use_mad else diff * diff
    best = seq_sum(w * err)

    nums = _qkx_numerators(nmax, rmin, rdelta, nstep, torch.device("cpu")).tolist()
    prods = torch.empty((n, 3, nb), dtype=F32, device=x.device)
    wl, wll, wlx = prods[:, 0], prods[:, 1], prods[:, 2]
    for num in nums:
        isc = fdiv(num, mx - mn)
        v = (x - mn) * isc
        if guarded:
            # v > 0 ? nearest_int(MIN(v, nmax)) : 0; NaN only where all of a block's l are 0 in C,
            # which gives D = 0 there as NaN does here
            lv = v.round_().clamp_(0, nmax)
        elif bool((v.abs() > 4194303.0).any()):
            # a kept fit can move min next to max: replay nearest_int's wrap-around exactly
            lv = nearest_int(v).clamp_(0, nmax).to(F32)
        else:
            lv = v.round_().clamp_(0, nmax)
        torch.mul(w, lv, out=wl)
        torch.mul(wl, lv, out=wll)
        torch.mul(wl, x, out=wlx)
        sum_l, sum_l2, sum_xl = seq_sum(prods)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = fdiv(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = fdiv(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_min = torch.where(pos, zero, this_min)
        this_scale = torch.where(pos, fdiv(sum_xl, sum_l2), this_scale)
        d = lv * this_scale
        d += this_min
        d -= x
        if use_mad:
            d.abs_()
        else:
            d.mul_(d)
        d *= w
        cur = seq_sum(d)
        take = (D > 0) & (cur < best)
        best = torch.where(take, cur, best)
        scale = torch.where(take, this_scale, scale)
        mn = torch.where(take, this_min, mn)
        L = torch.where(take, lv, L)
    L = torch.where(degenerate, zero, L)
    scale = torch.where(degenerate, zero, scale)
    return scale, -mn, L


def make_qp_quants(x: torch.Tensor, nmax: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml ``make_qp_quants``: non-negative scale for non-negative x (sub-block scales and mins).

    Returns ``(scale, L)``; L holds what the C ``uint8_t L[]`` holds (values wrap modulo 256).
    """
    n, nb = x.shape
    zero = fconst(0.0, x)
    mx = torch.maximum(x.amax(0), zero)
    iscale = fdiv(float(nmax), mx)
    L = (nearest_int(iscale * x) & 0xFF).to(F32)
    scale = fdiv(1.0, iscale)
    diff = x - scale * L
    best = seq_sum(w * diff * diff)
    for s in [-4, -3, -2, -1, 1, 2, 3, 4]:
        num = (torch.tensor(0.1, dtype=F32) * float(s) + float(nmax)).item()
        isc = fdiv(num, mx)
        sc = fdiv(1.0, isc)
        lv = nearest_int(isc * x).clamp_(max=nmax).to(F32)
        diff = x - sc * lv
        mse = seq_sum(w * diff * diff)
        take = mse < best
        best = torch.where(take, mse, best)
        iscale = torch.where(take, isc, iscale)
    li = nearest_int(iscale * x).clamp_(max=nmax)
    lf = li.to(F32)
    sumlx = seq_sum(w * x * lf)
    suml2 = seq_sum(w * lf * lf)
    wx = w * x
    rows = [(li[i] & 0xFF).to(F32) for i in range(n)]
    for _ in range(5):
        changed_any = torch.zeros((), dtype=torch.bool, device=x.device)
        for i in range(n):
            li_ = rows[i]
            slx = sumlx - wx[i] * li_
            sl2 = suml2 - w[i] * li_ * li_
            new_i = nearest_int(fdiv(x[i] * sl2, slx)).clamp_(max=nmax)
            new_l = new_i.to(F32)
            cand = (slx > 0) & (sl2 > 0) & (new_l != li_)
            slx = slx + wx[i] * new_l
            sl2 = sl2 + w[i] * new_l * new_l
            take = cand & (slx * slx * suml2 > sumlx * sumlx * sl2)
            rows[i] = torch.where(take, (new_i & 0xFF).to(F32), li_)
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
            changed_any |= take.any()
        if not bool(changed_any):
            break
    L = torch.stack(rows)
    scale = torch.where(suml2 > 0, fdiv(sumlx, suml2), zero)
    is_zero = mx < GROUP_MAX_EPS
    return torch.where(is_zero, zero, scale), torch.where(is_zero[None, :], zero, L)
