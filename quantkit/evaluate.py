"""Perplexity (and, with a reference model, KL divergence and top-1 agreement)
of a model on a text source, through quantkit's own forward or through llama.cpp."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from quantkit import malloc
from quantkit.calibration.text import eval_chunks
from quantkit.formats.source import TensorSource
from quantkit.models.gemma import Gemma
from quantkit.reports.metrics import EvalResult, Scorer, scored

JUDGES = ("quantkit", "llama.cpp")
LogitsFn = Callable[[np.ndarray], torch.Tensor]  # one chunk of ids [T] -> logits at its scored rows [n, V]


@dataclass
class EvalReport:
    model: str
    reference: str | None
    text: str
    chunk: int
    judge: str
    seconds: float
    result: EvalResult

    def to_dict(self) -> dict:
        return {
            "model": self.model, "reference": self.reference, "text": self.text, "chunk": self.chunk,
            "judge": self.judge, "seconds": round(self.seconds, 2), **self.result.to_dict(),
        }


def logits_fn(source: TensorSource, judge: str, threads: int | None = None) -> LogitsFn:
    """How to get one chunk's logits at its scored positions from `source`: quantkit's forward, or llama.cpp
    running the source's GGUF file."""
    if judge == "llama.cpp":
        from quantkit.judge import Judge

        j = Judge(source.path, threads=threads)
        return lambda row: torch.from_numpy(j.logits(row, scored(len(row))))
    model = Gemma(source.spec, source)
    return lambda row: model.forward(torch.from_numpy(row)[None], scored(len(row)))[0]


def evaluate(source: TensorSource, text: str = "wiki", n_tokens: int = 8192, chunk: int = 512,
             reference: TensorSource | None = None, judge: str = "quantkit", threads: int | None = None,
             progress: bool = True) -> EvalReport:
    chunks = eval_chunks(source.tokenizer(), text, n_tokens, chunk)
    if any(not s.path.is_file() for s in (source, reference) if s is not None):
        judge = "quantkit"  # llama.cpp runs GGUF files only; both sides go through the same forward
    run = logits_fn(source, judge, threads)
    run_ref = logits_fn(reference, judge, threads) if reference is not None else None
    scorer = Scorer()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for row in tqdm(chunks.ids, desc="eval", unit="chunk", disable=not progress, leave=False):
            scorer.add(run(row), torch.from_numpy(row), run_ref(row) if run_ref else None)
            malloc.trim()
    return EvalReport(str(source.path), str(reference.path) if reference else None, text, chunk, judge,
                      time.perf_counter() - t0, scorer.result())
