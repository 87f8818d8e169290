"""A compressed-tensors "pack-quantized" checkpoint directory (what `quantkit compress --format safetensors` writes,
and llm-compressor's W4A16 / W8A16 builds) read back as a TensorSource, so that such a build can be evaluated and
inspected like a GGUF one.

Each quantized Linear `<m>.weight` is stored as `<m>.weight_packed`, `<m>.weight_scale`, optionally
`<m>.weight_zero_point`, and `<m>.weight_shape` (formats.pack_quantized); this source shows it under its canonical
name with its real shape and decodes it to the values a runtime computes: (q - zp) · scale, rounded to the scale's
dtype (pack_quantized.stored_values). Its TensorInfo.dtype is the scheme's label ("int4-g128"), nbytes the bytes of
its stored parts. Everything else reads as in formats.hf_source.

The scheme of each module comes from config.json's `quantization_config` (formats.pack_quantized.config_group);
its bits and group size must agree with the stored shapes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from quantkit.errors import BadConfig, BadFile
from quantkit.formats.hf_source import RAW_DTYPES, HFSource, canonical_name, float32
from quantkit.formats.pack_quantized import (BITS, CT_FORMAT, SCALE_DTYPE, IntScheme, config_group, stored_values,
                                             unpack_int32)
from quantkit.formats.source import TensorInfo
from quantkit.kernels.group import GroupQuant

PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def is_pack_quantized(config) -> bool:
    """Whether a parsed config.json describes a pack-quantized compressed-tensors checkpoint."""
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors" and qc.get("format") == CT_FORMAT


class PackQuantizedSource(HFSource):
    def __init__(self, directory: Path):
        self._parts: dict[str, dict[str, tuple[str, Path]]] = {}  # canonical weight -> part -> (file name, shard)
        super().__init__(directory)
        self._schemes = {canon: self._module_info(canon, parts) for canon, parts in self._parts.items()}

    def _admit(self, file_name: str, shard: Path) -> None:
        module, _, part = file_name.rpartition(".")
        if part not in PARTS:
            return super()._admit(file_name, shard)
        canon = canonical_name(module + ".weight")
        if canon is None:
            self.skipped["towers"] += 1
            return
        if self._unused(canon, file_name):
            return
        if canon not in self._parts:  # its place in file order, filled in by _module_info
            self._parts[canon] = {}
            self.infos[canon] = None
        self._parts[canon][part] = (file_name, shard)

    def _module_info(self, canon: str, parts: dict[str, tuple[str, Path]]) -> tuple[IntScheme, str]:
        """Fills in the module's TensorInfo (its real shape, the scheme's label, the stored bytes), after checking
        that the stored tensors are the ones the configured scheme writes; returns (scheme, the scales' dtype)."""
        module = canon.removesuffix(".weight")
        for need in ("weight_packed", "weight_scale", "weight_shape"):
            if need not in parts:
                raise BadFile(f"{next(iter(parts.values()))[1]}: module {module!r} has no {need} tensor")
        shapes, dtypes = {}, {}
        for p, (n, s) in parts.items():
            sl = self._slice(s, n)
            shapes[p], dtypes[p] = tuple(int(d) for d in sl.get_shape()), sl.get_dtype()
        name, shard = parts["weight_shape"]
        if shapes["weight_shape"] != (2,) or dtypes["weight_shape"] not in ("I32", "I64"):
            raise BadFile(f"{shard}: tensor {name!r} is {dtypes['weight_shape']} {shapes['weight_shape']}; "
                          "expected the weight's 2-D shape as I64 [2]")
        shape = tuple(int(d) for d in self._pread_raw(shard, name, 0, 2))
        file_name = parts["weight_packed"][0].removesuffix("_packed")
        shape = self._check_shape(parts["weight_packed"][1], file_name, canon, shape)
        scheme = self._scheme(file_name.removesuffix(".weight"), shape, shapes["weight_scale"])
        if dtypes["weight_scale"] not in SCALE_DTYPE:
            raise BadFile(f"{parts['weight_scale'][1]}: tensor {parts['weight_scale'][0]!r} has dtype "
                          f"{dtypes['weight_scale']}; expected one of {', '.join(SCALE_DTYPE)}")
        expected = {"weight_packed": ("I32", (shape[0], math.ceil(shape[1] * scheme.bits / 32))),
                    "weight_scale": (dtypes["weight_scale"], (shape[0], scheme.n_groups(shape[1]))),
                    "weight_shape": (dtypes["weight_shape"], (2,))}
        if not scheme.symmetric:
            expected["weight_zero_point"] = ("I32", (math.ceil(shape[0] * scheme.bits / 32), scheme.n_groups(shape[1])))
        for p in sorted(set(parts) | set(expected)):
            if p not in parts:
                raise BadFile(f"{parts['weight_packed'][1]}: module {module!r} has no {p} tensor ({scheme.label})")
            if p not in expected or (dtypes[p], shapes[p]) != expected[p]:
                want = " ".join(map(str, expected[p])) if p in expected else "no such tensor"
                raise BadFile(f"{parts[p][1]}: tensor {parts[p][0]!r} is {dtypes[p]} {shapes[p]}; {scheme.label} of "
                              f"a {shape} weight has {want}")
        nbytes = sum(math.prod(shapes[p]) * RAW_DTYPES[dtypes[p]].itemsize for p in parts)
        self.infos[canon] = TensorInfo(canon, shape, scheme.label, nbytes, file_name)
        return scheme, dtypes["weight_scale"]

    def _scheme(self, module: str, shape: tuple[int, int], scale_shape: tuple[int, ...]) -> IntScheme:
        """The config group that covers `module`, as an IntScheme that must fit the stored scales."""
        config = self.path / "config.json"
        g = config_group(self.config["quantization_config"], module)
        if g is None:
            raise BadConfig(f"{config}: no quantization_config group targets module {module!r}")
        w = g.get("weights") or {}
        bits, group_size = w.get("num_bits"), w.get("group_size")
        if w.get("type", "int") != "int" or bits not in BITS:
            raise BadConfig(f"{config}: module {module!r}: weights {w.get('type')} {bits}-bit; quantkit reads int "
                            f"{'/'.join(map(str, BITS))}-bit pack-quantized weights")
        if w.get("strategy") == "channel" or group_size in (None, -1):
            group_size = -1
        elif not isinstance(group_size, int) or group_size <= 0 or shape[1] % group_size \
                or scale_shape[1:] != (shape[1] // group_size,):
            raise BadFile(f"{config}: module {module!r} {shape} does not have scales of group size {group_size}")
        return IntScheme(bits, group_size, bool(w.get("symmetric", True)))

    def _read(self, info: TensorInfo) -> np.ndarray:
        if info.name not in self._schemes:
            return super()._read(info)
        return self._decode(info, 0, info.shape[0])

    def _read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        if info.name not in self._schemes:
            return super()._read_rows(info, start, stop)
        return self._decode(info, start, stop)

    def _decode(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a quantized weight: the values compressed-tensors decompresses them to."""
        (s, scale_dtype), parts = self._schemes[info.name], self._parts[info.name]
        packed = self._pread_raw(parts["weight_packed"][1], parts["weight_packed"][0], start, stop)
        raw_scale = self._pread_raw(parts["weight_scale"][1], parts["weight_scale"][0], start, stop)
        scales = float32(raw_scale)
        zps = None
        if not s.symmetric:
            name, shard = parts["weight_zero_point"]
            words = self._pread_raw(shard, name, 0, math.ceil(info.shape[0] * s.bits / 32))
            zps = np.ascontiguousarray(unpack_int32(np.ascontiguousarray(words.T), s.bits, info.shape[0]).T[start:stop])
        gq = GroupQuant(unpack_int32(packed, s.bits, info.shape[1]), scales, zps, s.bits, s.group_size, s.symmetric)
        return stored_values(gq, scale_dtype)

