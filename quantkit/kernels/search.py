"""Scale searches of ggml-quants.c, bit-exact in float32.

Each function follows the llama.cpp function of the same name; the comments
name it.  They work on 1-D float32 views and write integer levels into ``L``.
All arithmetic stays in float32 and every rounding happens on the same
operands in the same order as in C (see ``fp.py`` for why every constant is
wrapped in ``np.float32``); make_qkx_quants and make_qx_quants reorganise the
loops around that for speed (see the note above them).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fp import GROUP_MAX_EPS, f32_as_i32, nearest_int

F0 = np.float32(0.0)
F1 = np.float32(1.0)


@njit(nogil=True, cache=True)
def _signed_absmax(n, x):
    """(the first element of largest magnitude, that magnitude), as ggml's searches find them."""
    mx = F0
    amax = F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    return mx, amax


@njit(nogil=True, cache=True, error_model="numpy")
def make_q3_quants(n, nmax, x, L, do_rmse):
    """ggml-quants.c make_q3_quants (Q3_K reference path)."""
    mx, amax = _signed_absmax(n, x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(-nmax) / mx
    if do_rmse:
        sumlx = F0
        suml2 = F0
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            L[i] = l
            w = x[i] * x[i]
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        for itry in range(5):
            n_changed = 0
            for i in range(n):
                w = x[i] * x[i]
                fL = np.float32(L[i])
                slx = sumlx - w * x[i] * fL
                if slx > F0:
                    sl2 = suml2 - w * fL * fL
                    new_l = nearest_int(x[i] * sl2 / slx)
                    new_l = max(-nmax, min(nmax - 1, new_l))
                    if new_l != L[i]:
                        fn = np.float32(new_l)
                        slx += w * x[i] * fn
                        sl2 += w * fn * fn
                        if sl2 > F0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                            L[i] = new_l
                            sumlx = slx
                            suml2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        for i in range(n):
            L[i] += nmax
        return sumlx / suml2 if suml2 > F0 else F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
    return F1 / iscale


# Scratch and level rounding shared by make_qkx_quants / make_qx_quants.
#
# The searches below keep C's order of float32 operations exactly, but split
# each pass over a group into an element-wise part (levels and products, which
# LLVM vectorizes) and the sums (kept in element order, as C adds them).  The
# per-element values live in a caller-provided float32 scratch ``S``
# [8, SCRATCH_N] (one per thread, see ``scratch``) so that no call allocates.

MAGIC = np.float32(12582912.0)  # 1.5 * 2^23, see fp.nearest_int
SCRATCH_N = 40  # >= the longest group (32) and the make_qx_quants trial count (19)


@njit(nogil=True, cache=True)
def scratch():
    return np.empty((8, SCRATCH_N), np.float32)


@njit(nogil=True, cache=True, inline="always")
def _level(v, lo, hi):
    """float32(MAX(lo, MIN(hi, nearest_int(v)))), with nearest_int done in int32 bit for bit."""
    b = f32_as_i32(v + MAGIC)
    l = np.int32(np.int32(b & np.int32(0x7FFFFF)) - np.int32(0x400000))
    if l > hi:
        l = hi
    if l < lo:
        l = lo
    return np.float32(l)


@njit(nogil=True, cache=True, error_model="numpy")
def make_qkx_quants(n, nmax, x, weights, L, rmin, rdelta, nstep, use_mad, S):
    """ggml-quants.c make_qkx2_quants; also make_qkx3_quants with non-NULL weights
    (the same function then: max <= min can only mean max == min).

    Asymmetric levels in [0, nmax] into L; returns (scale, the_min) where
    the_min is ``-min`` as written by the C code.  n <= SCRATCH_N.
    """
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > F0:
        mn = F0
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return F0, -mn
    xm = S[0, :n]  # x[i] - min
    lf = S[1, :n]  # this trial's levels
    wl = S[2, :n]  # w*l
    wl2 = S[3, :n]  # w*l*l
    wlx = S[4, :n]  # w*l*x
    e = S[5, :n]  # per-element error terms
    Lb = S[6, :n]  # best levels so far
    fnmax = np.float32(nmax)
    lo = np.int32(0)
    hi = np.int32(nmax)
    for i in range(n):
        xm[i] = x[i] - mn
    iscale = fnmax / (mx - mn)
    scale = F1 / iscale
    for i in range(n):
        Lb[i] = _level(iscale * xm[i], lo, hi)
    if use_mad:
        for i in range(n):
            e[i] = weights[i] * abs(scale * Lb[i] + mn - x[i])
    else:
        for i in range(n):
            d = scale * Lb[i] + mn - x[i]
            e[i] = weights[i] * (d * d)
    best_error = F0
    for i in range(n):
        best_error += e[i]
    for is_ in range(nstep + 1):
        # min moves with every improvement: later trials round against the new one
        iscale = (rmin + rdelta * np.float32(is_) + fnmax) / (mx - mn)
        for i in range(n):
            f = _level(iscale * xm[i], lo, hi)
            lf[i] = f
            w = weights[i] * f
            wl[i] = w
            wl2[i] = w * f
            wlx[i] = w * x[i]
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            sum_l += wl[i]
            sum_l2 += wl2[i]
            sum_xl += wlx[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            if use_mad:
                for i in range(n):
                    e[i] = weights[i] * abs(this_scale * lf[i] + this_min - x[i])
            else:
                for i in range(n):
                    d = this_scale * lf[i] + this_min - x[i]
                    e[i] = weights[i] * (d * d)
            cur_error = F0
            for i in range(n):
                cur_error += e[i]
            if cur_error < best_error:
                for i in range(n):
                    Lb[i] = lf[i]
                best_error = cur_error
                scale = this_scale
                if this_min != mn:
                    for i in range(n):
                        xm[i] = x[i] - this_min
                mn = this_min
    for i in range(n):
        L[i] = np.int64(Lb[i])
    return scale, -mn


QX_TRIALS = 19  # make_qx_quants: iscale = -nmax/max, then is = -9..-1, 1..9


@njit(nogil=True, cache=True, error_model="numpy")
def make_qx_quants(n, nmax, x, w, L, S):
    """ggml-quants.c make_qx_quants with rmse_type 1; ``w`` is quant_weights, or x*x for NULL.

    Symmetric levels in [0, 2*nmax) into L; returns the scale.  No trial depends
    on an earlier one (only the comparison does), so all 19 run in one pass over
    the group: trial t's sums still add their terms in element order.
    """
    mx, amax = _signed_absmax(n, x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    nt = QX_TRIALS
    isc = S[0, :nt]
    slx = S[1, :nt]
    sl2 = S[2, :nt]
    fnmax = np.float32(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    isc[0] = np.float32(-nmax) / mx
    for t in range(1, nt):
        is_ = t - 10 if t < 10 else t - 9
        isc[t] = -(fnmax + np.float32(0.1) * np.float32(is_)) / mx
    for t in range(nt):
        slx[t] = F0
        sl2[t] = F0
    for i in range(n):
        xi = x[i]
        wi = w[i]
        wx = wi * xi
        for t in range(nt):
            fl = _level(isc[t] * xi, lo, hi)
            slx[t] += wx * fl
            sl2[t] += (wi * fl) * fl
    scale = slx[0] / sl2[0] if sl2[0] != F0 else F0
    best = scale * slx[0]
    bt = 0
    for t in range(1, nt):
        if sl2[t] > F0 and slx[t] * slx[t] > best * sl2[t]:
            bt = t
            scale = slx[t] / sl2[t]
            best = scale * slx[t]
    iscale = isc[bt]
    for i in range(n):
        L[i] = nmax + np.int64(_level(iscale * x[i], lo, hi))
    return scale


@njit(nogil=True, cache=True, error_model="numpy")
def make_qp_quants(n, nmax, x, L, qw):
    """ggml-quants.c make_qp_quants: non-negative levels in [0, nmax] for scales/mins."""
    mx = F0
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    fnmax = np.float32(nmax)
    iscale = fnmax / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF  # uint8_t store
    scale = F1 / iscale
    best_mse = F0
    for i in range(n):
        diff = x[i] - scale * np.float32(L[i])
        best_mse += qw[i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (np.float32(0.1) * np.float32(is_) + fnmax) / mx
        scale_is = F1 / iscale_is
        mse = F0
        for i in range(n):
            l = nearest_int(iscale_is * x[i])
            l = min(nmax, l)
            diff = x[i] - scale_is * np.float32(l)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = min(nmax, l)
        L[i] = l & 0xFF
        w = qw[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            fL = np.float32(L[i])
            slx = sumlx - w * x[i] * fL
            sl2 = suml2 - w * fL * fL
            if slx > F0 and sl2 > F0:
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = min(nmax, new_l)
                if new_l != L[i]:
                    fn = np.float32(new_l)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > F0 else F0


@njit(nogil=True, cache=True)
def best_index_int8(n, val, x):
    """ggml-quants.c best_index_int8; ``val`` holds the int8 table as float32."""
    if x <= val[0]:
        return 0
    if x >= val[n - 1]:
        return n - 1
    ml = 0
    mu = n - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - val[mu - 1] < val[mu] - x else mu


