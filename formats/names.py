"""Tensor names: quantkit's canonical names (Hugging Face names without the
`model.` / `model.language_model.` prefix) and llama.cpp's GGUF names.

Source of truth for the GGUF side: gguf-py `constants.py` (TENSOR_NAMES for
MODEL_ARCH.GEMMA3 / GEMMA4) and the Gemma4Model converter, which renames
`layer_scalar` to `layer_output_scale.weight`, `router.scale` to
`ffn_gate_inp.scale` and `router.per_expert_scale` to `ffn_down_exps.scale`.
"""

from __future__ import annotations

import re

GLOBAL = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
}

LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "layer_scalar": "layer_output_scale.weight",
    "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
    "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
}

_GLOBAL_BACK = {v: k for k, v in GLOBAL.items()}
_LAYER_BACK = {v: k for k, v in LAYER.items()}
_CANON_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(.+)")


def _rename(name: str, whole: dict[str, str], layer: re.Pattern, per_layer: dict[str, str], fmt: str) -> str | None:
    if name in whole:
        return whole[name]
    m = layer.fullmatch(name)
    if m and m.group(2) in per_layer:
        return fmt.format(m.group(1), per_layer[m.group(2)])
    return None


def to_gguf(name: str) -> str | None:
    """Canonical name -> GGUF name, or None if llama.cpp has no such tensor."""
    return _rename(name, GLOBAL, _CANON_LAYER, LAYER, "blk.{}.{}")


def from_gguf(name: str) -> str | None:
    """GGUF name -> canonical name, or None for tensors quantkit derives itself (rope_freqs)."""
    return _rename(name, _GLOBAL_BACK, _GGUF_LAYER, _LAYER_BACK, "layers.{}.{}")


def layer_of(name: str) -> int | None:
    m = _CANON_LAYER.fullmatch(name)
    return int(m.group(1)) if m else None


def is_norm(name: str) -> bool:
    """RMSNorm weights (GGUF: `*_norm.weight`); stored as effective multipliers."""
    return "norm" in name.rsplit(".", 2)[-2] if name.endswith(".weight") else False


GROUPS = ("embeddings", "ple", "attention", "mlp", "experts", "norms", "towers", "other")


def group_of(name: str) -> str:
    """Tensor group of a canonical (or compressed-tensors) name: the rows of every size table."""
    base = name.split(".weight_")[0]
    if base.startswith(("vision_tower.", "audio_tower.", "embed_vision.", "embed_audio.")):
        return "towers"
    if is_norm(base) or base.endswith(("layer_scalar", "router.scale", "per_expert_scale")) or base.startswith("rope_freqs"):
        return "norms"
    if base.startswith("embed_tokens_per_layer") or "per_layer_" in base:
        return "ple"
    if base.startswith(("embed_tokens", "lm_head")):
        return "embeddings"
    if ".experts." in base or ".router." in base:
        return "experts"
    if ".self_attn." in base:
        return "attention"
    if ".mlp." in base:
        return "mlp"
    return "other"
