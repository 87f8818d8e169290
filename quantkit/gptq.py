"""Weight quantization methods: `rtn`, `imatrix` and `gptq`, all emitting standard ggml blocks (or the generic
int group format of kernels/group.py).

    rtn      llama.cpp without data: registry.quantize(type, w)                  (llama-quantize)
    imatrix  llama.cpp with an importance matrix: importance = E[x^2]          (llama-quantize --imatrix)
    gptq     error feedback (Frantar et al. 2022, "GPTQ"): columns are rounded one at a time and each rounding
             error is spread over the columns not yet rounded, using the upper Cholesky factor U of the damped
             inverse Hessian H^-1 (H = X^T X):  W[:, j+1:] -= (w_j - q_j) / U[j, j] * U[j, j+1:]
             This minimises ||(W - Q) X||^2 column by column. Updates are applied lazily, one batch of columns at a
             time (the rest of the matrix receives Err_batch @ U[batch, rest] at the end of each batch).

How gptq stays a ggml type: a block's scales (and mins) are chosen by the format's own importance-weighted search
(registry.quantize on the block's current, error-compensated weights, importance = diag(H)) when GPTQ reaches the
block's first column; its weights are then rounded one column at a time on the fixed grid A * level + B read from
those scale bytes (kernels/fixed.py), and the final bytes are the search's scale fields with GPTQ's levels. They
decode exactly to the weights GPTQ used. Batches are multiples of the format block and aligned to it, so every
block starts with all earlier errors applied.

The lattice types (IQ1_S ... IQ3_S) have no such grid: a block's 8-weight groups are points of a lattice chosen
jointly with its scales. GPTQ takes them a whole 256-weight block at a time (`gptq_blocks`): the block is encoded by
the format's own search, and its error is fed forward to the columns not yet quantized, the multi-column form of the
update above (with H^-1 restricted to the remaining columns = U^T U, the block's own part is U_bb^T U_bb):

    W[:, rest] -= (W~_b - Q_b) @ U_bb^-1 @ U[b, rest]

Unrolled over the blocks (U - blockdiag(U_bb) is strictly block-upper), the weights block b is encoded from are

    W~_b = W_b + (sum_{c<b} (W_c - Q_c) V[c, b]) @ U_bb        with V = U^-1, H = V V^T, U_bb = V_bb^-1

(from W~ - Q = (W - Q) V blockdiag(U_bb)), so only the Cholesky factor V of H itself is needed, not U's triangular
inverse: the same result at half the factorisation's time and memory. The search's importance is the diagonal of
(U_bb^T U_bb)^-1 = V_bb V_bb^T, the Hessian of the block with the columns after it free to compensate (a Schur
complement of H; with uncorrelated inputs it is diag(H), llama.cpp's imatrix up to scale).

act_order processes columns in decreasing diag(H) without breaking the block structure: whole blocks are ordered by
their summed diag(H), and the columns inside each block by their own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit

from quantkit.calibration.capture import LinearStats
from quantkit.errors import BadInput
from quantkit.kernels import fixed, group, registry

METHODS = ("rtn", "imatrix", "gptq")
# ggml's lattice types: no fixed-scale grid (kernels.fixed); GPTQ quantizes them a whole block at a time
LATTICE = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")


@dataclass
class Quantized:
    """One quantized 2-D weight: ggml bytes and the float32 values they decode to."""

    type: str
    data: np.ndarray  # uint8 [rows, row_bytes]
    values: np.ndarray  # float32 [rows, cols] == registry.dequantize(type, data, shape)


# ---------------------------------------------------------------- the column loop


@njit(nogil=True, cache=True)
def _gptq_columns(W1, U1, A, B, Z, lv, uni, j0, j1, codes, Q, Err):
    """Round columns j0..j1-1 of the batch W1 on the fixed grids (A, B, Z: [rows, j1 - j0]) and feed each
    column's error forward to the batch's later columns. Rows are independent."""
    rows, nb = W1.shape
    for r in range(rows):
        for j in range(j0, j1):
            w = W1[r, j]
            a = A[r, j - j0]
            b = B[r, j - j0]
            z = Z[r, j - j0]
            k = fixed.nearest_code(w, a, b, z, lv, uni)
            q = a * (lv[k] - z) + b
            codes[r, j] = k
            Q[r, j] = q
            e = (w - q) / U1[j, j]
            Err[r, j] = e
            for c in range(j + 1, nb):
                W1[r, c] -= e * U1[j, c]


# ---------------------------------------------------------------- grids for one block


class _GGMLGrid:
    """Scales of one ggml block from the format's own search; levels from kernels/fixed."""

    def __init__(self, type_name: str, cols: int):
        self.type = type_name
        self.bt = registry.get(type_name)
        self.bs = self.bt.block_size
        self.levels = fixed.levels(type_name)
        self.uniform = fixed.uniform(type_name)
        self.data = np.zeros((0, 0), np.uint8)
        self.cols = cols

    def start(self, rows: int) -> None:
        self.data = np.zeros((rows, self.bt.row_nbytes(self.cols)), np.uint8)

    def choose(self, b: int, wb: np.ndarray, imp: np.ndarray | None):
        """Block b's grid from its current weights wb [rows, bs] (original column order) -> (A, B, Z)."""
        enc = registry.quantize(self.type, wb, imp)
        nb = self.bt.bytes_per_block
        self.data[:, b * nb:(b + 1) * nb] = enc
        A, B = fixed.block_params(self.type, enc, self.bs)
        return A, B, np.zeros_like(A)

    def finish(self, codes: np.ndarray, shape) -> Quantized:
        data = fixed.pack_levels(self.type, self.data, codes)
        return Quantized(self.type, data, registry.dequantize(self.type, data, shape))


class _GroupGrid:
    """Scales (and zero points) of one group of kernels/group.py from its clipping search."""

    def __init__(self, bits: int, group_size: int, symmetric: bool, cols: int, scale_dtype: str):
        self.bits, self.symmetric, self.scale_dtype = bits, symmetric, scale_dtype
        self.group_size = group_size
        self.bs = cols if group_size == -1 else group_size
        self.qmin = -(1 << (bits - 1))
        self.levels = np.arange(self.qmin, -self.qmin, dtype=np.float32)
        self.uniform = True
        self.cols = cols

    def start(self, rows: int) -> None:
        ng = self.cols // self.bs
        self.scales = np.zeros((rows, ng), np.float32)
        self.zps = np.zeros((rows, ng), np.int8)

    def choose(self, b: int, wb: np.ndarray, imp: np.ndarray | None):
        gq = group.group_quantize(wb, self.bits, self.bs if self.group_size != -1 else -1, self.symmetric,
                                  importance=imp, scale_dtype=self.scale_dtype)
        self.scales[:, b] = gq.scales[:, 0]
        if gq.zero_points is not None:
            self.zps[:, b] = gq.zero_points[:, 0]
        A = np.repeat(gq.scales[:, :1], self.bs, axis=1)
        Z = np.repeat(self.zps[:, b:b + 1].astype(np.float32), self.bs, axis=1)
        return A, np.zeros_like(A), Z

    def finish(self, codes: np.ndarray, shape) -> group.GroupQuant:
        q = (codes.astype(np.int64) + self.qmin).astype(np.int8)
        return group.GroupQuant(q, self.scales, None if self.symmetric else self.zps, self.bits, self.group_size,
                                self.symmetric)


# ---------------------------------------------------------------- GPTQ


# The precision H is factored in: float64 while that is cheap, float32 (GPTQ's reference implementation's) above
# FLOAT64_MAX_COLS columns, where the float64 factorisation dominates GPTQ's time. E2B's 12,288-column down_proj:
# Cholesky 5.3 s in float32 against 15.4 s in float64 (2 cores). The Gemma 3 270M's rows (at most 2,048) stay float64.
FLOAT64_MAX_COLS = 4096


def _prepare_hessian(hessian: np.ndarray, cols: int, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(damped H in the factorisation's precision, diag of the raw H). Dead inputs (H_jj = 0) get H_jj = 1 so the
    factorisation exists."""
    H = np.array(hessian, dtype=np.float64 if cols <= FLOAT64_MAX_COLS else np.float32, copy=True)
    if H.shape != (cols, cols):
        raise BadInput(f"Hessian has shape {H.shape}, expected {(cols, cols)}")
    diag = np.diag(H).copy()
    dead = diag <= 0
    H[dead, dead] = 1.0
    H[np.diag_indices(cols)] += damp * float(np.mean(np.diag(H)))
    return H, diag


def _factor(H: np.ndarray, finish):
    """finish(L) for L the lower Cholesky factor of J H J (J the reversal permutation), in H's precision, raising
    the damping until H is positive definite and finish returns a result (None: not finite)."""
    import torch

    Ht = torch.from_numpy(np.ascontiguousarray(H[::-1, ::-1]))
    d0 = Ht.diagonal().clone()
    extra = 0.0
    for _ in range(8):
        if extra:
            Ht.diagonal().copy_(d0 + extra)
        L, info = torch.linalg.cholesky_ex(Ht)
        if int(info) == 0:
            out = finish(L)
            if out is not None:
                return out
        extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(H))))
    raise BadInput("Hessian is not positive definite even after extra damping")


def _upper_inverse_cholesky(H: np.ndarray) -> np.ndarray:
    """U upper triangular with U^T U = H^-1 (what GPTQ calls Hinv)."""

    # With J H J = L' L'^T (lower Cholesky): H = V V^T with V = J L' J upper, so H^-1 = V^-T V^-1 and
    # U = V^-1 = J L'^-1 J. One Cholesky and one triangular inverse instead of a Cholesky, a full inverse and a
    # second Cholesky.
    def finish(L):
        U = _lower_inverse(L).numpy()[::-1, ::-1]
        return np.ascontiguousarray(U) if np.all(np.isfinite(U)) else None

    return _factor(H, finish)


def _upper_cholesky(H: np.ndarray) -> np.ndarray:
    """V upper triangular with V V^T = H (GPTQ's U is V^-1), as a reversed view of the lower factor of J H J."""

    def finish(L):
        V = L.numpy()[::-1, ::-1]
        return V if np.all(np.isfinite(V)) else None

    return _factor(H, finish)


TRSM_MAX = 2048  # up to this size a triangular solve against the identity; above, by halves


def _lower_inverse(L):
    """L^-1 of a lower-triangular torch matrix. A solve against the identity costs n^3 (it does not know the right
    side is triangular); by halves it is n^3 / 3, mostly in matrix products (LAPACK's trtri):
        [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]
    Float32 products go through oneDNN (models/matmul.py): E2B's 12,288-column inverse in 6.5 s instead of 9.1 s."""
    import torch

    from quantkit.models.matmul import mm

    n = L.shape[0]
    if n <= TRSM_MAX:
        return torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype), upper=False)
    h = n // 2
    Ai, Ci = _lower_inverse(L[:h, :h]), _lower_inverse(L[h:, h:])
    out = torch.zeros_like(L)
    out[:h, :h] = Ai
    out[h:, h:] = Ci
    out[h:, :h] = -mm(Ci, mm(L[h:, :h], Ai))
    return out


def _block_order(diag: np.ndarray, bs: int, act_order: bool) -> np.ndarray:
    """Processing order of the columns: natural, or blocks by summed diag(H) and columns within by diag(H)."""
    cols = diag.shape[0]
    if not act_order:
        return np.arange(cols)
    nb = cols // bs
    d = diag.reshape(nb, bs)
    blocks = np.argsort(-d.sum(1), kind="stable")
    return np.concatenate([b * bs + np.argsort(-d[b], kind="stable") for b in blocks])


# The column loop makes many small kernel calls per tensor (one scale search, one grid read and one column pass per
# block). Each is too small to gain from threads (registry.in_row_ranges), and handing it out costs more than the
# work on a loaded machine (BLAS/OpenMP threads of the batch updates still spinning): measured 2-9x slower.
LOOP_THREADS = 1


@contextlib.contextmanager
def _numba_threads(n: int):
    prev = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(prev)


def _gptq(w: np.ndarray, grid, hessian: np.ndarray, damp: float, act_order: bool, batch: int):
    with _numba_threads(LOOP_THREADS):
        return _gptq_loop(w, grid, hessian, damp, act_order, batch)


def _gptq_loop(w: np.ndarray, grid, hessian: np.ndarray, damp: float, act_order: bool, batch: int):
    W = np.array(w, dtype=np.float32, copy=True)
    rows, cols = W.shape
    bs = grid.bs
    if cols % bs:
        raise BadInput(f"row length {cols} is not a multiple of the block size {bs}")
    H, diag = _prepare_hessian(hessian, cols, damp)
    imp = np.maximum(diag, 0).astype(np.float32)
    perm = _block_order(diag, bs, act_order)
    W = np.ascontiguousarray(W[:, perm])
    U = _upper_inverse_cholesky(H[np.ix_(perm, perm)] if act_order else H).astype(np.float32)
    del H
    step = max(batch, bs)
    step += (-step) % bs  # a multiple of the block: blocks never straddle two batches
    grid.start(rows)
    codes = np.zeros((rows, cols), np.uint8)
    Q = np.zeros((rows, cols), np.float32)
    lv = grid.levels
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        W1 = np.ascontiguousarray(W[:, i1:i2])
        U1 = np.ascontiguousarray(U[i1:i2, i1:i2])
        Err1 = np.zeros_like(W1)
        C1 = np.zeros(W1.shape, np.uint8)
        Q1 = np.zeros_like(W1)
        for j0 in range(0, i2 - i1, bs):
            p = i1 + j0
            oc = perm[p:p + bs]  # original columns of this block, in processing order
            b = int(oc.min()) // bs
            idx = oc - b * bs
            wb = np.empty((rows, bs), np.float32)
            wb[:, idx] = W1[:, j0:j0 + bs]
            A, B, Z = grid.choose(b, wb, imp[b * bs:(b + 1) * bs])
            _gptq_columns(W1, U1, np.ascontiguousarray(A[:, idx]), np.ascontiguousarray(B[:, idx]),
                          np.ascontiguousarray(Z[:, idx]), lv, grid.uniform, j0, j0 + bs, C1, Q1, Err1)
        codes[:, i1:i2] = C1
        Q[:, i1:i2] = Q1
        if i2 < cols:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    inv = np.argsort(perm)
    return grid.finish(np.ascontiguousarray(codes[:, inv]), w.shape), Q[:, inv]


def gptq(w: np.ndarray, type_name: str, hessian: np.ndarray, *, damp: float = 0.01, act_order: bool = False,
         batch: int = 128, effort: str = "exact") -> Quantized:
    """GPTQ of a 2-D weight [rows, cols] to ggml `type_name` given H = X^T X: column by column on the fixed grids of
    kernels.fixed.SUPPORTED, block by block for the lattice types (`gptq_blocks`, whose search takes `effort`)."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise BadInput(f"gptq needs a 2-D weight, got shape {w.shape}")
    name = registry.get(type_name).name
    if name in LATTICE:
        return gptq_blocks(w, name, hessian, damp=damp, act_order=act_order, effort=effort)
    grid = _GGMLGrid(name, w.shape[1])
    fixed.levels(grid.type)  # raises for types without a fixed-scale encoder
    out, Q = _gptq(w, grid, hessian, damp, act_order, batch)
    assert np.array_equal(out.values, Q), "GPTQ bytes do not decode to the weights GPTQ used"
    return out


def gptq_blocks(w: np.ndarray, type_name: str, hessian: np.ndarray, *, damp: float = 0.01,
                act_order: bool = False, effort: str = "exact") -> Quantized:
    """GPTQ of a 2-D weight to a lattice type, one whole block at a time (see the module doc)."""
    import torch

    w = np.asarray(w, np.float32)
    rows, cols = w.shape
    bt = registry.get(type_name)
    bs, nbytes = bt.block_size, bt.bytes_per_block
    if cols % bs:
        raise BadInput(f"row length {cols} is not a multiple of the block size {bs}")
    H, diag = _prepare_hessian(hessian, cols, damp)
    perm = _block_order(diag, bs, act_order)
    V = _upper_cholesky(H[np.ix_(perm, perm)] if act_order else H)
    del H
    V_bb = [V[j:j + bs, j:j + bs].astype(np.float64) for j in range(0, cols, bs)]  # diagonal blocks
    V = np.ascontiguousarray(V, dtype=np.float32)
    W = np.ascontiguousarray(w[:, perm])
    delta = np.zeros((rows, cols), np.float32)  # W - Q, in processing order
    data = np.zeros((rows, bt.row_nbytes(cols)), np.uint8)
    eye = torch.eye(bs, dtype=torch.float64)
    for k, j0 in enumerate(range(0, cols, bs)):
        j1 = j0 + bs
        oc = perm[j0:j1]  # original columns of this block, in processing order
        b = int(oc.min()) // bs
        idx = oc - b * bs
        wt = W[:, j0:j1]
        if j0:  # W~_b = W_b + (sum_{c<b} (W_c - Q_c) V[c, b]) @ U_bb
            U_bb = torch.linalg.solve_triangular(torch.from_numpy(V_bb[k]), eye, upper=True).numpy()
            wt = wt + (delta[:, :j0] @ V[:j0, j0:j1]) @ U_bb.astype(np.float32)
        wb = np.empty((rows, bs), np.float32)
        wb[:, idx] = wt
        imp = np.empty(bs, np.float32)
        imp[idx] = (V_bb[k] ** 2).sum(1)  # diag(V_bb V_bb^T)
        enc = registry.quantize(type_name, wb, imp, effort=effort)
        data[:, b * nbytes:(b + 1) * nbytes] = enc
        delta[:, j0:j1] = W[:, j0:j1] - registry.dequantize(type_name, enc, wb.shape)[:, idx]
    return Quantized(type_name, data, registry.dequantize(type_name, data, w.shape))


def gptq_group(w: np.ndarray, bits: int, group_size: int, hessian: np.ndarray, *, symmetric: bool = True,
               damp: float = 0.01, act_order: bool = False, batch: int = 128,
               scale_dtype: str = "float32") -> group.GroupQuant:
    """GPTQ to the generic int group format (kernels/group.py); group_dequantize(result) equals GPTQ's weights."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise BadInput(f"gptq needs a 2-D weight, got shape {w.shape}")
    group._check(bits, group_size, w.shape[1], "tensor")
    grid = _GroupGrid(bits, group_size, symmetric, w.shape[1], scale_dtype)
    out, Q = _gptq(w, grid, hessian, damp, act_order, batch)
    assert np.array_equal(group.group_dequantize(out), Q), "GPTQ codes do not decode to the weights GPTQ used"
    return out


# ---------------------------------------------------------------- front door


def rtn(w: np.ndarray, type_name: str) -> Quantized:
    data = registry.quantize(type_name, w)
    return Quantized(registry.get(type_name).name, data, registry.dequantize(type_name, data, np.shape(w)))


def imatrix(w: np.ndarray, type_name: str, importance: np.ndarray, effort: str = "exact") -> Quantized:
    data = registry.quantize(type_name, w, importance, effort=effort)
    return Quantized(registry.get(type_name).name, data, registry.dequantize(type_name, data, np.shape(w)))


def quantize_tensor(method: str, w: np.ndarray, type_name: str, stats: LinearStats | None = None, *,
                    damp: float = 0.01, act_order: bool = False, effort: str = "exact") -> Quantized:
    """Quantize a 2-D weight, or a 3-D expert stack expert by expert (per-expert statistics), with `method`.
    `effort` is the IQ2/IQ3 grid types' scale search (registry.quantize)."""
    w = np.asarray(w, np.float32)
    if method not in METHODS:
        raise BadInput(f"method {method!r} is not one of {', '.join(METHODS)}")
    if method != "rtn" and stats is None:
        raise BadInput(f"method {method} needs calibration statistics")
    if method == "gptq" and stats.hessian is None:
        raise BadInput(f"method gptq needs the Hessian of {stats.name} (capture with hessian=True)")
    if w.ndim == 3:
        parts = [quantize_tensor(method, w[e], type_name, _expert(stats, e) if stats else None, damp=damp,
                                 act_order=act_order, effort=effort) for e in range(w.shape[0])]
        return Quantized(parts[0].type, np.stack([p.data for p in parts]), np.stack([p.values for p in parts]))
    if method == "rtn":
        return rtn(w, type_name)
    if method == "imatrix":
        return imatrix(w, type_name, stats.mean_x2(), effort)
    return gptq(w, type_name, stats.hessian, damp=damp, act_order=act_order, effort=effort)


def _expert(stats: LinearStats, e: int) -> LinearStats:
    return LinearStats(f"{stats.name}[{e}]", stats.sum_x2[e], int(stats.count[e]),
                       None if stats.hessian is None else stats.hessian[e])


def output_error(w: np.ndarray, q: np.ndarray, hessian: np.ndarray) -> float:
    """||(W - Q) X||_F^2 = tr((W - Q) H (W - Q)^T) with H = X^T X."""
    d = np.asarray(q, np.float64) - np.asarray(w, np.float64)
    return float(((d @ np.asarray(hessian, np.float64)) * d).sum())


def quantize_group_tensor(method: str, w: np.ndarray, bits: int, group_size: int, symmetric: bool = True,
                          stats: LinearStats | None = None, *, scale_dtype: str = "float32", damp: float = 0.01,
                          act_order: bool = False) -> group.GroupQuant:
    """quantize_tensor for the int group format of kernels/group.py (compressed-tensors builds), 2-D weights:
    rtn = the clipping search with uniform importance, imatrix = the search weighted by E[x^2], gptq = gptq_group
    with the captured Hessian. Scales are rounded to `scale_dtype`, the dtype they are stored in."""
    w = np.asarray(w, np.float32)
    if method not in METHODS:
        raise BadInput(f"method {method!r} is not one of {', '.join(METHODS)}")
    if method != "rtn" and stats is None:
        raise BadInput(f"method {method} needs calibration statistics")
    if method == "rtn":
        return group.group_quantize(w, bits, group_size, symmetric, scale_dtype=scale_dtype)
    if method == "imatrix":
        return group.group_quantize(w, bits, group_size, symmetric, importance=stats.mean_x2(), scale_dtype=scale_dtype,
                                    name=stats.name)
    if stats.hessian is None:
        raise BadInput(f"method gptq needs the Hessian of {stats.name} (capture with hessian=True)")
    return gptq_group(w, bits, group_size, stats.hessian, symmetric=symmetric, damp=damp, act_order=act_order,
                      scale_dtype=scale_dtype)
