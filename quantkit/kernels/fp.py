"""Scalar float helpers shared by every ggml codec, written for Numba.

Byte-exactness with llama.cpp depends on doing every operation in float32 in
the same order as ggml-quants.c.  Under Numba a float32 combined with an
integer or a Python float literal silently widens to float64, so the codecs
wrap every constant and every integer operand in ``np.float32(...)``.

What lives here:

* bit casts between float32 and int32 (LLVM ``bitcast``),
* ``nearest_int``: ggml's magic-number rounding (ggml-quants.c ``nearest_int``),
* ``fp32_to_fp16`` / ``fp16_to_fp32``: IEEE binary16 with round-to-nearest-even,
  the behaviour of ``GGML_FP32_TO_FP16`` / ``GGML_FP16_TO_FP32`` (NaN -> 0x7e00),
* ``fp32_to_bf16``: ``ggml_compute_fp32_to_bf16`` (round-to-nearest-even, quiet NaN),
* ``roundf`` (C ``roundf``: half away from zero) and ``trunc_to_i8`` (a C cast
  of a float to ``int8_t`` as x86-64 compilers emit it).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# ggml-quants.c: #define GROUP_MAX_EPS 1e-15f
GROUP_MAX_EPS = np.float32(1e-15)


@intrinsic
def f32_as_i32(typingctx, x):
    """Reinterpret the bits of a float32 as an int32."""
    if x != types.float32:
        return None
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32."""
    if x != types.int32:
        return None
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(nogil=True, cache=True)
def nearest_int(fval):
    """ggml-quants.c ``nearest_int``: add 1.5*2^23 in float32, read the mantissa.

    Equals round-half-to-even for |fval| <= 4194303; outside that range it
    reproduces the same (meaningless) bits the C code produces.  ``fval`` must
    be a float32.
    """
    val = fval + np.float32(12582912.0)
    i = np.int64(f32_as_i32(val))
    return (i & 0x007FFFFF) - 0x00400000


@njit(nogil=True, cache=True)
def fp32_to_fp16(f):
    """float32 -> IEEE half bits (as int), round to nearest even, NaN -> 0x7e00."""
    b = np.int64(f32_as_i32(f)) & 0xFFFFFFFF
    sign = (b >> 16) & 0x8000
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    if e == 0xFF:
        if m != 0:
            return sign | 0x7E00
        return sign | 0x7C00
    he = e - 112  # rebias 127 -> 15
    if he >= 31:
        return sign | 0x7C00
    if he <= 0:
        if he < -10:
            return sign
        m = m | 0x800000
        shift = 14 - he
        q = m >> shift
        rem = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (q & 1) == 1):
            q += 1
        return sign | q
    h = (he << 10) | (m >> 13)
    rem = m & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (h & 1) == 1):
        h += 1  # a carry into the exponent is the correct result (up to inf)
    return sign | h


@njit(nogil=True, cache=True)
def fp16_to_fp32(h):
    """IEEE half bits -> float32 (exact)."""
    h = np.int64(h) & 0xFFFF
    neg = (h & 0x8000) != 0
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = np.float32(m) * np.float32(5.960464477539063e-08)  # m * 2^-24, exact
        return -v if neg else v
    if e == 31:
        bits = 0x7F800000 | (m << 13)
    else:
        bits = ((e + 112) << 23) | (m << 13)
    if neg:
        bits |= 0x80000000
    return i32_as_f32(np.int32(bits))


@njit(nogil=True, cache=True)
def fp32_to_bf16(f):
    """ggml_compute_fp32_to_bf16: quiet NaNs, otherwise round to nearest even."""
    u = np.int64(f32_as_i32(f)) & 0xFFFFFFFF
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return ((u >> 16) | 64) & 0xFFFF
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) & 0xFFFF


@njit(nogil=True, cache=True)
def bf16_to_fp32(h):
    return i32_as_f32(np.int32((np.int64(h) & 0xFFFF) << 16))


@njit(nogil=True, cache=True)
def roundf(v):
    """C ``roundf`` on a float32: round half away from zero."""
    r = np.float32(np.trunc(v))
    frac = v - r  # exact
    if frac >= np.float32(0.5):
        r += np.float32(1.0)
    elif frac <= np.float32(-0.5):
        r -= np.float32(1.0)
    return r


@njit(nogil=True, cache=True)
def trunc_to_i8(v):
    """``(int8_t)v`` for a float32 as x86-64 compilers emit it.

    cvttss2si to int32 (0x80000000 for NaN / out of range), then keep the low
    byte as a signed value.
    """
    if not (v > np.float32(-2147483648.0) and v < np.float32(2147483648.0)):
        return 0  # low byte of 0x80000000
    i = np.int64(np.trunc(v)) & 0xFF
    return i - 256 if i >= 128 else i


@njit(nogil=True, cache=True)
def to_i8(i):
    """C conversion of an int to int8_t (wraps)."""
    i = np.int64(i) & 0xFF
    return i - 256 if i >= 128 else i


@njit(nogil=True, cache=True)
def put_f16(o, pos, f):
    """Store f as little-endian fp16 bits at o[pos:pos+2] (GGML_FP32_TO_FP16)."""
    h = fp32_to_fp16(f)
    o[pos] = h & 0xFF
    o[pos + 1] = (h >> 8) & 0xFF


@njit(nogil=True, cache=True)
def get_f16(o, pos):
    """The little-endian fp16 at o[pos:pos+2] as float32."""
    return fp16_to_fp32(np.int64(o[pos]) | (np.int64(o[pos + 1]) << 8))
