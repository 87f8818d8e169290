"""The run's tensor table: every tensor of the source as the build stores it, built once per source
(`source.table`) and read by the plan, the llama.cpp recipes, the allocator, GPTQ and the writers.

    row = source.table["layers.0.mlp.down_proj.weight"]
    row.gguf, row.shape, row.fixed, row.group      # blk.0.ffn_down.weight, (640, 2048), None, "mlp"
    w = source.table.read(row.name)                # float32, as stored (the embedding's OOV rows trimmed)

The rules that live here and nowhere else:
  * never quantized (`fixed`): what llama.cpp's converter always writes as F32 (conversion/base.py
    prepare_tensors): 1-D tensors, `*_norm.weight`, the MoE router `ffn_gate_inp.weight`, and names not ending
    `.weight` (the `.scale` tensors). No plan may give them another type.
  * what llama-quantize leaves in its float type besides those (`llama_quantizes`, llama-quant.cpp
    tensor_allows_quantization): `per_layer_model_proj`, `altup`, `laurel`.
  * the row trim: a Hugging Face source's `embed_tokens` rows beyond the tokenizer's vocabulary are dropped, as
    the converter does.
The type fallback for rows a block does not divide is kernels.registry.fallback_type (llama-quant.cpp
tensor_type_fallback), given `row.cols`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from quantkit.errors import UnsupportedModel
from quantkit.formats import gguf_vocab, names
from quantkit.formats.gguf_source import GGUFSource
from quantkit.formats.source import TensorInfo, TensorSource

_LLAMA_QUANTIZE_SKIPS = ("per_layer_model_proj", "altup", "laurel")


def kept_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama.cpp's converter always writes this tensor as F32 (see the module doc)."""
    return (len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight")
            or re.fullmatch(r"blk\.\d+\.ffn_gate_inp\.weight", gguf_name) is not None)


@dataclass(frozen=True)
class TensorRow:
    name: str  # canonical
    gguf: str  # llama.cpp's name
    shape: tuple[int, ...]  # as stored in the build: PyTorch order, the embedding's OOV rows trimmed
    dtype: str  # the source's storage type ("BF16", "F32", "Q4_K", ...)
    group: str  # names.GROUPS
    fixed: str | None  # "F32" for a tensor that is never quantized, None for a quantizable one
    llama_quantizes: bool  # llama-quantize quantizes it (tensor_allows_quantization)

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape))


class TensorTable:
    """canonical name -> TensorRow, in the source's order."""

    def __init__(self, rows: dict[str, TensorRow], source: TensorSource | None = None):
        self.rows = rows
        self.source = source

    @classmethod
    def of(cls, source: TensorSource) -> "TensorTable":
        """The table of a source (use `source.table`, which builds it once)."""
        return cls.from_infos(source.infos, _embed_rows(source), source)

    @classmethod
    def from_infos(cls, infos: Mapping[str, TensorInfo], embed_rows: int | None = None,
                   source: TensorSource | None = None) -> "TensorTable":
        rows = {}
        for canon, info in infos.items():
            gname = names.to_gguf(canon)
            if gname is None:
                where = source.path if source is not None else "model"
                raise UnsupportedModel(f"{where}: tensor {info.file_name!r} has no llama.cpp GGUF name")
            shape = tuple(info.shape)
            if canon == "embed_tokens.weight" and embed_rows is not None:
                shape = (embed_rows, *shape[1:])
            fixed = "F32" if kept_f32(gname, shape) else None
            rows[canon] = TensorRow(canon, gname, shape, info.dtype, names.group_of(canon), fixed,
                                    fixed is None and not any(k in gname for k in _LLAMA_QUANTIZE_SKIPS))
        return cls(rows, source)

    def __getitem__(self, name: str) -> TensorRow:
        return self.rows[name]

    def __contains__(self, name: object) -> bool:
        return name in self.rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def values(self):
        return self.rows.values()

    def items(self):
        return self.rows.items()

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32, as the build stores it (the one place the row trim is applied to data)."""
        w = self.source.get(name)
        rows = self.rows[name].shape[0]
        return w[:rows] if w.shape[0] != rows else w


def _embed_rows(source: TensorSource) -> int | None:
    """Rows of embed_tokens after the converter's OOV trim (Hugging Face sources only)."""
    if isinstance(source, GGUFSource) or "embed_tokens.weight" not in source.infos:
        return None
    rows = source.infos["embed_tokens.weight"].shape[0]
    n = gguf_vocab.vocab_size(source.path)
    return n if n < rows else None
