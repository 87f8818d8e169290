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

`multimodal(kind)` wraps one of them in a `Gemma4ForConditionalGeneration` with the release's towers, tiny: a
two-layer vision encoder for every kind and, for "e", a two-layer conformer audio encoder; `save_release` writes it
as the release is laid out (bf16 safetensors, tokenizer, processor_config.json).
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


# The release's processor config: Gemma 4's image processor (mean 0, std 1, 16-pixel patches, 280 soft tokens,
# pooling 3) and its audio feature extractor (128 mel bins at 16 kHz), as llama.cpp's converter reads them.
PROCESSOR_CONFIG = {
    "image_processor": {"image_processor_type": "Gemma4ImageProcessor", "image_mean": [0.0, 0.0, 0.0],
                        "image_std": [1.0, 1.0, 1.0], "patch_size": 16, "max_soft_tokens": 280,
                        "pooling_kernel_size": 3, "do_normalize": False, "do_rescale": True,
                        "rescale_factor": 1 / 255},
    "feature_extractor": {"feature_extractor_type": "Gemma4AudioFeatureExtractor", "feature_size": 128,
                          "sampling_rate": 16000},
    "processor_class": "Gemma4Processor",
}


def multimodal(kind: str = "e", seed: int = 6) -> torch.nn.Module:
    """Gemma4ForConditionalGeneration around the tiny text model `kind` ("e", "dense" or "moe"): a vision tower
    for all, an audio tower for "e" (as E2B/E4B have). Tower weights are transformers' seeded initialisation; the
    audio tower's clipped linears keep their open (±Inf) bounds."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    from transformers.models.gemma4.configuration_gemma4 import Gemma4AudioConfig, Gemma4VisionConfig

    text, _ = {"e": gemma4_e, "dense": gemma4_dense, "moe": gemma4_moe}[kind](seed)
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16, position_embedding_size=64)
    # transformers sizes the subsampler's projection as (channels[0] // 4) * channels[1], i.e. it takes the first
    # conv's channel count for the 128 mel bins (true of the release); llama.cpp uses the mel bins: keep them equal
    audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              subsampling_conv_channels=[128, 4], output_proj_dims=48) if kind == "e" else None
    config = Gemma4Config(text_config=text.config.to_dict(), vision_config=vision.to_dict(),
                          audio_config=audio.to_dict() if audio else None, image_token_id=500, boi_token_id=501,
                          eoi_token_id=502, video_token_id=503, boa_token_id=504, audio_token_id=505,
                          eoa_token_index=506)
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    text_state = {"model.language_model." + k.removeprefix("model."): v for k, v in text.state_dict().items()
                  if k.startswith("model.")}
    missing = model.load_state_dict(text_state, strict=False).missing_keys
    assert not [k for k in missing if "language_model" in k], missing
    return model


def save_release(model: torch.nn.Module, directory, processor: dict | None = PROCESSOR_CONFIG) -> None:
    """bf16 safetensors, the tiny tokenizer and (unless None) processor_config.json, as the release ships."""
    import json
    from pathlib import Path

    import tiny_tokenizer

    model.to(torch.bfloat16).save_pretrained(directory)
    tiny_tokenizer.save(Path(directory), VOCAB)
    if processor is not None:
        (Path(directory) / "processor_config.json").write_text(json.dumps(processor, indent=2))
