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
        """logits / ref_logits: [T, V]; ids: [T] (the chunk's tokens)."""
        t = ids.shape[0]
        first = t // 2
        pos = slice(first, t - 1)
        targets = ids[first + 1 : t]
        for s in range(0, t - 1 - first, ROWS_PER_SLICE):
            sl = slice(pos.start + s, min(pos.start + s + ROWS_PER_SLICE, pos.stop))
            lp = torch.log_softmax(logits[sl].double(), dim=-1)
            tg = targets[s : s + lp.shape[0]]
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
