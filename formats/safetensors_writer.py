"""A streaming safetensors writer: the header goes out first (every tensor's size is known from its
planned dtype and shape), then the tensors' bytes, each written at its own offset as it is produced,
so peak memory is about one tensor (or one chunk of rows of a large one).

Layout (the safetensors format, as huggingface/safetensors reads it):
    u64 little-endian N | N bytes of JSON header, space-padded to a multiple of 8 | data
The header maps every tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (relative to
the start of the data) and holds "__metadata__" (string -> string). Tensors lie back to back, in the
order safetensors' own serializer uses: widest element first, then by name, so each tensor starts at
a multiple of its element size.

Safety (formats.atomic, as for GGUF): the file is written under a temporary name in the destination
folder, fsynced, re-opened (our own header parse, then safetensors' safe_open: names, dtypes, shapes)
and checked byte for byte against a SHA-256 of each tensor taken while writing, and only then renamed
over the destination. Any failure, an interrupt included, removes the temporary file and leaves the
destination untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from quantkit.errors import BadInput, IOFailure
from quantkit.formats.atomic import atomic_file

ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
            "F64": 8, "I64": 8, "U64": 8}
VERIFY_CHUNK = 1 << 26  # bytes read at a time when checking what was written


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a shard: name, shape, safetensors dtype ("BF16", "I32", ...)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def layout(metadata: Mapping[str, str], tensors: Sequence[TensorEntry]) -> tuple[bytes, dict[str, int], int]:
    """(header bytes including the length prefix; each tensor's absolute file offset; total file size)."""
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise BadInput(f"tensor {dup!r} is planned twice")
    for t in tensors:
        if t.dtype not in ITEMSIZE:
            raise BadInput(f"tensor {t.name!r}: dtype {t.dtype!r} is not a safetensors dtype")
        if any(d < 0 for d in t.shape):
            raise BadInput(f"tensor {t.name!r}: negative dimension in shape {t.shape}")
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in metadata.items()):
        raise BadInput("safetensors __metadata__ must map strings to strings")
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offsets, off = {}, 0
    for t in sorted(tensors, key=lambda t: (-ITEMSIZE[t.dtype], t.name)):
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        offsets[t.name] = off
        off += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    start = 8 + len(text)
    return struct.pack("<Q", len(text)) + text, {n: start + o for n, o in offsets.items()}, start + off


def as_bytes(a) -> memoryview:
    """A numpy array (any dtype), bytes or bytearray as a flat byte view."""
    if isinstance(a, (bytes, bytearray, memoryview)):
        return memoryview(a).cast("B")
    return memoryview(np.ascontiguousarray(a)).cast("B")


def write(
    path: Path,
    metadata: Mapping[str, str],
    tensors: Sequence[TensorEntry],
    chunks: Iterable[tuple[str, object]],
    progress=None,
) -> Path:
    """Write a safetensors file at `path`. `chunks` yields (tensor name, bytes or array) pairs: each
    tensor's bytes in order, in one or more pieces, tensors in any order (interleaving allowed);
    together they must fill every tensor exactly. `progress` (a tqdm bar or None) is advanced by bytes."""
    path = Path(path)
    header, starts, total = layout(metadata, tensors)
    by_name = {t.name: t for t in tensors}
    done = {t.name: 0 for t in tensors}
    digests = {t.name: hashlib.sha256() for t in tensors}

    def check(tmp: Path) -> None:
        verify(tmp, header, tensors, starts, total, {n: d.digest() for n, d in digests.items()})

    with atomic_file(path, verify=check) as f:
        f.write(header)
        f.truncate(total)
        for name, piece in chunks:
            if name not in by_name:
                raise BadInput(f"{path.name}: data produced for tensor {name!r}, which is not in the plan")
            buf = as_bytes(piece)
            t = by_name[name]
            if done[name] + buf.nbytes > t.nbytes:
                raise BadInput(f"tensor {name!r}: encoder returned more than the {t.nbytes} bytes the plan says "
                               f"({t.dtype} {t.shape})")
            f.seek(starts[name] + done[name])
            f.write(buf)
            digests[name].update(buf)
            done[name] += buf.nbytes
            if progress is not None:
                progress.update(buf.nbytes)
            del piece, buf
        short = [n for n, t in by_name.items() if done[n] != t.nbytes]
        if short:
            t = by_name[short[0]]
            raise BadInput(f"tensor {t.name!r}: encoder returned {done[t.name]} bytes, the plan says {t.nbytes} "
                           f"({t.dtype} {t.shape})")
    return path


def verify(tmp: Path, header: bytes, tensors: Sequence[TensorEntry], starts: Mapping[str, int], total: int,
           digests: Mapping[str, bytes]) -> None:
    """Re-open the written file and check it against the plan: size, header, what safetensors itself
    reads (names, dtypes, shapes) and every tensor's bytes (SHA-256)."""
    from safetensors import safe_open

    size = tmp.stat().st_size
    if size != total:
        raise IOFailure(f"{tmp}: wrote {size} bytes, expected {total}")
    with open(tmp, "rb") as f:
        if f.read(len(header)) != header:
            raise IOFailure(f"{tmp}: header read back differs from the one written")
    try:
        with safe_open(str(tmp), framework="numpy") as h:
            got = set(h.keys())
            if got != {t.name for t in tensors}:
                raise IOFailure(f"{tmp}: tensor names read back differ from those written")
            for t in tensors:
                sl = h.get_slice(t.name)
                if sl.get_dtype() != t.dtype or tuple(sl.get_shape()) != t.shape:
                    raise IOFailure(f"{tmp}: tensor {t.name!r} reads back as {sl.get_dtype()} {sl.get_shape()}, "
                                    f"expected {t.dtype} {t.shape}")
    except IOFailure:
        raise
    except Exception as e:  # SafetensorError
        raise IOFailure(f"{tmp}: safetensors cannot read the written file ({e})") from e
    with open(tmp, "rb") as f:
        for t in tensors:
            f.seek(starts[t.name])
            d, left = hashlib.sha256(), t.nbytes
            while left:
                block = f.read(min(left, VERIFY_CHUNK))
                if not block:
                    raise IOFailure(f"{tmp}: tensor {t.name!r} is truncated")
                d.update(block)
                left -= len(block)
            if d.digest() != digests[t.name]:
                raise IOFailure(f"{tmp}: tensor {t.name!r} bytes read back differ from those written (checksum)")

