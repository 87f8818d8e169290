"""Tiny random transformers Gemma models, built deterministically, for tests that need an oracle.

Each builder returns (hf_model, hf_config_dict): an fp32 eager `Gemma4ForCausalLM` / `Gemma3ForCausalLM` in eval
mode, and what its config.json would contain (`model.config.to_dict()`). Every weight is re-drawn at a realistic
scale, including the norms, `layer_scalar` and router scales that transformers initialises to ones/zeros, so a
forward that ignores one of them does not match by accident.

    gemma4_e      E-style: PLE + KV sharing + double-wide MLP, 7 layers S,S,F,S,S,F,F (4 KV-shared), softcap 30
    gemma4_moe    26B-style: MoE (4 experts, top-2) + K=V + global KV heads on full layers, softcap 30
    gemma4_dense  31B-style: dense, K=V + global KV heads, softcap 30
    gemma3        Gemma3ForCausalLM: 5S+1F, linear RoPE scaling on the full layer, query_pre_attn_scalar != head_dim

Sliding windows are 16 tokens, so sequences of ~40 tokens exercise the sliding mask.
"""

from __future__ import annotations

import tempfile

import torch

VOCAB = 512
WINDOW = 16


def _gemma4(seed: int, **kw) -> tuple[torch.nn.Module, dict]:
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    base = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, global_head_dim=64, sliding_window=WINDOW, max_position_embeddings=1024,
        hidden_size_per_layer_input=0, vocab_size_per_layer_input=VOCAB, final_logit_softcapping=30.0,
        attn_implementation="eager", experts_implementation="eager",
    )
    base.update(kw)
    config = Gemma4TextConfig(**base)
    torch.manual_seed(seed)
    model = Gemma4ForCausalLM(config).eval()
    randomize_(model, "gemma4", seed)
    return model, model.config.to_dict()


def gemma4_e(seed: int = 0):
    S, F = "sliding_attention", "full_attention"
    return _gemma4(
        seed, num_hidden_layers=7, layer_types=[S, S, F, S, S, F, F], num_kv_shared_layers=4,
        use_double_wide_mlp=True, hidden_size_per_layer_input=16, num_key_value_heads=1,
    )


def gemma4_moe(seed: int = 1):
    S, F = "sliding_attention", "full_attention"
    return _gemma4(
        seed, num_hidden_layers=5, layer_types=[S, S, F, S, F], intermediate_size=96,
        attention_k_eq_v=True, num_global_key_value_heads=1,
        enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
    )


def gemma4_dense(seed: int = 2):
    S, F = "sliding_attention", "full_attention"
    return _gemma4(
        seed, num_hidden_layers=4, layer_types=[S, S, F, F], num_key_value_heads=4,
        attention_k_eq_v=True, num_global_key_value_heads=2,
    )


def gemma3(seed: int = 3):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=WINDOW,
        max_position_embeddings=1024,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    randomize_(model, "gemma3", seed)
    return model, model.config.to_dict()


BUILDERS = {"gemma4_e": gemma4_e, "gemma4_moe": gemma4_moe, "gemma4_dense": gemma4_dense, "gemma3": gemma3}


def build(name: str):
    return BUILDERS[name]()


@torch.no_grad()
def randomize_(model: torch.nn.Module, arch: str, seed: int) -> None:
    """Re-draw every parameter and persistent buffer in place from `seed`.

    Linear / expert weights ~ N(0, 1/in_features); embeddings ~ N(0, 0.3^2); router projection ~ N(0, 1) so the
    routing is decisive. Norm multipliers land in [0.5, 1.5] (Gemma 3 stores w of the (1 + w) form, so w is drawn
    in [-0.5, 0.5]); layer_scalar, router.scale and per_expert_scale likewise in [0.5, 1.5].
    """
    g = torch.Generator().manual_seed(1000 + seed)
    tensors = dict(model.named_parameters())
    tensors.update((n, b) for n, b in model.named_buffers() if n.endswith("layer_scalar"))
    for name, t in sorted(tensors.items()):
        is_norm = t.ndim == 1 and "norm" in name.split(".")[-2]
        if is_norm or name.endswith(("layer_scalar", "router.scale", "per_expert_scale")):
            lo = -0.5 if arch == "gemma3" and is_norm else 0.5
            t.copy_(torch.rand(t.shape, generator=g) + lo)
        elif "embed_tokens" in name:
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
        elif name.endswith("router.proj.weight"):
            t.copy_(torch.randn(t.shape, generator=g))
        elif t.ndim >= 2:
            t.copy_(torch.randn(t.shape, generator=g) * t.shape[-1] ** -0.5)
        else:
            raise AssertionError(f"tiny model: no rule to randomize {name} {tuple(t.shape)}")


def hf_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """The same model as `from_pretrained(..., dtype=torch.bfloat16)` would load it: parameters and persistent
    buffers in bf16, RoPE inverse frequencies still fp32 (`model.to(bfloat16)` would round those too)."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager"
        ).eval()


def random_ids(batch: int = 2, length: int = 40, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
