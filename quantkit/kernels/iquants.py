"""ggml lattice ("i-quant") types: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S (256-weight blocks).

Byte layouts (ggml-common.h, little endian):

    block_iq2_xxs (66 B): d:f16 | qs[64]
        per 32 weights (ib = 0..7) two uint32 at qs[8ib:8ib+8]:
        aux0 = 4 grid indices (one byte per group of 8 weights),
        aux1 = 4 x 7-bit sign indices (into ksigns) | 4-bit scale << 28;
        x = d*(0.5+scale)*0.25 * grid[idx][j] * sign
    block_iq2_xs  (74 B): d:f16 | qs[32]:u16 | scales[8]
        per 8 weights one u16: 9-bit grid index | 7-bit sign index << 9;
        scales[ib] = two 4-bit scales (one per 16 weights);
        x = d*(0.5+scale)*0.25 * grid[idx][j] * sign
    block_iq3_xxs (98 B): d:f16 | qs[64] | scales_and_signs[8]:u32
        qs: one byte grid index per group of 4 weights; per 32 weights one
        uint32 = 4 x 7-bit sign indices | 4-bit scale << 28;
        x = d*(0.5+scale)*0.5 * grid[idx][j] * sign
    block_iq2_s   (82 B): d:f16 | qs[32] | signs[32] | qh[8] | scales[8]
        per 8 weights a 10-bit index into the 1024-point grid (low 8 bits in
        qs, top 2 bits in qh[ib32] at bit 2l) and a full sign byte;
        scales[ib32] = two 4-bit scales (one per 16 weights);
        x = d*(0.5+scale)*0.25 * grid[idx][j] * sign
    block_iq3_s   (110 B): d:f16 | qs[64] | qh[8] | signs[32] | scales[4]
        per 4 weights a 9-bit index into the 512-point grid (low 8 bits in qs,
        top bit in qh[ib32] at bit k), a sign byte per 8 weights, one 4-bit
        scale per 32 weights; x = d*(1+2*scale) * grid[idx][j] * sign

Encoders follow ``quantize_row_iq2_xxs_impl``, ``quantize_row_iq2_xs_impl``,
``quantize_row_iq2_s_impl``, ``quantize_row_iq3_xxs_impl`` (grid_size 256) and
``quantize_row_iq3_s_impl`` (block_size 32, grid 512) of ggml-quants.c,
including their neighbour searches (``iq2_find_best_neighbour`` /
``iq3_find_best_neighbour``).  IQ2 encoders need importance weights (llama.cpp
asserts on them); IQ3_XXS and IQ3_S without weights use x^2 as ggml does.
Grids and sign tables come from gguf-py via ``iqgrid``.  Decoders follow
``dequantize_row_iq2_xxs`` etc.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fp import nearest_int, get_f16, put_f16
from .iqgrid import iq2s_grid, iq2xs_grid, iq2xxs_grid, iq3s_grid, iq3xxs_grid
from .search import make_qp_quants

QK_K = 256
F0 = np.float32(0.0)
F1 = np.float32(1.0)
FLT_MAX = np.float32(3.4028234663852886e38)
GROUP_MAX_EPS = np.float32(1e-15)
GROUP_MAX_EPS_IQ3_XXS = np.float32(1e-8)
GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)

# Each group's scale search tries inverse scales (2 kMaxQ - 1 + s * step) / max for s in [lo, hi]
# (quantize_row_iq2_xxs_impl and siblings). effort="exact" tries every s, as llama.cpp does;
# effort="fast" tries s in {lo/2, 0, hi/2}: each trial costs a grid-neighbour search per group,
# so this is about 4x (IQ2_XXS) to 10x (IQ3_XXS) faster for a small rise in error (benches/kernels.py).
SCALE_TRIALS = {"IQ2_XXS": (-6, 6), "IQ2_XS": (-9, 9), "IQ2_S": (-9, 9), "IQ3_XXS": (-15, 15), "IQ3_S": (-9, 9)}


class GridError(RuntimeError):
    pass


@njit(nogil=True, cache=True)
def _find_best_neighbour(nb_list, off, pos, xval, waux, base, scale, L):
    """iq2_find_best_neighbour / iq3_find_best_neighbour (n = pos.shape[1])."""
    n = pos.shape[1]
    num = nb_list[off]
    best_d2 = FLT_MAX
    gi = -1
    for j in range(1, num + 1):
        g = nb_list[off + j]
        d2 = F0
        for i in range(n):
            q = np.float32(pos[g, i])
            diff = scale * q - xval[base + i]
            d2 += waux[base + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            gi = g
    for i in range(n):
        L[base + i] = (pos[gi, i] - 1) // 2
    return gi


@njit(nogil=True, cache=True)
def _signs(xb, weight, xval, block_signs, ngroups):
    """Make every group of 8 have an even number of negatives (flip the cheapest)."""
    for k in range(ngroups):
        nflip = 0
        s = 0
        for i in range(8):
            v = xb[8 * k + i]
            if v >= F0:
                xval[8 * k + i] = v
            else:
                xval[8 * k + i] = -v
                nflip += 1
                s |= 1 << i
        if nflip % 2 == 1:
            imin = 0
            mn = weight[8 * k] * xb[8 * k] * xb[8 * k]
            for i in range(1, 8):
                ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                if ax < mn:
                    mn = ax
                    imin = i
            xval[8 * k + imin] = -xval[8 * k + imin]
            s ^= 1 << imin
        block_signs[k] = s & 127


@njit(nogil=True, cache=True)
def _u_of(L, base, n, bits):
    u = 0
    for i in range(n):
        u |= np.int64(L[base + i]) << (bits * i)
    return u


# ----------------------------------------------------------------- IQ2_XXS


@njit(nogil=True, cache=True)
def _iq2_xxs_block(x, qw, o, pos, kmap, nb_off, nb_list, scales, weight, xval, L, Laux, waux, Lq, block_signs, q2,
                   trials):
    kMaxQ = 3
    put_f16(o, 0, F0)
    for k in range(16):
        q2[k] = 0
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = sumx2 / np.float32(QK_K)
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        for i in range(32):
            weight[i] = qw[32 * ib + i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        for i in range(32):
            waux[i] = np.float32(np.sqrt(weight[i]))
        _signs(xb, weight, xval, block_signs, 4)
        mx = xval[0]
        for i in range(1, 32):
            mx = max(mx, xval[i])
        if mx < GROUP_MAX_EPS:
            scales[ib] = F0
            for i in range(32):
                L[i] = 0
            continue
        scale = make_qp_quants(32, kMaxQ + 1, xval, Lq, weight)
        for i in range(32):
            L[i] = Lq[i]
        eff_max = scale * np.float32(kMaxQ)
        if eff_max <= F0:
            scales[ib] = F0
            for i in range(32):
                L[i] = 0
            continue
        best = F0
        for is_ in trials:
            idv = (np.float32(2 * kMaxQ - 1) + np.float32(is_) * np.float32(0.1)) / eff_max
            this_scale = F1 / idv
            for k in range(4):
                for i in range(8):
                    l = nearest_int(np.float32(0.5) * (idv * xval[8 * k + i] - F1))
                    Laux[8 * k + i] = max(0, min(kMaxQ - 1, l))
                u = _u_of(Laux, 8 * k, 8, 2)
                if kmap[u] < 0:
                    _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, 8 * k, this_scale, Laux)
            sumqx = F0
            sumq2 = F0
            for i in range(32):
                w = weight[i]
                q = np.float32(2 * Laux[i] + 1)
                sumqx += w * xval[i] * q
                sumq2 += w * q * q
            if sumq2 > F0 and sumqx * sumqx > best * sumq2:
                scale = sumqx / sumq2
                best = scale * sumqx
                for i in range(32):
                    L[i] = Laux[i]
        if scale > F0:
            idv = F1 / scale
            for k in range(4):
                u = 0
                for i in range(8):
                    l = nearest_int(np.float32(0.5) * (idv * xval[8 * k + i] - F1))
                    l = max(0, min(kMaxQ - 1, l))
                    u |= l << (2 * i)
                gi = kmap[u]
                if gi < 0:
                    gi = _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, 8 * k, scale, L)
                for i in range(8):
                    L[8 * k + i] = (pos[gi, i] - 1) // 2
            sumqx = F0
            sumq2 = F0
            for i in range(32):
                w = weight[i]
                q = np.float32(2 * L[i] + 1)
                sumqx += w * xval[i] * q
                sumq2 += w * q * q
            if sumq2 > F0:
                scale = sumqx / sumq2
        if scale < F0:
            scale = -scale
            for k in range(4):
                block_signs[k] = (~block_signs[k]) & 127
        for k in range(4):
            u = _u_of(L, 8 * k, 8, 2)
            gi = kmap[u]
            if gi < 0:
                return False
            q2[2 * ib] |= gi << (8 * k)
            q2[2 * ib + 1] |= block_signs[k] << (7 * k)
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == F0:
        for k in range(64):
            o[2 + k] = 0
        return True
    d = max_scale / np.float32(31.0)
    put_f16(o, 0, d)
    idv = F1 / d
    for ib in range(8):
        l = nearest_int(np.float32(0.5) * (idv * scales[ib] - F1))
        l = max(0, min(15, l))
        q2[2 * ib + 1] |= l << 28
    for k in range(16):
        for b in range(4):
            o[2 + 4 * k + b] = (q2[k] >> (8 * b)) & 0xFF
    return True


@njit(nogil=True, cache=True)
def _encode_iq2_xxs_rows(x, qw, pos, kmap, nb_off, nb_list, out, ok, trials):
    rows, cols = x.shape
    nb = cols // QK_K
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        scales = np.zeros(8, np.float32)
        weight = np.zeros(32, np.float32)
        xval = np.zeros(32, np.float32)
        L = np.zeros(32, np.int64)
        Laux = np.zeros(32, np.int64)
        waux = np.zeros(32, np.float32)
        Lq = np.zeros(32, np.uint8)
        block_signs = np.zeros(4, np.int64)
        q2 = np.zeros(16, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            if not _iq2_xxs_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K],
                                  out[r, b * 66:(b + 1) * 66], pos, kmap, nb_off, nb_list,
                                  scales, weight, xval, L, Laux, waux, Lq, block_signs, q2, trials):
                ok[0] = False


# ----------------------------------------------------------------- IQ2_XS


@njit(nogil=True, cache=True)
def _iq2_xs_block(x, qw, o, pos, kmap, nb_off, nb_list, scales, weight, xval, L, Laux, waux, block_signs, q2, trials):
    kMaxQ = 3
    put_f16(o, 0, F0)
    for k in range(32):
        q2[k] = 0
    for k in range(8):
        o[66 + k] = 0
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = sumx2 / np.float32(QK_K)
    is_on_grid = np.ones(2, np.bool_)
    is_on_grid_aux = np.ones(2, np.bool_)
    for ib in range(16):
        xb = x[16 * ib:16 * ib + 16]
        for i in range(16):
            weight[i] = qw[16 * ib + i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        for i in range(16):
            waux[i] = np.float32(np.sqrt(weight[i]))
        _signs(xb, weight, xval, block_signs, 2)
        mx = xval[0]
        for i in range(1, 16):
            mx = max(mx, xval[i])
        for i in range(16):
            L[i] = 0
        if mx < GROUP_MAX_EPS:
            scales[ib] = F0
            continue
        best = F0
        scale = mx / np.float32(2 * kMaxQ - 1)
        is_on_grid[0] = True
        is_on_grid[1] = True
        for is_ in trials:
            idv = (np.float32(2 * kMaxQ - 1) + np.float32(is_) * np.float32(0.1)) / mx
            this_scale = F1 / idv
            for k in range(2):
                for i in range(8):
                    l = nearest_int(np.float32(0.5) * (idv * xval[8 * k + i] - F1))
                    Laux[8 * k + i] = max(0, min(kMaxQ - 1, l))
                u = _u_of(Laux, 8 * k, 8, 2)
                is_on_grid_aux[k] = True
                if kmap[u] < 0:
                    is_on_grid_aux[k] = False
                    _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, 8 * k, this_scale, Laux)
            sumqx = F0
            sumq2 = F0
            for i in range(16):
                w = weight[i]
                q = np.float32(2 * Laux[i] + 1)
                sumqx += w * xval[i] * q
                sumq2 += w * q * q
            if sumq2 > F0 and sumqx * sumqx > best * sumq2:
                scale = sumqx / sumq2
                best = scale * sumqx
                for i in range(16):
                    L[i] = Laux[i]
                for k in range(2):
                    is_on_grid[k] = is_on_grid_aux[k]
        n_not_ongrid = 0
        for k in range(2):
            if not is_on_grid[k]:
                n_not_ongrid += 1
        if n_not_ongrid > 0 and scale > F0:
            idv = F1 / scale
            for k in range(2):
                if is_on_grid[k]:
                    continue
                u = 0
                for i in range(8):
                    l = nearest_int(np.float32(0.5) * (idv * xval[8 * k + i] - F1))
                    l = max(0, min(kMaxQ - 1, l))
                    u |= l << (2 * i)
                    L[8 * k + i] = l
                if kmap[u] < 0:
                    _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, 8 * k, scale, L)
            sumqx = F0
            sumq2 = F0
            for i in range(16):
                w = weight[i]
                q = np.float32(2 * L[i] + 1)
                sumqx += w * xval[i] * q
                sumq2 += w * q * q
            if sumq2 > F0:
                scale = sumqx / sumq2
        if scale < F0:
            scale = -scale
            for k in range(2):
                block_signs[k] = (~block_signs[k]) & 127
        for k in range(2):
            u = _u_of(L, 8 * k, 8, 2)
            gi = kmap[u]
            if gi < 0:
                return False
            q2[2 * ib + k] = gi | (block_signs[k] << 9)
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == F0:
        for k in range(64):
            o[2 + k] = 0
        return True
    d = max_scale / np.float32(31.0)
    put_f16(o, 0, d)
    idv = F1 / d
    for ib in range(16):
        l = nearest_int(np.float32(0.5) * (idv * scales[ib] - F1))
        l = max(0, min(15, l))
        if ib % 2 == 0:
            o[66 + ib // 2] = l
        else:
            o[66 + ib // 2] = np.int64(o[66 + ib // 2]) | (l << 4)
    for k in range(32):
        o[2 + 2 * k] = q2[k] & 0xFF
        o[3 + 2 * k] = (q2[k] >> 8) & 0xFF
    return True


@njit(nogil=True, cache=True)
def _encode_iq2_xs_rows(x, qw, pos, kmap, nb_off, nb_list, out, ok, trials):
    rows, cols = x.shape
    nb = cols // QK_K
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        scales = np.zeros(16, np.float32)
        weight = np.zeros(16, np.float32)
        xval = np.zeros(16, np.float32)
        L = np.zeros(16, np.int64)
        Laux = np.zeros(16, np.int64)
        waux = np.zeros(16, np.float32)
        block_signs = np.zeros(2, np.int64)
        q2 = np.zeros(32, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            if not _iq2_xs_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K],
                                 out[r, b * 74:(b + 1) * 74], pos, kmap, nb_off, nb_list,
                                 scales, weight, xval, L, Laux, waux, block_signs, q2, trials):
                ok[0] = False


# ----------------------------------------------------------------- IQ3_XXS


@njit(nogil=True, cache=True)
def _iq3_xxs_block(x, qw, use_qw, o, pos, kmap, nb_off, nb_list, scales, weight, xval, L, Laux, waux,
                   block_signs, q3, sas, trials):
    kMaxQ = 8
    put_f16(o, 0, F0)
    for k in range(64):
        q3[k] = 0
    for k in range(8):
        sas[k] = 0
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    is_on_grid = np.ones(8, np.bool_)
    is_on_grid_aux = np.ones(8, np.bool_)
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        if use_qw:
            for i in range(32):
                weight[i] = qw[32 * ib + i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        else:
            for i in range(32):
                weight[i] = xb[i] * xb[i]
        for i in range(32):
            waux[i] = np.float32(np.sqrt(weight[i]))
        _signs(xb, weight, xval, block_signs, 4)
        mx = xval[0]
        for i in range(1, 32):
            mx = max(mx, xval[i])
        for i in range(32):
            L[i] = 0
        if mx < GROUP_MAX_EPS_IQ3_XXS:
            scales[ib] = F0
            continue
        best = F0
        scale = mx / np.float32(2 * kMaxQ - 1)
        for k in range(8):
            is_on_grid[k] = True
        for is_ in trials:
            idv = (np.float32(2 * kMaxQ - 1) + np.float32(is_) * np.float32(0.2)) / mx
            this_scale = F1 / idv
            for k in range(8):
                for i in range(4):
                    l = nearest_int(np.float32(0.5) * (idv * xval[4 * k + i] - F1))
                    Laux[4 * k + i] = max(0, min(kMaxQ - 1, l))
                u = _u_of(Laux, 4 * k, 4, 3)
                is_on_grid_aux[k] = True
                if kmap[u] < 0:
                    is_on_grid_aux[k] = False
                    _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, 4 * k, this_scale, Laux)
            sumqx = F0
            sumq2 = F0
            for i in range(32):
                w = weight[i]
                q = np.float32(2 * Laux[i] + 1)
                sumqx += w * xval[i] * q
                sumq2 += w * q * q
            if sumq2 > F0 and sumqx * sumqx > best * sumq2:
                scale = sumqx / sumq2
                best = scale * sumqx
                for i in range(32):
                    L[i] = Laux[i]
                for k in range(8):
                    is_on_grid[k] = is_on_grid_aux[k]
        n_not_ongrid = 0
        for k in range(8):
            if not is_on_grid[k]:
                n_not_ongrid += 1
        if n_not_ongrid > 0 and scale > F0:
            idv = F1 / scale
            for k in range(8):
                if is_on_grid[k]:
                    continue
                u = 0
                for i in range(4):
                    l = nearest_int(np.float32(0.5) * (idv * xval[4 * k + i] - F1))
                    l = max(0, min(kMaxQ - 1, l))
                    u |= l << (3 * i)
                gi = kmap[u]
                if gi < 0:
                    gi = _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, 4 * k, scale, L)
                for i in range(4):
                    L[4 * k + i] = (pos[gi, i] - 1) // 2
            sumqx = F0
            sumq2 = F0
            for i in range(32):
                w = weight[i]
                q = np.float32(2 * L[i] + 1)
                sumqx += w * xval[i] * q
                sumq2 += w * q * q
            if sumq2 > F0:
                scale = sumqx / sumq2
        if scale < F0:
            scale = -scale
            for k in range(4):
                block_signs[k] = (~block_signs[k]) & 127
        for k in range(8):
            u = _u_of(L, 4 * k, 4, 3)
            gi = kmap[u]
            if gi < 0:
                return False
            q3[8 * ib + k] = gi
        sas[ib] = block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14) | (block_signs[3] << 21)
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == F0:
        for k in range(96):
            o[2 + k] = 0
        return True
    d = max_scale / np.float32(31.0)
    put_f16(o, 0, d * np.float32(1.0125))
    idv = F1 / d
    for ib in range(8):
        l = nearest_int(np.float32(0.5) * (idv * scales[ib] - F1))
        l = max(0, min(15, l))
        sas[ib] |= l << 28
    for k in range(64):
        o[2 + k] = q3[k]
    for k in range(8):
        for b in range(4):
            o[66 + 4 * k + b] = (sas[k] >> (8 * b)) & 0xFF
    return True


@njit(nogil=True, cache=True)
def _encode_iq3_xxs_rows(x, qw, use_qw, pos, kmap, nb_off, nb_list, out, ok, trials):
    rows, cols = x.shape
    nb = cols // QK_K
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        scales = np.zeros(8, np.float32)
        weight = np.zeros(32, np.float32)
        xval = np.zeros(32, np.float32)
        L = np.zeros(32, np.int64)
        Laux = np.zeros(32, np.int64)
        waux = np.zeros(32, np.float32)
        block_signs = np.zeros(4, np.int64)
        q3 = np.zeros(64, np.int64)
        sas = np.zeros(8, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            if not _iq3_xxs_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K] if use_qw else qw,
                                  use_qw, out[r, b * 98:(b + 1) * 98], pos, kmap, nb_off, nb_list,
                                  scales, weight, xval, L, Laux, waux, block_signs, q3, sas, trials):
                ok[0] = False


# ----------------------------------------------------------------- IQ2_S / IQ3_S


@njit(nogil=True, cache=True)
def _abs_signs(xb, xval, block_signs, ngroups):
    """|x| into xval and one 8-bit sign mask per group of 8 (the IQ2_S / IQ3_S blocks store all 8 signs)."""
    for k in range(ngroups):
        s = 0
        for i in range(8):
            v = xb[8 * k + i]
            if v >= F0:
                xval[8 * k + i] = v
            else:
                xval[8 * k + i] = -v
                s |= 1 << i
        block_signs[k] = s


@njit(nogil=True, cache=True)
def _s_group_search(xval, weight, waux, L, Laux, is_on_grid, is_on_grid_aux, mx, kMaxQ, step, init_on_grid,
                    refine_all, pos, kmap, nb_off, nb_list, trials):
    """The scale search of one group (the grid points of 8 or 4 weights it holds), shared by
    quantize_row_iq2_s_impl (kMaxQ 3, step 0.1, groups start on the grid, refine only the
    off-grid points) and quantize_row_iq3_s_impl (kMaxQ 8, step 0.2, groups start off the
    grid, refine every point). Leaves the levels in L and returns the scale."""
    n = xval.shape[0]
    gsz = pos.shape[1]
    bits = 2 if gsz == 8 else 3
    ng = n // gsz
    best = F0
    scale = mx / np.float32(2 * kMaxQ - 1)
    for k in range(ng):
        is_on_grid[k] = init_on_grid
    for is_ in trials:
        idv = (np.float32(2 * kMaxQ - 1) + np.float32(is_) * step) / mx
        this_scale = F1 / idv
        for k in range(ng):
            for i in range(gsz):
                l = nearest_int(np.float32(0.5) * (idv * xval[gsz * k + i] - F1))
                Laux[gsz * k + i] = max(0, min(kMaxQ - 1, l))
            u = _u_of(Laux, gsz * k, gsz, bits)
            is_on_grid_aux[k] = True
            if kmap[u] < 0:
                is_on_grid_aux[k] = False
                _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, gsz * k, this_scale, Laux)
        sumqx = F0
        sumq2 = F0
        for i in range(n):
            w = weight[i]
            q = np.float32(2 * Laux[i] + 1)
            sumqx += w * xval[i] * q
            sumq2 += w * q * q
        if sumq2 > F0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(n):
                L[i] = Laux[i]
            for k in range(ng):
                is_on_grid[k] = is_on_grid_aux[k]
    n_not_ongrid = 0
    for k in range(ng):
        if not is_on_grid[k]:
            n_not_ongrid += 1
    if n_not_ongrid > 0 and scale > F0:
        idv = F1 / scale
        for k in range(ng):
            if is_on_grid[k] and not refine_all:
                continue
            u = 0
            for i in range(gsz):
                l = nearest_int(np.float32(0.5) * (idv * xval[gsz * k + i] - F1))
                l = max(0, min(kMaxQ - 1, l))
                u |= l << (bits * i)
            gi = kmap[u]
            if gi < 0:
                gi = _find_best_neighbour(nb_list, nb_off[u], pos, xval, waux, gsz * k, scale, L)
            for i in range(gsz):
                L[gsz * k + i] = (pos[gi, i] - 1) // 2
        sumqx = F0
        sumq2 = F0
        for i in range(n):
            w = weight[i]
            q = np.float32(2 * L[i] + 1)
            sumqx += w * xval[i] * q
            sumq2 += w * q * q
        if sumq2 > F0:
            scale = sumqx / sumq2
    return scale


@njit(nogil=True, cache=True)
def _iq2_s_block(x, qw, o, pos, kmap, nb_off, nb_list, scales, weight, xval, L, Laux, waux, is_on_grid,
                 is_on_grid_aux, block_signs, trials):
    """quantize_row_iq2_s_impl (with quant_weights), one 256-weight block in 16 groups of 16."""
    for k in range(82):
        o[k] = 0
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    for ib in range(16):
        xb = x[16 * ib:16 * ib + 16]
        for i in range(16):
            weight[i] = qw[16 * ib + i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        for i in range(16):
            waux[i] = np.float32(np.sqrt(weight[i]))
        _abs_signs(xb, xval, block_signs, 2)
        mx = xval[0]
        for i in range(1, 16):
            mx = max(mx, xval[i])
        for i in range(16):
            L[i] = 0
        if mx < GROUP_MAX_EPS_IQ2_S:
            scales[ib] = F0
            continue
        scale = _s_group_search(xval, weight, waux, L, Laux, is_on_grid, is_on_grid_aux, mx, 3, np.float32(0.1),
                                True, False, pos, kmap, nb_off, nb_list, trials)
        if scale < F0:
            scale = -scale
            for k in range(2):
                block_signs[k] = (~block_signs[k]) & 255
        for k in range(2):
            gi = kmap[_u_of(L, 8 * k, 8, 2)]
            if gi < 0:
                return False
            i8 = 2 * ib + k
            o[2 + i8] = gi & 255  # qs: low 8 bits of the grid index
            o[66 + i8 // 4] = np.int64(o[66 + i8 // 4]) | ((gi >> 8) << (2 * (i8 % 4)))  # qh: the top 2 bits
            o[34 + i8] = block_signs[k]  # qs[QK_K/8 + i8]: the signs
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == F0:  # ggml leaves d and the scales 0 but keeps qs, qh
        return True
    d = max_scale / np.float32(31.0)
    put_f16(o, 0, d * np.float32(0.9875))
    idv = F1 / d
    for ib in range(16):
        l = nearest_int(np.float32(0.5) * (idv * scales[ib] - F1))
        l = max(0, min(15, l))
        if ib % 2 == 0:
            o[74 + ib // 2] = l
        else:
            o[74 + ib // 2] = np.int64(o[74 + ib // 2]) | (l << 4)
    return True


@njit(nogil=True, cache=True)
def _encode_iq2_s_rows(x, qw, pos, kmap, nb_off, nb_list, out, ok, trials):
    rows, cols = x.shape
    nb = cols // QK_K
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        scales = np.zeros(16, np.float32)
        weight = np.zeros(16, np.float32)
        xval = np.zeros(16, np.float32)
        L = np.zeros(16, np.int64)
        Laux = np.zeros(16, np.int64)
        waux = np.zeros(16, np.float32)
        is_on_grid = np.ones(2, np.bool_)
        is_on_grid_aux = np.ones(2, np.bool_)
        block_signs = np.zeros(2, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            if not _iq2_s_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K],
                                out[r, b * 82:(b + 1) * 82], pos, kmap, nb_off, nb_list, scales, weight, xval,
                                L, Laux, waux, is_on_grid, is_on_grid_aux, block_signs, trials):
                ok[0] = False


@njit(nogil=True, cache=True)
def _iq3_s_block(x, qw, use_qw, o, pos, kmap, nb_off, nb_list, scales, weight, xval, L, Laux, waux, is_on_grid,
                 is_on_grid_aux, block_signs, trials):
    """quantize_row_iq3_s_impl (block_size 32, grid 512), one 256-weight block in 8 groups of 32."""
    for k in range(110):
        o[k] = 0
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    # ggml advances its qs and signs pointers only past groups that are not all zero, so the
    # points and signs of the groups after an all-zero one land earlier in the block (qh and
    # the scales stay indexed by group): nz counts the groups written so far.
    nz = 0
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        if use_qw:
            for i in range(32):
                weight[i] = qw[32 * ib + i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        else:
            for i in range(32):
                weight[i] = xb[i] * xb[i]
        for i in range(32):
            waux[i] = np.float32(np.sqrt(weight[i]))
        _abs_signs(xb, xval, block_signs, 4)
        mx = xval[0]
        for i in range(1, 32):
            mx = max(mx, xval[i])
        for i in range(32):
            L[i] = 0
        if mx == F0:
            scales[ib] = F0
            continue
        scale = _s_group_search(xval, weight, waux, L, Laux, is_on_grid, is_on_grid_aux, mx, 8, np.float32(0.2),
                                False, True, pos, kmap, nb_off, nb_list, trials)
        if scale < F0:
            scale = -scale
            for k in range(4):
                block_signs[k] = (~block_signs[k]) & 255
        for k in range(8):
            gi = kmap[_u_of(L, 4 * k, 4, 3)]
            if gi < 0:
                return False
            o[2 + 8 * nz + k] = gi & 255  # qs: low 8 bits of the grid index
            o[66 + ib] = np.int64(o[66 + ib]) | ((gi >> 8) << k)  # qh: the top bit
        for k in range(4):
            o[74 + 4 * nz + k] = block_signs[k]
        nz += 1
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == F0:  # ggml leaves d and the scales 0 but keeps qs, qh, signs
        return True
    d = max_scale / np.float32(31.0)
    put_f16(o, 0, d * np.float32(1.033))
    idv = F1 / d
    for ib in range(0, 8, 2):
        l1 = nearest_int(np.float32(0.5) * (idv * scales[ib] - F1))
        l1 = max(0, min(15, l1))
        l2 = nearest_int(np.float32(0.5) * (idv * scales[ib + 1] - F1))
        l2 = max(0, min(15, l2))
        o[106 + ib // 2] = l1 | (l2 << 4)
    return True


@njit(nogil=True, cache=True)
def _encode_iq3_s_rows(x, qw, use_qw, pos, kmap, nb_off, nb_list, out, ok, trials):
    rows, cols = x.shape
    nb = cols // QK_K
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        scales = np.zeros(8, np.float32)
        weight = np.zeros(32, np.float32)
        xval = np.zeros(32, np.float32)
        L = np.zeros(32, np.int64)
        Laux = np.zeros(32, np.int64)
        waux = np.zeros(32, np.float32)
        is_on_grid = np.zeros(8, np.bool_)
        is_on_grid_aux = np.zeros(8, np.bool_)
        block_signs = np.zeros(4, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            if not _iq3_s_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K] if use_qw else qw,
                                use_qw, out[r, b * 110:(b + 1) * 110], pos, kmap, nb_off, nb_list, scales, weight,
                                xval, L, Laux, waux, is_on_grid, is_on_grid_aux, block_signs, trials):
                ok[0] = False


# ----------------------------------------------------------------- decoders


@njit(nogil=True, cache=True)
def _decode_iq2_xxs_rows(data, values, ksigns, out):
    rows, cols = out.shape
    nb = cols // QK_K
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 66:(b + 1) * 66]
        d = get_f16(o, 0)
        for ib in range(8):
            a1 = 0
            for k in range(4):
                a1 |= np.int64(o[2 + 8 * ib + 4 + k]) << (8 * k)
            db = d * (np.float32(0.5) + np.float32(a1 >> 28)) * np.float32(0.25)
            for l in range(4):
                g = np.int64(o[2 + 8 * ib + l])
                s = ksigns[(a1 >> (7 * l)) & 127]
                for j in range(8):
                    sign = np.float32(-1.0) if (s >> j) & 1 else F1
                    out[r, b * QK_K + 32 * ib + 8 * l + j] = db * values[g, j] * sign


@njit(nogil=True, cache=True)
def _decode_iq2_xs_rows(data, values, ksigns, out):
    rows, cols = out.shape
    nb = cols // QK_K
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 74:(b + 1) * 74]
        d = get_f16(o, 0)
        for ib in range(8):
            sc = np.int64(o[66 + ib])
            db0 = d * (np.float32(0.5) + np.float32(sc & 0xF)) * np.float32(0.25)
            db1 = d * (np.float32(0.5) + np.float32(sc >> 4)) * np.float32(0.25)
            for l in range(4):
                q = np.int64(o[2 + 2 * (4 * ib + l)]) | (np.int64(o[3 + 2 * (4 * ib + l)]) << 8)
                g = q & 511
                s = ksigns[q >> 9]
                db = db0 if l < 2 else db1
                for j in range(8):
                    sign = np.float32(-1.0) if (s >> j) & 1 else F1
                    out[r, b * QK_K + 32 * ib + 8 * l + j] = db * values[g, j] * sign


@njit(nogil=True, cache=True)
def _decode_iq3_xxs_rows(data, values, ksigns, out):
    rows, cols = out.shape
    nb = cols // QK_K
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 98:(b + 1) * 98]
        d = get_f16(o, 0)
        for ib in range(8):
            a = 0
            for k in range(4):
                a |= np.int64(o[66 + 4 * ib + k]) << (8 * k)
            db = d * (np.float32(0.5) + np.float32(a >> 28)) * np.float32(0.5)
            for l in range(4):
                s = ksigns[(a >> (7 * l)) & 127]
                g1 = np.int64(o[2 + 8 * ib + 2 * l])
                g2 = np.int64(o[2 + 8 * ib + 2 * l + 1])
                for j in range(4):
                    s1 = np.float32(-1.0) if (s >> j) & 1 else F1
                    s2 = np.float32(-1.0) if (s >> (j + 4)) & 1 else F1
                    out[r, b * QK_K + 32 * ib + 8 * l + j] = db * values[g1, j] * s1
                    out[r, b * QK_K + 32 * ib + 8 * l + j + 4] = db * values[g2, j] * s2


@njit(nogil=True, cache=True)
def _decode_iq2_s_rows(data, values, out):
    rows, cols = out.shape
    nb = cols // QK_K
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 82:(b + 1) * 82]
        d = get_f16(o, 0)
        for ib in range(8):
            sc = np.int64(o[74 + ib])
            db0 = d * (np.float32(0.5) + np.float32(sc & 0xF)) * np.float32(0.25)
            db1 = d * (np.float32(0.5) + np.float32(sc >> 4)) * np.float32(0.25)
            qh = np.int64(o[66 + ib])
            for l in range(4):
                g = np.int64(o[2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                s = np.int64(o[34 + 4 * ib + l])
                db = db0 if l < 2 else db1
                for j in range(8):
                    sign = np.float32(-1.0) if (s >> j) & 1 else F1
                    out[r, b * QK_K + 32 * ib + 8 * l + j] = db * values[g, j] * sign


@njit(nogil=True, cache=True)
def _decode_iq3_s_rows(data, values, out):
    rows, cols = out.shape
    nb = cols // QK_K
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 110:(b + 1) * 110]
        d = get_f16(o, 0)
        for ib in range(8):
            sc = np.int64(o[106 + ib // 2])
            db = d * np.float32(1 + 2 * ((sc >> (4 * (ib % 2))) & 0xF))
            qh = np.int64(o[66 + ib])
            for l in range(4):
                s = np.int64(o[74 + 4 * ib + l])
                g1 = np.int64(o[2 + 8 * ib + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                g2 = np.int64(o[2 + 8 * ib + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
                for j in range(4):
                    s1 = np.float32(-1.0) if (s >> j) & 1 else F1
                    s2 = np.float32(-1.0) if (s >> (j + 4)) & 1 else F1
                    out[r, b * QK_K + 32 * ib + 8 * l + j] = db * values[g1, j] * s1
                    out[r, b * QK_K + 32 * ib + 8 * l + j + 4] = db * values[g2, j] * s2


# ----------------------------------------------------------------- wrappers


def _check(ok, name):
    if not ok[0]:
        raise GridError(f"{name}: found a point not on the grid (llama.cpp aborts here too)")


def _trials(type_name: str, effort: str) -> np.ndarray:
    lo, hi = SCALE_TRIALS[type_name]
    if effort == "exact":
        return np.arange(lo, hi + 1, dtype=np.int64)
    if effort == "fast":
        return np.array([lo // 2, 0, hi // 2], np.int64)
    raise ValueError(f"effort {effort!r}: expected 'exact' or 'fast'")


def encode_iq2_xxs(x, qw=None, effort="exact"):
    if qw is None:
        raise ValueError("IQ2_XXS needs importance weights")
    g = iq2xxs_grid()
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 66), np.uint8)
    ok = np.ones(1, np.bool_)
    _encode_iq2_xxs_rows(x, qw, g.pos, g.kmap, g.nb_off, g.nb_list, out, ok, _trials("IQ2_XXS", effort))
    _check(ok, "IQ2_XXS")
    return out


def encode_iq2_xs(x, qw=None, effort="exact"):
    if qw is None:
        raise ValueError("IQ2_XS needs importance weights")
    g = iq2xs_grid()
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 74), np.uint8)
    ok = np.ones(1, np.bool_)
    _encode_iq2_xs_rows(x, qw, g.pos, g.kmap, g.nb_off, g.nb_list, out, ok, _trials("IQ2_XS", effort))
    _check(ok, "IQ2_XS")
    return out


def encode_iq3_xxs(x, qw=None, effort="exact"):
    g = iq3xxs_grid()
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 98), np.uint8)
    ok = np.ones(1, np.bool_)
    use = qw is not None
    _encode_iq3_xxs_rows(x, qw if use else np.zeros(1, np.float32), use, g.pos, g.kmap, g.nb_off, g.nb_list, out, ok,
                         _trials("IQ3_XXS", effort))
    _check(ok, "IQ3_XXS")
    return out


def encode_iq2_s(x, qw=None, effort="exact"):
    if qw is None:
        raise ValueError("IQ2_S needs importance weights")
    g = iq2s_grid()
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 82), np.uint8)
    ok = np.ones(1, np.bool_)
    _encode_iq2_s_rows(x, qw, g.pos, g.kmap, g.nb_off, g.nb_list, out, ok, _trials("IQ2_S", effort))
    _check(ok, "IQ2_S")
    return out


def encode_iq3_s(x, qw=None, effort="exact"):
    g = iq3s_grid()
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 110), np.uint8)
    ok = np.ones(1, np.bool_)
    use = qw is not None
    _encode_iq3_s_rows(x, qw if use else np.zeros(1, np.float32), use, g.pos, g.kmap, g.nb_off, g.nb_list, out, ok,
                       _trials("IQ3_S", effort))
    _check(ok, "IQ3_S")
    return out


def decode_iq2_xxs(data, cols):
    g = iq2xxs_grid()
    out = np.empty((data.shape[0], cols), np.float32)
    _decode_iq2_xxs_rows(data, g.values, g.ksigns, out)
    return out


def decode_iq2_xs(data, cols):
    g = iq2xs_grid()
    out = np.empty((data.shape[0], cols), np.float32)
    _decode_iq2_xs_rows(data, g.values, g.ksigns, out)
    return out


def decode_iq3_xxs(data, cols):
    g = iq3xxs_grid()
    out = np.empty((data.shape[0], cols), np.float32)
    _decode_iq3_xxs_rows(data, g.values, g.ksigns, out)
    return out


def decode_iq2_s(data, cols):
    g = iq2s_grid()
    out = np.empty((data.shape[0], cols), np.float32)
    _decode_iq2_s_rows(data, g.values, out)
    return out


def decode_iq3_s(data, cols):
    g = iq3s_grid()
    out = np.empty((data.shape[0], cols), np.float32)
    _decode_iq3_s_rows(data, g.values, out)
    return out
