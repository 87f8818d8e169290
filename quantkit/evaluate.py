"""Perplexity (and, with a reference model, KL divergence and top-1 agreement)
of a model on a text source, through quantkit's own forward."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from quantkit.calibration.text import eval_chunks
from quantkit.formats.source import TensorSource
from quantkit.models.gemma import Gemma
from quantkit.reports.metrics import EvalResult, Scorer


@dataclass
class EvalReport:
    model: str
    reference: str | None
    text: str
    chunk: int
    seconds: float
    result: EvalResult

    def to_dict(self) -> dict:
        return {
            "model": self.model, "reference": self.reference, "text": self.text, "chunk": self.chunk,
            "seconds": round(self.seconds, 2), **self.result.to_dict(),
        }


def evaluate(source: TensorSource, text: str = "wiki", n_tokens: int = 8192, chunk: int = 512,
             reference: TensorSource | None = None, progress: bool = True) -> EvalReport:
    tok = source.tokenizer()
    chunks = eval_chunks(tok, text, n_tokens, chunk)
    model = Gemma(source.spec, source)
    ref = Gemma(reference.spec, reference) if reference is not None else None
    scorer = Scorer()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for row in tqdm(chunks.ids, desc="eval", unit="chunk", disable=not progress, leave=False):
            ids = torch.from_numpy(row)[None]
            logits = model.forward(ids)[0]
            ref_logits = ref.forward(ids)[0] if ref is not None else None
            scorer.add(logits, ids[0], ref_logits)
    return EvalReport(str(source.path), str(reference.path) if reference else None, text, chunk,
                      time.perf_counter() - t0, scorer.result())
