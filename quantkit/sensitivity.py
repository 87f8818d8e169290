"""What the data says before anything is quantized: each linear's importance (E[x^2] per input column, llama.cpp's
imatrix) from a calibration pass, and, for the byte-budget allocator, each tensor's error at every candidate type.

    importance = precapture(source, ids, progress)
    error = relative_errors(source, importance, with_data, progress, effort)   # error(name, type) -> float

The error of a type is measured on a sample of the tensor's rows, relative to the tensor's own output energy
(Gemma normalises every projection's output: q/k/v norms, post-attention and post-FFN norms, so a projection's
*relative* output error is what the rest of the network sees):

    error(W, T) = sum_j I_j ||dW[:, j]||^2 / sum_j I_j ||W[:, j]||^2
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from quantkit import plan as plans
from quantkit.calibration.capture import capture
from quantkit.calibration.embed_importance import table_importance
from quantkit.formats.source import TensorSource
from quantkit.kernels import registry, warm

ERROR_SAMPLE_VALUES = 1 << 17  # per tensor: at least 8 rows, evenly spaced, about this many weights


def precapture(source: TensorSource, ids: np.ndarray, progress: bool) -> dict[str, np.ndarray]:
    """Importance of every linear (E[x^2] per input column) and of the lookup tables, from one calibration pass."""
    pre = capture(source.spec, source, ids, progress=progress)
    importance = {n: s.mean_x2() for n, s in pre.stats.items() if n in source.table}
    importance.update(table_importance(source.spec, pre, source))
    return importance


def relative_errors(source: TensorSource, importance: dict[str, np.ndarray], with_data: bool, progress: bool,
                    effort: str) -> plans.ErrorFn:
    """error(name, type) for every quantizable tensor and candidate type (see the module doc)."""
    table = {}
    rows = [r for r in source.table.values() if r.fixed is None]
    needed = list(dict.fromkeys(t for r in rows for t in plans.candidates(r.shape[-1], with_data)))
    helper = warm.start(needed)  # compiles the codecs this loop needs last while it compiles the first ones
    try:
        _errors(source, rows, importance, with_data, progress, effort, table)
    finally:
        warm.stop(helper)
    return lambda name, t: table[name, t]


def _errors(source: TensorSource, rows: list, importance: dict[str, np.ndarray], with_data: bool, progress: bool,
            effort: str, table: dict) -> None:
    for row in tqdm(rows, desc="sensitivity", unit="tensor", disable=not progress, leave=False):
        n, shape = row.name, row.shape
        n_rows = int(np.prod(shape[:-1]))
        take = np.linspace(0, n_rows - 1, min(max(8, ERROR_SAMPLE_VALUES // shape[-1]), n_rows)).astype(np.int64)
        if len(shape) == 2:  # read only the sampled rows (the PLE table is never loaded whole)
            sample = source.take(n, take)
        else:
            sample = source.get(n).reshape(n_rows, shape[-1])[take]
        sample = np.ascontiguousarray(sample)
        imp = importance.get(n)
        if imp is not None and imp.ndim == 2:  # experts: average their importance
            imp = imp.mean(0)
        i_w = imp if imp is not None else np.ones(sample.shape[1], np.float32)
        energy = float((sample.astype(np.float64) ** 2 * i_w).sum()) or 1.0
        for t in plans.candidates(sample.shape[1], with_data):
            data = registry.quantize(t, sample, imp, name=n, effort=effort)
            d = registry.dequantize(t, data, sample.shape).astype(np.float64) - sample
            table[n, t] = float((d**2 * i_w).sum()) / energy
