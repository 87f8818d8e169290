"""Per-column importance for the lookup tables (token embedding, PLE table), which llama.cpp gives none: their rows
are gathered (get_rows), not multiplied, so no imatrix entry is ever recorded for them.

A quantizer's importance q_j should be proportional to how much a squared error in column j costs downstream.

PLE table `embed_tokens_per_layer` [Vp, L*P]; column (l, p) only feeds layer l's per-layer input:

    ple[l, p] = (proj[l, p] + E[t, l*P + p] * sqrt(P)) * 2^-1/2
    g_p       = gelu(W_gate x)_p * ple[l, p]
    x        += w_post * norm(W_proj g)       (post_per_layer_input_norm, RMSNorm)

An error d in E[t, (l, p)] changes W_proj g by W_proj[:, p] * gelu(W_gate x)_p * d * sqrt(P) * 2^-1/2; the RMSNorm
divides that by rms(W_proj g) and multiplies by w_post; what later layers see is the change relative to the size of
the residual stream x (each of them normalizes its input). To first order (ignoring the norms' projection terms)

    q_(l,p) = (P / 2) * E_t[ gelu(W_gate x_t)_p^2 / (ms(x_t) * ms(W_proj g_t)) ] * sum_h w_post,h^2 W_proj[h, p]^2

with ms = mean square over the hidden dimension. The capture pass accumulates the expectation
(`CaptureResult.ple_gate_x2`); `ple_importance` multiplies in the weights.

Token embedding `embed_tokens` [V, H] is used twice:
  * as the tied output head, logits = E h_final: an error d in E[t, h] moves logit t by d * h_final,h, so the head's
    importance is E[h_final,h^2] (the imatrix of the head, `LinearStats` "embed_tokens.weight");
  * as the input, x0 = sqrt(H) * E[t]: it reaches layer 0's normalized activation n = w_in * x0 / rms(x0) with gain
    dn_h / dE[t, h] ~ w_in,h * sqrt(H) / rms(x0), so the input importance is E[(w_in,h sqrt(H) / rms(x0))^2]
    (the residual-stream path past the norm is left out).
Both are per-unit-output sensitivities of different outputs (logits vs first activations); each profile is
normalized to mean 1 and the two are added, so neither use dominates by its units.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from quantkit.calibration.capture import HEAD, CaptureResult
from quantkit.models.spec import ModelSpec


def ple_importance(spec: ModelSpec, result: CaptureResult, weights: Callable[[str], np.ndarray]) -> np.ndarray:
    """Importance per column of `embed_tokens_per_layer.weight` (float32 [L*P])."""
    L, P = spec.n_layers, spec.ple_dim
    if not P or result.ple_gate_x2 is None:
        raise ValueError("the model has no per-layer embeddings")
    out = np.empty((L, P), np.float64)
    for layer in range(L):
        w_proj = np.asarray(weights(f"layers.{layer}.per_layer_projection.weight"), np.float64)  # [H, P]
        w_post = np.asarray(weights(f"layers.{layer}.post_per_layer_input_norm.weight"), np.float64)  # [H]
        out[layer] = result.ple_gate_x2[layer] * (P * 0.5) * (w_post[:, None] ** 2 * w_proj**2).sum(0)
    return out.reshape(-1).astype(np.float32)


def embed_importance(result: CaptureResult) -> np.ndarray:
    """Importance per column of `embed_tokens.weight` (float32 [H]): head use + input use, each mean-normalized."""
    head = result.stats[HEAD].mean_x2().astype(np.float64)
    gain = np.asarray(result.embed_norm_gain, np.float64)
    parts = [p / p.mean() for p in (head, gain) if p.mean() > 0]
    return np.sum(parts, axis=0).astype(np.float32)


def table_importance(spec: ModelSpec, result: CaptureResult, weights: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """canonical name -> importance for every lookup table the model has."""
    out = {"embed_tokens.weight": embed_importance(result)}
    if spec.ple_dim:
        out["embed_tokens_per_layer.weight"] = ple_importance(spec, result, weights)
    return out
