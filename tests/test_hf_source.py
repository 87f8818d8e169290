"""The Hugging Face directory loader on the real release layout: a tiny random
Gemma4ForConditionalGeneration (vision + audio towers, text under
model.language_model.*) saved by transformers in bf16 and sharded."""

import json

import numpy as np
import pytest
import torch

import tiny_models
from quantkit.errors import BadFile
from quantkit.formats.hf_source import HFSource
from quantkit.models.gemma import Gemma


@pytest.fixture(scope="module")
def multimodal_dir(tmp_path_factory):
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    _, text_cfg = tiny_models.gemma4_e()
    text_cfg = {k: v for k, v in text_cfg.items() if k not in ("architectures", "_name_or_path", "transformers_version")}
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16)
    audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, output_proj_dims=64,
                              subsampling_conv_channels=[8, 4])
    config = Gemma4Config(text_config=text_cfg, vision_config=vision.to_dict(), audio_config=audio.to_dict())
    config.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Gemma4ForConditionalGeneration(config).eval()
    tiny_models.randomize_(model.model.language_model, "gemma4", 0)
    d = tmp_path_factory.mktemp("e_style_mm")
    model.to(torch.bfloat16).save_pretrained(d, max_shard_size="200KB")
    return d


def test_release_layout_loads_and_matches_transformers(multimodal_dir):
    from transformers import Gemma4ForConditionalGeneration

    assert (multimodal_dir / "model.safetensors.index.json").exists()
    src = HFSource(multimodal_dir)
    assert src.skipped["towers"] > 0
    assert all(not n.startswith(("vision", "audio")) for n in src.names())
    assert src.infos["embed_tokens.weight"].dtype == "BF16"

    hf = Gemma4ForConditionalGeneration.from_pretrained(multimodal_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tiny_models.random_ids(2, 40)
    with torch.inference_mode():
        want = hf(input_ids=ids).logits
        got = Gemma(src.spec, src).forward(ids)
    diff = (got - want).abs().max().item()
    assert diff <= 1e-4, diff


def test_redundant_shared_kv_weights_are_ignored(multimodal_dir, tmp_path):
    """The released E2B/E4B files carry k_proj/v_proj/k_norm on KV-shared layers."""
    import shutil

    from safetensors.torch import save_file

    d = tmp_path / "with_extra"
    shutil.copytree(multimodal_dir, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    spec = HFSource(multimodal_dir).spec
    shared = [i for i in range(spec.n_layers) if spec.kv_shared(i)]
    extra = {}
    for i in shared:
        hd, kv = spec.layers[i].head_dim, spec.layers[i].n_kv_heads
        p = f"model.language_model.layers.{i}.self_attn."
        extra[p + "k_proj.weight"] = torch.full((kv * hd, spec.hidden_size), float("nan"), dtype=torch.bfloat16)
        extra[p + "v_proj.weight"] = torch.full((kv * hd, spec.hidden_size), float("nan"), dtype=torch.bfloat16)
        extra[p + "k_norm.weight"] = torch.ones(hd, dtype=torch.bfloat16)
    save_file(extra, d / "extra.safetensors")
    index["weight_map"].update({k: "extra.safetensors" for k in extra})
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    src = HFSource(d)
    assert src.skipped["unused shared-layer K/V"] == 3 * len(shared)
    assert src.names() == HFSource(multimodal_dir).names()


def test_missing_shard_is_a_clear_error(multimodal_dir, tmp_path):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(multimodal_dir, d)
    shard = sorted(d.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(BadFile, match=shard.name):
        HFSource(d)


def test_gemma3_norms_are_stored_as_effective_multipliers(tmp_path):
    model, _ = tiny_models.gemma3()
    model.save_pretrained(tmp_path)
    src = HFSource(tmp_path)
    hf_w = model.model.layers[0].input_layernorm.weight.detach().numpy()
    np.testing.assert_array_equal(src.get("layers.0.input_layernorm.weight"), hf_w + np.float32(1))
