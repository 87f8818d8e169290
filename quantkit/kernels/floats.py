"""Pass-through float "block" types: F32, F16, BF16 (block size 1).

Byte layouts: F32 = 4 bytes little-endian IEEE binary32 per weight; F16 = 2
bytes binary16 (round to nearest even, as GGML_FP32_TO_FP16 /
ggml_fp32_to_fp16_row); BF16 = top 16 bits of binary32 rounded to nearest even
with NaNs quieted (ggml_compute_fp32_to_bf16 / ggml_fp32_to_bf16_row_ref).
Importance weights are accepted and ignored.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fp import bf16_to_fp32, fp16_to_fp32, fp32_to_bf16, fp32_to_fp16


@njit(nogil=True, cache=True)
def _to_f16(x, out):
    rows, cols = x.shape
    for r in range(rows):
        for j in range(cols):
            out[r, j] = fp32_to_fp16(x[r, j])


@njit(nogil=True, cache=True)
def _to_bf16(x, out):
    rows, cols = x.shape
    for r in range(rows):
        for j in range(cols):
            out[r, j] = fp32_to_bf16(x[r, j])


@njit(nogil=True, cache=True)
def _from_f16(h, out):
    rows, cols = out.shape
    for r in range(rows):
        for j in range(cols):
            out[r, j] = fp16_to_fp32(h[r, j])


@njit(nogil=True, cache=True)
def _from_bf16(h, out):
    rows, cols = out.shape
    for r in range(rows):
        for j in range(cols):
            out[r, j] = bf16_to_fp32(h[r, j])


def encode_f32(x, qw=None, effort="exact"):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)


def decode_f32(data, cols):
    return np.ascontiguousarray(data).view(np.float32).reshape(data.shape[0], cols).copy()


def encode_f16(x, qw=None, effort="exact"):
    out = np.empty(x.shape, np.uint16)
    _to_f16(x, out)
    return out.view(np.uint8)


def decode_f16(data, cols):
    out = np.empty((data.shape[0], cols), np.float32)
    _from_f16(np.ascontiguousarray(data).view(np.uint16), out)
    return out


def encode_bf16(x, qw=None, effort="exact"):
    out = np.empty(x.shape, np.uint16)
    _to_bf16(x, out)
    return out.view(np.uint8)


def decode_bf16(data, cols):
    out = np.empty((data.shape[0], cols), np.float32)
    _from_bf16(np.ascontiguousarray(data).view(np.uint16), out)
    return out
