"""Streaming activation capture: the calibration set walks the decoder one block at a time.

Only the calibration hidden states (one `State` per mini-batch) and the running stage's weights are in memory:
the model is built with `Gemma(keep=False)` over a getter that caches a stage's weights while its mini-batches
run and drops them afterwards. For every linear weight the capture accumulates, over all calibration tokens,

    sum_x2[j] = sum_t x[t, j]^2        (llama.cpp imatrix `in_sum2`)
    count     = number of tokens       (per expert for MoE, routed tokens only)
    hessian   = X^T X                  (optional, float64; the GPTQ Hessian up to a factor 2/n)

Stages: -1 = embedding (PLE model projection), 0..L-1 = decoder blocks, L = output head (the tied
`embed_tokens.weight`, fed the final-normed hidden states). After a stage's statistics are complete,
`on_stage(i, stats)` may return replacement weights for that stage (dequantized quantized weights); the stage is
then re-run with them, so the next stage's inputs come from the already-quantized model (GPTQ's sequential mode).

With `on_linear(name, stats)` (GPTQ's "true sequential" mode) the whole calibration set runs as one batch and each
dense linear weight may be replaced the moment its input has been seen: its statistics are then complete, the
replacement is applied by the same forward pass, and later linears of the block see the quantized predecessors'
outputs. Every block then runs once instead of twice (observe, then re-run with the quantized weights); weights
that on_linear leaves alone (MoE expert stacks, or any it returns None for) still go through on_stage.

Besides the linear statistics the pass records what the lookup-table importance needs (see
`quantkit.calibration.embed_importance`): a per-gate-output PLE sensitivity, and the per-dimension gain of layer 0's
input norm.

Checkpoints: after the embedding and after every block, `on_checkpoint(Checkpoint)` receives what the next stage
needs (the calibration States, KV-sharing K/V included, and the accumulators that span stages); `run(start=...)`
continues from one, and gives the same numbers as a pass that never stopped. Statistics of the stages before the
start are not in the result (the head's, which the lookup-table importance needs, always are).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from quantkit.models import matmul
from quantkit.models.gemma import Gemma, State, gelu
from quantkit.models.spec import ModelSpec

HEAD = "embed_tokens.weight"


@dataclass
class LinearStats:
    """Input statistics of one linear weight (or of one MoE expert stack: leading axis = expert)."""

    name: str  # canonical weight name
    sum_x2: np.ndarray  # float64 [in] or [E, in]
    count: int | np.ndarray  # tokens seen; int64 [E] for experts
    hessian: np.ndarray | None = None  # float64 [in, in] or [E, in, in]: X^T X

    @property
    def experts(self) -> bool:
        return self.sum_x2.ndim == 2

    def mean_x2(self) -> np.ndarray:
        """E[x^2] per input column (float32), llama-quantize's importance: in_sum2 / counts, and 1 for an
        expert that saw no token (load_imatrix)."""
        s = self.sum_x2.astype(np.float32)
        c = np.asarray(self.count, dtype=np.float32)
        if not self.experts:
            return s / c if c > 0 else np.ones_like(s)
        out = np.ones_like(s)
        seen = c > 0
        out[seen] = s[seen] / c[seen, None]
        return out


@dataclass
class CaptureResult:
    stats: dict[str, LinearStats]
    # PLE: E[gelu(W_gate x)_p^2 / (ms(x) ms(W_proj g))] per layer and gate output, float64 [L, P] (None without PLE)
    ple_gate_x2: np.ndarray | None = None
    # token embedding: E[(w_in / rms(x0))^2] per hidden dim at layer 0's input norm, x0 = embed * sqrt(H)
    embed_norm_gain: np.ndarray | None = None
    n_tokens: int = 0


@dataclass
class Checkpoint:
    """A capture after a completed stage (-1 = embedding, 0..L-1 = blocks): what the next stage starts from."""

    stage: int
    states: list[State]  # the stage's output, computed with its quantized replacements
    ple_x2: torch.Tensor | None  # float64 [L, P], summed over the tokens so far (not yet divided)
    gain: torch.Tensor  # float64 [H], summed over the tokens (complete after the embedding)

    def to_dict(self) -> dict:
        """Tensors, lists and dicts only (for torch.save / torch.load(weights_only=True))."""
        return {"stage": self.stage, "ple_x2": self.ple_x2, "gain": self.gain,
                "states": [{f.name: getattr(st, f.name) for f in fields(State)} for st in self.states]}

    @classmethod
    def from_dict(cls, d: dict) -> "Checkpoint":
        return cls(d["stage"], [State(**st) for st in d["states"]], d["ple_x2"], d["gain"])


class _Acc:
    """float64 accumulators for one weight."""

    def __init__(self, name: str, n_in: int, hessian: bool, n_experts: int = 0):
        self.name = name
        shape = (n_experts, n_in) if n_experts else (n_in,)
        self.sum_x2 = np.zeros(shape, np.float64)
        self.count = np.zeros(n_experts, np.int64) if n_experts else 0
        self.h = np.zeros(shape + (n_in,), np.float64) if hessian else None

    def result(self) -> LinearStats:
        return LinearStats(self.name, self.sum_x2, self.count if isinstance(self.count, np.ndarray) else int(self.count),
                           self.h)


class _StageWeights:
    """WeightGetter for Gemma(keep=False): caches what the running stage uses, overrides win over the source."""

    def __init__(self, source: Callable[[str], np.ndarray]):
        self.source = source
        self.overrides: dict[str, np.ndarray] = {}
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, name: str):
        if name in self.overrides:
            return self.overrides[name]
        a = self.cache.get(name)
        if a is None:
            a = self.cache[name] = np.asarray(self.source(name), dtype=np.float32)
        return a

    def take(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Embedding rows, read from the source row by row when it can (the PLE table is never loaded whole)."""
        if name in self.overrides or name in self.cache or not hasattr(self.source, "take"):
            return self(name)[ids]
        return self.source.take(name, ids)

    def end_stage(self) -> None:
        self.cache.clear()


class Capture:
    """Walks `ids` [N, T] through the model in mini-batches of `batch_size` sequences, stage by stage."""

    def __init__(self, spec: ModelSpec, weights: Callable[[str], np.ndarray], ids, batch_size: int = 8,
                 hessian: bool = False, device: str = "cpu", progress: bool = True,
                 on_linear: Callable[[str, LinearStats], np.ndarray | None] | None = None):
        self.spec = spec
        self.on_linear = on_linear
        self.getter = _StageWeights(weights)
        self.model = Gemma(spec, self.getter, dtype=torch.float32, device=device, keep=False)
        self.ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if self.ids.ndim != 2:
            raise ValueError(f"calibration ids must be [n_seqs, seq_len], got shape {tuple(self.ids.shape)}")
        # one batch: a linear's statistics are complete after its first call
        self.batch_size = max(1, self.ids.shape[0]) if on_linear is not None else batch_size
        self.hessian = hessian
        self.progress = progress
        self._acc: dict[str, _Acc] = {}
        self._done: set[str] = set()  # replaced by on_linear during the running stage
        self._last_x: tuple[torch.Tensor, np.ndarray | None, np.ndarray] | None = None
        self._ple_x2: torch.Tensor | None = None
        self._ple_pending: torch.Tensor | None = None
        self._gain: torch.Tensor | None = None

    # ------------------------------------------------------------------ observers

    def _moments(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(sum of squares per column, X^T X) of a 2-D input, computed once per input object (q/k/v and gate/up
        share theirs). The Gram matrix of a mini-batch is formed in float32 and summed into float64."""
        last = self._last_x
        if last is not None and last[0].data_ptr() == x.data_ptr() and last[0].shape == x.shape \
                and last[0].stride() == x.stride():
            return last[1], last[2]  # the same input as the previous weight (we hold it, so no reuse)
        xf = x.float()
        h = None
        if self.hessian:
            h = matmul.gram(xf).numpy()
        if h is not None and self.on_linear is not None:
            s2 = np.diag(h).astype(np.float64)  # one batch (the whole set): no sum, float32 X^T X is enough
        else:
            s2 = xf.double().pow(2).sum(0).numpy()
            h = None if h is None else h.astype(np.float64)
        self._last_x = (x, s2, h)
        return s2, h

    def _observe(self, name: str, x: torch.Tensor) -> None:
        acc = self._acc.get(name)
        if acc is None:
            # with on_linear the whole set is one batch: X^T X is taken as it comes (float32), nothing to sum
            acc = self._acc[name] = _Acc(name, x.shape[-1], self.hessian and self.on_linear is None)
        s2, h = self._moments(x)
        acc.sum_x2 += s2
        acc.count += x.shape[0]
        if h is not None:
            if acc.h is None:
                acc.h = h.copy()
            else:
                acc.h += h
        if self._ple_x2 is not None:
            self._observe_ple(name, x)
        if self.on_linear is not None and name != HEAD:
            repl = self.on_linear(name, acc.result())
            if repl is not None:
                self.getter.overrides[name] = np.asarray(repl, np.float32)
                self._done.add(name)

    def _observe_ple(self, name: str, x: torch.Tensor) -> None:
        """PLE sensitivity terms, per token t and gate output p (see embed_importance):
        gelu(W_gate x)_tp^2 / (ms(x_t) * ms(W_proj g_t)), ms = mean square; x is the residual stream entering the
        per-layer input (the gate's input) and g the projection's input."""
        if name.endswith("per_layer_input_gate.weight"):
            a = gelu(F.linear(x.float(), self.model.w(name))).double()
            self._ple_pending = a.pow(2) / (x.double().pow(2).mean(-1, keepdim=True) + self.spec.rms_eps)
        elif name.endswith("per_layer_projection.weight"):
            layer = int(name.split(".")[1])
            y = F.linear(x.float(), self.model.w(name)).double()
            self._ple_x2[layer] += (self._ple_pending / (y.pow(2).mean(-1, keepdim=True) + self.spec.rms_eps)).sum(0)
            self._ple_pending = None

    def _observe_expert(self, name: str, e: int, x: torch.Tensor) -> None:
        acc = self._acc.get(name)
        if acc is None:
            acc = self._acc[name] = _Acc(name, x.shape[-1], self.hessian, self.spec.n_experts)
        xf = x.float()
        acc.sum_x2[e] += xf.double().pow(2).sum(0).numpy()
        acc.count[e] += x.shape[0]
        if acc.h is not None:
            acc.h[e] += matmul.gram(xf).double().numpy()

    # ------------------------------------------------------------------ stages

    def _batches(self):
        for s in range(0, self.ids.shape[0], self.batch_size):
            yield self.ids[s:s + self.batch_size]

    def _embed_gain(self, states: list[State]) -> None:
        """E[(w_in,h / rms(x0))^2] at layer 0's input norm: the factor by which an embedding-table error in
        dimension h reaches the first normalized activation (x0 = sqrt(H) e, so d n_h / d e_h ~ w_h sqrt(H)/rms(x0))."""
        w = self.model.w("layers.0.input_layernorm.weight", torch.float32).double()
        H = self.spec.hidden_size
        g = torch.zeros(H, dtype=torch.float64)
        for st in states:
            x = st.hidden.reshape(-1, H).double()
            inv_rms = (x.pow(2).mean(-1, keepdim=True) + self.spec.rms_eps).rsqrt()
            g += ((w * H**0.5) * inv_rms).pow(2).sum(0)
        self._gain = g

    def _run_stage(self, i: int, states: list[State] | None, observe: bool) -> list[State]:
        m = self.model
        m.observer = self._observe if observe else None
        m.expert_observer = self._observe_expert if observe else None
        out = []
        if i < 0:
            for ids in self._batches():
                out.append(m.embed(ids))
        else:
            for st in states:
                out.append(m.block(i, st))
        m.observer = m.expert_observer = None
        self._last_x = None
        return out

    def _head(self, states: list[State]) -> None:
        """The tied output head's input: the final-normed hidden states (no logits are formed)."""
        for st in states:
            x = self.model.norm("norm.weight", st.hidden)
            self._observe(HEAD, x.reshape(-1, x.shape[-1]))
        self._last_x = None

    def _stage_stats(self) -> dict[str, LinearStats]:
        out = {n: a.result() for n, a in self._acc.items()}
        self._acc = {}
        return out

    @torch.no_grad()
    def run(self, on_stage: Callable[[int, dict[str, LinearStats]], Mapping[str, np.ndarray] | None] | None = None,
            *, start: Checkpoint | None = None, on_checkpoint: Callable[[Checkpoint], None] | None = None
            ) -> CaptureResult:
        """Collect statistics for every linear weight. `on_stage(i, stats)` (stage -1 = embedding, 0..L-1 = blocks,
        L = head) may return replacement weights for stage i, with which the stage is re-run before the next one.
        `on_checkpoint` receives a Checkpoint after the embedding and after every block; `start` continues from one."""
        L, P = self.spec.n_layers, self.spec.ple_dim
        self._ple_x2 = torch.zeros(L, P, dtype=torch.float64) if P else None
        stats: dict[str, LinearStats] = {}
        first = -1 if start is None else start.stage + 1
        bar = tqdm(total=L + 2, initial=first + 1, desc="calibration", unit="stage", disable=not self.progress)

        def finish(i: int, states_in: list[State] | None, states_out: list[State]) -> list[State]:
            st = self._stage_stats()
            # Hessians handed to the callbacks are not kept: a layer's X^T X can be GBs (31B down_proj: 1.8 GB), so
            # keeping them would grow memory with depth. Without callbacks they are the result.
            stats.update(st if on_stage is None and self.on_linear is None
                         else {n: replace(v, hessian=None) for n, v in st.items()})
            rest = {n: s for n, s in st.items() if n not in self._done}
            self._done = set()
            repl = on_stage(i, rest) if on_stage is not None else None
            lin, self.getter.overrides = self.getter.overrides, {}
            if repl and i < L:  # re-run with every replacement (on_linear's included)
                self.getter.overrides = {**lin, **{k: np.asarray(v, np.float32) for k, v in repl.items()}}
                states_out = self._run_stage(i, states_in, observe=False)
                self.getter.overrides = {}
            self.getter.end_stage()
            bar.update(1)
            return states_out

        def checkpoint(i: int, states: list[State]) -> None:
            if on_checkpoint is not None:
                on_checkpoint(Checkpoint(i, states, self._ple_x2, self._gain))

        if start is None:
            states = finish(-1, None, self._run_stage(-1, None, observe=True))
            self._embed_gain(states)
            checkpoint(-1, states)
        else:
            states, self._ple_x2, self._gain = start.states, start.ple_x2, start.gain
        for i in range(max(first, 0), L):
            bar.set_postfix_str(f"block {i}")
            states = finish(i, states, self._run_stage(i, states, observe=True))
            checkpoint(i, states)
        self._head(states)
        finish(L, states, states)
        bar.close()
        n_tok = int(self.ids.numel())
        ple = None
        if self._ple_x2 is not None:
            ple = (self._ple_x2 / n_tok).numpy()
        return CaptureResult(stats=stats, ple_gate_x2=ple, embed_norm_gain=(self._gain / n_tok).numpy(),
                             n_tokens=n_tok)


def capture(spec: ModelSpec, weights: Callable[[str], np.ndarray], ids, *, batch_size: int = 8,
            hessian: bool = False, on_stage=None, on_linear=None, device: str = "cpu",
            progress: bool = True, start: Checkpoint | None = None, on_checkpoint=None) -> CaptureResult:
    """One streaming calibration pass; see `Capture.run` (and the module docstring for on_linear)."""
    return Capture(spec, weights, ids, batch_size=batch_size, hessian=hessian, device=device,
                   progress=progress, on_linear=on_linear).run(on_stage, start=start, on_checkpoint=on_checkpoint)


def calibration_ids(tokenizer, src: str = "c4", n_seqs: int = 128, seq_len: int = 512, seed: int = 0) -> np.ndarray:
    """The default calibration set: `n_seqs` windows of `seq_len` tokens of the built-in c4 text."""
    from quantkit.calibration.text import calib_chunks

    return calib_chunks(tokenizer, src, n_seqs, seq_len=seq_len, seed=seed).ids
