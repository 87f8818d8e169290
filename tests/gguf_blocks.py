"""Helpers shared by the block-codec tests: bit-exact comparison, one field of every block, and quantkit's decoder
beside gguf-py's (the oracle) on the same bytes."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

from quantkit.kernels import registry


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same float32 bit patterns (NaNs and signed zeros included)."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def field(data: np.ndarray, qname: str, span: tuple[int, int]) -> np.ndarray:
    """View of one field (bytes span[0]..span[1] of each block) of every block: [rows, blocks, field bytes]."""
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]][1]
    return data.reshape(data.shape[0], -1, ts)[:, :, span[0]:span[1]]


def decode_both(qname: str, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quantkit's decoding, gguf-py's) of the rows of blocks `data`."""
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]]
    cols = data.shape[1] // ts * bs
    ours = registry.dequantize(qname, data, (data.shape[0], cols))
    with np.errstate(all="ignore"):
        ref = gq.dequantize(data, GGMLQuantizationType[qname]).reshape(data.shape[0], cols)
    return ours, ref


def assert_layout_covers(qname: str, layout: dict[str, tuple[int, int]], first: int) -> None:
    """The named fields of a block layout tile the block from byte `first` (after any fields not named) to its end,
    which is the block size both gguf-py and the registry give."""
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]][1]
    spans = sorted(layout.values())
    assert spans[0][0] == first and spans[-1][1] == ts == registry.get(qname).bytes_per_block
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
