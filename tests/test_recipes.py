"""llama.cpp-equivalent type plans on synthetic specs; expectations are written out by hand from llama-quant.cpp's
rules (llama_tensor_get_type_impl). The real check against llama_model_quantize is in
tests/integration/test_recipes_llamacpp.py."""

from __future__ import annotations

import pytest

from quantkit.errors import BadOption
from quantkit.formats.source import TensorInfo
from quantkit.models.spec import LayerSpec, ModelSpec
from quantkit.recipes import like, use_more_bits
from quantkit.tensor_table import TensorTable

N = 16  # layers; n/8 = 2, 7n/8 = 14
MORE_BITS = {0, 1, 4, 7, 10, 13, 14, 15}  # i < 2, i >= 14, (i - 2) % 3 == 2


def spec_infos(hidden=512, n_kv=1, ple=256, v_in_every_layer=True):
    layers = tuple(LayerSpec(sliding=True, head_dim=256, n_kv_heads=n_kv, ffn_dim=1024, rope_theta=1e4) for _ in range(N))
    spec = ModelSpec(arch="gemma4", vocab_size=1024, hidden_size=hidden, n_heads=4, layers=layers, ple_dim=ple,
                     ple_vocab=1024 if ple else 0)
    shapes = {"embed_tokens.weight": (1024, hidden), "norm.weight": (hidden,)}
    if ple:
        shapes.update({"embed_tokens_per_layer.weight": (1024, N * ple),
                       "per_layer_model_projection.weight": (N * ple, hidden),
                       "per_layer_projection_norm.weight": (ple,)})
    for i in range(N):
        p = f"layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (1024, hidden), p + "self_attn.k_proj.weight": (256 * n_kv, hidden),
                       p + "self_attn.o_proj.weight": (hidden, 1024), p + "mlp.gate_proj.weight": (1024, hidden),
                       p + "mlp.up_proj.weight": (1024, hidden), p + "mlp.down_proj.weight": (hidden, 1024),
                       p + "input_layernorm.weight": (hidden,), p + "self_attn.q_norm.weight": (256,),
                       p + "layer_scalar": (1,)})
        if v_in_every_layer or i % 2 == 0:
            shapes[p + "self_attn.v_proj.weight"] = (256 * n_kv, hidden)
        if ple:
            shapes.update({p + "per_layer_input_gate.weight": (ple, hidden), p + "per_layer_projection.weight": (hidden, ple)})
    infos = {n: TensorInfo(n, s, "F32" if len(s) == 1 else "BF16", 0, n) for n, s in shapes.items()}
    return spec, TensorTable.from_infos(infos)


def layer_types(plan, suffix):
    return [plan[f"layers.{i}.{suffix}"] for i in range(N) if f"layers.{i}.{suffix}" in plan]


def test_use_more_bits():
    assert {i for i in range(N) if use_more_bits(i, N)} == MORE_BITS


def test_q4_k_m():
    spec, infos = spec_infos()
    plan = like("Q4_K_M", spec, infos)
    assert layer_types(plan, "mlp.down_proj.weight") == ["Q6_K" if i in MORE_BITS else "Q4_K" for i in range(N)]
    assert layer_types(plan, "self_attn.v_proj.weight") == ["Q6_K" if i in MORE_BITS else "Q4_K" for i in range(N)]
    assert set(layer_types(plan, "self_attn.q_proj.weight")) == {"Q4_K"}
    # tied embeddings: token_embd and per_layer_token_embd take the output rule
    assert plan["embed_tokens.weight"] == "Q6_K" and plan["embed_tokens_per_layer.weight"] == "Q6_K"
    # never quantized: norms, 1-D, per_layer_model_proj (keep their storage type)
    assert plan["norm.weight"] == "F32" and plan["layers.3.layer_scalar"] == "F32"
    assert plan["per_layer_model_projection.weight"] == "BF16"
    # PLE gate / projection are ordinary weights; the projection's 256-wide rows fit Q4_K
    assert plan["layers.0.per_layer_input_gate.weight"] == "Q4_K" and plan["layers.0.per_layer_projection.weight"] == "Q4_K"


def test_attn_v_counter_counts_existing_tensors():
    """i_attention_wv counts attn_v tensors, not layers: with v in every other layer (8 tensors), n = 8."""
    spec, infos = spec_infos(v_in_every_layer=False)
    plan = like("Q4_K_M", spec, infos)
    more = {i for i in range(8) if i < 1 or i >= 7 or (i - 1) % 3 == 2}  # {0, 3, 6, 7}
    assert layer_types(plan, "self_attn.v_proj.weight") == ["Q6_K" if k in more else "Q4_K" for k in range(8)]


def test_q3_k_m_and_q2_k():
    spec, infos = spec_infos()
    plan = like("Q3_K_M", spec, infos)
    assert layer_types(plan, "self_attn.v_proj.weight") == ["Q5_K"] * 2 + ["Q4_K"] * (N - 2)
    assert layer_types(plan, "mlp.down_proj.weight") == ["Q5_K"] + ["Q4_K"] * (N - 1)  # n/16 = 1
    assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"Q4_K"}
    assert set(layer_types(plan, "mlp.up_proj.weight")) == {"Q3_K"}
    plan = like("Q2_K", spec, infos)  # n_gqa = 4 heads / 1 kv head = 4
    assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q4_K"}
    assert set(layer_types(plan, "mlp.down_proj.weight")) == {"Q3_K"}
    assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"Q3_K"}
    spec2, infos2 = spec_infos(n_kv=2)  # n_gqa = 2
    assert set(layer_types(like("Q2_K", spec2, infos2), "self_attn.v_proj.weight")) == {"Q3_K"}


def test_low_bit_presets():
    spec, infos = spec_infos()
    plan = like("IQ2_XXS", spec, infos, has_imatrix=True)
    assert plan["embed_tokens.weight"] == "Q5_K" and plan["embed_tokens_per_layer.weight"] == "Q5_K"
    assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q4_K"}
    assert layer_types(plan, "mlp.down_proj.weight") == ["Q2_K"] * 2 + ["IQ2_XXS"] * (N - 2)
    plan = like("IQ4_XS", spec, infos)
    assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q5_K"}
    assert layer_types(plan, "mlp.down_proj.weight") == ["Q5_K"] * 2 + ["IQ4_XS"] * (N - 2)
    assert set(layer_types(like("IQ4_XS", spec, infos, has_imatrix=True), "mlp.down_proj.weight")) == {"IQ4_XS"}
    plan = like("Q4_0", spec, infos, has_imatrix=True)
    assert layer_types(plan, "mlp.down_proj.weight") == ["Q4_1"] * 2 + ["Q4_0"] * (N - 2)
    assert plan["embed_tokens.weight"] == "Q6_K"


def test_fallbacks_for_rows_that_do_not_fit():
    spec, infos = spec_infos(hidden=640, ple=0)  # 640 % 256 != 0, 640 % 32 == 0
    plan = like("Q4_K_M", spec, infos)
    assert plan["embed_tokens.weight"] == "Q8_0"
    assert plan["layers.0.self_attn.q_proj.weight"] == "Q5_0"  # Q4_K -> Q5_0
    assert plan["layers.0.self_attn.v_proj.weight"] == "Q8_0"  # Q6_K -> Q8_0
    assert plan["layers.2.mlp.down_proj.weight"] == "Q4_K"  # 1024-wide rows keep Q4_K
    plan = like("Q2_K", spec, infos)
    assert plan["layers.0.mlp.up_proj.weight"] == "Q4_0" and plan["layers.0.self_attn.v_proj.weight"] == "Q5_0"
    assert like("IQ4_XS", spec, infos)["layers.0.mlp.up_proj.weight"] == "IQ4_NL"
    assert like("Q5_K_M", spec, infos)["layers.0.mlp.up_proj.weight"] == "Q5_1"


def test_unknown_preset():
    spec, infos = spec_infos()
    with pytest.raises(BadOption):
        like("Q7_K", spec, infos)


MIDDLE = set(range(N // 8, 7 * N // 8))  # IQ3_XS's IQ3_XXS gate / up layers: n/8 <= i < 7n/8 = 2..13


def moe_infos(n_experts, n_kv=1):
    """A Gemma 4 MoE layout (dense MLP beside the experts in every layer), N layers, from models.spec's shapes."""
    from quantkit.models.spec import tensor_shapes

    layers = tuple(LayerSpec(sliding=True, head_dim=256, n_kv_heads=n_kv, ffn_dim=1024, rope_theta=1e4)
                   for _ in range(N))
    spec = ModelSpec(arch="gemma4", vocab_size=1024, hidden_size=512, n_heads=4, layers=layers, n_experts=n_experts,
                     top_k=2, expert_ffn_dim=256)
    infos = {n: TensorInfo(n, s, "F32" if len(s) == 1 else "BF16", 0, n) for n, s in tensor_shapes(spec).items()}
    return spec, TensorTable.from_infos(infos)


def test_iq2_s_and_iq2_m():
    """IQ2_S (default IQ2_XS) and IQ2_M (default IQ2_S) take llama.cpp's IQ1/IQ2 branch, with IQ3_S where IQ2_XXS /
    IQ2_XS take Q2_K: attn_v at n_gqa < 4, the first n/8 ffn_down tensors, and attn_output."""
    spec, infos = spec_infos()  # n_gqa = 4
    spec2, infos2 = spec_infos(n_kv=2)  # n_gqa = 2
    for preset, default in (("IQ2_S", "IQ2_XS"), ("IQ2_M", "IQ2_S")):
        plan = like(preset, spec, infos, has_imatrix=True)
        assert plan["embed_tokens.weight"] == "Q5_K" and plan["embed_tokens_per_layer.weight"] == "Q5_K"
        assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q4_K"}
        assert layer_types(plan, "mlp.down_proj.weight") == ["IQ3_S"] * 2 + [default] * (N - 2)
        assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"IQ3_S"}
        for suffix in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate_proj.weight",
                       "mlp.up_proj.weight"):
            assert set(layer_types(plan, suffix)) == {default}, suffix
        assert plan["layers.0.per_layer_input_gate.weight"] == default
        assert set(layer_types(like(preset, spec2, infos2, has_imatrix=True), "self_attn.v_proj.weight")) == {"IQ3_S"}
        # the imatrix changes nothing in these rules
        assert like(preset, spec, infos) == plan
    # IQ2_XXS keeps Q2_K there
    plan = like("IQ2_XXS", spec2, infos2, has_imatrix=True)
    assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q2_K"}
    assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"IQ2_XXS"}


def test_iq3_xs_iq3_s_iq3_m():
    spec, infos = spec_infos()  # n_gqa = 4
    spec2, infos2 = spec_infos(n_kv=2)  # n_gqa = 2
    for preset in ("IQ3_XS", "IQ3_S", "IQ3_M"):
        plan = like(preset, spec, infos)
        # default IQ3_S; the tied embeddings take Q6_K (not one of the Q5_K presets)
        assert plan["embed_tokens.weight"] == "Q6_K" and plan["embed_tokens_per_layer.weight"] == "Q6_K"
        assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q4_K"}
        assert plan["layers.0.per_layer_input_gate.weight"] == "IQ3_S"
        assert like(preset, spec, infos, has_imatrix=True) == plan
    # attn_v: Q4_K at n_gqa >= 4 for IQ3_XS / IQ3_S, always for IQ3_M
    assert set(layer_types(like("IQ3_XS", spec2, infos2), "self_attn.v_proj.weight")) == {"IQ3_S"}
    assert set(layer_types(like("IQ3_S", spec2, infos2), "self_attn.v_proj.weight")) == {"IQ3_S"}
    assert set(layer_types(like("IQ3_M", spec2, infos2), "self_attn.v_proj.weight")) == {"Q4_K"}

    plan = like("IQ3_XS", spec, infos)
    assert set(layer_types(plan, "self_attn.q_proj.weight")) == {"IQ3_XXS"}
    assert set(layer_types(plan, "self_attn.k_proj.weight")) == {"IQ3_XXS"}
    for suffix in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
        assert layer_types(plan, suffix) == ["IQ3_XXS" if i in MIDDLE else "IQ3_S" for i in range(N)], suffix
    assert set(layer_types(plan, "mlp.down_proj.weight")) == {"IQ3_S"}
    assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"IQ3_S"}

    plan = like("IQ3_S", spec, infos)
    for suffix in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
                   "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
        assert set(layer_types(plan, suffix)) == {"IQ3_S"}, suffix

    plan = like("IQ3_M", spec, infos)
    assert layer_types(plan, "mlp.down_proj.weight") == ["Q4_K"] * 2 + ["IQ3_S"] * (N - 2)
    assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"Q4_K"}
    for suffix in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"):
        assert set(layer_types(plan, suffix)) == {"IQ3_S"}, suffix


def test_iq3_xs_gate_up_counters_skip_overridden_tensors():
    """Dense models: IQ3_XS places gate / up by a count of the tensors the rules saw (one counter each), so a
    user-typed ffn_gate shifts the later gate tensors but not the up ones."""
    spec, infos = spec_infos()
    plan = like("IQ3_XS", spec, infos, manual={"layers.0.mlp.gate_proj.weight": "Q8_0"})
    gate = layer_types(plan, "mlp.gate_proj.weight")
    assert gate[0] == "Q8_0"
    assert gate[1:] == ["IQ3_XXS" if k in MIDDLE else "IQ3_S" for k in range(N - 1)]
    assert layer_types(plan, "mlp.up_proj.weight") == ["IQ3_XXS" if i in MIDDLE else "IQ3_S" for i in range(N)]


def test_new_iq_presets_with_experts():
    spec, infos = moe_infos(4, n_kv=2)  # n_gqa = 2, 4 experts
    plan = like("IQ2_S", spec, infos, has_imatrix=True)
    assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q4_K"}  # n_expert >= 4
    # the IQ2 branch counts ffn_down tensors, dense and experts' alike: n/8 = 2 tensors, both in layer 0
    assert layer_types(plan, "mlp.down_proj.weight") == ["IQ3_S"] + ["IQ2_XS"] * (N - 1)
    assert layer_types(plan, "experts.down_proj") == ["IQ3_S"] + ["IQ2_XS"] * (N - 1)
    assert plan["layers.0.router.proj.weight"] == "BF16"  # ffn_gate_inp: never quantized (its storage type)
    # IQ3_XS with experts: gate / up (and the experts' gate_up, an ffn_gate tensor) by layer number
    plan = like("IQ3_XS", spec, infos)
    for suffix in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "experts.gate_up_proj"):
        assert layer_types(plan, suffix) == ["IQ3_XXS" if i in MIDDLE else "IQ3_S" for i in range(N)], suffix
    assert set(layer_types(plan, "experts.down_proj")) == {"IQ3_S"}
    assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"IQ3_S"}
    # 8 experts: attn_v / attn_k Q8_0, attn_output Q5_K, IQ3_M's ffn_down Q4_K where use_more_bits
    spec8, infos8 = moe_infos(8)
    for preset in ("IQ3_XS", "IQ3_S", "IQ3_M"):
        plan = like(preset, spec8, infos8)
        assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q8_0"}
        assert set(layer_types(plan, "self_attn.k_proj.weight")) == {"Q8_0"}
        assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"Q5_K"}
    plan = like("IQ3_M", spec8, infos8)
    for suffix in ("mlp.down_proj.weight", "experts.down_proj"):
        assert layer_types(plan, suffix) == ["Q4_K" if i in MORE_BITS else "IQ3_S" for i in range(N)], suffix
    plan = like("IQ2_M", spec8, infos8, has_imatrix=True)
    assert set(layer_types(plan, "self_attn.k_proj.weight")) == {"Q4_K"}
    assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"Q5_K"}


def test_new_iq_presets_fall_back_on_640_wide_rows():
    """Gemma 3 270M-like 640-wide rows: the 256-block IQ types fall back to IQ4_NL, Q4_K to Q5_0, and the tied
    embedding to Q8_0 (what the integration test sees on the real 270M)."""
    spec, infos = spec_infos(hidden=640, ple=0)
    for preset in ("IQ2_S", "IQ2_M", "IQ3_XS", "IQ3_S", "IQ3_M"):
        plan = like(preset, spec, infos, has_imatrix=True)
        assert plan["embed_tokens.weight"] == "Q8_0"
        assert plan["layers.5.self_attn.q_proj.weight"] == "IQ4_NL"
        assert plan["layers.5.mlp.up_proj.weight"] == "IQ4_NL"
        assert plan["layers.5.self_attn.v_proj.weight"] == "Q5_0"


def test_iq1_s_and_iq1_m():
    """IQ1_S / IQ1_M take llama.cpp's low-bit branch with the IQ2_XXS choices (Q5_K tied embeddings, Q4_K attn_v at
    n_gqa >= 4 else Q2_K, Q2_K for the first n/8 ffn_down tensors), except attn_output: IQ2_XXS."""
    spec, infos = spec_infos()  # n_gqa = 4
    spec2, infos2 = spec_infos(n_kv=2)  # n_gqa = 2
    for preset in ("IQ1_S", "IQ1_M"):
        plan = like(preset, spec, infos, has_imatrix=True)
        assert plan["embed_tokens.weight"] == "Q5_K" and plan["embed_tokens_per_layer.weight"] == "Q5_K"
        assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q4_K"}
        assert layer_types(plan, "mlp.down_proj.weight") == ["Q2_K"] * 2 + [preset] * (N - 2)
        assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"IQ2_XXS"}
        for suffix in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate_proj.weight",
                       "mlp.up_proj.weight"):
            assert set(layer_types(plan, suffix)) == {preset}, suffix
        assert plan["layers.0.per_layer_input_gate.weight"] == preset
        assert like(preset, spec, infos) == plan  # the imatrix changes nothing in these rules
        assert set(layer_types(like(preset, spec2, infos2, has_imatrix=True), "self_attn.v_proj.weight")) == {"Q2_K"}
        # 8 experts: attn_k Q4_K, attn_output Q5_K, attn_v Q4_K (n_expert >= 4)
        spec8, infos8 = moe_infos(8, n_kv=2)
        plan = like(preset, spec8, infos8, has_imatrix=True)
        assert set(layer_types(plan, "self_attn.k_proj.weight")) == {"Q4_K"}
        assert set(layer_types(plan, "self_attn.o_proj.weight")) == {"Q5_K"}
        assert set(layer_types(plan, "self_attn.v_proj.weight")) == {"Q4_K"}
        assert set(layer_types(plan, "experts.down_proj")[1:]) == {preset}
        # 640-wide rows: IQ4_NL fallbacks, Q8_0 tied embedding; attn_output's 1024-wide rows keep IQ2_XXS
        spec6, infos6 = spec_infos(hidden=640, ple=0)
        plan = like(preset, spec6, infos6, has_imatrix=True)
        assert plan["embed_tokens.weight"] == "Q8_0"
        assert plan["layers.5.self_attn.q_proj.weight"] == "IQ4_NL"
        assert plan["layers.5.mlp.down_proj.weight"] == preset
        assert plan["layers.5.self_attn.o_proj.weight"] == "IQ2_XXS"
        assert plan["layers.5.self_attn.v_proj.weight"] == "Q5_0"  # Q4_K -> Q5_0


def test_iq1_presets_need_an_imatrix_for_their_types():
    from quantkit.kernels import registry

    spec, infos = spec_infos()
    for preset in ("IQ1_S", "IQ1_M"):
        picked = set(like(preset, spec, infos, has_imatrix=True).values())
        assert {preset, "IQ2_XXS"} <= picked and all(t in registry.TYPES for t in picked)
        assert registry.get(preset).needs_imatrix
