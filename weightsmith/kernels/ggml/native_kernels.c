/*
 * weightsmith: fused CPU kernels for ggml's reference quantizers (no importance matrix).
 *
 * Why this file exists: the torch kernels (legacy.py, kquants.py) reproduce ggml's float order
 * exactly, which forces sequential float32 sums and trial-by-trial scale searches; eager torch
 * runs each step as a separate pass over memory (~15 passes per trial), and on a 2-core CPU
 * that caps Q4_K at ~5 M elements/s. Here the same algorithms run fused, in registers.
 *
 * Exactness rules (the same as common.py's):
 *   - compiled with -ffp-contract=off and without -ffast-math: every a*b + c is two roundings,
 *     nothing is reassociated, divisions are true IEEE divisions;
 *   - sums run sequentially per block; vectors hold one block (or sub-block) per lane, so SIMD
 *     goes *across* blocks and never reorders a block's own sum;
 *   - ties and selections are replayed with the C comparisons (strict < or >, first occurrence);
 *   - float -> int conversions truncate as x86 does (0x80000000 for NaN and overflow), and the
 *     (int8_t)/(uint8_t) casts keep the low byte.
 *
 * Lanes: NL = 16 (AVX-512) or 8 blocks per vector. A tile is NL legacy blocks of 32, one
 * 256-super-block of 16x16 sub-blocks in 16/NL lane groups (Q2_K, Q3_K, Q6_K), or NL/8
 * super-blocks of 8x32 (Q4_K, Q5_K). The library is built for the machine it runs on
 * (-march=native), so the lane width follows the CPU.
 * Every exported function quantizes `n` float32 elements (a multiple of the type's block size)
 * into `y` and returns 1 if the input held NaN or infinity (the bytes are then meaningless),
 * else 0; a non-NULL `st` (two doubles) gets the error energy added (MEASURE below).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* lanes per vector: one 512-bit register with AVX-512, else two 128/256-bit halves' worth of 8 */
#ifndef NL
#if defined(__AVX512F__)
#define NL 16
#else
#define NL 8
#endif
#endif
#define NG (16 / NL) /* lane groups per 16-sub-block super-block */
#define SBT (NL / 8) /* 8x32 super-blocks per tile */
typedef float vf __attribute__((vector_size(NL * 4)));
typedef int32_t vi __attribute__((vector_size(NL * 4)));

#define AI static inline __attribute__((always_inline))

#define QK_K 256

/* ------------------------------------------------------------------------------------------ */
/* lane helpers                                                                                */

AI vf splat(float s) { return s - (vf){0}; } /* s - (+0) keeps the sign of a zero s */
AI vi isplat(int32_t s) { return s - (vi){0}; }
AI vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
AI vi isel(vi m, vi a, vi b) { return (m & a) | (~m & b); }
AI vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }
AI vi imin(vi a, vi b) { return isel(a < b, a, b); }
AI vi imax(vi a, vi b) { return isel(a > b, a, b); }
AI vi iclamp(vi a, int32_t lo, int32_t hi) { return imax(imin(a, isplat(hi)), isplat(lo)); }
AI vf tofloat(vi a) { return __builtin_convertvector(a, vf); }
AI vi trunc_i(vf a) { return __builtin_convertvector(a, vi); } /* cvttps2dq */
AI vi low_s8(vi a) { return ((a & 0xff) ^ 0x80) - 0x80; }          /* (int8_t) */

/* ggml's nearest_int: bits(f + 1.5*2^23) & 0x7fffff - 0x400000 */
AI vi nearest_int(vf f) {
    vf v = f + 12582912.f;
    return ((vi)v & 0x7fffff) - 0x400000;
}
AI int32_t nearest_int1(float f) {
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x7fffff) - 0x400000;
}

AI int any_nonfinite(vf acc) {
    vi bad = acc != acc;
    for (int l = 0; l < NL; l++)
        if (bad[l]) return 1;
    return 0;
}

/* x holds NL consecutive blocks of n floats; xt[i][l] = element i of block l */
AI void load_tile(const float *x, int n, vf *xt) {
    for (int l = 0; l < NL; l++)
        for (int i = 0; i < n; i++) xt[i][l] = x[l * n + i];
}

#if defined(__FLT16_MAX__) && !defined(WS_SOFT_FP16)
AI uint16_t f2h(float f) {
    _Float16 h = (_Float16)f; /* round to nearest even, like GGML_FP32_TO_FP16 */
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
AI float h2f(uint16_t u) {
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}
#else
/* compilers without _Float16 (GCC < 12 on x86): the same conversions in integer arithmetic.
 * Inputs are finite here (non-finite blocks are refused), but inf and NaN still map sensibly. */
AI uint16_t f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to infinity */
    if (ax < 0x38800000) {                                   /* half subnormal or zero */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint32_t)nearest_int1(a * 16777216.f)); /* exact scaling by 2^24 */
    }
    uint32_t t = ax - 0x38000000; /* rebias the exponent from 127 to 15 */
    return (uint16_t)(sign | ((t + 0x0fff + ((t >> 13) & 1)) >> 13)); /* round to nearest even */
}
AI float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
        memcpy(&bits, &v, 4);
        bits |= sign;
    } else if (e == 31) {
        bits = sign | 0x7f800000 | (m << 13);
    } else {
        bits = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
#endif
AI void put_h(uint8_t *p, float f) {
    uint16_t u = f2h(f);
    memcpy(p, &u, 2);
}

/* ------------------------------------------------------------------------------------------ */
/* legacy types: 16 blocks of 32 per tile                                                      */

enum { LEG_Q4_0, LEG_Q5_0, LEG_Q4_1, LEG_Q5_1 }; /* Q8_0: block_q8_0 below */

AI vf qx(int n, int nmax, const vf *x, const vf *qw, vi *L);
AI void qkx(int n, int nmax, const vf *x, const vf *w, vi *L, vf *scale_out, vf *the_min_out, float rmin,
            float rdelta, int nstep, int use_mad, int guarded);
AI vf finite_acc(const vf *xt, int n);

AI int tile_legacy(const float *x, const float *wts, uint8_t *y, int kind, int type_size) {
    vf xt[32];
    load_tile(x, 32, xt);
    vf fin = {0};
    vi q[32];
    vf d, m = {0};
    if (wts) { /* quantize_row_q4_0_impl and friends (Q8_0 has none) */
        vf w[32];
        load_tile(wts, 32, w);
        fin = finite_acc(xt, 32);
        if (kind == LEG_Q4_0 || kind == LEG_Q5_0) {
            d = qx(32, kind == LEG_Q4_0 ? 8 : 16, xt, w, q);
        } else {
            vf the_min;
            qkx(32, kind == LEG_Q4_1 ? 15 : 31, xt, w, q, &d, &the_min, -0.9f, 0.05f, 36, 0, 1);
            m = -the_min;
        }
    } else if (kind == LEG_Q4_0 || kind == LEG_Q5_0) {
        const float half = kind == LEG_Q4_0 ? 8.f : 16.f;
        const int32_t top = kind == LEG_Q4_0 ? 15 : 31;
        vf amax = {0}, mx = {0};
        for (int i = 0; i < 32; i++) {
            vf a = vabs(xt[i]);
            vi take = amax < a;
            amax = vsel(take, a, amax);
            mx = vsel(take, xt[i], mx);
            fin += xt[i] * 0.f;
        }
        d = mx / -half;
        vf id = vsel(d != 0, 1.f / d, splat(0.f));
        for (int i = 0; i < 32; i++) q[i] = imin(low_s8(trunc_i(xt[i] * id + (half + 0.5f))), isplat(top));
    } else {
        const float nmax = kind == LEG_Q4_1 ? 15.f : 31.f;
        vf mn = xt[0], mx = xt[0];
        for (int i = 0; i < 32; i++) {
            mn = vsel(xt[i] < mn, xt[i], mn);
            mx = vsel(xt[i] > mx, xt[i], mx);
            fin += xt[i] * 0.f;
        }
        d = (mx - mn) / nmax;
        m = mn;
        vf id = vsel(d != 0, 1.f / d, splat(0.f));
        for (int i = 0; i < 32; i++) {
            vi t = low_s8(trunc_i((xt[i] - mn) * id + 0.5f));
            q[i] = kind == LEG_Q4_1 ? imin(t, isplat(15)) : t;
        }
    }
    /* pack in vector registers (one block per lane), then copy each lane's bytes out */
    const int q5 = kind == LEG_Q5_0 || kind == LEG_Q5_1, affine = kind == LEG_Q4_1 || kind == LEG_Q5_1;
    vi qh = {0}, nib[16];
    for (int j = 0; j < 16; j++)
        nib[j] = q5 ? (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4) : (q[j] & 0xff) | ((q[j + 16] << 4) & 0xff);
    if (q5)
        for (int j = 0; j < 32; j++) qh |= ((q[j] >> 4) & 1) << j;
    for (int l = 0; l < NL; l++) {
        uint8_t *b = y + (int64_t)l * type_size;
        put_h(b, d[l]);
        uint8_t *qs = b + 2;
        if (affine) {
            put_h(b + 2, m[l]);
            qs = b + 4;
        }
        if (q5) {
            uint32_t h = (uint32_t)qh[l];
            memcpy(qs, &h, 4);
            qs += 4;
        }
        for (int j = 0; j < 16; j++) qs[j] = (uint8_t)nib[j][l];
    }
    return any_nonfinite(fin);
}

/* ------------------------------------------------------------------------------------------ */
/* scale searches, one (sub-)block per lane                                                    */

/* make_qkx2_quants (guarded = 0) / make_qkx3_quants (guarded = 1): affine fit x ~ scale*L + min
 * (min <= 0), nstep+1 trial scales; qkx3 takes trial levels as v > 0 ? nearest_int(MIN(v, nmax)) : 0. */
AI void qkx(int n, int nmax, const vf *x, const vf *w, vi *L, vf *scale_out, vf *the_min_out, float rmin,
            float rdelta, int nstep, int use_mad, int guarded) {
    vf mn = x[0], mx = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        mn = vsel(x[i] < mn, x[i], mn);
        mx = vsel(x[i] > mx, x[i], mx);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    mn = vsel(mn > 0, splat(0.f), mn);
    vi degen = mx == mn;
    vf iscale = (float)nmax / (mx - mn);
    vf scale = 1.f / iscale;
    vf best = {0};
    for (int i = 0; i < n; i++) {
        vi l = iclamp(nearest_int(iscale * (x[i] - mn)), 0, nmax);
        L[i] = l;
        vf diff = scale * tofloat(l) + mn - x[i];
        diff = use_mad ? vabs(diff) : diff * diff;
        best += w[i] * diff;
    }
    vi Laux[32];
    for (int is = 0; is <= nstep; ++is) {
        float num = rmin + rdelta * (float)is + (float)nmax;
        vf isc = num / (mx - mn);
        vf sum_l = {0}, sum_l2 = {0}, sum_xl = {0};
        for (int i = 0; i < n; i++) {
            vf v = isc * (x[i] - mn);
            vi l = guarded ? isel(v > 0, nearest_int(vsel(v < (float)nmax, v, splat((float)nmax))), isplat(0))
                           : iclamp(nearest_int(v), 0, nmax);
            Laux[i] = l;
            vf lf = tofloat(l);
            vf wl = w[i] * lf;
            sum_l += wl;
            sum_l2 += wl * lf;
            sum_xl += wl * x[i];
        }
        vf D = sum_w * sum_l2 - sum_l * sum_l;
        vf this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        vf this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        vi pos = this_min > 0;
        this_min = vsel(pos, splat(0.f), this_min);
        this_scale = vsel(pos, sum_xl / sum_l2, this_scale);
        vf cur = {0};
        for (int i = 0; i < n; i++) {
            vf diff = this_scale * tofloat(Laux[i]) + this_min - x[i];
            diff = use_mad ? vabs(diff) : diff * diff;
            cur += w[i] * diff;
        }
        vi take = (D > 0) & (cur < best) & ~degen;
        int any = 0;
        for (int l = 0; l < NL; l++) any |= take[l];
        if (!any) continue;
        for (int i = 0; i < n; i++) L[i] = isel(take, Laux[i], L[i]);
        best = vsel(take, cur, best);
        scale = vsel(take, this_scale, scale);
        mn = vsel(take, this_min, mn);
    }
    for (int i = 0; i < n; i++) L[i] = isel(degen, isplat(0), L[i]);
    *scale_out = vsel(degen, splat(0.f), scale);
    *the_min_out = -mn;
}

/* the largest |x| and the signed x where it first occurs (strict >, from 0): ggml's max search */
AI void first_absmax(int n, const vf *x, vf *amax_out, vf *max_out) {
    vf amax = {0}, mx = {0};
    for (int i = 0; i < n; i++) {
        vf a = vabs(x[i]);
        vi t = a > amax;
        amax = vsel(t, a, amax);
        mx = vsel(t, x[i], mx);
    }
    *amax_out = amax;
    *max_out = mx;
}

/* make_qx_quants with rmse_type 1: weights qw, or x*x without them; L is stored + nmax. */
AI vf qx(int n, int nmax, const vf *x, const vf *qw, vi *L) {
    vf amax, mx;
    first_absmax(n, x, &amax, &mx);
    vi zero = amax < 1e-15f;
    vf w[32], wx[32];
    for (int i = 0; i < n; i++) {
        w[i] = qw ? qw[i] : x[i] * x[i];
        wx[i] = w[i] * x[i];
    }
    vf scale = {0}, best = {0}, sel = {0};
    for (int k = 0; k < 19; k++) {
        int is = k == 0 ? 0 : (k <= 9 ? k - 10 : k - 9); /* 0, then -9..-1, 1..9 */
        float num = k == 0 ? -(float)nmax : -((float)nmax + 0.1f * (float)is);
        vf isc = num / mx;
        vf sumlx = {0}, suml2 = {0};
        for (int i = 0; i < n; i++) {
            vf lf = tofloat(iclamp(nearest_int(isc * x[i]), -nmax, nmax - 1));
            sumlx += wx[i] * lf;
            suml2 += w[i] * lf * lf;
        }
        if (k == 0) {
            scale = vsel(suml2 != 0, sumlx / suml2, splat(0.f));
            best = scale * sumlx;
            sel = isc;
            continue;
        }
        vi take = (suml2 > 0) & (sumlx * sumlx > best * suml2);
        scale = vsel(take, sumlx / suml2, scale);
        best = vsel(take, scale * sumlx, best);
        sel = vsel(take, isc, sel);
    }
    for (int i = 0; i < n; i++)
        L[i] = isel(zero, isplat(0), iclamp(nearest_int(sel * x[i]), -nmax, nmax - 1) + nmax);
    return vsel(zero, splat(0.f), scale);
}

/* make_q3_quants(n, nmax, x, L, do_rmse=true); L is stored + nmax. */
AI vf q3(int n, int nmax, const vf *x, vi *L) {
    vf amax, mx;
    first_absmax(n, x, &amax, &mx);
    vi zero = amax < 1e-15f;
    vf iscale = -(float)nmax / mx;
    vf w[16], wx[16], Lf[16];
    vf sumlx = {0}, suml2 = {0};
    for (int i = 0; i < n; i++) {
        Lf[i] = tofloat(iclamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
        sumlx += wx[i] * Lf[i];
        suml2 += w[i] * Lf[i] * Lf[i];
    }
    for (int itry = 0; itry < 5; ++itry) {
        vi changed = {0};
        for (int i = 0; i < n; i++) {
            vf li = Lf[i];
            vf slx = sumlx - wx[i] * li;
            vf sl2 = suml2 - w[i] * li * li;
            vf nl = tofloat(iclamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1));
            vi cand = (slx > 0) & (nl != li);
            slx = slx + wx[i] * nl;
            sl2 = sl2 + w[i] * nl * nl;
            vi take = cand & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2);
            Lf[i] = vsel(take, nl, li);
            sumlx = vsel(take, slx, sumlx);
            suml2 = vsel(take, sl2, suml2);
            changed |= take;
        }
        int any = 0;
        for (int l = 0; l < NL; l++) any |= changed[l];
        if (!any) break;
    }
    for (int i = 0; i < n; i++) L[i] = isel(zero, isplat(0), trunc_i(Lf[i]) + nmax);
    vf scale = vsel(suml2 > 0, sumlx / suml2, splat(0.f));
    return vsel(zero, splat(0.f), scale);
}

/* make_qp_quants: non-negative scale for non-negative x (sub-block scales, mins); scalar, n <= 16 */
AI float qp1(int n, int nmax, const float *x, uint8_t *L, const float *w) {
    float max = 0;
    for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
    if (max < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)nearest_int1(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int1(iscale_is * x[i]);
            l = l < nmax ? l : nmax;
            float diff = x[i] - scale_is * l;
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int1(iscale * x[i]);
        l = l < nmax ? l : nmax;
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            float wi = w[i];
            float slx = sumlx - wi * x[i] * L[i];
            float sl2 = suml2 - wi * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = nearest_int1(x[i] * sl2 / slx);
                new_l = new_l < nmax ? new_l : nmax;
                if (new_l != L[i]) {
                    slx += wi * x[i] * new_l;
                    sl2 += wi * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* a tile of importance weights, and their sequential sum per lane (the sub-block's sw) */
AI vf load_weights(const float *wts, int n, vf *w) {
    load_tile(wts, n, w);
    vf sum = {0};
    for (int i = 0; i < n; i++) sum += w[i];
    return sum;
}

AI vf finite_acc(const vf *xt, int n) {
    vf fin = {0};
    for (int i = 0; i < n; i++) fin += xt[i] * 0.f;
    return fin;
}

/* ------------------------------------------------------------------------------------------ */
/* Q4_K / Q5_K: tile = NL/8 super-blocks, lane = sub-block of 32                                */

/* ggml's get_scale_min_k4: sub-block j's 6-bit scale and min from the 12 packed bytes */
AI void scale_min_k4(int j, const uint8_t *p, int *sc, int *m) {
    if (j < 4) {
        *sc = p[j] & 63;
        *m = p[j + 4] & 63;
    } else {
        *sc = (p[j + 4] & 0xf) | ((p[j - 4] >> 6) << 4);
        *m = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
    }
}

AI int tile_q45_k(const float *x, const float *wts, uint8_t *y, int q5) {
    const int nmax = q5 ? 31 : 15;
    const int type_size = q5 ? 176 : 144;
    vf xt[32], w[32];
    vi L[32];
    load_tile(x, 32, xt);
    vf scale, the_min, sw;
    if (wts) { /* quantize_row_q4_K_impl / q5_K_impl */
        sw = load_weights(wts, 32, w);
        qkx(32, nmax, xt, w, L, &scale, &the_min, -0.9f, 0.05f, 36, 0, 1);
    } else {
        vf sum_x2 = {0};
        for (int i = 0; i < 32; i++) sum_x2 += xt[i] * xt[i];
        vf t = sum_x2 / 32.f, av_x;
        for (int l = 0; l < NL; l++) av_x[l] = sqrtf(t[l]);
        for (int i = 0; i < 32; i++) w[i] = av_x + vabs(xt[i]);
        qkx(32, nmax, xt, w, L, &scale, &the_min, q5 ? -0.5f : -1.f, 0.1f, q5 ? 15 : 20, 0, 0);
    }

    vf dj, dm;
    uint8_t sc[SBT][12];
    float dd[SBT], dmm[SBT];
    for (int s = 0; s < SBT; s++) {
        uint8_t ls[8], lm[8];
        if (wts) {
            float scs[8], mns[8], sws[8];
            for (int j = 0; j < 8; j++) {
                scs[j] = scale[8 * s + j];
                mns[j] = the_min[8 * s + j];
                sws[j] = sw[8 * s + j];
            }
            dd[s] = qp1(8, 63, scs, ls, sws);
            dmm[s] = qp1(8, 63, mns, lm, sws);
            if (q5) /* only the Q5_K impl clamps with MIN(63, .) */
                for (int j = 0; j < 8; j++) {
                    ls[j] = ls[j] < 63 ? ls[j] : 63;
                    lm[j] = lm[j] < 63 ? lm[j] : 63;
                }
        } else {
            float max_scale = 0, max_min = 0;
            for (int j = 0; j < 8; j++) {
                if (scale[8 * s + j] > max_scale) max_scale = scale[8 * s + j];
                if (the_min[8 * s + j] > max_min) max_min = the_min[8 * s + j];
            }
            float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
            float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
            for (int j = 0; j < 8; j++) {
                ls[j] = (uint8_t)nearest_int1(inv_scale * scale[8 * s + j]);
                lm[j] = (uint8_t)nearest_int1(inv_min * the_min[8 * s + j]);
                ls[j] = ls[j] < 63 ? ls[j] : 63;
                lm[j] = lm[j] < 63 ? lm[j] : 63;
            }
            dd[s] = max_scale / 63.f;
            dmm[s] = max_min / 63.f;
        }
        uint8_t *p = sc[s];
        for (int j = 0; j < 8; j++) {
            if (j < 4) {
                p[j] = ls[j];
                p[j + 4] = lm[j];
            } else {
                p[j + 4] = (uint8_t)((ls[j] & 0xf) | ((lm[j] & 0xf) << 4));
                p[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
                p[j] |= (uint8_t)((lm[j] >> 4) << 6);
            }
        }
        float d16 = h2f(f2h(dd[s])), dmin16 = h2f(f2h(dmm[s]));
        for (int j = 0; j < 8; j++) {
            int scj, mj;
            scale_min_k4(j, p, &scj, &mj);
            dj[8 * s + j] = d16 * (float)scj;
            dm[8 * s + j] = dmin16 * (float)mj;
        }
    }
    vi keep = dj == 0;
    for (int i = 0; i < 32; i++) L[i] = isel(keep, L[i], iclamp(nearest_int((xt[i] + dm) / dj), 0, nmax));

    for (int s = 0; s < SBT; s++) {
        uint8_t *b = y + (int64_t)s * type_size;
        put_h(b, dd[s]);
        put_h(b + 2, dmm[s]);
        memcpy(b + 4, sc[s], 12);
        uint8_t *qs = b + 16;
        if (q5) {
            uint8_t *qh = b + 16;
            for (int l = 0; l < 32; l++) {
                uint8_t h = 0;
                for (int c = 0; c < 8; c++) h |= (uint8_t)(((L[l][8 * s + c] >> 4) & 1) << c);
                qh[l] = h;
            }
            qs = b + 48;
        }
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                qs[32 * c + l] = (uint8_t)((L[l][8 * s + 2 * c] & 0xf) | ((L[l][8 * s + 2 * c + 1] & 0xf) << 4));
    }
    return any_nonfinite(finite_acc(xt, 32));
}

/* ------------------------------------------------------------------------------------------ */
/* Q2_K, Q3_K, Q6_K: tile = 1 super-block of 16 sub-blocks of 16, in NG groups of NL lanes      */

/* sub-block j of the super-block lives in group j / NL, lane j % NL */
#define SUB(v, j) ((v)[(j) / NL][(j) % NL])
/* element e (0..255) of the super-block: sub-block e/16, row e%16 */
#define LV(L, e) ((L)[(e) / 16 / NL][(e) % 16][(e) / 16 % NL])

AI void load_super16(const float *x, vf xt[NG][16]) {
    for (int g = 0; g < NG; g++) load_tile(x + g * NL * 16, 16, xt[g]);
}

AI int finite_super16(vf xt[NG][16]) {
    int bad = 0;
    for (int g = 0; g < NG; g++) bad |= any_nonfinite(finite_acc(xt[g], 16));
    return bad;
}

AI void pack_2bit(vi L[NG][16], uint8_t *qs) {
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            int v = 0;
            for (int m = 0; m < 4; m++) v |= (LV(L, 128 * h + 32 * m + l) & 3) << (2 * m);
            qs[32 * h + l] = (uint8_t)v;
        }
}

AI int tile_q2_k(const float *x, const float *wts, uint8_t *y) {
    vf xt[NG][16], w[16], scale[NG], the_min[NG], dj[NG], dm[NG], sw[NG];
    vi L[NG][16];
    load_super16(x, xt);
    for (int g = 0; g < NG; g++) {
        if (wts) { /* quantize_row_q2_K_impl */
            sw[g] = load_weights(wts + g * NL * 16, 16, w);
            qkx(16, 3, xt[g], w, L[g], &scale[g], &the_min[g], -0.9f, 0.05f, 36, 0, 1);
        } else {
            for (int i = 0; i < 16; i++) w[i] = vabs(xt[g][i]);
            qkx(16, 3, xt[g], w, L[g], &scale[g], &the_min[g], -0.5f, 0.1f, 15, 1, 0);
        }
    }
    uint8_t sc[16] = {0};
    float d = 0, dmin = 0;
    if (wts) {
        float scs[16], mns[16], sws[16];
        uint8_t Ls[16], Lm[16];
        for (int j = 0; j < 16; j++) {
            scs[j] = SUB(scale, j);
            mns[j] = SUB(the_min, j);
            sws[j] = SUB(sw, j);
        }
        d = qp1(16, 15, scs, Ls, sws);
        dmin = qp1(16, 15, mns, Lm, sws);
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
    } else {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 16; j++) {
            if (SUB(scale, j) > max_scale) max_scale = SUB(scale, j);
            if (SUB(the_min, j) > max_min) max_min = SUB(the_min, j);
        }
        if (max_scale > 0) {
            float iscale = 15.f / max_scale;
            for (int j = 0; j < 16; j++) sc[j] = (uint8_t)nearest_int1(iscale * SUB(scale, j));
            d = max_scale / 15.f;
        }
        if (max_min > 0) {
            float iscale = 15.f / max_min;
            for (int j = 0; j < 16; j++) sc[j] |= (uint8_t)(nearest_int1(iscale * SUB(the_min, j)) << 4);
            dmin = max_min / 15.f;
        }
    }
    float d16 = h2f(f2h(d)), dmin16 = h2f(f2h(dmin));
    for (int j = 0; j < 16; j++) {
        SUB(dj, j) = d16 * (float)(sc[j] & 0xf);
        SUB(dm, j) = dmin16 * (float)(sc[j] >> 4);
    }
    for (int g = 0; g < NG; g++) {
        vi keep = dj[g] == 0;
        for (int i = 0; i < 16; i++)
            L[g][i] = isel(keep, L[g][i], iclamp(nearest_int((xt[g][i] + dm[g]) / dj[g]), 0, 3));
    }
    memcpy(y, sc, 16);
    pack_2bit(L, y + 16);
    put_h(y + 80, d);
    put_h(y + 82, dmin);
    return finite_super16(xt);
}

AI int tile_q3_k(const float *x, const float *wts, uint8_t *y) {
    vf xt[NG][16], scale[NG], dj[NG], w[16], sw[NG];
    vi L[NG][16];
    load_super16(x, xt);
    for (int g = 0; g < NG; g++) {
        if (wts) { /* quantize_row_q3_K_impl */
            sw[g] = load_weights(wts + g * NL * 16, 16, w);
            scale[g] = qx(16, 4, xt[g], w, L[g]);
        } else {
            scale[g] = q3(16, 4, xt[g], L[g]);
        }
    }
    int l6[16] = {0}; /* 6-bit scales, 0..63 */
    float d = 0;
    if (wts) {
        /* make_qx_quants(16, 32, scales, Ls, 1, sw): the lane search with the 16 scales in lane 0 */
        vf scs[16] = {0}, sws[16] = {0};
        vi ls[16];
        for (int j = 0; j < 16; j++) {
            scs[j][0] = SUB(scale, j);
            sws[j][0] = SUB(sw, j);
        }
        d = qx(16, 32, scs, sws, ls)[0];
        for (int j = 0; j < 16; j++) l6[j] = ls[j][0];
    } else {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < 16; j++) {
            float a = fabsf(SUB(scale, j));
            if (a > amax) {
                amax = a;
                max_scale = SUB(scale, j);
            }
        }
        if (max_scale != 0) {
            float iscale = -32.f / max_scale;
            for (int j = 0; j < 16; j++) {
                int8_t l8 = (int8_t)nearest_int1(iscale * SUB(scale, j)); /* stored in an int8_t first */
                l6[j] = (l8 < -32 ? -32 : (l8 > 31 ? 31 : l8)) + 32;
            }
            d = 1.f / iscale;
        }
    }
    uint8_t sc[12] = {0};
    for (int j = 0; j < 16; j++) {
        int l = l6[j];
        if (j < 8)
            sc[j] = (uint8_t)(l & 0xf);
        else
            sc[j - 8] |= (uint8_t)((l & 0xf) << 4);
        sc[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
    float d16 = h2f(f2h(d));
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? sc[j] & 0xf : sc[j - 8] >> 4;
        int hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        SUB(dj, j) = d16 * (float)((lo | (hi << 4)) - 32);
    }
    for (int g = 0; g < NG; g++) {
        vi keep = dj[g] == 0;
        for (int i = 0; i < 16; i++)
            L[g][i] = isel(keep, L[g][i], iclamp(nearest_int(xt[g][i] / dj[g]), -4, 3) + 4);
    }
    uint8_t *hmask = y, *qs = y + 32;
    memset(hmask, 0, 32);
    for (int e = 0; e < QK_K; e++)
        if (LV(L, e) > 3) {
            hmask[e % 32] |= (uint8_t)(1 << (e / 32));
            LV(L, e) -= 4;
        }
    pack_2bit(L, qs);
    memcpy(y + 96, sc, 12);
    put_h(y + 108, d);
    return finite_super16(xt);
}

AI int tile_q6_k(const float *x, const float *wts, uint8_t *y) {
    vf xt[NG][16], scale[NG], dj[NG], w[16];
    vi L[NG][16];
    load_super16(x, xt);
    for (int g = 0; g < NG; g++) {
        if (wts) load_tile(wts + g * NL * 16, 16, w);
        scale[g] = qx(16, 32, xt[g], wts ? w : 0, L[g]);
    }
    float max_scale = 0, max_abs = 0;
    for (int j = 0; j < 16; j++) {
        float a = fabsf(SUB(scale, j));
        if (a > max_abs) {
            max_abs = a;
            max_scale = SUB(scale, j);
        }
    }
    int bad = finite_super16(xt);
    if (max_abs < 1e-15f) {
        memset(y, 0, 210);
        return bad;
    }
    float iscale = -128.f / max_scale;
    float d = 1.f / iscale;
    float d16 = h2f(f2h(d));
    int8_t sc[16];
    for (int j = 0; j < 16; j++) {
        int v = nearest_int1(iscale * SUB(scale, j));
        sc[j] = (int8_t)(v < 127 ? v : 127);
        SUB(dj, j) = d16 * (float)sc[j];
    }
    for (int g = 0; g < NG; g++) {
        vi keep = dj[g] == 0;
        for (int i = 0; i < 16; i++)
            L[g][i] = isel(keep, L[g][i], iclamp(nearest_int(xt[g][i] / dj[g]), -32, 31) + 32);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int h = 0; h < 2; h++) {
        int n0 = 128 * h;
        for (int l = 0; l < 32; l++) {
            int a = LV(L, n0 + l), b = LV(L, n0 + l + 32), c = LV(L, n0 + l + 64), e = LV(L, n0 + l + 96);
            ql[64 * h + l] = (uint8_t)((a & 0xf) | ((c & 0xf) << 4));
            ql[64 * h + l + 32] = (uint8_t)((b & 0xf) | ((e & 0xf) << 4));
            qh[32 * h + l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
        }
    }
    memcpy(y + 192, sc, 16);
    put_h(y + 208, d);
    return bad;
}

/* ------------------------------------------------------------------------------------------ */
/* importance weights, per row: qw[j] * sqrt(sigma2 + x[j]^2) (sigma2 per super-block or row)  */

/* K types: sigma2 = factor * sum(x^2) / 256 per super-block */
static void weights_k(const float *x, const float *qw, float *w, int64_t n_per_row, float factor) {
    for (int64_t b = 0; b < n_per_row; b += QK_K) {
        float sum_x2 = 0;
        for (int j = 0; j < QK_K; j++) sum_x2 += x[b + j] * x[b + j];
        float sigma2 = factor * sum_x2 / QK_K;
        for (int j = 0; j < QK_K; j++) w[b + j] = qw[b + j] * sqrtf(sigma2 + x[b + j] * x[b + j]);
    }
}
static void weights_k1(const float *x, const float *qw, float *w, int64_t n) { weights_k(x, qw, w, n, 1.f); }
static void weights_k2(const float *x, const float *qw, float *w, int64_t n) { weights_k(x, qw, w, n, 2.f); }
/* legacy types: sigma2 = sum(x^2) / n_per_row over the whole row */
static void weights_row(const float *x, const float *qw, float *w, int64_t n) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; j++) sum_x2 += x[j] * x[j];
    float sigma2 = sum_x2 / n;
    for (int64_t j = 0; j < n; j++) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
}
/* Q6_K: the importance weights themselves */
static void weights_raw(const float *x, const float *qw, float *w, int64_t n) {
    (void)x;
    memcpy(w, qw, (size_t)n * sizeof(float));
}

/* ------------------------------------------------------------------------------------------ */
/* IQ4_NL (tile = NL blocks of 32) and IQ4_XS (tile = NL/8 super-blocks of 8x32)               */

static const int IQ4_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* best_index_int8 over the 16 levels: level k once 2v >= values[k-1] + values[k] (integers, so
 * the comparison is exact); NaN takes level 0. Gives the index and the level's value. */
AI void iq4_level(vf v, vi *idx, vf *val) {
    vf v2 = v + v;
    vi k = {0}, q = isplat(IQ4_VALUES[0]);
    for (int j = 0; j < 15; j++) {
        vi m = v2 >= (float)(IQ4_VALUES[j] + IQ4_VALUES[j + 1]);
        k -= m;
        q += m & (IQ4_VALUES[j + 1] - IQ4_VALUES[j]);
    }
    *idx = k;
    *val = tofloat(q);
}

/* quantize_row_iq4_nl_impl's scale search (ntry = 7) for one 32-block per lane */
AI vf iq4_scale(const vf *x, const vf *w) {
    vf amax, mx;
    first_absmax(32, x, &amax, &mx);
    vf d = {0}, best = {0};
    for (int k = 0; k < 16; k++) {
        vf id = k == 0 ? 1.f / (-mx / (float)IQ4_VALUES[0]) : (float)(k - 8 + IQ4_VALUES[0]) / mx;
        vf sumqx = {0}, sumq2 = {0};
        for (int i = 0; i < 32; i++) {
            vi idx;
            vf q;
            iq4_level(id * x[i], &idx, &q);
            vf wq = w[i] * q;
            sumqx += wq * x[i];
            sumq2 += wq * q;
        }
        if (k == 0) {
            d = vsel(sumq2 > 0, sumqx / sumq2, splat(0.f));
            best = d * sumqx;
            continue;
        }
        vi take = (sumq2 > 0) & (sumqx * sumqx > best * sumq2);
        d = vsel(take, sumqx / sumq2, d);
        best = vsel(take, d * sumqx, best);
    }
    return vsel(amax < 1e-15f, splat(0.f), d);
}

AI void iq4_pack(const vi *L, int lane, uint8_t *qs) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(L[j][lane] | (L[j + 16][lane] << 4));
}

AI int tile_iq4(const float *x, const float *wts, uint8_t *y, int xs) {
    vf xt[32], w[32];
    vi L[32];
    load_tile(x, 32, xt);
    if (wts)
        load_tile(wts, 32, w);
    else
        for (int i = 0; i < 32; i++) w[i] = xt[i] * xt[i];
    vf scale = iq4_scale(xt, w);
    vf dl;
    if (!xs) {
        dl = scale;
    } else {
        for (int s = 0; s < SBT; s++) {
            float max_scale = 0, amax = 0;
            for (int j = 0; j < 8; j++) {
                float a = fabsf(scale[8 * s + j]);
                if (a > amax) {
                    amax = a;
                    max_scale = scale[8 * s + j];
                }
            }
            float d = -max_scale / 32.f;
            float id = d != 0 ? 1.f / d : 0.f;
            uint16_t scales_h = 0;
            uint8_t *b = y + (int64_t)s * 136;
            memset(b + 4, 0, 4);
            for (int j = 0; j < 8; j++) {
                int l = nearest_int1(id * scale[8 * s + j]);
                l = l < -32 ? -32 : (l > 31 ? 31 : l);
                dl[8 * s + j] = d * (float)l;
                l += 32;
                b[4 + j / 2] |= (uint8_t)((l & 0xf) << (4 * (j % 2)));
                scales_h |= (uint16_t)((l >> 4) << (2 * j));
            }
            put_h(b, d);
            memcpy(b + 2, &scales_h, 2);
        }
    }
    vf idl = vsel(dl != 0, 1.f / dl, splat(0.f));
    for (int i = 0; i < 32; i++) {
        vf unused;
        iq4_level(xt[i] * idl, &L[i], &unused);
    }
    for (int l = 0; l < NL; l++) {
        if (!xs) {
            put_h(y + (int64_t)l * 18, dl[l]);
            iq4_pack(L, l, y + (int64_t)l * 18 + 2);
        } else {
            iq4_pack(L, l, y + (int64_t)(l / 8) * 136 + 8 + 16 * (l % 8));
        }
    }
    return any_nonfinite(finite_acc(xt, 32));
}

/* IQ4 weights: sigma2 = sum(x^2) * 2/sb per super-block of sb (32 for IQ4_NL, 256 for IQ4_XS) */
static void weights_iq4(const float *x, const float *qw, float *w, int64_t n, int sb) {
    for (int64_t b = 0; b < n; b += sb) {
        float sigma2 = 0;
        for (int j = 0; j < sb; j++) sigma2 += x[b + j] * x[b + j];
        sigma2 *= 2.f / sb;
        for (int j = 0; j < sb; j++) w[b + j] = qw[b + j] * sqrtf(sigma2 + x[b + j] * x[b + j]);
    }
}
static void weights_iq4_nl(const float *x, const float *qw, float *w, int64_t n) { weights_iq4(x, qw, w, n, 32); }
static void weights_iq4_xs(const float *x, const float *qw, float *w, int64_t n) { weights_iq4(x, qw, w, n, 256); }

/* ------------------------------------------------------------------------------------------ */
/* dequantization: the float order of ggml's dequantize_row_* (and of the torch kernels)       */

AI void dq_legacy(const uint8_t *b, float *y, int kind) {
    float d = h2f((uint16_t)(b[0] | b[1] << 8)), m = 0;
    const uint8_t *qs = b + 2;
    uint32_t qh = 0;
    if (kind == LEG_Q4_1 || kind == LEG_Q5_1) {
        m = h2f((uint16_t)(b[2] | b[3] << 8));
        qs = b + 4;
    }
    if (kind == LEG_Q5_0 || kind == LEG_Q5_1) {
        memcpy(&qh, qs, 4);
        qs += 4;
    }
    for (int j = 0; j < 32; j++) {
        int q = j < 16 ? qs[j] & 0xf : qs[j - 16] >> 4;
        q |= (int)((qh >> j) & 1) << 4;
        if (kind == LEG_Q4_0) y[j] = d * (float)(q - 8);
        else if (kind == LEG_Q5_0) y[j] = d * (float)(q - 16);
        else y[j] = d * (float)q + m;
    }
}

AI void dq_q8_0(const uint8_t *b, float *y) {
    float d = h2f((uint16_t)(b[0] | b[1] << 8));
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

AI void dq_q2_k(const uint8_t *b, float *y) {
    float d = h2f((uint16_t)(b[80] | b[81] << 8)), dmin = h2f((uint16_t)(b[82] | b[83] << 8));
    /* element 128h + 32m + 16s + i: sub-block 8h + 2m + s, bits 2m of qs[32h + 16s + i] */
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < 4; m++)
            for (int s = 0; s < 2; s++) {
                int sc = b[8 * h + 2 * m + s];
                float dl = d * (float)(sc & 0xf), ml = dmin * (float)(sc >> 4);
                const uint8_t *qs = b + 16 + 32 * h + 16 * s;
                float *o = y + 128 * h + 32 * m + 16 * s;
                for (int i = 0; i < 16; i++) o[i] = dl * (float)((qs[i] >> (2 * m)) & 3) - ml;
            }
}

AI void dq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hmask = b, *sc = b + 96;
    float d = h2f((uint16_t)(b[108] | b[109] << 8));
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < 4; m++)
            for (int s = 0; s < 2; s++) {
                int j = 8 * h + 2 * m + s;
                int lo = j < 8 ? sc[j] & 0xf : sc[j - 8] >> 4;
                int hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
                float dl = d * (float)((lo | (hi << 4)) - 32);
                const uint8_t *qs = b + 32 + 32 * h + 16 * s, *hm = hmask + 16 * s;
                float *o = y + 128 * h + 32 * m + 16 * s;
                for (int i = 0; i < 16; i++) {
                    int q = ((qs[i] >> (2 * m)) & 3) - (((hm[i] >> (4 * h + m)) & 1) ? 0 : 4);
                    o[i] = dl * (float)q;
                }
            }
}

AI void dq_q45_k(const uint8_t *b, float *y, int q5) {
    float d = h2f((uint16_t)(b[0] | b[1] << 8)), dmin = h2f((uint16_t)(b[2] | b[3] << 8));
    const uint8_t *p = b + 4, *qh = b + 16, *qs = b + (q5 ? 48 : 16);
    for (int j = 0; j < 8; j++) {
        int scj, mj;
        scale_min_k4(j, p, &scj, &mj);
        float dl = d * (float)scj, ml = dmin * (float)mj;
        for (int l = 0; l < 32; l++) {
            int byte = qs[32 * (j / 2) + l];
            int q = j % 2 ? byte >> 4 : byte & 0xf;
            if (q5) q |= ((qh[l] >> j) & 1) << 4;
            y[32 * j + l] = dl * (float)q - ml;
        }
    }
}

AI void dq_q6_k(const uint8_t *b, float *y) {
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = h2f((uint16_t)(b[208] | b[209] << 8));
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < 4; m++)
            for (int s = 0; s < 2; s++) {
                float dl = d * (float)sc[8 * h + 2 * m + s];
                const uint8_t *ql = b + 64 * h + 32 * (m % 2) + 16 * s, *qh = b + 128 + 32 * h + 16 * s;
                float *o = y + 128 * h + 32 * m + 16 * s;
                for (int i = 0; i < 16; i++) {
                    int q = (m < 2 ? ql[i] & 0xf : ql[i] >> 4) | (((qh[i] >> (2 * m)) & 3) << 4);
                    o[i] = dl * (float)(q - 32);
                }
            }
}

AI void dq_iq4_nl(const uint8_t *b, float *y) {
    float d = h2f((uint16_t)(b[0] | b[1] << 8));
    for (int j = 0; j < 32; j++) y[j] = d * (float)IQ4_VALUES[j < 16 ? b[2 + j] & 0xf : b[2 + j - 16] >> 4];
}

AI void dq_iq4_xs(const uint8_t *b, float *y) {
    float d = h2f((uint16_t)(b[0] | b[1] << 8));
    int sh = b[2] | b[3] << 8;
    for (int j = 0; j < 8; j++) {
        int ls = ((b[4 + j / 2] >> (4 * (j % 2))) & 0xf) | (((sh >> (2 * j)) & 3) << 4);
        float dl = d * (float)(ls - 32);
        const uint8_t *qs = b + 8 + 16 * j;
        for (int i = 0; i < 32; i++) y[32 * j + i] = dl * (float)IQ4_VALUES[i < 16 ? qs[i] & 0xf : qs[i - 16] >> 4];
    }
}

#define DQ_ARGS const uint8_t *y, float *x, int64_t n
#define DQ_LOOP(BLOCK, TSIZE, CALL)                                                                   \
    for (int64_t b = 0; b < n / (BLOCK); b++) {                                                       \
        const uint8_t *bp = y + b * (TSIZE);                                                          \
        float *xp = x + b * (BLOCK);                                                                  \
        CALL;                                                                                         \
    }                                                                                                 \
    return 0;

int ws_dequantize_q8_0(DQ_ARGS) { DQ_LOOP(32, 34, dq_q8_0(bp, xp)) }
int ws_dequantize_q4_0(DQ_ARGS) { DQ_LOOP(32, 18, dq_legacy(bp, xp, LEG_Q4_0)) }
int ws_dequantize_q5_0(DQ_ARGS) { DQ_LOOP(32, 22, dq_legacy(bp, xp, LEG_Q5_0)) }
int ws_dequantize_q4_1(DQ_ARGS) { DQ_LOOP(32, 20, dq_legacy(bp, xp, LEG_Q4_1)) }
int ws_dequantize_q5_1(DQ_ARGS) { DQ_LOOP(32, 24, dq_legacy(bp, xp, LEG_Q5_1)) }
int ws_dequantize_q2_k(DQ_ARGS) { DQ_LOOP(256, 84, dq_q2_k(bp, xp)) }
int ws_dequantize_q3_k(DQ_ARGS) { DQ_LOOP(256, 110, dq_q3_k(bp, xp)) }
int ws_dequantize_q4_k(DQ_ARGS) { DQ_LOOP(256, 144, dq_q45_k(bp, xp, 0)) }
int ws_dequantize_q5_k(DQ_ARGS) { DQ_LOOP(256, 176, dq_q45_k(bp, xp, 1)) }
int ws_dequantize_q6_k(DQ_ARGS) { DQ_LOOP(256, 210, dq_q6_k(bp, xp)) }
int ws_dequantize_iq4_nl(DQ_ARGS) { DQ_LOOP(32, 18, dq_iq4_nl(bp, xp)) }
int ws_dequantize_iq4_xs(DQ_ARGS) { DQ_LOOP(256, 136, dq_iq4_xs(bp, xp)) }

/* ------------------------------------------------------------------------------------------ */
/* fused error energy: with a non-NULL `st`, every block is decoded right after it is written
 * (still in cache) and st[0] += sum x^2, st[1] += sum (decoded - x)^2, from float32 lane partials
 * per block added in double. The decoded values are exactly ws_dequantize_*'s, so the per-layer
 * SQNR needs no second pass over the tensor; its sums differ from a two-pass float32 dot product
 * only in float rounding (order of additions). */

AI void dq_q4_0(const uint8_t *b, float *y) { dq_legacy(b, y, LEG_Q4_0); }
AI void dq_q5_0(const uint8_t *b, float *y) { dq_legacy(b, y, LEG_Q5_0); }
AI void dq_q4_1(const uint8_t *b, float *y) { dq_legacy(b, y, LEG_Q4_1); }
AI void dq_q5_1(const uint8_t *b, float *y) { dq_legacy(b, y, LEG_Q5_1); }
AI void dq_q4_k(const uint8_t *b, float *y) { dq_q45_k(b, y, 0); }
AI void dq_q5_k(const uint8_t *b, float *y) { dq_q45_k(b, y, 1); }

AI void err_span(const float *x, const float *d, int n, double *st) {
    vf s = {0}, e = {0};
    for (int i = 0; i < n; i += NL) {
        vf a, b;
        memcpy(&a, x + i, sizeof a);
        memcpy(&b, d + i, sizeof b);
        vf r = b - a;
        s += a * a;
        e += r * r;
    }
    double ss = 0, ee = 0;
    for (int l = 0; l < NL; l++) {
        ss += s[l];
        ee += e[l];
    }
    st[0] += ss;
    st[1] += ee;
}

#define MEASURE(XP, YP, ELEMS, BLOCK, TSIZE, DQ)                                                      \
    if (st)                                                                                           \
        for (int64_t e_ = 0; e_ < (ELEMS); e_ += (BLOCK)) {                                           \
            float dq_[BLOCK];                                                                         \
            DQ((YP) + e_ / (BLOCK) * (TSIZE), dq_);                                                   \
            err_span((XP) + e_, dq_, BLOCK, st);                                                      \
        }

/* ------------------------------------------------------------------------------------------ */
/* exported entry points: whole tiles, then a zero-padded tail tile                           */

#define TILE_LOOP(TILE_ELEMS, TILE_BYTES, CALL, BLOCK, TSIZE, DQ)                                    \
    int bad = 0;                                                                                      \
    int64_t nt = n / (TILE_ELEMS);                                                                    \
    for (int64_t t = 0; t < nt; t++) {                                                                \
        const float *xp = x + t * (TILE_ELEMS);                                                       \
        uint8_t *yp = y + t * (TILE_BYTES);                                                           \
        bad |= CALL;                                                                                  \
        MEASURE(xp, yp, TILE_ELEMS, BLOCK, TSIZE, DQ)                                                 \
    }                                                                                                 \
    int64_t rem = n - nt * (TILE_ELEMS);                                                              \
    if (rem) {                                                                                        \
        float xbuf[TILE_ELEMS];                                                                       \
        uint8_t ybuf[TILE_BYTES];                                                                     \
        memset(xbuf, 0, sizeof xbuf);                                                                 \
        memcpy(xbuf, x + nt * (TILE_ELEMS), (size_t)rem * sizeof(float));                             \
        const float *xp = xbuf;                                                                       \
        uint8_t *yp = ybuf;                                                                           \
        bad |= CALL;                                                                                  \
        MEASURE(xp, yp, rem, BLOCK, TSIZE, DQ)                                                        \
        memcpy(y + nt * (TILE_BYTES), ybuf, (size_t)(rem * (TILE_BYTES) / (TILE_ELEMS)));             \
    }                                                                                                 \
    return bad;

/* with importance weights: row by row (the weights depend on the row), each row tiled as above,
 * the zero-padded tail tile getting zero weights */
#define IMAT_LOOP(TILE_ELEMS, TILE_BYTES, WEIGHTS, CALL, BLOCK, TSIZE, DQ)                           \
    int bad = 0;                                                                                      \
    float *wrow = (float *)malloc((size_t)n_per_row * sizeof(float));                                 \
    if (!wrow) return 2;                                                                              \
    int64_t row_bytes = n_per_row / (TILE_ELEMS) * (TILE_BYTES) +                                     \
                        n_per_row % (TILE_ELEMS) * (TILE_BYTES) / (TILE_ELEMS);                       \
    for (int64_t r = 0; r < nrows; r++) {                                                             \
        const float *xr = x + r * n_per_row;                                                          \
        uint8_t *yr = y + r * row_bytes;                                                              \
        WEIGHTS(xr, qw, wrow, n_per_row);                                                             \
        int64_t nt = n_per_row / (TILE_ELEMS);                                                        \
        for (int64_t t = 0; t < nt; t++) {                                                            \
            const float *xp = xr + t * (TILE_ELEMS);                                                  \
            const float *wp = wrow + t * (TILE_ELEMS);                                                \
            uint8_t *yp = yr + t * (TILE_BYTES);                                                      \
            bad |= CALL;                                                                              \
            MEASURE(xp, yp, TILE_ELEMS, BLOCK, TSIZE, DQ)                                             \
        }                                                                                             \
        int64_t rem = n_per_row - nt * (TILE_ELEMS);                                                  \
        if (rem) {                                                                                    \
            float xbuf[TILE_ELEMS], wbuf[TILE_ELEMS];                                                 \
            uint8_t ybuf[TILE_BYTES];                                                                 \
            memset(xbuf, 0, sizeof xbuf);                                                             \
            memset(wbuf, 0, sizeof wbuf);                                                             \
            memcpy(xbuf, xr + nt * (TILE_ELEMS), (size_t)rem * sizeof(float));                        \
            memcpy(wbuf, wrow + nt * (TILE_ELEMS), (size_t)rem * sizeof(float));                      \
            const float *xp = xbuf, *wp = wbuf;                                                       \
            uint8_t *yp = ybuf;                                                                       \
            bad |= CALL;                                                                              \
            MEASURE(xp, yp, rem, BLOCK, TSIZE, DQ)                                                    \
            memcpy(yr + nt * (TILE_BYTES), ybuf, (size_t)(rem * (TILE_BYTES) / (TILE_ELEMS)));        \
        }                                                                                             \
    }                                                                                                 \
    free(wrow);                                                                                       \
    return bad;

#define PLAIN_ARGS const float *x, uint8_t *y, int64_t n, double *st
#define IMAT_ARGS const float *x, uint8_t *y, int64_t nrows, int64_t n_per_row, const float *qw, double *st

/* Q8_0 without transposing: every step is elementwise or a max (exact in any order), so a block
 * is processed along its 32 elements and its 32 bytes are stored straight from a vector. */
typedef int8_t vb __attribute__((vector_size(NL)));
AI int block_q8_0(const float *x, uint8_t *y) {
    vf v[32 / NL], a = {0}, fin = {0};
    for (int k = 0; k < 32 / NL; k++) {
        memcpy(&v[k], x + k * NL, sizeof(vf));
        vf ab = vabs(v[k]);
        a = vsel(a > ab, a, ab);
        fin += v[k] * 0.f;
    }
    float amax = 0;
    for (int l = 0; l < NL; l++) amax = amax > a[l] ? amax : a[l];
    float d = amax / 127.f;
    float id = d ? 1.f / d : 0.f;
    put_h(y, d);
    for (int k = 0; k < 32 / NL; k++) {
        vf t = v[k] * id;
        vb q = __builtin_convertvector(trunc_i(t + t) - trunc_i(t), vb); /* roundf */
        memcpy(y + 2 + k * NL, &q, NL);
    }
    return any_nonfinite(fin);
}

int ws_quantize_q8_0(PLAIN_ARGS) {
    int bad = 0;
    for (int64_t b = 0; b < n / 32; b++) {
        bad |= block_q8_0(x + 32 * b, y + 34 * b);
        MEASURE(x + 32 * b, y + 34 * b, 32, 32, 34, dq_q8_0)
    }
    return bad;
}
int ws_quantize_q4_0(PLAIN_ARGS) { TILE_LOOP(NL * 32, NL * 18, tile_legacy(xp, 0, yp, LEG_Q4_0, 18), 32, 18, dq_q4_0) }
int ws_quantize_q5_0(PLAIN_ARGS) { TILE_LOOP(NL * 32, NL * 22, tile_legacy(xp, 0, yp, LEG_Q5_0, 22), 32, 22, dq_q5_0) }
int ws_quantize_q4_1(PLAIN_ARGS) { TILE_LOOP(NL * 32, NL * 20, tile_legacy(xp, 0, yp, LEG_Q4_1, 20), 32, 20, dq_q4_1) }
int ws_quantize_q5_1(PLAIN_ARGS) { TILE_LOOP(NL * 32, NL * 24, tile_legacy(xp, 0, yp, LEG_Q5_1, 24), 32, 24, dq_q5_1) }
int ws_quantize_q2_k(PLAIN_ARGS) { TILE_LOOP(256, 84, tile_q2_k(xp, 0, yp), 256, 84, dq_q2_k) }
int ws_quantize_q3_k(PLAIN_ARGS) { TILE_LOOP(256, 110, tile_q3_k(xp, 0, yp), 256, 110, dq_q3_k) }
int ws_quantize_q4_k(PLAIN_ARGS) { TILE_LOOP(NL * 32, SBT * 144, tile_q45_k(xp, 0, yp, 0), 256, 144, dq_q4_k) }
int ws_quantize_q5_k(PLAIN_ARGS) { TILE_LOOP(NL * 32, SBT * 176, tile_q45_k(xp, 0, yp, 1), 256, 176, dq_q5_k) }
int ws_quantize_q6_k(PLAIN_ARGS) { TILE_LOOP(256, 210, tile_q6_k(xp, 0, yp), 256, 210, dq_q6_k) }
int ws_quantize_iq4_nl(PLAIN_ARGS) { TILE_LOOP(NL * 32, NL * 18, tile_iq4(xp, 0, yp, 0), 32, 18, dq_iq4_nl) }
int ws_quantize_iq4_xs(PLAIN_ARGS) { TILE_LOOP(NL * 32, SBT * 136, tile_iq4(xp, 0, yp, 1), 256, 136, dq_iq4_xs) }

/* return 2: out of memory */
int ws_quantize_imat_q4_0(IMAT_ARGS) { IMAT_LOOP(NL * 32, NL * 18, weights_row, tile_legacy(xp, wp, yp, LEG_Q4_0, 18), 32, 18, dq_q4_0) }
int ws_quantize_imat_q5_0(IMAT_ARGS) { IMAT_LOOP(NL * 32, NL * 22, weights_row, tile_legacy(xp, wp, yp, LEG_Q5_0, 22), 32, 22, dq_q5_0) }
int ws_quantize_imat_q4_1(IMAT_ARGS) { IMAT_LOOP(NL * 32, NL * 20, weights_row, tile_legacy(xp, wp, yp, LEG_Q4_1, 20), 32, 20, dq_q4_1) }
int ws_quantize_imat_q5_1(IMAT_ARGS) { IMAT_LOOP(NL * 32, NL * 24, weights_row, tile_legacy(xp, wp, yp, LEG_Q5_1, 24), 32, 24, dq_q5_1) }
int ws_quantize_imat_q2_k(IMAT_ARGS) { IMAT_LOOP(256, 84, weights_k1, tile_q2_k(xp, wp, yp), 256, 84, dq_q2_k) }
int ws_quantize_imat_q3_k(IMAT_ARGS) { IMAT_LOOP(256, 110, weights_k2, tile_q3_k(xp, wp, yp), 256, 110, dq_q3_k) }
int ws_quantize_imat_q4_k(IMAT_ARGS) { IMAT_LOOP(NL * 32, SBT * 144, weights_k2, tile_q45_k(xp, wp, yp, 0), 256, 144, dq_q4_k) }
int ws_quantize_imat_q5_k(IMAT_ARGS) { IMAT_LOOP(NL * 32, SBT * 176, weights_k2, tile_q45_k(xp, wp, yp, 1), 256, 176, dq_q5_k) }
int ws_quantize_imat_q6_k(IMAT_ARGS) { IMAT_LOOP(256, 210, weights_raw, tile_q6_k(xp, wp, yp), 256, 210, dq_q6_k) }
int ws_quantize_imat_iq4_nl(IMAT_ARGS) { IMAT_LOOP(NL * 32, NL * 18, weights_iq4_nl, tile_iq4(xp, wp, yp, 0), 32, 18, dq_iq4_nl) }
int ws_quantize_imat_iq4_xs(IMAT_ARGS) { IMAT_LOOP(NL * 32, SBT * 136, weights_iq4_xs, tile_iq4(xp, wp, yp, 1), 256, 136, dq_iq4_xs) }

/* bumped whenever the functions above change meaning, so stale builds are never loaded */
/* A float32 tensor stored as F16 without torch: the bits as torch rounds them (nearest even,
 * overflow to inf), and in the same pass the largest |x| (the caller refuses values beyond F16)
 * and whether any x is NaN (the caller lets torch cast those: its NaN bits are its own). */
int ws_f32_to_f16(const float *x, uint16_t *y, int64_t n, float *amax) {
    float m = 0.f;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        nan |= a != a;
        m = a > m ? a : m;
        y[i] = f2h(x[i]);
    }
    *amax = m;
    return nan;
}

int ws_abi_version(void) { return 6; }
