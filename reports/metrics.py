"""Accuracy metrics with llama-perplexity's conventions.

Each chunk is decoded from an empty context; only the second half is scored:
logits at positions first..T-2 predict tokens first+1..T-1 (for T = 512:
positions 256..510, 255 per chunk). KL divergence is KL(reference || candidate)
over the whole vocabulary in float64; p99 by linear interpolation; top-1 is the
share of scored positions whose argmax agrees with the reference's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

ROWS_PER_SLICE = 64  # bounds the float64 temporaries to 64 x vocab


def scored(t: int) -> slice:
    """The positions of a T-token chunk whose logits are scored: first = T // 2 .. T - 2."""
    return slice(t // 2, t - 1)


@dataclass
class EvalResult:
    n_tokens: int
    ppl: float
    ppl_stderr: float
    mean_kld: float | None = None
    kld_stderr: float | None = None
    p99_kld: float | None = None
    top1: float | None = None  # percent

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scorer:
    """Accumulates chunk after chunk; `result()` gives the totals."""

    nll: list = field(default_factory=list)
    kld: list = field(default_factory=list)
    agree: list = field(default_factory=list)

    def add(self, logits: torch.Tensor, ids: torch.Tensor, ref_logits: torch.Tensor | None = None) -> None:
        """ids: [T] (the chunk's tokens); logits / ref_logits: [T, V] for the whole chunk, or only the rows at
        `scored(T)` (what the judges return: the output head never runs on the other positions)."""
        t = ids.shape[0]
        pos = scored(t)
        n = pos.stop - pos.start
        logits, ref_logits = (_scored_rows(x, t) for x in (logits, ref_logits))
        targets = ids[pos.start + 1 : t]
        for s in range(0, n, ROWS_PER_SLICE):
            sl = slice(s, min(s + ROWS_PER_SLICE, n))
            lp = torch.log_softmax(logits[sl].double(), dim=-1)
            tg = targets[sl]
            self.nll.append(-lp.gather(1, tg[:, None].long())[:, 0].numpy())
            if ref_logits is not None:
                rp = torch.log_softmax(ref_logits[sl].double(), dim=-1)
                self.kld.append((rp.exp() * (rp - lp)).sum(-1).numpy())
                self.agree.append((rp.argmax(-1) == lp.argmax(-1)).numpy())

    def result(self) -> EvalResult:
        nll = np.concatenate(self.nll)
        n = len(nll)
        mean = float(nll.mean())
        # PPL's standard error by the delta method, as llama-perplexity prints it.
        se = float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        r = EvalResult(n_tokens=n, ppl=math.exp(mean), ppl_stderr=math.exp(mean) * se)
        if self.kld:
            k = np.concatenate(self.kld)
            r.mean_kld = float(k.mean())
            r.kld_stderr = float(k.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
            r.p99_kld = float(np.percentile(k, 99))
            r.top1 = float(np.concatenate(self.agree).mean() * 100)
        return r


def _scored_rows(logits: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """A chunk's logits at the scored positions, given all T rows or just those."""
    if logits is None:
        return None
    pos = scored(t)
    if logits.shape[0] == t:
        return logits[pos]
    if logits.shape[0] != pos.stop - pos.start:
        raise ValueError(f"logits have {logits.shape[0]} rows; a {t}-token chunk needs {t} or {pos.stop - pos.start}")
    return logits
