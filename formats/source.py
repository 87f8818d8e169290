"""TensorSource: lazy access to a model's weights, one tensor in memory at a time.

Every source speaks quantkit's canonical names (formats.names) and returns
float32 arrays in PyTorch orientation with canonical semantics (RMSNorm weights
as effective multipliers), whatever the file stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from quantkit.calibration.tokenizer import TextTokenizer
from quantkit.errors import BadInput
from quantkit.models.spec import ModelSpec

SCAN_VALUES = 1 << 24  # check_finite reads about this many values at a time


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

    @cached_property
    def table(self):
        """The run's tensor table (quantkit.tensor_table.TensorTable), built on first use, once."""
        from quantkit.tensor_table import TensorTable

        return TensorTable.of(self)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise BadInput(f"{self.path}: tensor {name!r} is missing") from None

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (dequantized / upcast), shape `info(name).shape`."""
        info = self.info(name)
        return self._finite(info, self._read(info), 0)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a 2-D tensor as float32, reading only those rows from the file
        (the Gemma 4 PLE table is billions of values: it is never loaded whole)."""
        info = self.info(name)
        if len(info.shape) != 2 or not 0 <= start <= stop <= info.shape[0]:
            raise ValueError(f"rows {start}:{stop} of {name} {info.shape}")
        return self._finite(info, self._read_rows(info, start, stop), start)

    def take(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any order, repeats allowed) of a 2-D tensor: an embedding lookup that reads
        each run of consecutive distinct rows once."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        uniq, inverse = np.unique(ids, return_inverse=True)
        if uniq.size == 0:
            return np.zeros((0, self.info(name).shape[1]), np.float32)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        parts = [self.rows(name, int(run[0]), int(run[-1]) + 1) for run in np.split(uniq, breaks)]
        return np.concatenate(parts)[inverse]

    def check_finite(self, progress: bool = False) -> None:
        """Read every tensor once, in chunks of rows, and raise BadInput naming the first NaN or Inf (tensor and
        index), so a damaged checkpoint fails before calibration rather than minutes into it."""
        from tqdm import tqdm

        total = sum(i.nbytes for i in self.infos.values())
        with tqdm(total=total, unit="B", unit_scale=True, desc="checking weights", disable=not progress,
                  leave=False) as bar:
            for info in self.infos.values():
                if len(info.shape) != 2:
                    self.get(info.name)
                else:
                    step = max(1, SCAN_VALUES // max(1, info.shape[1]))
                    for start in range(0, info.shape[0], step):
                        self.rows(info.name, start, min(start + step, info.shape[0]))
                bar.update(info.nbytes)

    def __call__(self, name: str) -> np.ndarray:  # usable as a Gemma WeightGetter
        return self.get(name)

    def _read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        return self._read(info)[start:stop]  # sources that can seek override this

    def _finite(self, info: TensorInfo, a: np.ndarray, row0: int) -> np.ndarray:
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            at = (int(bad[0]) + row0, *(int(i) for i in bad[1:]))
            raise BadInput(f"{self.path}: tensor {info.file_name!r} has a non-finite value at index {at}")
        return a

    @abstractmethod
    def _read(self, info: TensorInfo) -> np.ndarray: ...

    @abstractmethod
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(i.shape)) for i in self.infos.values())
