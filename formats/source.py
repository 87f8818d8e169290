"""TensorSource: lazy access to a model's weights, one tensor in memory at a time.

Every source speaks quantkit's canonical names (formats.names) and returns
float32 arrays in PyTorch orientation with canonical semantics (RMSNorm weights
as effective multipliers), whatever the file stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantkit.calibration.tokenizer import TextTokenizer
from quantkit.errors import BadInput
from quantkit.models.spec import ModelSpec


@dataclass(frozen=True)
class TensorInfo:
    name: str  # canonical
    shape: tuple[int, ...]  # PyTorch order: [out, in]
    dtype: str  # storage type as written in the file: "BF16", "F32", "Q4_K", ...
    nbytes: int  # bytes in the file
    file_name: str  # the name inside the file


class TensorSource(ABC):
    spec: ModelSpec
    path: Path
    infos: dict[str, TensorInfo]  # canonical name -> info, in file order

    def names(self) -> list[str]:
        return list(self.infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise BadInput(f"{self.path}: tensor {name!r} is missing") from None

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (dequantized / upcast), shape `info(name).shape`."""
        info = self.info(name)
        a = self._read(info)
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            raise BadInput(f"{self.path}: tensor {info.file_name!r} has a non-finite value at index {tuple(int(i) for i in bad)}")
        return a

    def __call__(self, name: str) -> np.ndarray:  # usable as a Gemma WeightGetter
        return self.get(name)

    @abstractmethod
    def _read(self, info: TensorInfo) -> np.ndarray: ...

    @abstractmethod
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(i.shape)) for i in self.infos.values())
