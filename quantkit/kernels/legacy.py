"""ggml "legacy" 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Byte layouts (ggml-common.h, little endian, one block = 32 weights):

    block_q4_0  (18 B): d:f16 | qs[16]          q = nibble, x = d*(q-8)
                        qs[j] low nibble = weight j, high nibble = weight j+16
    block_q4_1  (20 B): d:f16 | m:f16 | qs[16]  x = d*q + m
    block_q5_0  (22 B): d:f16 | qh[4] | qs[16]  q = nibble | bit j of qh << 4, x = d*(q-16)
    block_q5_1  (24 B): d:f16 | m:f16 | qh[4] | qs[16]   x = d*q + m
    block_q8_0  (34 B): d:f16 | qs[32] int8     x = d*q

Encoders without importance weights follow ``quantize_row_q*_ref``; with
weights they follow ``quantize_row_q*_impl`` (ggml-quants.c), which is what
``quantize_q4_0`` etc. call when ``quant_weights`` is set.  Q8_0 ignores weights
(``quantize_q8_0``).  Decoders follow ``dequantize_row_q*``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fp import roundf, trunc_to_i8, get_f16, put_f16
from .search import make_qkx_quants, make_qx_quants, scratch

QK = 32
F0 = np.float32(0.0)
F1 = np.float32(1.0)


@njit(nogil=True, cache=True)
def _chunks(total):
    return min(total, 4096)


@njit(nogil=True, cache=True)
def _row_sigma2(x, sig):
    """sum_x2/n_per_row of the *_impl functions, one value per row (sequential sum)."""
    rows, cols = x.shape
    for r in range(rows):
        s = F0
        for j in range(cols):
            s += x[r, j] * x[r, j]
        sig[r] = s / np.float32(cols)


@njit(nogil=True, cache=True)
def _weights(xb, qw, sigma2, weight):
    # weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j])
    for j in range(xb.shape[0]):
        weight[j] = qw[j] * np.float32(np.sqrt(sigma2 + xb[j] * xb[j]))


# ----------------------------------------------------------------- Q8_0


@njit(nogil=True, cache=True)
def encode_q8_0_rows(x, out):
    """quantize_row_q8_0_ref."""
    rows, cols = x.shape
    nb = cols // QK
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        xb = x[r, b * QK:(b + 1) * QK]
        o = out[r, b * 34:(b + 1) * 34]
        amax = F0
        for j in range(QK):
            amax = max(amax, abs(xb[j]))
        d = amax / np.float32(127.0)
        idv = F1 / d if d != F0 else F0
        put_f16(o, 0, d)
        for j in range(QK):
            o[2 + j] = trunc_to_i8(roundf(xb[j] * idv)) & 0xFF


@njit(nogil=True, cache=True)
def decode_q8_0_rows(data, out):
    rows, cols = out.shape
    nb = cols // QK
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 34:(b + 1) * 34]
        d = get_f16(o, 0)
        for j in range(QK):
            q = np.int64(o[2 + j])
            if q >= 128:
                q -= 256
            out[r, b * QK + j] = np.float32(q) * d


# ----------------------------------------------------------------- Q4_0 / Q5_0


@njit(nogil=True, cache=True)
def encode_q4_0_rows(x, qw, use_qw, out):
    """quantize_row_q4_0_ref, or quantize_row_q4_0_impl when weights are given."""
    rows, cols = x.shape
    nb = cols // QK
    total = rows * nb
    sig = np.zeros(rows, np.float32)
    if use_qw:
        _row_sigma2(x, sig)
    nch = _chunks(total)
    for c in range(nch):
        L = np.empty(QK, np.int8)
        weight = np.empty(QK, np.float32)
        S = scratch()
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 18:(b + 1) * 18]
            if use_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sig[r], weight)
                d = make_qx_quants(QK, 8, xb, weight, L, S)
                put_f16(o, 0, d)
                for j in range(16):
                    o[2 + j] = np.int64(L[j]) | (np.int64(L[j + 16]) << 4)
                continue
            amax = F0
            mx = F0
            for j in range(QK):
                v = xb[j]
                if amax < abs(v):
                    amax = abs(v)
                    mx = v
            d = mx / np.float32(-8.0)
            idv = F1 / d if d != F0 else F0
            put_f16(o, 0, d)
            for j in range(16):
                x0 = xb[j] * idv
                x1 = xb[16 + j] * idv
                xi0 = min(15, trunc_to_i8(x0 + np.float32(8.5))) & 0xFF
                xi1 = min(15, trunc_to_i8(x1 + np.float32(8.5))) & 0xFF
                o[2 + j] = (xi0 | (xi1 << 4)) & 0xFF


@njit(nogil=True, cache=True)
def decode_q4_0_rows(data, out):
    rows, cols = out.shape
    nb = cols // QK
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 18:(b + 1) * 18]
        d = get_f16(o, 0)
        for j in range(16):
            q = np.int64(o[2 + j])
            out[r, b * QK + j] = d * np.float32((q & 0xF) - 8)
            out[r, b * QK + j + 16] = d * np.float32((q >> 4) - 8)


@njit(nogil=True, cache=True)
def encode_q5_0_rows(x, qw, use_qw, out):
    """quantize_row_q5_0_ref, or quantize_row_q5_0_impl when weights are given."""
    rows, cols = x.shape
    nb = cols // QK
    total = rows * nb
    sig = np.zeros(rows, np.float32)
    if use_qw:
        _row_sigma2(x, sig)
    nch = _chunks(total)
    for c in range(nch):
        L = np.empty(QK, np.int8)
        weight = np.empty(QK, np.float32)
        S = scratch()
        q = np.empty(QK, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 22:(b + 1) * 22]
            if use_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sig[r], weight)
                d = make_qx_quants(QK, 16, xb, weight, L, S)
                for j in range(QK):
                    q[j] = L[j]
            else:
                amax = F0
                mx = F0
                for j in range(QK):
                    v = xb[j]
                    if amax < abs(v):
                        amax = abs(v)
                        mx = v
                d = mx / np.float32(-16.0)
                idv = F1 / d if d != F0 else F0
                for j in range(QK):
                    q[j] = min(31, trunc_to_i8(xb[j] * idv + np.float32(16.5))) & 0xFF
            put_f16(o, 0, d)
            qh = 0
            for j in range(16):
                xi0 = q[j]
                xi1 = q[j + 16]
                o[6 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
                qh |= ((xi0 & 0x10) >> 4) << j
                qh |= ((xi1 & 0x10) >> 4) << (j + 16)
            for k in range(4):
                o[2 + k] = (qh >> (8 * k)) & 0xFF


@njit(nogil=True, cache=True)
def decode_q5_0_rows(data, out):
    rows, cols = out.shape
    nb = cols // QK
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 22:(b + 1) * 22]
        d = get_f16(o, 0)
        qh = np.int64(o[2]) | (np.int64(o[3]) << 8) | (np.int64(o[4]) << 16) | (np.int64(o[5]) << 24)
        for j in range(16):
            q = np.int64(o[6 + j])
            q0 = (q & 0xF) | (((qh >> j) & 1) << 4)
            q1 = (q >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[r, b * QK + j] = d * np.float32(q0 - 16)
            out[r, b * QK + j + 16] = d * np.float32(q1 - 16)


# ----------------------------------------------------------------- Q4_1 / Q5_1


@njit(nogil=True, cache=True)
def encode_q4_1_rows(x, qw, use_qw, out):
    """quantize_row_q4_1_ref, or quantize_row_q4_1_impl when weights are given."""
    rows, cols = x.shape
    nb = cols // QK
    total = rows * nb
    sig = np.zeros(rows, np.float32)
    if use_qw:
        _row_sigma2(x, sig)
    nch = _chunks(total)
    for c in range(nch):
        L = np.empty(QK, np.uint8)
        S = scratch()
        weight = np.empty(QK, np.float32)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 20:(b + 1) * 20]
            if use_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sig[r], weight)
                d, the_min = make_qkx_quants(QK, 15, xb, weight, L, np.float32(-0.9), np.float32(0.05), 36, False, S)
                put_f16(o, 0, d)
                put_f16(o, 2, -the_min)
                for j in range(16):
                    o[4 + j] = np.int64(L[j]) | (np.int64(L[j + 16]) << 4)
                continue
            mn = np.float32(3.4028234663852886e38)
            mx = -mn
            for j in range(QK):
                v = xb[j]
                if v < mn:
                    mn = v
                if v > mx:
                    mx = v
            d = (mx - mn) / np.float32(15.0)
            idv = F1 / d if d != F0 else F0
            put_f16(o, 0, d)
            put_f16(o, 2, mn)
            for j in range(16):
                x0 = (xb[j] - mn) * idv
                x1 = (xb[16 + j] - mn) * idv
                xi0 = min(15, trunc_to_i8(x0 + np.float32(0.5))) & 0xFF
                xi1 = min(15, trunc_to_i8(x1 + np.float32(0.5))) & 0xFF
                o[4 + j] = (xi0 | (xi1 << 4)) & 0xFF


@njit(nogil=True, cache=True)
def decode_q4_1_rows(data, out):
    rows, cols = out.shape
    nb = cols // QK
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 20:(b + 1) * 20]
        d = get_f16(o, 0)
        m = get_f16(o, 2)
        for j in range(16):
            q = np.int64(o[4 + j])
            out[r, b * QK + j] = d * np.float32(q & 0xF) + m
            out[r, b * QK + j + 16] = d * np.float32(q >> 4) + m


@njit(nogil=True, cache=True)
def encode_q5_1_rows(x, qw, use_qw, out):
    """quantize_row_q5_1_ref, or quantize_row_q5_1_impl when weights are given."""
    rows, cols = x.shape
    nb = cols // QK
    total = rows * nb
    sig = np.zeros(rows, np.float32)
    if use_qw:
        _row_sigma2(x, sig)
    nch = _chunks(total)
    for c in range(nch):
        L = np.empty(QK, np.uint8)
        S = scratch()
        weight = np.empty(QK, np.float32)
        q = np.empty(QK, np.int64)
        for t in range(c * total // nch, (c + 1) * total // nch):
            r = t // nb
            b = t % nb
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 24:(b + 1) * 24]
            if use_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sig[r], weight)
                d, the_min = make_qkx_quants(QK, 31, xb, weight, L, np.float32(-0.9), np.float32(0.05), 36, False, S)
                mval = -the_min
                for j in range(QK):
                    q[j] = L[j]
            else:
                mn = np.float32(3.4028234663852886e38)
                mx = -mn
                for j in range(QK):
                    v = xb[j]
                    if v < mn:
                        mn = v
                    if v > mx:
                        mx = v
                d = (mx - mn) / np.float32(31.0)
                idv = F1 / d if d != F0 else F0
                mval = mn
                for j in range(QK):
                    # (uint8_t)(x0 + 0.5f), no clamp in the C code
                    q[j] = trunc_to_i8((xb[j] - mn) * idv + np.float32(0.5)) & 0xFF
            put_f16(o, 0, d)
            put_f16(o, 2, mval)
            qh = 0
            for j in range(16):
                xi0 = q[j]
                xi1 = q[j + 16]
                o[8 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
                qh |= ((xi0 & 0x10) >> 4) << j
                qh |= ((xi1 & 0x10) >> 4) << (j + 16)
            for k in range(4):
                o[4 + k] = (qh >> (8 * k)) & 0xFF


@njit(nogil=True, cache=True)
def decode_q5_1_rows(data, out):
    rows, cols = out.shape
    nb = cols // QK
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * 24:(b + 1) * 24]
        d = get_f16(o, 0)
        m = get_f16(o, 2)
        qh = np.int64(o[4]) | (np.int64(o[5]) << 8) | (np.int64(o[6]) << 16) | (np.int64(o[7]) << 24)
        for j in range(16):
            q = np.int64(o[8 + j])
            q0 = (q & 0xF) | (((qh >> j) & 1) << 4)
            q1 = (q >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[r, b * QK + j] = d * np.float32(q0) + m
            out[r, b * QK + j + 16] = d * np.float32(q1) + m


# ----------------------------------------------------------------- wrappers


def _empty_qw():
    return np.zeros(1, np.float32)


def _run_enc(kernel, nbytes, x, qw, weighted=True):
    rows, cols = x.shape
    out = np.empty((rows, cols // QK * nbytes), np.uint8)
    if weighted:
        use = qw is not None
        kernel(x, qw if use else _empty_qw(), use, out)
    else:
        kernel(x, out)
    return out


def _run_dec(kernel, data, cols):
    out = np.empty((data.shape[0], cols), np.float32)
    kernel(data, out)
    return out


def encode_q8_0(x, qw=None, effort="exact"):
    return _run_enc(encode_q8_0_rows, 34, x, qw, weighted=False)


def encode_q4_0(x, qw=None, effort="exact"):
    return _run_enc(encode_q4_0_rows, 18, x, qw)


def encode_q4_1(x, qw=None, effort="exact"):
    return _run_enc(encode_q4_1_rows, 20, x, qw)


def encode_q5_0(x, qw=None, effort="exact"):
    return _run_enc(encode_q5_0_rows, 22, x, qw)


def encode_q5_1(x, qw=None, effort="exact"):
    return _run_enc(encode_q5_1_rows, 24, x, qw)


def decode_q8_0(data, cols):
    return _run_dec(decode_q8_0_rows, data, cols)


def decode_q4_0(data, cols):
    return _run_dec(decode_q4_0_rows, data, cols)


def decode_q4_1(data, cols):
    return _run_dec(decode_q4_1_rows, data, cols)


def decode_q5_0(data, cols):
    return _run_dec(decode_q5_0_rows, data, cols)


def decode_q5_1(data, cols):
    return _run_dec(decode_q5_1_rows, data, cols)
