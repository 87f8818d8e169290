"""Text configs of the four Gemma 4 releases, as the `text_config`
of their Hugging Face config.json. Used to plan and size builds and to generate
random checkpoints with the real shapes; weights always come from the user.
`gemma3_config` goes the other way: a Gemma 3 ModelSpec (from a GGUF) as config.json."""

from __future__ import annotations

from quantkit.errors import UnsupportedModel

S, F = "sliding_attention", "full_attention"


def _pattern(n_layers: int, period: int) -> list[str]:
    """`period - 1` sliding layers then one full layer; the last layer is always full."""
    types = [F if (i + 1) % period == 0 else S for i in range(n_layers)]
    types[-1] = F
    return types


_COMMON = dict(
    model_type="gemma4_text", vocab_size=262144, head_dim=256, global_head_dim=512, rms_norm_eps=1e-6,
    final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
    bos_token_id=2, eos_token_id=1, pad_token_id=0, max_position_embeddings=131072,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
    },
)

RELEASES = {
    "e2b": dict(_COMMON, hidden_size=1536, num_hidden_layers=35, num_attention_heads=8, num_key_value_heads=1,
                intermediate_size=6144, use_double_wide_mlp=True, num_kv_shared_layers=20, sliding_window=512,
                hidden_size_per_layer_input=256, vocab_size_per_layer_input=262144, layer_types=_pattern(35, 5)),
    "e4b": dict(_COMMON, hidden_size=2560, num_hidden_layers=42, num_attention_heads=8, num_key_value_heads=2,
                intermediate_size=10240, num_kv_shared_layers=18, sliding_window=512,
                hidden_size_per_layer_input=256, vocab_size_per_layer_input=262144, layer_types=_pattern(42, 6)),
    "26b-a4b": dict(_COMMON, hidden_size=2816, num_hidden_layers=30, num_attention_heads=16, num_key_value_heads=8,
                    num_global_key_value_heads=2, attention_k_eq_v=True, intermediate_size=2112, sliding_window=1024,
                    enable_moe_block=True, num_experts=128, top_k_experts=8, moe_intermediate_size=704,
                    hidden_size_per_layer_input=0, layer_types=_pattern(30, 6)),
    "31b": dict(_COMMON, hidden_size=5376, num_hidden_layers=60, num_attention_heads=32, num_key_value_heads=16,
                num_global_key_value_heads=4, attention_k_eq_v=True, intermediate_size=21504, sliding_window=1024,
                hidden_size_per_layer_input=0, layer_types=_pattern(60, 6)),
}


def release_config(name: str, n_layers: int | None = None) -> dict:
    """The multimodal config.json of a release (`Gemma4ForConditionalGeneration`), optionally
    cut to `n_layers` layers with the same per-layer shapes: the first non-shared layers of
    the release's pattern (the last of them made full attention, as llama.cpp requires of a
    KV store) followed by its last KV-shared layers, keeping the share of shared layers."""
    text = dict(RELEASES[name])
    full = text["num_hidden_layers"]
    if n_layers is not None and n_layers != full:
        shared = round(text.get("num_kv_shared_layers", 0) * n_layers / full)
        own = n_layers - shared
        if own < 2 or n_layers > full:
            raise ValueError(f"{name}: cannot cut {full} layers to {n_layers}")
        types = text["layer_types"]
        head = types[:own]
        head[-1], head[-2] = F, S
        text["layer_types"] = head + (types[full - shared :] if shared else [])
        text["num_kv_shared_layers"] = shared
        text["num_hidden_layers"] = n_layers
    return {
        "architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "text_config": text,
        "vision_config": {"model_type": "gemma4_vision"}, "audio_config": {"model_type": "gemma4_audio"},
        "tie_word_embeddings": True,
    }


def gemma3_config(spec) -> dict:
    """config.json of a `Gemma3ForCausalLM` with `spec`'s architecture, as transformers 5 writes it: the inverse
    of models.spec.spec_from_hf_config for Gemma 3 (a compressed-tensors build of a GGUF source needs one)."""
    if spec.arch != "gemma3":
        raise UnsupportedModel("a Hugging Face config can be made for Gemma 3 GGUF sources only; build Gemma 4 "
                               "safetensors from its Hugging Face checkpoint")
    first = spec.layers[0]
    full = next((l for l in spec.layers if not l.sliding), first)
    slide = next((l for l in spec.layers if l.sliding), first)
    full_rope = {"rope_type": "linear", "factor": full.rope_scale} if full.rope_scale != 1 else {"rope_type": "default"}
    qpas = round(spec.attn_scale ** -2, 6)
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size, "intermediate_size": first.ffn_dim, "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads, "num_key_value_heads": first.n_kv_heads, "head_dim": first.head_dim,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.rms_eps, "pad_token_id": 0, "eos_token_id": spec.eos_token_id,
        "bos_token_id": spec.bos_token_id, "tie_word_embeddings": True,
        "rope_parameters": {"full_attention": {**full_rope, "rope_theta": full.rope_theta},
                            "sliding_attention": {"rope_type": "default", "rope_theta": slide.rope_theta}},
        "attention_bias": False, "query_pre_attn_scalar": int(qpas) if qpas.is_integer() else qpas,
        "sliding_window": spec.sliding_window, "layer_types": [S if l.sliding else F for l in spec.layers],
        "final_logit_softcapping": spec.final_logit_softcap, "attn_logit_softcapping": None,
        "dtype": "float32",
    }
