"""Batched ports of ggml's scale searches (``make_qx_quants``, ``make_q3_quants``,
``make_qkx_quants``, ``make_qp_quants``), on the float32 primitives of ``common`` and under its
bit-exactness rules. x, w: (n, B); results per block: (B,); L: (n, B).
"""

from __future__ import annotations

import torch

from .common import (
    F32,
    GROUP_MAX_EPS,
    fconst,
    fdiv,
    first_absmax,
    first_min,
    nearest_int,
    rint,
    scratch,
    seq_sum,
    where_blocks,
)

# ---------------------------------------------------------------------------------------------------
# Batched ports of ggml's scale searches. x, w: (n, B); results per block: (B,); L: (n, B).
# ---------------------------------------------------------------------------------------------------


def _qx_numerators(nmax: int, device: torch.device) -> torch.Tensor:
    """``-nmax`` then ``-(nmax + 0.1f*is)`` for is = -9..9 without 0, all in float32."""
    steps = torch.tensor([s for s in range(-9, 10) if s != 0], dtype=F32)
    nums = -(float(nmax) + torch.tensor(0.1, dtype=F32) * steps)
    return torch.cat([torch.tensor([-float(nmax)], dtype=F32), nums]).to(device)


def make_qx_quants(x: torch.Tensor, nmax: int, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: signed scale and ``L = l + nmax``.

    ``w=None`` means the rmse_type 1 weights ``x*x``. The 19 trial scales ``-(nmax + 0.1*is)/max``
    are independent; each is one vectorised pass, the acceptance ``sumlx^2 > best*suml2`` is replayed
    in order and the levels of the kept trial are recomputed at the end. All-zero blocks
    (max |x| < 1e-15) give scale 0 and L = 0 (not ``nmax``), exactly as the C code leaves them.
    """
    n, nb = x.shape
    amax, mx = first_absmax(x)
    if w is None:
        w = x * x
    wx = w * x
    zero = fconst(0.0, x)
    prods = scratch("qx_prods", (n, 2, nb), F32, x.device)
    v = scratch("qx_v", (n, nb), F32, x.device)
    scale = best = sel = zero
    for k, num in enumerate(_qx_numerators(nmax, torch.device("cpu")).tolist()):
        isc = fdiv(num, mx)
        # |iscale*x| <= nmax + 0.9, so rounding in float is nearest_int
        lv = torch.mul(x, isc, out=v).round_().clamp_(-nmax, nmax - 1)
        torch.mul(wx, lv, out=prods[:, 0])
        torch.mul(w, lv, out=prods[:, 1]).mul_(lv)
        sumlx, suml2 = seq_sum(prods)
        if k == 0:
            scale = torch.where(suml2 != 0, fdiv(sumlx, suml2), zero)
            best, sel = scale * sumlx, isc
            continue
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = torch.where(take, fdiv(sumlx, suml2), scale)
        best = torch.where(take, scale * sumlx, best)
        sel = torch.where(take, isc, sel)
    L = rint(x * sel).clamp_(-nmax, nmax - 1) + nmax
    is_zero = amax < GROUP_MAX_EPS
    return torch.where(is_zero, zero, scale), where_blocks(is_zero, 0.0, L)


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
    return torch.where(is_zero, zero, scale), where_blocks(is_zero, 0.0, L)


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
    divide by, so the trials run in order (each one vectorised over all blocks). The levels of the
    kept trial are recomputed once at the end from the (min, iscale) it used.
    Returns ``(scale, the_min, L)`` with ``the_min = -min >= 0``.
    """
    n, nb = x.shape
    zero = fconst(0.0, x)
    mn = first_min(x)
    mx = x.amax(0)
    xmin = mn
    sum_w = seq_sum(w, from_zero=False)
    sum_x = seq_sum(w * x, from_zero=False)
    mn = torch.where(mn > 0, zero, mn)
    degenerate = mx == mn
    iscale = fdiv(float(nmax), mx - mn)
    scale = fdiv(1.0, iscale)
    # exact nearest_int: with a subnormal range, iscale overflows and C's wrap-around decides L
    L0 = nearest_int(iscale * (x - mn)).clamp_(0, nmax).to(F32)
    diff = scale * L0 + mn - x
    err = diff.abs_() if use_mad else diff.mul_(diff)
    best = seq_sum(err.mul_(w))

    def levels(v: torch.Tensor, isc: torch.Tensor, exact: bool) -> torch.Tensor:
        """Trial levels from ``v = iscale*(x - min)``, in place where possible."""
        if guarded:
            # l = v > 0 ? nearest_int(MIN(v, nmax)) : 0: clamp(rint(v)) for every v but NaN, which only
            # an infinite iscale (a min moved onto max) produces and which must give 0
            if not bool(torch.isfinite(isc).all()):
                torch.nan_to_num_(v, nan=0.0)
            return v.round_().clamp_(0, nmax)
        if exact:  # replay nearest_int's wrap-around for |v| > 4194303 (e.g. a min moved next to max)
            return nearest_int(v).clamp_(0, nmax).to(F32)
        return v.round_().clamp_(0, nmax)

    nums = _qkx_numerators(nmax, rmin, rdelta, nstep, torch.device("cpu")).tolist()
    prods = scratch("qkx_prods", (n, 3, nb), F32, x.device)
    wl, wll, wlx = prods[:, 0], prods[:, 1], prods[:, 2]
    v = scratch("qkx_v", (n, nb), F32, x.device)
    e = scratch("qkx_e", (n, nb), F32, x.device)
    sel_mn = mn
    sel_isc = zero.expand(nb)
    took = torch.zeros(nb, dtype=torch.bool, device=x.device)
    any_exact = False
    for num in nums:
        rng = mx - mn
        isc = fdiv(num, rng)
        exact = False
        if not guarded:
            # |v| <= |isc| * max(max - min, |min - xmin|); exact nearest_int only if that may pass 4194303
            maxdev = torch.maximum(rng, (mn - xmin).abs())
            exact = not float((isc.abs() * maxdev).amax()) < 4.0e6
            any_exact |= exact
        torch.sub(x, mn, out=v)
        lv = levels(v.mul_(isc), isc, exact)
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
        torch.mul(lv, this_scale, out=e)
        e.add_(this_min).sub_(x)
        if use_mad:
            e.abs_()
        else:
            e.mul_(e)
        cur = seq_sum(e.mul_(w))
        take = (D > 0) & (cur < best) & ~degenerate  # C returns before the trials for those
        best = torch.where(take, cur, best)
        scale = torch.where(take, this_scale, scale)
        sel_mn = torch.where(take, mn, sel_mn)
        sel_isc = torch.where(take, isc, sel_isc)
        took |= take
        mn = torch.where(take, this_min, mn)
    lsel = levels((x - sel_mn) * sel_isc, sel_isc, any_exact)
    # small integer levels: the blend L0 + took*(lsel - L0) is exact and much faster than where
    L = lsel.sub_(L0).mul_(took.to(F32)).add_(L0)
    L = where_blocks(degenerate, 0.0, L)
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
