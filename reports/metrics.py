"""Accuracy metrics with llama-perplexity's conventions.

Each chunk is decoded from an empty context; only the second half is scored:
logits at positions first..T-2 predict tokens first+1..T-1 (for T = 512:
positions 256..510, 255 per chunk). KL divergence is KL(reference || candidate)
over the whole vocabulary; p99 by linear interpolation; top-1 is the share of
scored positions whose argmax agrees with the reference's.

Elementwise terms are float32 and every sum over the vocabulary float64
(llama-perplexity keeps the reference's log-probabilities as 16-bit integers):
within 1e-6 of an all-float64 computation, at a fifth of its time over a
262,144-wide vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

ROWS_PER_SLICE = 8  # temporaries of 8 x vocab (8 MiB at 262,144) stay below glibc's mmap threshold: no page faults


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
            x = logits[sl].float()
            ex, lse = _exp_and_lse(x)
            self.nll.append((lse - x.gather(1, targets[sl, None].long()).double())[:, 0].numpy())
            if ref_logits is not None:
                r = ref_logits[sl].float()
                er, lse_r = _exp_and_lse(r)
                # KL(p_r || p) = sum_i p_r,i (r_i - x_i) - (lse_r - lse): float32 terms, float64 sums
                p_r = er / er.sum(-1, keepdim=True)
                self.kld.append(((p_r * (r - x)).sum(-1, dtype=torch.float64) - (lse_r - lse)[:, 0]).numpy())
                self.agree.append((r.argmax(-1) == x.argmax(-1)).numpy())

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


def _exp_and_lse(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(x - max) in float32 and log-sum-exp [rows, 1] in float64 (its sum over the vocabulary in float64)."""
    m = x.amax(-1, keepdim=True)
    e = torch.exp(x - m)
    return e, m.double() + torch.log(e.sum(-1, keepdim=True, dtype=torch.float64))


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
