"""A streaming GGUF writer: the header, metadata and tensor infos go out first
(every tensor's size is known from its planned type), then the tensor data one
tensor at a time (the largest in chunks of rows), so peak memory is about one
encoded tensor or chunk.

Layout (GGUF v3, little-endian; the same one formats.gguf_reader parses):
    magic | u32 version | u64 n_tensors | u64 n_kv | kv pairs | tensor infos
    | zero padding to the alignment | each tensor's bytes, zero-padded to the alignment
Offsets in the tensor infos are relative to the start of the data section.

Safety (formats.atomic): the file is written under a temporary name in the
destination folder, fsynced, re-opened with GGUFFile and checked (tensor count,
names, shapes, types, byte ranges, a SHA-256 of each tensor's bytes taken while
writing), and only then renamed over the destination. Any failure, an interrupt
included, removes the temporary file and leaves the destination untouched.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from gguf.constants import GGUFValueType

from quantkit.errors import BadInput, IOFailure, QuantkitError
from quantkit.formats.atomic import atomic_file
from quantkit.formats.gguf_reader import MAGIC, GGUFFile
from quantkit.kernels import registry

VERSION = 3
DEFAULT_ALIGNMENT = 32

_SCALAR_FMT = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_ARRAY_DTYPE = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class Value:
    """A typed metadata value. For arrays, `item_type` is the element type."""

    type: GGUFValueType
    value: Any
    item_type: GGUFValueType | None = None


def u32(v: int) -> Value:
    return Value(GGUFValueType.UINT32, int(v))


def f32(v: float) -> Value:
    return Value(GGUFValueType.FLOAT32, float(v))


def boolean(v: bool) -> Value:
    return Value(GGUFValueType.BOOL, bool(v))


def string(v: str) -> Value:
    return Value(GGUFValueType.STRING, str(v))


def array(values: Iterable, item_type: GGUFValueType) -> Value:
    return Value(GGUFValueType.ARRAY, list(values) if item_type == GGUFValueType.STRING else np.asarray(values), item_type)


def collected(writer) -> dict[str, Value]:
    """The metadata a gguf-py GGUFWriter (used as a collector, path=None) has gathered, as Values in its order:
    its add_* methods name the keys and types as llama.cpp's converter writes them."""
    out: dict[str, Value] = {}
    for key, v in writer.kv_data[0].items():
        if v.type == GGUFValueType.ARRAY:
            items = list(v.value)
            it = v.sub_type or (GGUFValueType.get_type(items[0]) if items else GGUFValueType.STRING)
            out[key] = array(items, it) if it == GGUFValueType.STRING else Value(v.type, np.asarray(items), it)
        else:
            out[key] = Value(v.type, v.value)
    return out


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(key: str, v: Value) -> bytes:
    if v.type == GGUFValueType.STRING:
        return _pack_string(v.value)
    if v.type in _SCALAR_FMT:
        return struct.pack(_SCALAR_FMT[v.type], v.value)
    if v.type == GGUFValueType.ARRAY:
        it = v.item_type
        head = struct.pack("<IQ", int(it), len(v.value))
        if it == GGUFValueType.STRING:
            return head + b"".join(_pack_string(s) for s in v.value)
        if it in _ARRAY_DTYPE:
            a = np.asarray(v.value)
            if it == GGUFValueType.BOOL:
                a = a.astype(bool)
            return head + np.ascontiguousarray(a, dtype=_ARRAY_DTYPE[it]).tobytes()
        raise BadInput(f"metadata {key!r}: arrays of type {it!r} are not supported")
    raise BadInput(f"metadata {key!r}: value type {v.type!r} is not supported")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the plan: GGUF name, numpy-order shape, ggml type name."""

    name: str
    shape: tuple[int, ...]
    type_name: str

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def ggml_type(self):
        return registry.get(self.type_name).ggml_type

    @property
    def nbytes(self) -> int:
        return registry.tensor_nbytes(self.type_name, self.shape)


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def layout(metadata: Mapping[str, Value], tensors: Sequence[TensorEntry]) -> tuple[bytes, list[int], int]:
    """(header bytes up to the data section, padded; each tensor's offset in the data section; total file size)."""
    alignment = _alignment(metadata)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise BadInput(f"tensor {dup!r} is planned twice")
    out = bytearray(MAGIC + struct.pack("<IQQ", VERSION, len(tensors), len(metadata)))
    for key, v in metadata.items():
        if not isinstance(v, Value):
            raise BadInput(f"metadata {key!r}: expected a gguf_writer.Value, got {type(v).__name__}")
        out += _pack_string(key) + struct.pack("<I", int(v.type)) + _pack_value(key, v)
    offsets, off = [], 0
    for t in tensors:
        if not 1 <= len(t.shape) <= 4 or any(d <= 0 for d in t.shape):
            raise BadInput(f"tensor {t.name!r}: shape {t.shape} cannot be stored in GGUF")
        offsets.append(off)
        out += _pack_string(t.name) + struct.pack("<I", len(t.ne))
        out += struct.pack(f"<{len(t.ne)}Q", *t.ne) + struct.pack("<IQ", int(t.ggml_type), off)
        off += _pad(t.nbytes, alignment)
    header = bytes(out) + b"\0" * (_pad(len(out), alignment) - len(out))
    return header, offsets, len(header) + off


def _alignment(metadata: Mapping[str, Value]) -> int:
    v = metadata.get("general.alignment")
    a = DEFAULT_ALIGNMENT if v is None else int(v.value)
    if a <= 0 or a & (a - 1) or (v is not None and v.type != GGUFValueType.UINT32):
        raise BadInput(f"general.alignment must be a power of two stored as UINT32, got {v!r}")
    return a


def write(
    path: Path,
    metadata: Mapping[str, Value],
    tensors: Sequence[TensorEntry],
    encode: Callable[[TensorEntry], np.ndarray | bytes],
    progress: bool = False,
) -> Path:
    """Write a GGUF file at `path`. `encode(entry)` returns that tensor's bytes (exactly
    `entry.nbytes`), as one array or an iterable of consecutive chunks (a tensor too large to
    hold at once); it is called once per tensor, in order."""
    path = Path(path)
    alignment = _alignment(metadata)
    header, offsets, total = layout(metadata, tensors)
    digests: list[bytes] = []

    def check(tmp: Path) -> None:
        _verify(tmp, metadata, tensors, offsets, len(header), total, digests)

    with atomic_file(path, verify=check) as f:
        f.write(header)
        bar = _progress(sum(t.nbytes for t in tensors), path, progress)
        try:
            for t in tensors:
                data = encode(t)
                chunks = [data] if isinstance(data, (bytes, np.ndarray)) else data
                digest, written = hashlib.sha256(), 0
                for chunk in chunks:
                    buf = memoryview(np.ascontiguousarray(np.frombuffer(chunk, np.uint8) if isinstance(chunk, bytes) else chunk)).cast("B")
                    written += buf.nbytes
                    if written > t.nbytes:
                        break
                    digest.update(buf)
                    f.write(buf)
                    bar.update(buf.nbytes)
                    del chunk, buf
                if written != t.nbytes:
                    raise BadInput(f"tensor {t.name!r}: encoder returned {written} bytes, the plan says {t.nbytes} ({t.type_name} {t.shape})")
                digests.append(digest.digest())
                f.write(b"\0" * (_pad(t.nbytes, alignment) - t.nbytes))
                del data, chunks
        finally:
            bar.close()
    return path


def _verify(tmp: Path, metadata, tensors, offsets, data_start, total, digests) -> None:
    size = tmp.stat().st_size
    if size != total:
        raise IOFailure(f"{tmp}: wrote {size} bytes, expected {total}")
    try:
        f = GGUFFile(tmp)
    except QuantkitError as e:
        raise IOFailure(f"{tmp}: the written file does not read back ({e})") from e
    try:
        if list(f.metadata) != list(metadata):
            raise IOFailure(f"{tmp}: metadata keys read back differ from those written")
        got = list(f.tensors.values())
        if [t.name for t in got] != [t.name for t in tensors]:
            raise IOFailure(f"{tmp}: tensor names read back differ from those written")
        if f.data_offset != data_start:
            raise IOFailure(f"{tmp}: data section starts at {f.data_offset}, expected {data_start}")
        for t, g, off, digest in zip(tensors, got, offsets, digests):
            if g.ne != t.ne or g.ggml_type != t.ggml_type or g.offset != data_start + off or g.nbytes != t.nbytes:
                raise IOFailure(f"{tmp}: tensor {t.name!r} reads back as {g.ggml_type.name} {g.ne} at {g.offset}+{g.nbytes}")
            if hashlib.sha256(f.raw(t.name)).digest() != digest:
                raise IOFailure(f"{tmp}: tensor {t.name!r} bytes read back differ from those written (checksum)")
    finally:
        f.close()


def _progress(total: int, path: Path, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {path.name}", disable=not enabled, leave=False)
