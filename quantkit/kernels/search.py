"""Scale searches of ggml-quants.c, ported operation by operation (float32).

Each function follows the llama.cpp function of the same name; the comments
name it.  They work on 1-D float32 views and write integer levels into ``L``.
All arithmetic stays in float32 (see ``fp.py`` for why every constant is
wrapped in ``np.float32``).  ``qw``/``use_qw`` stand for a nullable
``const float * quant_weights`` pointer.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fp import GROUP_MAX_EPS, nearest_int

F0 = np.float32(0.0)
F1 = np.float32(1.0)


@njit(cache=True)
def _rmse_weight(x, qw, use_qw, i, rmse_type):
    if use_qw:
        return qw[i]
    xi = x[i]
    if rmse_type == 1:
        return xi * xi
    if rmse_type == 2:
        return np.float32(1.0)
    if rmse_type == 3:
        return abs(xi)
    return np.float32(np.sqrt(abs(xi)))


@njit(cache=True)
def make_qx_quants(n, nmax, x, L, rmse_type, qw, use_qw):
    """ggml-quants.c make_qx_quants: symmetric levels in [0, 2*nmax), returns scale."""
    mx = F0
    amax = F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    fnmax = np.float32(nmax)
    iscale = np.float32(-nmax) / mx
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale * x[i])
            L[i] = nmax + max(-nmax, min(nmax - 1, l))
        return F1 / iscale
    return_early = False
    if rmse_type < 0:
        rmse_type = -rmse_type
        return_early = True
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        w = _rmse_weight(x, qw, use_qw, i, rmse_type)
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != F0 else F0
    if return_early:
        return np.float32(0.5) * (scale + F1 / iscale) if suml2 > F0 else F1 / iscale
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(fnmax + np.float32(0.1) * np.float32(is_)) / mx
        sumlx = F0
        suml2 = F0
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            w = _rmse_weight(x, qw, use_qw, i, rmse_type)
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > F0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True)
def make_q3_quants(n, nmax, x, L, do_rmse):
    """ggml-quants.c make_q3_quants (Q3_K reference path)."""
    mx = F0
    amax = F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
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


@njit(cache=True)
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """ggml-quants.c make_qkx2_quants: asymmetric levels in [0, nmax].

    Returns (scale, the_min) where the_min is ``-min`` as written by the C code.
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
    fnmax = np.float32(nmax)
    iscale = fnmax / (mx - mn)
    scale = F1 / iscale
    best_error = F0
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        l = max(0, min(nmax, l))
        L[i] = l
        diff = scale * np.float32(l) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(is_) + fnmax) / (mx - mn)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            cur_error = F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(cache=True)
def make_qkx3_quants(n, nmax, x, weights, use_w, L, Laux, rmin, rdelta, nstep, use_mad):
    """ggml-quants.c make_qkx3_quants (weights NULL -> x^2).  Returns (scale, the_min)."""
    mn = x[0]
    mx = x[0]
    sum_w = weights[0] if use_w else x[0] * x[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i] if use_w else x[i] * x[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > F0:
        mn = F0
    if mx <= mn:
        for i in range(n):
            L[i] = 0
        return F0, -mn
    fnmax = np.float32(nmax)
    iscale = fnmax / (mx - mn)
    scale = F1 / iscale
    best_mad = F0
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        l = max(0, min(nmax, l))
        L[i] = l
        diff = scale * np.float32(l) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        w = weights[i] if use_w else x[i] * x[i]
        best_mad += w * diff
    if nstep < 1:
        return scale, -mn
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(is_) + fnmax) / (mx - mn)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i] if use_w else x[i] * x[i]
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            mad = F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                w = weights[i] if use_w else x[i] * x[i]
                mad += w * diff
            if mad < best_mad:
                for i in range(n):
                    L[i] = Laux[i]
                best_mad = mad
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(cache=True)
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


@njit(cache=True)
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
