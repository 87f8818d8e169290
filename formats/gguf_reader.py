"""A GGUF reader that trusts nothing: every count, length, type and offset in
the header is checked against the file before anything is allocated, and the
tensor data is mmapped, never read whole.

Layout (GGUF v2/v3, little-endian; ggml docs/gguf.md):
    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv  x  (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding to `general.alignment` (default 32) | tensor data
A string is u64 length + UTF-8 bytes; an array is u32 item_type + u64 count + items.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from quantkit.errors import BadFile

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# GGUF value types -> (struct format, size); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: GGMLQuantizationType
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """PyTorch order (reverse of ne)."""
        return tuple(reversed(self.ne))


class GGUFFile:
    """Parsed header + mmapped data of one GGUF file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
            size = self.path.stat().st_size
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            self._stamp = file_stamp(self._fh.fileno())
        except OSError as e:
            raise BadFile(f"{self.path}: cannot open ({e.strerror})") from e
        self.size = size
        self._pos = 0
        self._parse()

    # -- primitive readers, each bounds-checked ------------------------------------
    def _need(self, n: int, what: str) -> None:
        if n < 0 or self._pos + n > self.size:
            raise BadFile(f"{self.path}: truncated at byte {self._pos} while reading {what} (needs {n} bytes, file has {self.size})")

    def _scalar(self, vtype: int, what: str):
        fmt = _SCALARS[vtype]
        n = struct.calcsize(fmt)
        self._need(n, what)
        v = struct.unpack_from(fmt, self._mm, self._pos)[0]
        self._pos += n
        return v

    def _string(self, what: str) -> str:
        n = self._scalar(10, f"length of {what}")
        self._need(n, what)
        raw = bytes(self._mm[self._pos : self._pos + n])
        self._pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def _value(self, vtype: int, key: str):
        if vtype in _SCALARS:
            return self._scalar(vtype, f"value of {key!r}")
        if vtype == STRING:
            return self._string(f"value of {key!r}")
        if vtype == ARRAY:
            itype = self._scalar(4, f"item type of {key!r}")
            count = self._scalar(10, f"item count of {key!r}")
            if itype in _NP:
                nbytes = count * np.dtype(_NP[itype]).itemsize
                self._need(nbytes, f"array {key!r} ({count} items)")
                arr = np.frombuffer(self._mm, dtype=_NP[itype], count=count, offset=self._pos).copy()
                self._pos += nbytes
                return arr.astype(bool) if itype == 7 else arr
            if itype == STRING:
                # each item needs at least its 8-byte length: reject absurd counts before looping
                self._need(count * 8, f"array {key!r} ({count} strings)")
                return [self._string(f"item {i} of {key!r}") for i in range(count)]
            raise BadFile(f"{self.path}: metadata {key!r} is an array of unsupported type {itype}")
        raise BadFile(f"{self.path}: metadata {key!r} has unknown value type {vtype}")

    def _parse(self) -> None:
        self._need(4, "magic")
        if bytes(self._mm[0:4]) != MAGIC:
            raise BadFile(f"{self.path}: not a GGUF file (magic {bytes(self._mm[0:4])!r}, expected b'GGUF')")
        self._pos = 4
        self.version = self._scalar(4, "version")
        if self.version not in (2, 3):
            raise BadFile(f"{self.path}: GGUF version {self.version} is not supported (expected 2 or 3)")
        n_tensors = self._scalar(10, "tensor count")
        n_kv = self._scalar(10, "metadata count")
        # every kv needs >= 12 bytes and every tensor info >= 28: bound counts by the file size
        if n_kv * 12 + n_tensors * 28 > self.size:
            raise BadFile(f"{self.path}: header claims {n_tensors} tensors and {n_kv} metadata keys, more than the file's "
                          f"{self.size} bytes can hold (truncated or corrupt)")
        self.metadata: dict = {}
        self.value_types: dict[str, tuple[int, int | None]] = {}  # key -> (value type, array item type)
        for _ in range(n_kv):
            key = self._string("metadata key")
            vtype = self._scalar(4, f"type of {key!r}")
            if key in self.metadata:
                raise BadFile(f"{self.path}: metadata key {key!r} appears twice")
            itype = None
            if vtype == ARRAY:
                self._need(4, f"item type of {key!r}")
                itype = struct.unpack_from("<I", self._mm, self._pos)[0]
            self.metadata[key] = self._value(vtype, key)
            self.value_types[key] = (vtype, itype)
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise BadFile(f"{self.path}: general.alignment is {alignment!r}; expected a power of two")
        infos = []
        for _ in range(n_tensors):
            name = self._string("tensor name")
            n_dims = self._scalar(4, f"n_dims of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise BadFile(f"{self.path}: tensor {name!r} has {n_dims} dimensions (expected 1..{MAX_DIMS})")
            ne = tuple(self._scalar(10, f"dimension of {name!r}") for _ in range(n_dims))
            tcode = self._scalar(4, f"type of {name!r}")
            offset = self._scalar(10, f"offset of {name!r}")
            infos.append((name, ne, tcode, offset))
        data_start = -(-self._pos // alignment) * alignment
        self.data_offset = data_start
        self.tensors: dict[str, GGUFTensor] = {}
        spans = []
        for name, ne, tcode, offset in infos:
            try:
                gtype = GGMLQuantizationType(tcode)
                block, type_size = GGML_QUANT_SIZES[gtype]
            except (ValueError, KeyError):
                raise BadFile(f"{self.path}: tensor {name!r} has unknown ggml type {tcode}") from None
            if any(d <= 0 for d in ne):
                raise BadFile(f"{self.path}: tensor {name!r} has a zero or negative dimension {ne}")
            if ne[0] % block:
                raise BadFile(f"{self.path}: tensor {name!r} row length {ne[0]} is not a multiple of {gtype.name}'s block size {block}")
            n_el = int(np.prod(ne, dtype=object))
            nbytes = n_el // block * type_size
            if offset % alignment:
                raise BadFile(f"{self.path}: tensor {name!r} offset {offset} is not aligned to {alignment}")
            start = data_start + offset
            if start + nbytes > self.size:
                raise BadFile(
                    f"{self.path}: tensor {name!r} ends at byte {start + nbytes}, past the end of the file ({self.size} bytes); truncated?"
                )
            if name in self.tensors:
                raise BadFile(f"{self.path}: tensor {name!r} appears twice")
            self.tensors[name] = GGUFTensor(name, gtype, ne, start, nbytes)
            spans.append((start, start + nbytes, name))
        spans.sort()
        for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise BadFile(f"{self.path}: tensors {n0!r} and {n1!r} overlap in the file")

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mmap."""
        t = self.tensors[name]
        check_unchanged(self.path, self._stamp, file_stamp(self._fh.fileno()))
        return np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        self._fh.close()


def file_stamp(file: Path | int) -> tuple[int, int]:
    """(size, mtime in ns) of a path or an open descriptor."""
    try:
        st = os.stat(file)
    except OSError as e:
        raise BadFile(f"{file}: cannot read ({e.strerror})") from e
    return st.st_size, st.st_mtime_ns


def check_unchanged(path: Path, opened: tuple[int, int], now: tuple[int, int]) -> None:
    """A file truncated under an mmap kills the reader with SIGBUS on the next page it touches, and one
    rewritten in place yields a build mixing two models: look before every tensor is read."""
    if now != opened:
        raise BadFile(f"{path}: changed on disk while quantkit was reading it ({opened[0]} bytes when opened, "
                      f"{now[0]} now); restore the file and run again")
