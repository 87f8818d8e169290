"""ggml non-linear 4-bit types: IQ4_NL (32-weight blocks) and IQ4_XS (256).

Byte layouts (ggml-common.h, little endian):

    block_iq4_nl ( 18 B): d:f16 | qs[16]
        x = d * kvalues[q]; qs[j] low nibble = weight j, high = weight j+16
    block_iq4_xs (136 B): d:f16 | scales_h:u16 | scales_l[4] | qs[128]
        8 sub-blocks of 32, 6-bit scale ls = (low nibble from scales_l)
        | (2 bits of scales_h << 4); x = d*(ls-32)*kvalues[q];
        qs[16*i + j] low nibble = weight 32i+j, high = weight 32i+16+j

``kvalues`` (kvalues_iq4nl) is read from gguf-py (``gguf.quants.IQ4_NL.kvalues``).

Encoders follow ``quantize_iq4_nl`` / ``quantize_iq4_xs`` (ggml-quants.c), which
both call ``quantize_row_iq4_nl_impl`` with ntry=7 whether or not importance
weights are given (without weights the per-weight importance is x^2).  This is
what llama_model_quantize runs; it differs from quantize_row_iq4_nl_ref (ntry=-1).
"""

from __future__ import annotations

import numpy as np
from gguf.quants import IQ4_NL as _GGUF_IQ4_NL
from numba import njit

from .fp import GROUP_MAX_EPS, nearest_int, get_f16, put_f16
from .search import best_index_int8

F0 = np.float32(0.0)
F1 = np.float32(1.0)

KVALUES = np.array(_GGUF_IQ4_NL.kvalues, dtype=np.float32)  # int8 table as exact floats


@njit(nogil=True, cache=True)
def iq4_nl_impl(sbs, x, qw, use_qw, values, ntry, o, scales, weight, L):
    """quantize_row_iq4_nl_impl with block_size 32 for one super-block of ``sbs``.

    ``o`` is the whole output block (IQ4_NL: 18 bytes, IQ4_XS: 136 bytes).
    """
    nsub = sbs // 32
    qpos = 2 if nsub == 1 else 8
    sigma2 = F0
    for j in range(sbs):
        sigma2 += x[j] * x[j]
    sigma2 *= np.float32(2.0) / np.float32(sbs)
    for j in range(sbs // 2):
        o[qpos + j] = 0
    put_f16(o, 0, F0)
    max_scale = F0
    amax_scale = F0
    v0 = values[0]
    for ib in range(nsub):
        xb = x[ib * 32:ib * 32 + 32]
        Lb = L[ib * 32:ib * 32 + 32]
        if use_qw:
            for j in range(32):
                weight[j] = qw[ib * 32 + j] * np.float32(np.sqrt(sigma2 + xb[j] * xb[j]))
        else:
            for j in range(32):
                weight[j] = xb[j] * xb[j]
        amax = F0
        mx = F0
        for j in range(32):
            ax = abs(xb[j])
            if ax > amax:
                amax = ax
                mx = xb[j]
        if amax < GROUP_MAX_EPS:
            scales[ib] = F0
            continue
        d = -mx / v0 if ntry > 0 else mx / v0
        idv = F1 / d
        sumqx = F0
        sumq2 = F0
        for j in range(32):
            al = idv * xb[j]
            l = best_index_int8(16, values, al)
            Lb[j] = l
            q = values[l]
            w = weight[j]
            sumqx += w * q * xb[j]
            sumq2 += w * q * q
        d = sumqx / sumq2 if sumq2 > F0 else F0
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            idv = (np.float32(itry) + v0) / mx
            sumqx = F0
            sumq2 = F0
            for j in range(32):
                al = idv * xb[j]
                l = best_index_int8(16, values, al)
                q = values[l]
                w = weight[j]
                sumqx += w * q * xb[j]
                sumq2 += w * q * q
            if sumq2 > F0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        abs_d = abs(d)
        if abs_d > amax_scale:
            amax_scale = abs_d
            max_scale = d
    if nsub > 1:
        # IQ4_XS: scales_h at o[2:4], scales_l at o[4:8]
        sh = 0
        d = -max_scale / np.float32(32.0)
        put_f16(o, 0, d)
        idv = F1 / d if d != F0 else F0
        for ib in range(nsub):
            l = nearest_int(idv * scales[ib])
            l = max(-32, min(31, l))
            dl = d * np.float32(l)
            idl = F1 / dl if dl != F0 else F0
            xb = x[ib * 32:ib * 32 + 32]
            for j in range(32):
                L[ib * 32 + j] = best_index_int8(16, values, idl * xb[j])
            l += 32
            l_l = l & 0xF
            l_h = l >> 4
            if ib % 2 == 0:
                o[4 + ib // 2] = l_l
            else:
                o[4 + ib // 2] = np.int64(o[4 + ib // 2]) | (l_l << 4)
            sh |= l_h << (2 * (ib % 8))
        o[2] = sh & 0xFF
        o[3] = (sh >> 8) & 0xFF
    else:
        put_f16(o, 0, scales[0])
        if ntry > 0:
            idv = F1 / scales[0] if scales[0] != F0 else F0
            for j in range(sbs):
                L[j] = best_index_int8(16, values, idv * x[j])
    for i in range(sbs // 32):
        for j in range(16):
            o[qpos + 16 * i + j] = (np.int64(L[32 * i + j]) | (np.int64(L[32 * i + 16 + j]) << 4)) & 0xFF


@njit(nogil=True, cache=True)
def _encode_rows(x, qw, use_qw, values, sbs, nbytes, out):
    rows, cols = x.shape
    nb = cols // sbs
    total = rows * nb
    nch = min(total, 4096)
    for c in range(nch):
        L = np.zeros(sbs, np.uint8)
        weight = np.zeros(32, np.float32)
        scales = np.zeros(sbs // 32, np.float32)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            iq4_nl_impl(sbs, x[r, b * sbs:(b + 1) * sbs], qw[b * sbs:(b + 1) * sbs] if use_qw else qw,
                        use_qw, values, 7, out[r, b * nbytes:(b + 1) * nbytes], scales, weight, L)


@njit(nogil=True, cache=True)
def decode_iq4_nl_rows(data, values, out):
    rows, cols = out.shape
    nb = cols // 32
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 18:(b + 1) * 18]
        d = get_f16(o, 0)
        for j in range(16):
            q = np.int64(o[2 + j])
            out[r, b * 32 + j] = d * values[q & 0xF]
            out[r, b * 32 + j + 16] = d * values[q >> 4]


@njit(nogil=True, cache=True)
def decode_iq4_xs_rows(data, values, out):
    rows, cols = out.shape
    nb = cols // 256
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 136:(b + 1) * 136]
        d = get_f16(o, 0)
        sh = np.int64(o[2]) | (np.int64(o[3]) << 8)
        for ib in range(8):
            ls = ((np.int64(o[4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
            dl = d * np.float32(ls - 32)
            for j in range(16):
                q = np.int64(o[8 + 16 * ib + j])
                out[r, b * 256 + 32 * ib + j] = dl * values[q & 0xF]
                out[r, b * 256 + 32 * ib + j + 16] = dl * values[q >> 4]


def _enc(sbs, nbytes, x, qw):
    rows, cols = x.shape
    out = np.zeros((rows, cols // sbs * nbytes), np.uint8)
    use = qw is not None
    _encode_rows(x, qw if use else np.zeros(1, np.float32), use, KVALUES, sbs, nbytes, out)
    return out


def encode_iq4_nl(x, qw=None, effort="exact"):
    return _enc(32, 18, x, qw)


def encode_iq4_xs(x, qw=None, effort="exact"):
    return _enc(256, 136, x, qw)


def decode_iq4_nl(data, cols):
    out = np.empty((data.shape[0], cols), np.float32)
    decode_iq4_nl_rows(data, KVALUES, out)
    return out


def decode_iq4_xs(data, cols):
    out = np.empty((data.shape[0], cols), np.float32)
    decode_iq4_xs_rows(data, KVALUES, out)
    return out
