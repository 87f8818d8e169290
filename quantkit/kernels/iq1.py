"""ggml's 1.5 / 1.75 bpw lattice types: IQ1_S and IQ1_M (256-weight blocks).

Both use the 2048-point grid ``iq1s_grid`` (groups of 8 values in {-1, 0, 1},
from gguf-py via ``iqgrid.iq1s_grid``) shifted by a per-group delta of
+-IQ1S_DELTA (0.125): a weight decodes as ``dl * (grid[idx][j] + delta)``.

Byte layouts (ggml-common.h, little endian):

    block_iq1_s (50 B): d:f16 | qs[32] | qh[8]:u16
        per 32 weights (ib = 0..7) four grid indices: low 8 bits in
        qs[4ib + l], top 3 bits in qh[ib] at bit 3l; qh[ib] bits 12..14 the
        scale s, bit 15 the delta sign;  dl = d * (2s + 1)
    block_iq1_m (56 B): qs[32] | qh[16] | scales[8]
        per 16 weights (ig = 0..15) two grid indices: low 8 bits in
        qs[2ig + l], top 3 bits in qh[ig] at bit 4l, the delta sign of each
        half at qh[ig] bit 4l + 3; a 3-bit scale s per 16 weights at bit
        3 (ig % 4) of the u16 scales[ig / 4]; the fp16 d is split over the
        top nibbles of the four u16 (bits 0..3 of d in scales[0] etc.);
        dl = d * (2s + 1)

Encoders port ``quantize_row_iq1_s_impl`` (groups of 32, one delta sign per
group) and ``quantize_row_iq1_m_impl`` (groups of 16, one delta sign per 8)
of ggml-quants.c: with three levels per weight, the best split of a group's
weights, sorted by value, into the levels 0 / 1 / 2 is found exhaustively from
prefix sums, for both delta signs; points off the grid go to their nearest
listed neighbour (``iq1_find_best_neighbour2``) and the scale is refitted.
The float32 operations run in ggml's order (byte-exactness depends on it).
Both types need importance weights in llama.cpp (``tensor_requires_imatrix``;
``quantize_row_iq1_s_impl`` asserts on them); the IQ1_M kernel also has
ggml's unweighted path (weights x^2).  Decoders follow
``dequantize_row_iq1_s`` / ``dequantize_row_iq1_m``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fp import fp16_to_fp32, fp32_to_fp16, get_f16, nearest_int, put_f16
from .iqgrid import iq1s_grid
from .iquants import GridError

QK_K = 256
F0 = np.float32(0.0)
F1 = np.float32(1.0)
FLT_MAX = np.float32(3.4028234663852886e38)
GROUP_MAX_EPS_IQ1_S = np.float32(1e-12)
GROUP_MAX_EPS_IQ1_M = np.float32(1e-7)
IQ1S_DELTA = np.float32(0.125)
IQ1M_DELTA = np.float32(0.125)


def _shifted_levels(delta: np.float32) -> np.ndarray:
    """The encoders' level values: x_p = {-1 + delta, delta, 1 + delta} (row 0), x_m = {-1 - delta, -delta,
    1 - delta} (row 1), in float32 as ggml computes them."""
    one = np.float32(1.0)
    return np.array([[-one + delta, delta, one + delta], [-one - delta, -delta, one - delta]], np.float32)


SHIFTED_S = _shifted_levels(IQ1S_DELTA)
SHIFTED_M = _shifted_levels(IQ1M_DELTA)
# quantize_row_iq1_m_impl: the qh bits of the two delta signs, by sign combination (0: +,+ 1: +,- 2: -,+ 3: -,-)
IQ1M_MASKS = np.array([0x00, 0x80, 0x08, 0x88], np.int64)


@njit(nogil=True, cache=True)
def _sort_index(xb, idx, n):
    """Indices of xb[:n] by ascending value, equal values in index order: the qsort of ggml
    (iq1_sort_helper) is glibc's merge sort, which is stable."""
    for j in range(n):
        idx[j] = j
    for j in range(1, n):
        v = idx[j]
        xv = xb[v]
        k = j - 1
        while k >= 0 and xb[idx[k]] > xv:
            idx[k + 1] = idx[k]
            k -= 1
        idx[k + 1] = v


@njit(nogil=True, cache=True)
def _find_best_neighbour2(nb_list, off, levels, xb, weight, base, scale, xg, L):
    """iq1_find_best_neighbour2: the listed grid point nearest (weighted) to xb[base:base+8] at `scale`, with the
    shifted levels xg. Writes its levels to L[base:base+8]; -1 if none (ggml asserts)."""
    num = nb_list[off]
    best = FLT_MAX
    gi = -1
    for j in range(1, num + 1):
        g = nb_list[off + j]
        d2 = F0
        for i in range(8):
            diff = scale * xg[levels[g, i]] - xb[base + i]
            d2 += weight[base + i] * diff * diff
        if d2 < best:
            best = d2
            gi = g
    if gi < 0:
        # every listed distance was Inf / NaN: ggml scans the whole grid (its loop reads xval at the grid
        # index, past the group; here the group's own values), and asserts when that fails too
        for g in range(levels.shape[0]):
            d2 = F0
            for i in range(8):
                diff = scale * xg[levels[g, i]] - xb[base + i]
                d2 += weight[base + i] * diff * diff
            if d2 < best:
                best = d2
                gi = g
    if gi >= 0:
        for i in range(8):
            L[base + i] = levels[gi, i]
    return gi


@njit(nogil=True, cache=True)
def _u_of(L, base):
    u = 0
    for i in range(8):
        u |= np.int64(L[base + i]) << (2 * i)
    return u


@njit(nogil=True, cache=True)
def _levels_from_split(idx, n, b1, b2, L):
    """Sorted positions [0, b1) -> level 0, [b1, b2) -> 1, [b2, n) -> 2."""
    for j in range(n):
        L[idx[j]] = 0 if j < b1 else (1 if j < b2 else 2)


# ----------------------------------------------------------------- IQ1_S


@njit(nogil=True, cache=True)
def _iq1_s_block(x, qw, o, levels, kmap, nb_off, nb_list, xs, scales, shifts, qh, weight, sumx, sumw, idx, L, index):
    """quantize_row_iq1_s_impl, one 256-weight block in 8 groups of 32."""
    for k in range(50):
        o[k] = 0
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    for ib in range(8):
        qh[ib] = 0
        xb = x[32 * ib:32 * ib + 32]
        for i in range(32):
            weight[i] = qw[32 * ib + i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        mx = abs(xb[0])
        for i in range(1, 32):
            mx = max(mx, abs(xb[i]))
        if mx < GROUP_MAX_EPS_IQ1_S:
            scales[ib] = F0
            shifts[ib] = 1
            continue
        # the exhaustive split search over the sorted weights (prefix sums of w*x and w)
        _sort_index(xb, idx, 32)
        sumx[0] = F0
        sumw[0] = F0
        for j in range(32):
            i = idx[j]
            sumx[j + 1] = sumx[j] + weight[i] * xb[i]
            sumw[j + 1] = sumw[j] + weight[i]
        best = -FLT_MAX
        scale = mx
        b1 = -1
        b2 = -1
        shift = 0
        for i1 in range(33):
            for i2 in range(i1, 33):
                for t in range(2):  # t = 0: shift +1 (x_p), t = 1: shift -1 (x_m)
                    c0 = xs[t, 0]
                    c1 = xs[t, 1]
                    c2 = xs[t, 2]
                    sumqx = (sumx[i1] - sumx[0]) * c0 + (sumx[i2] - sumx[i1]) * c1 + (sumx[32] - sumx[i2]) * c2
                    sumq2 = ((sumw[i1] - sumw[0]) * c0 * c0 + (sumw[i2] - sumw[i1]) * c1 * c1
                             + (sumw[32] - sumw[i2]) * c2 * c2)
                    if sumq2 > F0 and sumqx * sumqx > best * sumq2:
                        scale = sumqx / sumq2
                        best = scale * sumqx
                        b1 = i1
                        b2 = i2
                        shift = 1 - 2 * t
        if b1 < 0 or b2 < 0 or shift == 0:
            scales[ib] = F0
            shifts[ib] = 1
            continue
        _levels_from_split(idx, 32, b1, b2, L)
        if scale < F0:
            for j in range(32):
                L[j] = 2 - L[j]
            scale = -scale
            shift = -shift
        t = 0 if shift == 1 else 1
        xg = xs[t]
        all_on_grid = True
        for k in range(4):
            gi = kmap[_u_of(L, 8 * k)]
            if gi < 0:
                all_on_grid = False
                gi = _find_best_neighbour2(nb_list, nb_off[_u_of(L, 8 * k)], levels, xb, weight, 8 * k, scale, xg, L)
                if gi < 0:
                    return False
            index[k] = gi
        if not all_on_grid:
            sumqx = F0
            sumq2 = F0
            for k in range(4):
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xg[levels[index[k], j]]
                    sumqx += w * q * xb[8 * k + j]
                    sumq2 += w * q * q
            if sumqx > F0 and sumq2 > F0:
                scale = sumqx / sumq2
        h = 0
        for k in range(4):
            o[2 + 4 * ib + k] = index[k] & 255
            h |= (index[k] >> 8) << (3 * k)
        qh[ib] = h
        if scale < F0:  # GGML_ASSERT(scale >= 0)
            return False
        scales[ib] = scale
        shifts[ib] = shift
        max_scale = max(max_scale, scale)
    if max_scale != F0:
        d = max_scale / np.float32(15.0)
        put_f16(o, 0, d * np.float32(1.125))
        idv = F1 / d
        for ib in range(8):
            l = nearest_int(np.float32(0.5) * (idv * scales[ib] - F1))
            l = max(0, min(7, l))
            if shifts[ib] == -1:
                l |= 8
            qh[ib] |= l << 12
    for ib in range(8):
        o[34 + 2 * ib] = qh[ib] & 0xFF
        o[35 + 2 * ib] = (qh[ib] >> 8) & 0xFF
    return True


@njit(nogil=True, cache=True)
def _encode_iq1_s_rows(x, qw, levels, kmap, nb_off, nb_list, xs, out, ok):
    rows, cols = x.shape
    nb = cols // QK_K
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        scales = np.zeros(8, np.float32)
        shifts = np.zeros(8, np.int64)
        qh = np.zeros(8, np.int64)
        weight = np.zeros(32, np.float32)
        sumx = np.zeros(33, np.float32)
        sumw = np.zeros(33, np.float32)
        idx = np.zeros(32, np.int64)
        L = np.zeros(32, np.int64)
        index = np.zeros(4, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            if not _iq1_s_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K],
                                out[r, b * 50:(b + 1) * 50], levels, kmap, nb_off, nb_list, xs, scales, shifts, qh,
                                weight, sumx, sumw, idx, L, index):
                ok[0] = False


# ----------------------------------------------------------------- IQ1_M


@njit(nogil=True, cache=True)
def _iq1_m_shifted(xs, k, sign_combo):
    """The shifted levels of half k (0 / 1) of a group under sign combination 0..3 (x_p or x_m)."""
    if k == 0:
        return xs[0] if sign_combo < 2 else xs[1]
    return xs[0] if sign_combo % 2 == 0 else xs[1]


@njit(nogil=True, cache=True)
def _iq1_m_block(x, qw, use_qw, o, levels, kmap, nb_off, nb_list, xs, scales, shifts, qh, weight, px, pw, idx, L,
                 index, sqx, sq2):
    """quantize_row_iq1_m_impl, one 256-weight block in 16 groups of 16 (a delta sign per 8)."""
    for k in range(56):
        o[k] = 0
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    # per-half constants of the split search (see the prefix-sum note below)
    p2 = xs[0, 2]
    m2 = xs[1, 2]
    cp1 = xs[0, 0] * xs[0, 0] - xs[0, 1] * xs[0, 1]
    cp2 = xs[0, 1] * xs[0, 1] - xs[0, 2] * xs[0, 2]
    cm1 = xs[1, 0] * xs[1, 0] - xs[1, 1] * xs[1, 1]
    cm2 = xs[1, 1] * xs[1, 1] - xs[1, 2] * xs[1, 2]
    for ib in range(16):
        qh[ib] = 0
        xb = x[16 * ib:16 * ib + 16]
        wb = weight[16 * ib:16 * ib + 16]  # kept for the final fit of d
        if use_qw:
            for i in range(16):
                wb[i] = qw[16 * ib + i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        else:
            for i in range(16):
                wb[i] = xb[i] * xb[i]
        mx = abs(xb[0])
        for i in range(1, 16):
            mx = max(mx, abs(xb[i]))
        if mx < GROUP_MAX_EPS_IQ1_M:
            scales[ib] = F0
            shifts[ib] = 0
            continue
        # prefix sums of w*x and w per half of the group (each half has its own delta sign); with level steps of
        # 1 the sums of a split (i1, i2) are T*v2 - S(i1) - S(i2) and W*v2^2 + W(i1)*c1 + W(i2)*c2
        _sort_index(xb, idx, 16)
        px[0, 0] = F0
        px[1, 0] = F0
        pw[0, 0] = F0
        pw[1, 0] = F0
        for j in range(16):
            i = idx[j]
            h = 0 if i < 8 else 1
            px[h, j + 1] = px[h, j] + wb[i] * xb[i]
            px[1 - h, j + 1] = px[1 - h, j]
            pw[h, j + 1] = pw[h, j] + wb[i]
            pw[1 - h, j + 1] = pw[1 - h, j]
        tx0 = px[0, 16]
        tx1 = px[1, 16]
        tw0 = pw[0, 16]
        tw1 = pw[1, 16]
        best = -FLT_MAX
        scale = mx
        b1 = -1
        b2 = -1
        bk = -1
        for i1 in range(17):
            for i2 in range(i1, 17):
                sx0 = px[0, i1] + px[0, i2]
                qxp0 = tx0 * p2 - sx0
                qxm0 = tx0 * m2 - sx0
                q2p0 = tw0 * p2 * p2 + pw[0, i1] * cp1 + pw[0, i2] * cp2
                q2m0 = tw0 * m2 * m2 + pw[0, i1] * cm1 + pw[0, i2] * cm2
                sx1 = px[1, i1] + px[1, i2]
                qxp1 = tx1 * p2 - sx1
                qxm1 = tx1 * m2 - sx1
                q2p1 = tw1 * p2 * p2 + pw[1, i1] * cp1 + pw[1, i2] * cp2
                q2m1 = tw1 * m2 * m2 + pw[1, i1] * cm1 + pw[1, i2] * cm2
                sqx[0] = qxp0 + qxp1
                sqx[1] = qxp0 + qxm1
                sqx[2] = qxm0 + qxp1
                sqx[3] = qxm0 + qxm1
                sq2[0] = q2p0 + q2p1
                sq2[1] = q2p0 + q2m1
                sq2[2] = q2m0 + q2p1
                sq2[3] = q2m0 + q2m1
                for k in range(4):
                    if sq2[k] > F0 and sqx[k] * sqx[k] > best * sq2[k]:
                        scale = sqx[k] / sq2[k]
                        best = scale * sqx[k]
                        b1 = i1
                        b2 = i2
                        bk = k
        if b1 < 0 or b2 < 0 or bk < 0:
            scales[ib] = F0
            shifts[ib] = 0
            continue
        _levels_from_split(idx, 16, b1, b2, L)
        if scale < F0:
            for j in range(16):
                L[j] = 2 - L[j]
            scale = -scale
            bk = 3 - bk  # both signs flip: 0 <-> 3, 1 <-> 2
        all_on_grid = True
        for k in range(2):
            u = _u_of(L, 8 * k)
            gi = kmap[u]
            if gi < 0:
                all_on_grid = False
                gi = _find_best_neighbour2(nb_list, nb_off[u], levels, xb, wb, 8 * k, scale,
                                           _iq1_m_shifted(xs, k, bk), L)
                if gi < 0:
                    return False
            index[k] = gi
        if not all_on_grid:
            sumqx = F0
            sumq2 = F0
            for k in range(2):
                xg = _iq1_m_shifted(xs, k, bk)
                for j in range(8):
                    w = wb[8 * k + j]
                    q = xg[levels[index[k], j]]
                    sumqx += w * q * xb[8 * k + j]
                    sumq2 += w * q * q
            if sumqx > F0 and sumq2 > F0:
                scale = sumqx / sumq2
        o[2 * ib] = index[0] & 255
        o[2 * ib + 1] = index[1] & 255
        qh[ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
        if scale < F0:  # GGML_ASSERT(scale >= 0)
            return False
        scales[ib] = scale
        shifts[ib] = bk
        max_scale = max(max_scale, scale)
    if max_scale == F0:  # ggml leaves the scales (and so d) 0 but keeps qs, qh
        for ib in range(16):
            o[32 + ib] = qh[ib]
        return True
    # 3-bit group scales from d = max/15, then d refitted over the whole block with those scales
    d = max_scale / np.float32(15.0)
    idv = F1 / d
    sc0 = 0
    sc1 = 0
    sc2 = 0
    sc3 = 0
    sumqx = F0
    sumq2 = F0
    for ib in range(16):
        l = nearest_int(np.float32(0.5) * (idv * scales[ib] - F1))
        l = max(0, min(7, l))
        v = l << (3 * (ib % 4))
        if ib < 4:
            sc0 |= v
        elif ib < 8:
            sc1 |= v
        elif ib < 12:
            sc2 |= v
        else:
            sc3 |= v
        qh[ib] |= IQ1M_MASKS[shifts[ib]]
        fl = np.float32(2 * l + 1)
        for k in range(2):
            xg = _iq1_m_shifted(xs, k, shifts[ib])
            gi = np.int64(o[2 * ib + k]) + ((qh[ib] << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[16 * ib + 8 * k + j]
                q = xg[levels[gi, j]] * fl
                sumqx += w * q * x[16 * ib + 8 * k + j]
                sumq2 += w * q * q
    if sumq2 > F0:
        d = sumqx / sumq2
    bits = fp32_to_fp16(d * np.float32(1.1125))
    sc0 |= (bits & 0x000F) << 12
    sc1 |= (bits & 0x00F0) << 8
    sc2 |= (bits & 0x0F00) << 4
    sc3 |= bits & 0xF000
    for ib in range(16):
        o[32 + ib] = qh[ib]
    o[48] = sc0 & 0xFF
    o[49] = sc0 >> 8
    o[50] = sc1 & 0xFF
    o[51] = sc1 >> 8
    o[52] = sc2 & 0xFF
    o[53] = sc2 >> 8
    o[54] = sc3 & 0xFF
    o[55] = sc3 >> 8
    return True


@njit(nogil=True, cache=True)
def _encode_iq1_m_rows(x, qw, use_qw, levels, kmap, nb_off, nb_list, xs, out, ok):
    rows, cols = x.shape
    nb = cols // QK_K
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        scales = np.zeros(16, np.float32)
        shifts = np.zeros(16, np.int64)
        qh = np.zeros(16, np.int64)
        weight = np.zeros(QK_K, np.float32)
        px = np.zeros((2, 17), np.float32)
        pw = np.zeros((2, 17), np.float32)
        idx = np.zeros(16, np.int64)
        L = np.zeros(16, np.int64)
        index = np.zeros(2, np.int64)
        sqx = np.zeros(4, np.float32)
        sq2 = np.zeros(4, np.float32)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            if not _iq1_m_block(x[r, b * QK_K:(b + 1) * QK_K], qw[b * QK_K:(b + 1) * QK_K] if use_qw else qw,
                                use_qw, out[r, b * 56:(b + 1) * 56], levels, kmap, nb_off, nb_list, xs, scales,
                                shifts, qh, weight, px, pw, idx, L, index, sqx, sq2):
                ok[0] = False


# ----------------------------------------------------------------- decoders


@njit(nogil=True, cache=True)
def _decode_iq1_s_rows(data, values, out):
    rows, cols = out.shape
    nb = cols // QK_K
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 50:(b + 1) * 50]
        d = get_f16(o, 0)
        for ib in range(8):
            qh = np.int64(o[34 + 2 * ib]) | (np.int64(o[35 + 2 * ib]) << 8)
            dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
            delta = -IQ1S_DELTA if qh & 0x8000 else IQ1S_DELTA
            for l in range(4):
                g = np.int64(o[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                for j in range(8):
                    out[r, b * QK_K + 32 * ib + 8 * l + j] = dl * (values[g, j] + delta)


@njit(nogil=True, cache=True)
def _decode_iq1_m_rows(data, values, out):
    rows, cols = out.shape
    nb = cols // QK_K
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 56:(b + 1) * 56]
        sc = np.zeros(4, np.int64)
        for k in range(4):
            sc[k] = np.int64(o[48 + 2 * k]) | (np.int64(o[49 + 2 * k]) << 8)
        d = fp16_to_fp32((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000))
        for ig in range(16):  # groups of 16: two halves of 8, one scale
            dl = d * np.float32(2 * ((sc[ig // 4] >> (3 * (ig % 4))) & 7) + 1)
            qh = np.int64(o[32 + ig])
            for l in range(2):
                g = np.int64(o[2 * ig + l]) | (((qh >> (4 * l)) & 7) << 8)
                delta = -IQ1M_DELTA if (qh >> (4 * l + 3)) & 1 else IQ1M_DELTA
                for j in range(8):
                    out[r, b * QK_K + 16 * ig + 8 * l + j] = dl * (values[g, j] + delta)


# ----------------------------------------------------------------- wrappers


def _check(ok, name):
    if not ok[0]:
        raise GridError(f"{name}: found no grid point for a group (llama.cpp aborts here too)")


def encode_iq1_s(x, qw=None, effort="exact"):
    """IQ1_S blocks of the float32 rows x with importance qw (required). `effort` is accepted for the registry's
    common signature: the split search is exhaustive and has no cheaper setting."""
    if qw is None:
        raise ValueError("IQ1_S needs importance weights")
    g = iq1s_grid()
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 50), np.uint8)
    ok = np.ones(1, np.bool_)
    _encode_iq1_s_rows(x, qw, g.levels, g.kmap, g.nb_off, g.nb_list, SHIFTED_S, out, ok)
    _check(ok, "IQ1_S")
    return out


def encode_iq1_m(x, qw=None, effort="exact"):
    """IQ1_M blocks of the float32 rows x. llama.cpp requires importance for IQ1_M (the registry enforces it);
    the kernel without it uses ggml's unweighted path (weights x^2)."""
    g = iq1s_grid()
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 56), np.uint8)
    ok = np.ones(1, np.bool_)
    use = qw is not None
    _encode_iq1_m_rows(x, qw if use else np.zeros(1, np.float32), use, g.levels, g.kmap, g.nb_off, g.nb_list,
                       SHIFTED_M, out, ok)
    _check(ok, "IQ1_M")
    return out


def decode_iq1_s(data, cols):
    g = iq1s_grid()
    out = np.empty((data.shape[0], cols), np.float32)
    _decode_iq1_s_rows(data, g.values, out)
    return out


def decode_iq1_m(data, cols):
    g = iq1s_grid()
    out = np.empty((data.shape[0], cols), np.float32)
    _decode_iq1_m_rows(data, g.values, out)
    return out
