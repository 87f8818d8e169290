"""ggml blocks with their scales fixed: read the scales out of encoded blocks, write new levels under them.

Error-feedback quantizers (GPTQ) choose a block's scales once and then round its weights one column at a time.
To keep the output a standard ggml type, every supported format is written as an affine map from a level table:

    value = A * levels[code] + B        (float32, exactly the arithmetic of the format's decoder)

with per-weight A and B read from the block's scale fields:

    Q8_0    A = d                         levels -128..127
    Q4_0    A = d                         levels -8..7
    Q5_0    A = d                         levels -16..15
    Q4_1    A = d,  B = m                 levels 0..15
    Q5_1    A = d,  B = m                 levels 0..31
    Q2_K    A = d*sc,  B = -(dmin*m)      levels 0..3     (16-weight sub-blocks, 4-bit sc/m)
    Q3_K    A = d*(sc-32)                 levels -4..3    (16-weight sub-blocks, 6-bit sc)
    Q4_K    A = d*sc,  B = -(dmin*m)      levels 0..15    (32-weight sub-blocks, 6-bit sc/m)
    Q5_K    as Q4_K                       levels 0..31
    Q6_K    A = d*sc                      levels -32..31  (16-weight sub-blocks, int8 sc)
    IQ4_NL  A = d                         levels kvalues_iq4nl
    IQ4_XS  A = d*(ls-32)                 levels kvalues_iq4nl (32-weight sub-blocks, 6-bit ls)

(`x - m` and `x + (-m)` are the same IEEE operation, so B = -m reproduces decoders that subtract.)
`block_params` reads A, B; `pack_levels` writes codes (indices into `levels(type)`) into the level fields of
encoded blocks and leaves their scale fields untouched, so `registry.dequantize` of the result is exactly
A * levels[code] + B.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from quantkit.errors import BadInput

from .fp import fp16_to_fp32, to_i8
from .iq4 import KVALUES
from .kquants import _get_scale_min_k4, _pack2

# name -> (kind id, block size, bytes per block)
_KINDS = {
    "Q8_0": (0, 32, 34), "Q4_0": (1, 32, 18), "Q5_0": (2, 32, 22), "Q4_1": (3, 32, 20), "Q5_1": (4, 32, 24),
    "Q2_K": (5, 256, 84), "Q3_K": (6, 256, 110), "Q4_K": (7, 256, 144), "Q5_K": (8, 256, 176),
    "Q6_K": (9, 256, 210), "IQ4_NL": (10, 32, 18), "IQ4_XS": (11, 256, 136),
}
_LEVELS = {
    "Q8_0": np.arange(-128, 128), "Q4_0": np.arange(-8, 8), "Q5_0": np.arange(-16, 16),
    "Q4_1": np.arange(0, 16), "Q5_1": np.arange(0, 32), "Q2_K": np.arange(0, 4), "Q3_K": np.arange(-4, 4),
    "Q4_K": np.arange(0, 16), "Q5_K": np.arange(0, 32), "Q6_K": np.arange(-32, 32),
    "IQ4_NL": KVALUES, "IQ4_XS": KVALUES,
}
SUPPORTED = tuple(_KINDS)


def _kind(type_name: str) -> tuple[int, int, int]:
    k = _KINDS.get(str(type_name).upper())
    if k is None:
        raise BadInput(f"fixed-scale encoding is not available for {type_name}; supported: {', '.join(SUPPORTED)}")
    return k


def levels(type_name: str) -> np.ndarray:
    """The level table (float32, ascending) that codes index."""
    _kind(type_name)
    return np.asarray(_LEVELS[str(type_name).upper()], np.float32)


def uniform(type_name: str) -> bool:
    """True when the levels are consecutive integers (rounding is a division; IQ4 needs a table search)."""
    return not str(type_name).upper().startswith("IQ4")


@njit(nogil=True, cache=True)
def _f16(o, pos):
    return fp16_to_fp32(np.int64(o[pos]) | (np.int64(o[pos + 1]) << 8))


@njit(nogil=True, cache=True)
def _params_kernel(kind, bs, nbytes, data, A, B):
    rows, cols = A.shape
    nb = cols // bs
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * nbytes:(b + 1) * nbytes]
        a = A[r, b * bs:(b + 1) * bs]
        c = B[r, b * bs:(b + 1) * bs]
        for j in range(bs):
            c[j] = np.float32(0.0)
        if kind <= 2 or kind == 10:  # Q8_0, Q4_0, Q5_0, IQ4_NL: x = d * level
            d = _f16(o, 0)
            for j in range(bs):
                a[j] = d
        elif kind == 3 or kind == 4:  # Q4_1, Q5_1: x = d * level + m
            d = _f16(o, 0)
            m = _f16(o, 2)
            for j in range(bs):
                a[j] = d
                c[j] = m
        elif kind == 5:  # Q2_K
            d = _f16(o, 80)
            dmin = _f16(o, 82)
            for j in range(bs):
                sc = np.int64(o[j // 16])
                a[j] = d * np.float32(sc & 0xF)
                c[j] = -(dmin * np.float32(sc >> 4))
        elif kind == 6:  # Q3_K
            d = _f16(o, 108)
            for j in range(bs):
                i = j // 16
                if i < 8:
                    lo = np.int64(o[96 + i]) & 0xF
                else:
                    lo = np.int64(o[96 + i - 8]) >> 4
                hi = (np.int64(o[96 + 8 + i % 4]) >> (2 * (i // 4))) & 3
                a[j] = d * np.float32((lo | (hi << 4)) - 32)
        elif kind == 7 or kind == 8:  # Q4_K, Q5_K
            d = _f16(o, 0)
            dmin = _f16(o, 2)
            for s in range(8):
                sc, m = _get_scale_min_k4(s, o[4:16])
                d1 = d * np.float32(sc)
                m1 = dmin * np.float32(m)
                for l in range(32):
                    a[32 * s + l] = d1
                    c[32 * s + l] = -m1
        elif kind == 9:  # Q6_K
            d = _f16(o, 208)
            for j in range(bs):
                a[j] = d * np.float32(to_i8(o[192 + j // 16]))
        else:  # IQ4_XS
            d = _f16(o, 0)
            sh = np.int64(o[2]) | (np.int64(o[3]) << 8)
            for ib in range(8):
                ls = ((np.int64(o[4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
                dl = d * np.float32(ls - 32)
                for j in range(32):
                    a[32 * ib + j] = dl


@njit(nogil=True, cache=True)
def _pack_kernel(kind, bs, nbytes, codes, data):
    rows, cols = codes.shape
    nb = cols // bs
    for t in range(rows * nb):
        r = t // nb
        b = t % nb
        o = data[r, b * nbytes:(b + 1) * nbytes]
        L = codes[r, b * bs:(b + 1) * bs]
        if kind == 0:  # Q8_0: int8 q = code - 128
            for j in range(32):
                o[2 + j] = (np.int64(L[j]) - 128) & 0xFF
        elif kind == 1 or kind == 10:  # Q4_0 (q = code = level + 8), IQ4_NL (q = table index)
            for j in range(16):
                o[2 + j] = np.int64(L[j]) | (np.int64(L[j + 16]) << 4)
        elif kind == 3:  # Q4_1
            for j in range(16):
                o[4 + j] = np.int64(L[j]) | (np.int64(L[j + 16]) << 4)
        elif kind == 2 or kind == 4:  # Q5_0 (code = level + 16), Q5_1
            qpos = 2 if kind == 2 else 4
            qh = 0
            for j in range(16):
                x0 = np.int64(L[j])
                x1 = np.int64(L[j + 16])
                o[qpos + 4 + j] = ((x0 & 0xF) | ((x1 & 0xF) << 4)) & 0xFF
                qh |= ((x0 >> 4) & 1) << j
                qh |= ((x1 >> 4) & 1) << (j + 16)
            for k in range(4):
                o[qpos + k] = (qh >> (8 * k)) & 0xFF
        elif kind == 5:  # Q2_K
            _pack2(L, o[16:80])
        elif kind == 6:  # Q3_K: code = level + 4; low 2 bits packed, bit 2 in hmask
            low = np.empty(256, np.uint8)
            for k in range(32):
                o[k] = 0
            for j in range(256):
                v = np.int64(L[j])
                if v > 3:
                    o[j % 32] = np.int64(o[j % 32]) | (1 << (j // 32))
                low[j] = v & 3
            _pack2(low, o[32:96])
        elif kind == 7:  # Q4_K
            for j in range(0, 256, 64):
                for l in range(32):
                    o[16 + j // 2 + l] = np.int64(L[j + l]) | (np.int64(L[j + l + 32]) << 4)
        elif kind == 8:  # Q5_K
            for k in range(32):
                o[16 + k] = 0
            m1 = 1
            m2 = 2
            for n in range(0, 256, 64):
                for j in range(32):
                    l1 = np.int64(L[n + j])
                    if l1 > 15:
                        l1 -= 16
                        o[16 + j] = np.int64(o[16 + j]) | m1
                    l2 = np.int64(L[n + j + 32])
                    if l2 > 15:
                        l2 -= 16
                        o[16 + j] = np.int64(o[16 + j]) | m2
                    o[48 + n // 2 + j] = (l1 | (l2 << 4)) & 0xFF
                m1 <<= 2
                m2 <<= 2
        elif kind == 9:  # Q6_K: code = level + 32
            for j in range(0, 256, 128):
                for l in range(32):
                    a0 = np.int64(L[j + l])
                    a1 = np.int64(L[j + l + 32])
                    a2 = np.int64(L[j + l + 64])
                    a3 = np.int64(L[j + l + 96])
                    o[j // 2 + l] = ((a0 & 0xF) | ((a2 & 0xF) << 4)) & 0xFF
                    o[j // 2 + l + 32] = ((a1 & 0xF) | ((a3 & 0xF) << 4)) & 0xFF
                    o[128 + j // 4 + l] = ((a0 >> 4) | ((a1 >> 4) << 2) | ((a2 >> 4) << 4) | ((a3 >> 4) << 6)) & 0xFF
        else:  # IQ4_XS
            for i in range(8):
                for j in range(16):
                    o[8 + 16 * i + j] = (np.int64(L[32 * i + j]) | (np.int64(L[32 * i + 16 + j]) << 4)) & 0xFF


def block_params(type_name: str, data: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B), float32 [rows, cols]: encoded rows `data` decode to A * levels[code] + B."""
    kind, bs, nbytes = _kind(type_name)
    if cols % bs:
        raise BadInput(f"{type_name}: row length {cols} is not a multiple of {bs}")
    data = np.ascontiguousarray(data, np.uint8).reshape(-1, cols // bs * nbytes)
    A = np.empty((data.shape[0], cols), np.float32)
    B = np.empty_like(A)
    _params_kernel(kind, bs, nbytes, data, A, B)
    return A, B


def pack_levels(type_name: str, data: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A copy of encoded rows `data` whose level fields hold `codes` (uint8 [rows, cols], indices into
    `levels(type_name)`); scale fields are kept."""
    kind, bs, nbytes = _kind(type_name)
    codes = np.ascontiguousarray(codes, np.uint8)
    rows, cols = codes.shape
    if cols % bs:
        raise BadInput(f"{type_name}: row length {cols} is not a multiple of {bs}")
    n = len(_LEVELS[str(type_name).upper()])
    if codes.size and int(codes.max()) >= n:
        raise BadInput(f"{type_name}: code {int(codes.max())} is out of range (levels: {n})")
    out = np.array(data, np.uint8, copy=True).reshape(rows, cols // bs * nbytes)
    _pack_kernel(kind, bs, nbytes, codes, out)
    return out


@njit(nogil=True, cache=True)
def nearest_code(w, a, b, z, lv, is_uniform):
    """Index of the level whose value a * (lv[k] - z) + b (float32) is nearest to w. z is an integer-valued
    zero point (the generic group formats' x = (q - zp) * scale); 0 for the ggml formats."""
    n = lv.shape[0]
    if a == np.float32(0.0):  # every code decodes to b: take the level nearest zero
        k = 0
        for kk in range(1, n):
            if abs(lv[kk]) < abs(lv[k]):
                k = kk
        return k
    t = (w - b) / a + z
    if is_uniform:
        k = np.int64(np.rint(t - lv[0]))
        k = min(max(k, 0), n - 1)
    else:
        lo = 0
        hi = n - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if lv[mid] <= t:
                lo = mid
            else:
                hi = mid
        k = lo if abs(t - lv[lo]) <= abs(lv[hi] - t) else hi
    # rounding in t-space can tie-break differently from value space by one ulp: check the neighbours
    best = k
    bd = abs(a * (lv[k] - z) + b - w)
    for kk in (k - 1, k + 1):
        if 0 <= kk < n:
            dd = abs(a * (lv[kk] - z) + b - w)
            if dd < bd:
                bd = dd
                best = kk
    return best


@njit(nogil=True, cache=True)
def round_to_levels(w, A, B, lv, is_uniform, codes, q):
    """Nearest representable value of every weight under fixed (A, B): codes and float32 values."""
    rows, cols = w.shape
    for r in range(rows):
        for j in range(cols):
            k = nearest_code(w[r, j], A[r, j], B[r, j], np.float32(0.0), lv, is_uniform)
            codes[r, j] = k
            q[r, j] = A[r, j] * lv[k] + B[r, j]
