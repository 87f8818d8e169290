"""Generic integer group quantization (the compressed-tensors / safetensors path).

Conventions follow compressed-tensors (``calculate_qparams``, ``_quantize``,
``_dequantize``) for ``num_bits`` b in {2, 3, 4, 8}:

* codes are signed integers in [qmin, qmax] = [-2^(b-1), 2^(b-1) - 1] for both
  symmetric and asymmetric schemes;
* the range of a group always contains zero: lo = min(min(x), 0),
  hi = max(max(x), 0);
* symmetric: scale = max(|lo|, |hi|) / ((2^b - 1) / 2), zero point 0;
* asymmetric: scale = (hi - lo) / (2^b - 1), zp = round(qmin - lo/scale)
  clamped to [qmin, qmax] (so x = 0 maps exactly to code zp);
* q = clamp(round_half_even(x/scale + zp), qmin, qmax); x' = (q - zp) * scale;
* a zero scale becomes the float32 epsilon (all-zero groups decode to 0).

Groups run along the row (the input axis of a Linear weight [out, in]):
group_size 32/64/128, or -1 for one group per output channel.

Clipping search: for each group, the range [lo, hi] is shrunk by each factor p
of a grid starting at 1.0 (no clipping); the factor with the smallest
importance-weighted squared error sum_j imp_j (x'_j - x_j)^2 wins (ties keep
the earlier factor, so the search never does worse than no clipping).
``importance`` is per column (E[x^2] of that input channel), default uniform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from quantkit.errors import BadInput

from .fp import bf16_to_fp32, fp16_to_fp32, fp32_to_bf16, fp32_to_fp16

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUPS = (32, 64, 128, -1)
_SCALE_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
F32_EPS = np.float32(np.finfo(np.float32).eps)


def default_shrink_grid(maxshrink: float = 0.5, step: float = 0.01) -> np.ndarray:
    """Shrink factors 1.0, 1-step, ..., down to 1-maxshrink (inclusive)."""
    n = int(round(maxshrink / step))
    return (1.0 - step * np.arange(n + 1)).astype(np.float32)


@njit(nogil=True, cache=True)
def _round_scale(s, mode):
    if mode == 1:
        return fp16_to_fp32(fp32_to_fp16(s))
    if mode == 2:
        return bf16_to_fp32(fp32_to_bf16(s))
    return s


@njit(nogil=True, cache=True)
def _qparams(lo, hi, symmetric, qmin, qmax, mode):
    """compressed-tensors calculate_qparams for one group -> (scale, zp)."""
    lo = min(lo, np.float32(0.0))
    hi = max(hi, np.float32(0.0))
    bit_range = np.float32(qmax - qmin)
    if symmetric:
        scale = max(abs(lo), abs(hi)) / (bit_range / np.float32(2.0))
        zp = 0
    else:
        scale = (hi - lo) / bit_range
        if scale > np.float32(0.0):
            z = np.float32(qmin) - lo / scale
            z = min(max(z, np.float32(qmin)), np.float32(qmax))
            zp = np.int64(np.rint(z))
        else:
            zp = qmin
    scale = _round_scale(scale, mode)
    if scale == np.float32(0.0):
        scale = F32_EPS
    return scale, zp


@njit(nogil=True, cache=True)
def _quant_one(v, scale, zp, qmin, qmax):
    q = np.rint(v / scale + np.float32(zp))
    return np.int64(min(max(q, np.float32(qmin)), np.float32(qmax)))


@njit(parallel=True, nogil=True, cache=True)
def _group_kernel(x, imp, gs, symmetric, qmin, qmax, shrinks, mode, codes, scales, zps):
    rows, cols = x.shape
    ng = cols // gs
    for t in prange(rows * ng):
        r = t // ng
        g = t % ng
        xs = x[r, g * gs:(g + 1) * gs]
        ws = imp[g * gs:(g + 1) * gs]
        xmin = xs[0]
        xmax = xs[0]
        for j in range(1, gs):
            xmin = min(xmin, xs[j])
            xmax = max(xmax, xs[j])
        best_err = np.inf
        best_scale = np.float32(1.0)
        best_zp = 0
        for p in shrinks:
            scale, zp = _qparams(xmin * p, xmax * p, symmetric, qmin, qmax, mode)
            err = 0.0
            for j in range(gs):
                q = _quant_one(xs[j], scale, zp, qmin, qmax)
                d = np.float64(np.float32(q - zp) * scale) - np.float64(xs[j])
                err += np.float64(ws[j]) * d * d
            if err < best_err:
                best_err = err
                best_scale = scale
                best_zp = zp
        scales[r, g] = best_scale
        zps[r, g] = best_zp
        for j in range(gs):
            codes[r, g * gs + j] = _quant_one(xs[j], best_scale, best_zp, qmin, qmax)


@njit(parallel=True, nogil=True, cache=True)
def _dequant_kernel(codes, scales, zps, gs, out):
    rows, cols = codes.shape
    for r in prange(rows):
        for j in range(cols):
            g = j // gs
            out[r, j] = np.float32(np.int64(codes[r, j]) - np.int64(zps[r, g])) * scales[r, g]


@dataclass
class GroupQuant:
    """Integer codes + per-group scales (+ zero points) of a 2-D weight."""

    codes: np.ndarray  # int8 [rows, cols], in [qmin, qmax]
    scales: np.ndarray  # float32 [rows, n_groups]
    zero_points: np.ndarray | None  # int8 [rows, n_groups]; None when symmetric
    bits: int
    group_size: int  # as requested (-1 = per channel)
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1


def _check(bits, group_size, cols, name):
    if bits not in SUPPORTED_BITS:
        raise BadInput(f"tensor {name}: {bits}-bit group quantization is not supported; use one of {SUPPORTED_BITS}")
    if group_size not in SUPPORTED_GROUPS:
        raise BadInput(f"tensor {name}: group size {group_size} is not supported; use one of {SUPPORTED_GROUPS}")
    gs = cols if group_size == -1 else group_size
    if cols == 0 or cols % gs:
        raise BadInput(f"tensor {name}: row length {cols} is not a multiple of group size {gs}")
    return gs


def group_quantize(w: np.ndarray, bits: int, group_size: int = 128, symmetric: bool = True,
                   importance: np.ndarray | None = None, clip_search: bool = True,
                   shrink_grid: np.ndarray | None = None, scale_dtype: str = "float32",
                   name: str = "tensor") -> GroupQuant:
    """Quantize a 2-D float weight [rows, cols] to ``bits``-bit codes in groups along the row.

    ``scale_dtype`` ('float32', 'float16', 'bfloat16') rounds the scales to the
    dtype they will be stored in before the codes are chosen.
    """
    x = np.ascontiguousarray(np.asarray(w, dtype=np.float32))
    if x.ndim != 2:
        raise BadInput(f"tensor {name}: group quantization needs a 2-D weight, got shape {x.shape}")
    rows, cols = x.shape
    gs = _check(bits, group_size, cols, name)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise BadInput(f"tensor {name}: non-finite weight {x[r, c]} at (row {r}, col {c})")
    if scale_dtype not in _SCALE_DTYPES:
        raise BadInput(f"tensor {name}: scale dtype {scale_dtype!r} not one of {list(_SCALE_DTYPES)}")
    if importance is None:
        imp = np.ones(cols, np.float32)
    else:
        imp = np.ascontiguousarray(np.asarray(importance, dtype=np.float32).reshape(-1))
        if imp.shape[0] != cols:
            raise BadInput(f"tensor {name}: importance has {imp.shape[0]} values, expected {cols}")
        if not np.all(np.isfinite(imp)) or np.any(imp < 0):
            raise BadInput(f"tensor {name}: importance must be finite and non-negative")
    if not clip_search:
        shrinks = np.ones(1, np.float32)
    else:
        shrinks = default_shrink_grid() if shrink_grid is None else np.asarray(shrink_grid, np.float32)
        if shrinks.size == 0 or shrinks[0] != np.float32(1.0):
            shrinks = np.concatenate([np.ones(1, np.float32), shrinks]).astype(np.float32)
    qmin = -(1 << (bits - 1))
    qmax = (1 << (bits - 1)) - 1
    ng = cols // gs
    codes = np.empty((rows, cols), np.int8)
    scales = np.empty((rows, ng), np.float32)
    zps = np.zeros((rows, ng), np.int8)
    _group_kernel(x, imp, gs, symmetric, qmin, qmax, shrinks, _SCALE_DTYPES[scale_dtype], codes, scales, zps)
    return GroupQuant(codes, scales, None if symmetric else zps, bits, group_size, symmetric)


def group_dequantize(gq: GroupQuant) -> np.ndarray:
    """x' = (q - zp) * scale, float32 [rows, cols]."""
    rows, cols = gq.codes.shape
    gs = cols if gq.group_size == -1 else gq.group_size
    zps = gq.zero_points if gq.zero_points is not None else np.zeros(gq.scales.shape, np.int8)
    out = np.empty((rows, cols), np.float32)
    _dequant_kernel(np.ascontiguousarray(gq.codes), np.ascontiguousarray(gq.scales, dtype=np.float32),
                    np.ascontiguousarray(zps), gs, out)
    return out


def weighted_mse(w: np.ndarray, w_hat: np.ndarray, importance: np.ndarray | None = None) -> float:
    """mean over elements of imp[col] * (w_hat - w)^2 (float64)."""
    d = np.asarray(w_hat, np.float64) - np.asarray(w, np.float64)
    if importance is None:
        return float(np.mean(d * d))
    return float(np.mean(d * d * np.asarray(importance, np.float64)[None, :]))
