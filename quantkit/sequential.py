"""GPTQ block by block ("true-sequential"): each linear is quantized from the Hessian of its input as the
already-quantized model computes it, and the model goes on with the dequantized values.

One streaming capture pass does it all (calibration.capture): a dense linear is quantized as soon as its input has
been seen (`on_linear`), expert stacks when their stage ends (`on_stage`). The quantized tensors go to the work
folder, so the writer streams them and an interrupted run resumes from the capture's last checkpoint.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from quantkit.calibration.capture import Checkpoint, LinearStats, capture
from quantkit.calibration.embed_importance import table_importance
from quantkit.formats import pack_quantized, safetensors_model
from quantkit.formats.source import TensorSource
from quantkit.gptq import quantize_group_tensor, quantize_tensor
from quantkit.kernels import group, registry
from quantkit.plan import Plan
from quantkit.workdir import WorkDir

class _StageReads:
    """The capture's weight getter: it keeps what the running stage read from the source, so that GPTQ quantizes
    the arrays the forward used (`weight`) instead of reading them a second time. That is what happens to expert
    stacks, which the forward reads before their stage ends; a dense linear is quantized before the forward reads
    it (on_linear), and the forward then uses its quantized values, so it is read once either way."""

    def __init__(self, source: TensorSource):
        self.source = source
        self.read: dict[str, np.ndarray] = {}

    def __call__(self, name: str) -> np.ndarray:
        a = self.read[name] = self.source.get(name)
        return a

    def take(self, name: str, ids: np.ndarray) -> np.ndarray:
        return self.source.take(name, ids)

    def weight(self, name: str) -> np.ndarray:
        """A linear's weight, from this stage's read if there was one (linears are stored whole: the tensor table
        trims only the embedding, which GPTQ leaves to the writer)."""
        w = self.read.pop(name, None)
        return self.source.get(name) if w is None else w


# (the stage's reads, name, statistics) -> the tensor's dequantized values, or None to leave it alone
Quantize = Callable[[_StageReads, str, LinearStats], "np.ndarray | None"]


def _run(source: TensorSource, ids: np.ndarray, one: Quantize, device: str, progress: bool,
         work: WorkDir | None = None, start: Checkpoint | None = None):
    reads = _StageReads(source)

    def on_linear(n, st):
        return one(reads, n, st)

    def on_stage(i, stats):
        repl = {n: one(reads, n, st) for n, st in stats.items()}
        reads.read.clear()  # the stage is done: let its weights go
        return {n: v for n, v in repl.items() if v is not None}

    return capture(source.spec, reads, ids, hessian=True, on_stage=on_stage, on_linear=on_linear, device=device,
                   progress=progress, start=start, on_checkpoint=work.save_checkpoint if work else None)


def gptq_ggml(source: TensorSource, plan: Plan, ids: np.ndarray, work: WorkDir, device: str, progress: bool,
              effort: str, start: Checkpoint | None = None) -> dict[str, np.ndarray]:
    """GPTQ inside the plan's ggml types (the lattice types a block at a time, gptq.gptq_blocks), from the capture
    checkpoint `start` if given. Returns the lookup tables' importance (from the complete capture), with which the
    writer quantizes them."""
    types = plan.types

    def one(reads: _StageReads, n: str, st: LinearStats) -> np.ndarray | None:  # a Quantize
        # the tied head (embed_tokens) is quantized by the writer, as a lookup table with its own importance
        if n not in types or types[n] in registry.FLOATS or n == "embed_tokens.weight":
            return None
        q = quantize_tensor("gptq", reads.weight(n), types[n], st, effort=effort)
        work.save_tensor(n, q.data)
        return q.values

    result = _run(source, ids, one, device, progress, work, start)
    tables = table_importance(source.spec, result, source)
    work.save_tables(tables)
    return tables


def gptq_int(source: TensorSource, schemes: dict, ids: np.ndarray, work: WorkDir, device: str,
             progress: bool) -> None:
    """GPTQ into compressed-tensors' int group format (`schemes`: name -> pack_quantized.IntScheme); each
    result goes to the work folder (WorkDir.save_group)."""

    def one(reads: _StageReads, n: str, st: LinearStats) -> np.ndarray | None:
        s = schemes.get(n)
        if s is None:
            return None
        dtype = pack_quantized.SCALE_DTYPE[safetensors_model.stored_dtype(source, n)]
        gq = quantize_group_tensor("gptq", reads.weight(n), s.bits, s.group_size, s.symmetric, st, scale_dtype=dtype)
        work.save_group(n, gq)
        return group.group_dequantize(gq)

    _run(source, ids, one, device, progress)
