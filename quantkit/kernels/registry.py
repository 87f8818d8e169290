"""The one table of ggml block types quantkit can write and read.

Every size and codec the rest of quantkit uses comes from here::

    bt = get("Q4_K")                       # BlockType
    data = quantize("Q4_K", w, importance=imatrix_col, name="blk.0.ffn_down.weight")
    w2 = dequantize("Q4_K", data, w.shape)
    n = tensor_nbytes("Q4_K", w.shape)

Shapes follow numpy order: the last axis is the row (ggml's ne[0]); all
leading axes are rows.  ``importance`` is llama.cpp's ``quant_weights``: one
float32 per column (E[x^2] of that input channel).

Fallbacks follow llama-quant.cpp ``tensor_type_fallback`` (``FALLBACK``, the one
table of them): when the row length is not a multiple of the block size, the type
becomes its fallback, and F16 when the fallback (or a 32-block type) still does
not fit.

Threads: the kernels are serial Numba functions that release the GIL, and
``quantize`` / ``dequantize`` run them on consecutive row ranges in
``numba.get_num_threads()`` threads (``in_row_ranges``). Rows are independent in
every ggml type, so the bytes do not depend on the split. Numba's own
``parallel=True`` cost more to compile: the 15 candidate codecs' first calls took
57 + 9 s (encoders + decoders) with it and 42 + 5 s without, on a fresh install.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numba
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit

from quantkit.errors import BadInput

from . import floats, iq1, iq4, iquants, kquants, legacy

# Every encoder is called the same way, encode(x, importance, effort). `effort` ("exact" | "fast") only changes
# the IQ2/IQ3 grid types' scale search (iquants.SCALE_TRIALS); the other types (IQ1_S / IQ1_M: their split search is
# exhaustive) have no such search and ignore it.
Encoder = Callable[[np.ndarray, "np.ndarray | None", str], np.ndarray]
Decoder = Callable[[np.ndarray, int], np.ndarray]


FLOATS = ("F32", "F16", "BF16")
# llama-quant.cpp tensor_type_fallback: the type written for rows its block does not divide
FALLBACK = {"IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
            "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0",
            "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class BlockType:
    name: str
    ggml_type: GGMLQuantizationType
    block_size: int
    bytes_per_block: int
    bits_per_weight: float
    encode: Encoder  # (float32 [rows, cols], importance [cols] | None, effort) -> uint8 [rows, row_bytes]
    decode: Decoder  # (uint8 [rows, row_bytes], cols) -> float32 [rows, cols]
    needs_imatrix: bool

    def row_nbytes(self, cols: int) -> int:
        return cols // self.block_size * self.bytes_per_block


def _bt(name, block_size, nbytes, enc, dec, needs_imatrix=False):
    return BlockType(
        name=name,
        ggml_type=GGMLQuantizationType[name],
        block_size=block_size,
        bytes_per_block=nbytes,
        bits_per_weight=8.0 * nbytes / block_size,
        encode=enc,
        decode=dec,
        needs_imatrix=needs_imatrix,
    )


TYPES: dict[str, BlockType] = {
    bt.name: bt
    for bt in [
        _bt("F32", 1, 4, floats.encode_f32, floats.decode_f32),
        _bt("F16", 1, 2, floats.encode_f16, floats.decode_f16),
        _bt("BF16", 1, 2, floats.encode_bf16, floats.decode_bf16),
        _bt("Q8_0", 32, 34, legacy.encode_q8_0, legacy.decode_q8_0),
        _bt("Q4_0", 32, 18, legacy.encode_q4_0, legacy.decode_q4_0),
        _bt("Q4_1", 32, 20, legacy.encode_q4_1, legacy.decode_q4_1),
        _bt("Q5_0", 32, 22, legacy.encode_q5_0, legacy.decode_q5_0),
        _bt("Q5_1", 32, 24, legacy.encode_q5_1, legacy.decode_q5_1),
        _bt("Q2_K", 256, 84, kquants.encode_q2_K, kquants.decode_q2_K),
        _bt("Q3_K", 256, 110, kquants.encode_q3_K, kquants.decode_q3_K),
        _bt("Q4_K", 256, 144, kquants.encode_q4_K, kquants.decode_q4_K),
        _bt("Q5_K", 256, 176, kquants.encode_q5_K, kquants.decode_q5_K),
        _bt("Q6_K", 256, 210, kquants.encode_q6_K, kquants.decode_q6_K),
        _bt("IQ4_NL", 32, 18, iq4.encode_iq4_nl, iq4.decode_iq4_nl),
        _bt("IQ4_XS", 256, 136, iq4.encode_iq4_xs, iq4.decode_iq4_xs),
        _bt("IQ2_XXS", 256, 66, iquants.encode_iq2_xxs, iquants.decode_iq2_xxs, True),
        _bt("IQ2_XS", 256, 74, iquants.encode_iq2_xs, iquants.decode_iq2_xs, True),
        _bt("IQ3_XXS", 256, 98, iquants.encode_iq3_xxs, iquants.decode_iq3_xxs, True),
        _bt("IQ2_S", 256, 82, iquants.encode_iq2_s, iquants.decode_iq2_s, True),
        _bt("IQ3_S", 256, 110, iquants.encode_iq3_s, iquants.decode_iq3_s),  # llama.cpp: no imatrix required
        _bt("IQ1_S", 256, 50, iq1.encode_iq1_s, iq1.decode_iq1_s, True),
        _bt("IQ1_M", 256, 56, iq1.encode_iq1_m, iq1.decode_iq1_m, True),
    ]
}

for _bt_ in TYPES.values():  # keep the table honest against gguf-py
    assert GGML_QUANT_SIZES[_bt_.ggml_type] == (_bt_.block_size, _bt_.bytes_per_block), _bt_.name


def names() -> list[str]:
    return list(TYPES)


def get(type_name: str | GGMLQuantizationType) -> BlockType:
    """Look a type up by name (case-insensitive) or by gguf.GGMLQuantizationType."""
    if isinstance(type_name, GGMLQuantizationType):
        type_name = type_name.name
    bt = TYPES.get(str(type_name).upper())
    if bt is None:
        raise BadInput(f"unknown tensor type {type_name!r}; expected one of {', '.join(TYPES)}")
    return bt


def _rows_cols(shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return rows, shape[-1]


def row_nbytes(type_name: str, cols: int) -> int:
    bt = get(type_name)
    if cols % bt.block_size:
        raise BadInput(f"row length {cols} is not a multiple of the {bt.name} block size {bt.block_size}")
    return bt.row_nbytes(cols)


def tensor_nbytes(type_name: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of numpy ``shape`` (last axis = row) stored as ``type_name``."""
    rows, cols = _rows_cols(shape)
    return rows * row_nbytes(type_name, cols)


def block_size(type_name: str) -> int:
    """Weights per block of any ggml type, those quantkit cannot encode included (gguf-py's table)."""
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]][0]


def fallback_type(type_name: str, cols: int) -> str:
    """The type llama.cpp actually writes for rows of length ``cols`` (tensor_type_fallback)."""
    name = type_name.upper() if type_name.upper() in FALLBACK else get(type_name).name
    if cols % block_size(name) == 0:
        return name
    fb = FALLBACK.get(name)
    if fb is None or cols % block_size(fb):
        return "F16"
    return fb


@njit(nogil=True, cache=True)
def _first_nonfinite_kernel(x):
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            if not np.isfinite(x[r, j]):
                return r, j
    return -1, -1


def _first_nonfinite(x: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first NaN/Inf in row order, or (-1, -1)."""
    def first(rows: slice) -> np.ndarray:
        r, c = _first_nonfinite_kernel(x[rows])
        return np.array([[rows.start + r if r >= 0 else -1, c]], np.int64)

    for r, c in in_row_ranges(x.shape[0], x.shape[1], first):
        if r >= 0:
            return int(r), int(c)
    return -1, -1


MIN_VALUES_PER_THREAD = 1 << 15  # below this a range is not worth a thread's hand-off
CHUNKS_PER_THREAD = 4  # IQ searches cost more on some rows than others: smaller ranges balance the threads
_POOLS: dict[int, ThreadPoolExecutor] = {}


def in_row_ranges(rows: int, cols: int, work: Callable[[slice], np.ndarray]) -> np.ndarray:
    """work(range) for consecutive ranges of `rows` (each a slice) on numba.get_num_threads() threads (what
    `--threads` set), the results concatenated along axis 0 in row order. Small inputs: one range, this thread."""
    threads = max(1, min(numba.get_num_threads(), rows * cols // MIN_VALUES_PER_THREAD, rows))
    if threads == 1 or threading.current_thread().name.startswith("rows"):  # never wait on the pool from inside it
        return work(slice(0, rows))
    n = min(rows, threads * CHUNKS_PER_THREAD)
    edges = [rows * i // n for i in range(n + 1)]
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rows")
    return np.concatenate(list(pool.map(work, [slice(a, b) for a, b in zip(edges[:-1], edges[1:])])))


def _as_rows(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 0:
        a = a.reshape(1, 1)
    elif a.ndim == 1:
        a = a.reshape(1, -1)
    elif a.ndim > 2:
        a = a.reshape(-1, a.shape[-1])
    return np.ascontiguousarray(a, dtype=np.float32)


def quantize(type_name: str, array2d: np.ndarray, importance: np.ndarray | None = None,
             name: str = "tensor", effort: str = "exact", keep_nonfinite: bool = False) -> np.ndarray:
    """Encode rows of ``array2d`` as ``type_name`` blocks -> uint8 [rows, row_bytes].

    Without ``importance`` the bytes equal llama.cpp's quantizer output for the
    same F32 rows (llama_model_quantize without an imatrix); with it, the
    imatrix-weighted search of the matching ``quantize_row_*_impl``.
    Raises BadInput for unknown types, rows that do not fit the block size,
    NaN/Inf weights or importance, and missing importance for the IQ1/IQ2 types and IQ3_XXS.
    ``effort="fast"`` shortens the IQ2/IQ3 grid types' scale search (iquants.SCALE_TRIALS):
    still valid blocks of the same type, no longer llama.cpp's bytes.
    ``keep_nonfinite`` stores Inf and NaN as they are in the float types (an mmproj's unclipped bounds are ±Inf).
    """
    bt = get(type_name)
    x = _as_rows(array2d)
    rows, cols = x.shape
    if cols % bt.block_size:
        raise BadInput(
            f"tensor {name}: row length {cols} is not a multiple of the {bt.name} block size "
            f"{bt.block_size}; llama.cpp would use {fallback_type(bt.name, cols)} for it"
        )
    if keep_nonfinite and bt.name not in FLOATS:
        raise BadInput(f"tensor {name}: only float types store non-finite values, not {bt.name}")
    if x.size and not keep_nonfinite:
        r, c = _first_nonfinite(x)
        if r >= 0:
            raise BadInput(f"tensor {name}: non-finite weight {x[r, c]} at (row {r}, col {c}); refusing to quantize to {bt.name}")
    qw = None
    if importance is not None:
        qw = np.ascontiguousarray(np.asarray(importance, dtype=np.float32).reshape(-1))
        if qw.shape[0] != cols:
            raise BadInput(f"tensor {name}: importance has {qw.shape[0]} values, expected one per column ({cols})")
        if not np.all(np.isfinite(qw)):
            raise BadInput(f"tensor {name}: importance holds NaN/Inf at column {int(np.argmin(np.isfinite(qw)))}")
        if np.any(qw < 0):
            raise BadInput(f"tensor {name}: importance holds a negative value at column {int(np.argmax(qw < 0))}")
    elif bt.needs_imatrix:
        raise BadInput(f"tensor {name}: type {bt.name} needs importance weights (an imatrix)")
    if rows == 0 or cols == 0:
        return np.zeros((rows, bt.row_nbytes(cols)), np.uint8)
    return in_row_ranges(rows, cols, lambda r: bt.encode(x[r], qw, effort).reshape(-1, bt.row_nbytes(cols)))


def dequantize(type_name: str, data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Decode ``type_name`` bytes back to float32 of numpy ``shape``."""
    bt = get(type_name)
    rows, cols = _rows_cols(shape)
    nbytes = rows * row_nbytes(bt.name, cols)
    raw = np.ascontiguousarray(np.asarray(data).view(np.uint8).reshape(-1))
    if raw.size != nbytes:
        raise BadInput(f"{bt.name} data for shape {tuple(shape)} should be {nbytes} bytes, got {raw.size}")
    if rows == 0 or cols == 0:
        return np.zeros(tuple(shape), np.float32)
    data2d = raw.reshape(rows, bt.row_nbytes(cols))
    return in_row_ranges(rows, cols, lambda r: bt.decode(data2d[r], cols).reshape(-1, cols)).reshape(tuple(shape))
