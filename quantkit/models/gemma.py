"""Reference forward for the Gemma 3 and Gemma 4 text decoders (torch; transformers is not used).

One readable model in the style of gpt-fast / mlx-lm `gemma3_text.py`: plain functions that mirror the
equations, a `Gemma` class that walks the decoder block by block, weights fetched lazily by canonical name.
Line numbers in comments refer to transformers 5.23 `models/gemma4/modeling_gemma4.py` (the oracle the tests
compare with).

Canonical names are the Hugging Face names without the `model.` / `model.language_model.` prefix
(`layers.3.self_attn.q_proj.weight`, ...; formats.hf_source.canonical_name), PyTorch orientation ([out, in]).
Every RMSNorm weight the getter returns is the *effective* multiplier, and `norm` multiplies by it as it is:
Gemma 3 checkpoints store `w` for `x * (1 + w)`, and the 1 is added once when the weights are read, by
formats.hf_source.HFSource for a checkpoint directory and by `hf_state_to_canonical` for an in-memory
transformers state dict; GGUF files (llama.cpp's converter's and quantkit's) already hold `1 + w`.

Calibration hooks: `observer(name, x)` sees the input `x` ([tokens, in_features]) of every linear weight just
before it is applied; `expert_observer(name, expert, x)` sees the tokens routed to one MoE expert.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from quantkit.formats.hf_source import canonical_name
from quantkit.models import matmul
from quantkit.models.spec import LayerSpec, ModelSpec

WeightGetter = Callable[[str], "torch.Tensor | np.ndarray"]
Observer = Callable[[str, torch.Tensor], None]
ExpertObserver = Callable[[str, int, torch.Tensor], None]

_TEXT_ROOTS = ("embed_tokens.", "embed_tokens_per_layer.", "per_layer_model_projection.", "per_layer_projection_norm.",
               "norm.", "layers.")


def hf_state_to_canonical(state_dict: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Hugging Face state dict -> canonical names (formats.hf_source.canonical_name), keeping only the text
    decoder's tensors (no `lm_head.weight`, tower or projector), and for Gemma 3 each `*norm.weight` w turned
    into the effective `1 + w` (computed in fp32, as transformers' Gemma3RMSNorm does; the result stays fp32).
    Tests use it to run this forward on a transformers model's own weights."""
    out = {}
    for name, t in state_dict.items():
        name = canonical_name(name)
        if name is None or not name.startswith(_TEXT_ROOTS):
            continue  # lm_head.weight, model.vision_tower.*, model.multi_modal_projector.*, ...
        if arch == "gemma3" and name.endswith("norm.weight"):
            t = t.float() + 1.0
        out[name] = t
    return out


@dataclass
class State:
    """What flows between blocks. `block` returns a new State and never mutates its input, so a block can be
    re-run on the same state (sequential quantization)."""

    hidden: torch.Tensor  # [B, T, H] residual stream
    ple: torch.Tensor | None  # [B, T, L, P] Gemma 4 per-layer inputs, or None
    positions: torch.Tensor  # [T] token positions
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # layer index -> (K, V), each [B, kv_heads, T, head_dim] after norm and RoPE, kept while a KV-shared layer needs it


# ---------------------------------------------------------------- the math


def rms_norm(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x * (mean(x^2) + eps)^-1/2 * w, in fp32, cast back (modeling_gemma4.py 204-222). w=None: no scale."""
    y = x.float()
    y = y * torch.pow(y.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if w is not None:
        y = y * w.float()
    return y.type_as(x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def rope_tables(positions: torch.Tensor, layer: LayerSpec, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head_dim] for NEOX-style RoPE: dim d is paired with d + head_dim/2 and turns at
    theta^(-2d/head_dim) / rope_scale. Only the first rope_fraction of the pairs turn; the rest get frequency 0
    (Gemma 4 "proportional" RoPE: the exponent stays over the full head_dim; modeling_rope_utils.py 194-267)."""
    hd = layer.head_dim
    n_rot = int(layer.rope_fraction * hd // 2)
    inv_freq = 1.0 / (layer.rope_theta ** (torch.arange(0, 2 * n_rot, 2, dtype=torch.int64).float() / hd))
    inv_freq = torch.cat([inv_freq, torch.zeros(hd // 2 - n_rot)]) / layer.rope_scale
    angles = positions.float()[:, None] * inv_freq.to(positions.device)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, hd]; cos/sin [T, hd]."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def attention_mask(positions: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """Boolean [T, T], True = visible: causal, and within the window on sliding layers (0 <= q - j < window)."""
    d = positions[:, None] - positions[None, :]
    visible = d >= 0
    if sliding_window is not None:
        visible &= d < sliding_window
    return visible


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q k^T, masked) v, softmax in fp32. q [B, heads, T, hd]; k, v [B, kv_heads, T, hd]; query head
    h reads KV head h // (heads / kv_heads). Written out rather than through F.scaled_dot_product_attention, whose
    CPU kernel rounds differently from transformers' eager attention; random tiny models amplify that 100x."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    probs = F.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


def _as_tensor(a: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    a = np.ascontiguousarray(a)
    with warnings.catch_warnings():  # read-only memory maps are fine: weights are never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


# ---------------------------------------------------------------- the model


class Gemma:
    """Gemma 3 / Gemma 4 text decoder. `forward(ids)` = `head(block(L-1, ... block(0, embed(ids))))`.

    weights: canonical name -> tensor (torch or numpy, any float dtype), called lazily.
    keep=True caches every converted weight; keep=False fetches a weight each time it is used and drops it
    afterwards, so only the running block's weights are in memory (streaming over large checkpoints).
    """

    def __init__(self, spec: ModelSpec, weights: WeightGetter, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", keep: bool = True):
        self.spec = spec
        self.weights = weights
        self.dtype = dtype
        self.device = torch.device(device)
        self.keep = keep
        self.observer: Observer | None = None
        self.expert_observer: ExpertObserver | None = None
        self._cache: dict[str, torch.Tensor] = {}
        self._tables: dict[tuple, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}  # RoPE cos/sin, masks
        # KV sharing: a source layer's K/V stays in the State until its last consumer has run.
        self._kv_last_use: dict[int, int] = {}
        for i, layer in enumerate(spec.layers):
            if layer.kv_source is not None:
                self._kv_last_use[layer.kv_source] = i

    # -------------------------------------------------------- weights

    def _raw(self, name: str) -> torch.Tensor:
        """The getter's tensor as torch, unconverted (kept if keep=True)."""
        key = "raw:" + name
        if key in self._cache:
            return self._cache[key]
        t = _as_tensor(self.weights(name))
        if self.keep:
            self._cache[key] = t
        return t

    def w(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Weight `name` on the model's device, in `dtype` (default: the model's dtype)."""
        dtype = dtype or self.dtype
        key = f"{dtype}:{name}"
        if key in self._cache:
            return self._cache[key]
        t = self._fetch(name, dtype)
        if self.keep:
            self._cache[key] = t
        return t

    def _fetch(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        return _as_tensor(self.weights(name)).to(device=self.device, dtype=dtype)

    def _packed(self, name: str) -> torch.Tensor:
        """Weight `name` as `matmul.linear` multiplies it (kept instead of the plain copy if keep=True)."""
        key = "packed:" + name
        if key in self._cache:
            return self._cache[key]
        plain = self._cache.get(f"{self.dtype}:{name}")
        t = matmul.pack(plain if plain is not None else self._fetch(name, self.dtype))
        if self.keep:
            self._cache[key] = t
        return t

    def _rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Embedding lookup that converts only the rows it needs (the PLE table is billions of values)."""
        table = self._cache.get(f"{self.dtype}:{name}")
        if table is None and hasattr(self.weights, "take"):  # a TensorSource reads just these rows
            flat = np.asarray(ids.reshape(-1).cpu())
            rows = _as_tensor(self.weights.take(name, flat)).to(device=self.device, dtype=self.dtype)
            return rows.reshape(*ids.shape, rows.shape[-1])
        if table is None:
            table = self._raw(name)
        return table[ids.to(table.device)].to(device=self.device, dtype=self.dtype)

    def _scale(self, value: float) -> torch.Tensor:
        # transformers keeps embedding scales as fp32 buffers cast to the weight dtype, so in bf16 the scale
        # is rounded too (sqrt(1536) = 39.19 becomes 39.25); doing the same keeps bf16 runs equal to transformers
        return torch.tensor(value, dtype=torch.float32).to(device=self.device, dtype=self.dtype)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(name, x.reshape(-1, x.shape[-1]))
        return matmul.linear(x, self._packed(name))

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # norm weights stay fp32 whatever the model dtype: the norm is computed in fp32, and Gemma 3's folded
        # (1 + w) would lose bits in bf16 (transformers adds the 1 in fp32 too)
        return rms_norm(x, self.w(name, torch.float32), self.spec.rms_eps)

    def _rope(self, layer: LayerSpec, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("rope", layer.head_dim, layer.rope_theta, layer.rope_fraction, layer.rope_scale, len(positions))
        if key not in self._tables:
            self._tables[key] = rope_tables(positions, layer, self.dtype)
        return self._tables[key]

    def _mask(self, sliding: bool, positions: torch.Tensor) -> torch.Tensor:
        key = ("mask", sliding, len(positions))
        if key not in self._tables:
            self._tables[key] = attention_mask(positions, self.spec.sliding_window if sliding else None)
        return self._tables[key]

    # -------------------------------------------------------- embed / block / head

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> State:
        """ids [B, T] -> State with the scaled token embeddings and (Gemma 4 E-models) the per-layer inputs."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        B, T = ids.shape
        H = self.spec.hidden_size
        x = self._rows("embed_tokens.weight", ids) * self._scale(H**0.5)
        positions = torch.arange(T, device=self.device)
        return State(hidden=x, ple=self._per_layer_inputs(ids, x), positions=positions)

    def _per_layer_inputs(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Gemma 4 PLE (modeling_gemma4.py 1713-1792):
        ple = (norm(W_proj · x_scaled · H^-1/2) + E_ple[ids] · sqrt(P)) · 2^-1/2, sliced [B, T, L, P]."""
        P, L, H = self.spec.ple_dim, self.spec.n_layers, self.spec.hidden_size
        if not P:
            return None
        B, T = ids.shape
        token = self._rows("embed_tokens_per_layer.weight", ids) * self._scale(P**0.5)
        proj = self.linear("per_layer_model_projection.weight", x) * H**-0.5
        proj = self.norm("per_layer_projection_norm.weight", proj.reshape(B, T, L, P))
        return (proj + token.reshape(B, T, L, P)) * 2**-0.5

    @torch.no_grad()
    def block(self, i: int, state: State) -> State:
        """Decoder layer i (modeling_gemma4.py 1339-1425; Gemma 3 is the same without MoE, PLE, layer_scalar)."""
        p = f"layers.{i}."
        kv = dict(state.kv)
        x = state.hidden
        h = self._attention(i, self.norm(p + "input_layernorm.weight", x), state.positions, kv)
        x = x + self.norm(p + "post_attention_layernorm.weight", h)

        m = self._mlp(p + "mlp.", self.norm(p + "pre_feedforward_layernorm.weight", x))
        if self.spec.moe:  # the dense MLP runs alongside the experts as a shared expert
            m = self.norm(p + "post_feedforward_layernorm_1.weight", m) + \
                self.norm(p + "post_feedforward_layernorm_2.weight", self._experts(i, x))
        x = x + self.norm(p + "post_feedforward_layernorm.weight", m)

        if state.ple is not None:
            g = gelu(self.linear(p + "per_layer_input_gate.weight", x)) * state.ple[:, :, i]
            x = x + self.norm(p + "post_per_layer_input_norm.weight", self.linear(p + "per_layer_projection.weight", g))

        if self.spec.arch == "gemma4":
            x = x * self.w(p + "layer_scalar")  # scales the whole residual stream (line 1424), not the increment
        for src in [s for s, last in self._kv_last_use.items() if last <= i]:
            kv.pop(src, None)
        return replace(state, hidden=x, kv=kv)

    def _attention(self, i: int, x: torch.Tensor, positions: torch.Tensor,
                   kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """q = rope(q_norm(W_q x)); k = rope(k_norm(W_k x)); v = v_norm(W_v x) (Gemma 4) or W_v x (Gemma 3);
        softmax(scale · q k^T + mask) v. Gemma 4 full layers with K=V have no W_v: v is the raw W_k x."""
        layer = self.spec.layers[i]
        p = f"layers.{i}.self_attn."
        B, T, _ = x.shape
        hd = layer.head_dim
        cos, sin = self._rope(layer, positions)
        q = self.linear(p + "q_proj.weight", x).view(B, T, -1, hd)
        q = apply_rope(self.norm(p + "q_norm.weight", q), cos, sin).transpose(1, 2)
        if layer.kv_source is not None:  # KV-shared layer: no K/V weights of its own
            k, v = kv[layer.kv_source]
        else:
            k = self.linear(p + "k_proj.weight", x).view(B, T, -1, hd)
            v = k if layer.k_eq_v else self.linear(p + "v_proj.weight", x).view(B, T, -1, hd)
            k = apply_rope(self.norm(p + "k_norm.weight", k), cos, sin).transpose(1, 2)
            if self.spec.arch == "gemma4":
                v = rms_norm(v, None, self.spec.rms_eps)
            v = v.transpose(1, 2)
            if i in self._kv_last_use:
                kv[i] = (k, v)
        o = attend(q, k, v, self._mask(layer.sliding, positions), self.spec.attn_scale)
        return self.linear(p + "o_proj.weight", o.transpose(1, 2).reshape(B, T, -1))

    def _mlp(self, p: str, x: torch.Tensor) -> torch.Tensor:
        return self.linear(p + "down_proj.weight", gelu(self.linear(p + "gate_proj.weight", x)) *
                           self.linear(p + "up_proj.weight", x))

    def _experts(self, i: int, r: torch.Tensor) -> torch.Tensor:
        """Gemma 4 MoE on the un-normed residual r (modeling_gemma4.py 1263-1336):
        router: softmax_fp32(W_r (norm(r) · s · H^-1/2)), top-k, renormalise, times per_expert_scale;
        expert e: W_down,e (gelu(W_gate,e x) * W_up,e x), x = pre_feedforward_layernorm_2(r)."""
        p = f"layers.{i}."
        B, T, H = r.shape
        r = r.reshape(-1, H)
        n = rms_norm(r, None, self.spec.rms_eps) * self.w(p + "router.scale") * H**-0.5
        probs = F.softmax(self.linear(p + "router.proj.weight", n).float(), dim=-1)
        weights, index = probs.topk(self.spec.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.w(p + "router.per_expert_scale")[index]

        x = self.norm(p + "pre_feedforward_layernorm_2.weight", r)
        gate_up, down = self.w(p + "experts.gate_up_proj"), self.w(p + "experts.down_proj")  # [E,2I,H], [E,H,I]
        out = torch.zeros_like(x)
        for e in range(self.spec.n_experts):
            tokens, slot = torch.where(index == e)
            if tokens.numel() == 0:
                continue
            xe = x[tokens]
            if self.expert_observer is not None:
                self.expert_observer(p + "experts.gate_up_proj", e, xe)
            gate, up = F.linear(xe, gate_up[e]).chunk(2, dim=-1)  # gate half first
            a = gelu(gate) * up
            if self.expert_observer is not None:
                self.expert_observer(p + "experts.down_proj", e, a)
            y = F.linear(a, down[e]) * weights[tokens, slot, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        return out.reshape(B, T, H)

    @torch.no_grad()
    def head(self, state: State) -> torch.Tensor:
        """Final norm, tied lm_head, final logit softcap -> logits [B, T, V] float32."""
        x = self.norm("norm.weight", state.hidden)
        logits = self.linear("embed_tokens.weight", x).float()
        return softcap(logits, self.spec.final_logit_softcap)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V], or [B, len(rows), V] with the head run only at positions `rows`."""
        state = self.embed(ids)
        for i in range(self.spec.n_layers):
            state = self.block(i, state)
        if rows is not None:
            state = replace(state, hidden=state.hidden[:, rows])
        return self.head(state)

    __call__ = forward
