"""compressed-tensors' "pack-quantized" layout of one Linear weight (compressed_tensors/compressors/pack_quantized):

    <m>.weight_packed      int32 [out, ceil(in·b/32)]   codes + 2^(b-1), element i at bits i·b.. (little-endian)
    <m>.weight_scale       source dtype [out, in/group] ([out, 1] per channel)
    <m>.weight_zero_point  int32 [ceil(out·b/32), groups], packed the same way along dim 0 (asymmetric only)
    <m>.weight_shape       int64 [2] = [out, in]

It decodes to w = (q - zp) · scale, computed in the dtype the scale has when it is applied (compressed-tensors
`_dequantize`): the stored dtype in the library's decompress (`stored_values` gives exactly those numbers), the
model's dtype after transformers' default load (in fp32 that is group_dequantize's exact product). Codes and scales
come from kernels/group.py, scales rounded to the storage dtype before the codes are chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from quantkit.errors import BadInput
from quantkit.kernels import group

CT_FORMAT = "pack-quantized"
CT_VERSION = "0.20.0"  # the compressed-tensors release whose layout and config schema this follows
BITS = (2, 4, 8)  # 3-bit packing changed in compressed-tensors 0.20 (PR #715); 2/4/8 read the same in every release
SCALE_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
TORCH_DTYPE = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


@dataclass(frozen=True)
class IntScheme:
    """Weight-only integer quantization of one tensor: b-bit codes, one scale (and zero point) per group
    of `group_size` weights along the row, or per output channel with group_size -1."""

    bits: int
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self):
        if self.bits not in BITS:
            raise BadInput(f"{self.bits}-bit pack-quantized weights are not supported; use one of {BITS}")
        if self.group_size not in group.SUPPORTED_GROUPS:
            raise BadInput(f"group size {self.group_size} is not supported; use one of {group.SUPPORTED_GROUPS}")

    @property
    def label(self) -> str:
        g = "channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits}-{g}" + ("" if self.symmetric else "-asym")

    def weights_args(self) -> dict:
        """The `weights` entry of a config group (compressed-tensors QuantizationArgs)."""
        return {"num_bits": self.bits, "type": "int", "symmetric": self.symmetric,
                "strategy": "channel" if self.group_size == -1 else "group",
                "group_size": self.group_size, "actorder": None, "dynamic": False,
                "block_structure": None, "scale_dtype": None, "zp_dtype": None}

    def n_groups(self, cols: int) -> int:
        return 1 if self.group_size == -1 else cols // self.group_size


# ---------------------------------------------------------------- the int32 packing


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed b-bit codes [rows, cols] (int8) -> int32 [rows, ceil(cols·b/32)]: code + 2^(b-1) of element j
    at bits (j·b) mod 32 of word (j·b) div 32, little-endian (compressed-tensors `pack_to_int32`, b | 32)."""
    if bits not in BITS:
        raise BadInput(f"cannot pack {bits}-bit codes; use one of {BITS}")
    rows, cols = codes.shape
    per = 32 // bits
    u = (codes.astype(np.int32) + (1 << (bits - 1))).astype(np.uint32)
    pad = -cols % per
    if pad:
        u = np.pad(u, ((0, 0), (0, pad)))
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    words = np.bitwise_or.reduce(u.reshape(rows, -1, per) << shifts, axis=2)
    return np.ascontiguousarray(words.astype(np.uint32).view(np.int32))


def unpack_int32(words: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Inverse of pack_int32: int32 [rows, words] -> int8 codes [rows, cols]."""
    per = 32 // bits
    u = words.view(np.uint32)[:, :, None] >> (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    u = (u & np.uint32((1 << bits) - 1)).reshape(words.shape[0], -1)[:, :cols]
    return (u.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)


def pack_zero_points(zps: np.ndarray, bits: int) -> np.ndarray:
    """Zero points [rows, groups] packed along dim 0 -> int32 [ceil(rows·b/32), groups]."""
    return np.ascontiguousarray(pack_int32(np.ascontiguousarray(zps.T), bits).T)


def stored_values(gq: group.GroupQuant, dtype: str) -> np.ndarray:
    """The weights a runtime decodes from the stored tensors, as float32: (q - zp) · scale evaluated in the
    scale's dtype (the float32 product of a 9-bit integer and a bf16/fp16 scale is exact, so this is the
    float32 result rounded once to that dtype)."""
    return torch.from_numpy(group.group_dequantize(gq)).to(TORCH_DTYPE[dtype]).float().numpy()


def fit_group(cols: int, group_size: int) -> int:
    """`group_size` if it divides the row, else the largest smaller supported group that does, else -1 (one
    group per output channel)."""
    if group_size == -1:
        return -1
    for g in sorted((g for g in group.SUPPORTED_GROUPS if 0 < g <= group_size), reverse=True):
        if cols % g == 0:
            return g
    return -1


def config_group(qcfg: dict | None, module: str) -> dict | None:
    """The `quantization_config` group that covers `module` (a file-name module path), as compressed-tensors
    matches: exact names before `re:` patterns (matched at the start) before class names, which cannot be checked
    without the model and so match any module; None if no group does."""
    ranked = []
    for g in ((qcfg or {}).get("config_groups") or {}).values():
        for t in (g.get("targets") or []) if isinstance(g, dict) else []:
            if t == module:
                ranked.append((0, g))
            elif t.startswith("re:") and re.match(t[3:], module):
                ranked.append((1, g))
            elif not t.startswith("re:") and "." not in t:
                ranked.append((2, g))
    return min(ranked, key=lambda r: r[0])[1] if ranked else None
