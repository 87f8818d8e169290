"""quantkit's reference Gemma forward against transformers on tiny random models of every variant.

The oracle is transformers' `Gemma4ForCausalLM` / `Gemma3ForCausalLM` (eager attention, eager experts); quantkit's
forward sees only a ModelSpec parsed from config.json and the canonical weights.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from functools import cache

import pytest
import torch

from quantkit.models.gemma import Gemma, hf_state_to_canonical
from quantkit.models.spec import spec_from_hf_config
import tiny_models  # tests/ is on sys.path (pytest rootdir-less test modules)

NAMES = list(tiny_models.BUILDERS)
TOL = 1e-4  # max |Δlogit| in fp32 (the eager formulation matches transformers bit for bit on CPU)


@cache
def tiny(name: str):
    model, config = tiny_models.build(name)
    spec = spec_from_hf_config(config)
    weights = hf_state_to_canonical(model.state_dict(), spec.arch)
    ids = tiny_models.random_ids()
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    return model, spec, weights, ids, ref


def test_tiny_models_exercise_the_variants():
    spec = tiny("gemma4_e")[1]
    assert spec.ple_dim and [l.kv_source for l in spec.layers] == [None, None, None, 1, 1, 2, 2]
    assert spec.layers[3].ffn_dim == 2 * spec.layers[0].ffn_dim  # double-wide MLP in shared layers
    spec = tiny("gemma4_moe")[1]
    assert spec.moe and spec.layers[2].k_eq_v and spec.layers[2].n_kv_heads != spec.layers[0].n_kv_heads
    spec = tiny("gemma4_dense")[1]
    assert not spec.moe and spec.layers[3].k_eq_v and spec.layers[3].head_dim != spec.layers[0].head_dim
    spec = tiny("gemma3")[1]
    assert spec.arch == "gemma3" and spec.layers[-1].rope_scale == 2.0
    assert spec.attn_scale != spec.layers[0].head_dim**-0.5
    ids = tiny("gemma3")[3]
    assert ids.shape[1] > spec.sliding_window


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    _, spec, weights, ids, ref = tiny(name)
    logits = Gemma(spec, weights.__getitem__).forward(ids)
    assert logits.dtype == torch.float32 and logits.shape == ref.shape
    assert ref.std() > 1.0  # the tiny model is not degenerate: there is something to get wrong
    diff = (logits - ref).abs().max().item()
    print(f"{name}: max |Δlogit| = {diff:.3g}")
    assert diff <= TOL


@pytest.mark.parametrize(
    "name, weight",
    [
        ("gemma4_e", "layers.0.layer_scalar"),
        ("gemma4_e", "per_layer_projection_norm.weight"),
        ("gemma4_e", "layers.1.self_attn.k_norm.weight"),  # only reaches the logits through KV-shared layers 3, 4
        ("gemma4_e", "layers.5.mlp.down_proj.weight"),
        ("gemma4_moe", "layers.0.router.per_expert_scale"),
        ("gemma4_moe", "layers.2.self_attn.k_proj.weight"),  # K=V: also the value projection
        ("gemma4_moe", "layers.1.post_feedforward_layernorm_2.weight"),
        ("gemma4_dense", "layers.2.self_attn.q_norm.weight"),
        ("gemma3", "layers.5.self_attn.k_norm.weight"),
    ],
)
def test_a_wrong_weight_breaks_parity(name, weight):
    _, spec, weights, ids, ref = tiny(name)
    w = weights[weight]
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    broken = dict(weights, **{weight: w + 0.2 * w.abs().mean() * noise})
    diff = (Gemma(spec, broken.__getitem__).forward(ids) - ref).abs().max().item()
    assert diff > 100 * TOL


@pytest.mark.parametrize("name", NAMES)
def test_block_api_equals_forward(name):
    _, spec, weights, ids, _ = tiny(name)
    model = Gemma(spec, weights.__getitem__)
    state = model.embed(ids)
    assert state.hidden.shape == (*ids.shape, spec.hidden_size)
    assert (state.ple is None) == (spec.ple_dim == 0)
    for i in range(spec.n_layers):
        before = state.hidden.clone()
        nxt = model.block(i, state)
        assert torch.equal(state.hidden, before)  # the input state is left alone...
        assert torch.equal(model.block(i, state).hidden, nxt.hidden)  # ...so a block can be re-run on it
        state = nxt
    assert not state.kv  # shared K/V are dropped after their last consumer
    assert torch.equal(model.head(state), model.forward(ids))


class CountingGetter:
    def __init__(self, weights, to_numpy=False):
        self.weights, self.to_numpy, self.calls = weights, to_numpy, Counter()

    def __call__(self, name):
        self.calls[name] += 1
        t = self.weights[name]
        if self.to_numpy:
            a = t.numpy().copy()
            a.flags.writeable = False  # like a read-only memory map
            return a
        return t


@pytest.mark.parametrize("name", NAMES)
def test_streaming_equals_kept(name):
    _, spec, weights, ids, ref = tiny(name)
    kept_getter, stream_getter = CountingGetter(weights), CountingGetter(weights, to_numpy=True)
    kept, streamed = Gemma(spec, kept_getter, keep=True), Gemma(spec, stream_getter, keep=False)
    a = kept.forward(ids)
    assert (a - ref).abs().max() <= TOL
    assert torch.equal(streamed.forward(ids), a)
    first = sum(kept_getter.calls.values())
    assert torch.equal(kept.forward(ids), a) and sum(kept_getter.calls.values()) == first  # all cached
    once = Counter(stream_getter.calls)
    assert torch.equal(streamed.forward(ids), a)
    assert stream_getter.calls == once + once  # fetched again on every use, nothing kept
    assert set(stream_getter.calls) <= set(weights)


def test_kv_shared_layers_never_fetch_their_own_kv():
    """The official E2B/E4B checkpoints ship unused k_proj/v_proj/k_norm for the KV-shared layers."""
    _, spec, weights, ids, ref = tiny("gemma4_e")
    H = spec.hidden_size
    extra = {}
    for i, layer in enumerate(spec.layers):
        if layer.kv_source is not None:
            kv_rows = layer.n_kv_heads * layer.head_dim
            for n in ("k_proj", "v_proj"):
                extra[f"layers.{i}.self_attn.{n}.weight"] = torch.full((kv_rows, H), float("nan"))
            extra[f"layers.{i}.self_attn.k_norm.weight"] = torch.full((layer.head_dim,), float("nan"))
    getter = CountingGetter({**weights, **extra})
    assert (Gemma(spec, getter).forward(ids) - ref).abs().max() <= TOL
    assert not set(getter.calls) & set(extra)


@pytest.mark.parametrize("name", NAMES)
def test_observer_sees_every_linear_once(name):
    _, spec, weights, ids, _ = tiny(name)
    tokens = ids.numel()
    model = Gemma(spec, weights.__getitem__)
    seen, experts = Counter(), Counter()
    per_block: list[set[str]] = []

    def observer(weight, x):
        seen[weight] += 1
        assert x.shape == (tokens, weights[weight].shape[-1]), weight
        per_block[-1].add(weight)

    def expert_observer(weight, e, x):
        assert 0 <= e < spec.n_experts
        assert x.shape[1] == weights[weight].shape[-1], weight
        experts[weight] += x.shape[0]

    model.observer, model.expert_observer = observer, expert_observer
    per_block.append(set())
    state = model.embed(ids)
    for i in range(spec.n_layers):
        per_block.append(set())
        state = model.block(i, state)
        assert per_block[-1] == {n for n in weights if n.startswith(f"layers.{i}.") and weights[n].ndim == 2}
    per_block.append(set())
    model.head(state)
    assert per_block[-1] == {"embed_tokens.weight"}  # the tied lm_head

    linear = {n for n, t in weights.items() if t.ndim == 2 and n != "embed_tokens_per_layer.weight"}
    assert set(seen) == linear and set(seen.values()) == {1}
    routed = {n: tokens * spec.top_k for n, t in weights.items() if t.ndim == 3}
    assert dict(experts) == routed


@pytest.mark.parametrize("name", NAMES)
def test_bf16_matches_transformers_bf16(name):
    """In bf16 the blocks do what transformers does in bf16 (norms in fp32, softmax in fp32, embedding scale rounded
    to bf16); only the final softcap is computed in fp32 here, so logits differ by bf16 rounding."""
    model, spec, weights, ids, ref = tiny(name)
    hf = tiny_models.hf_bf16(model)
    hf_weights = hf_state_to_canonical(hf.state_dict(), spec.arch)
    last = {}
    hf.model.layers[-1].register_forward_hook(lambda m, a, out: last.setdefault("h", out))
    with torch.no_grad():
        hf_logits = hf(input_ids=ids, use_cache=False).logits.float()

    ours = Gemma(spec, hf_weights.__getitem__, dtype=torch.bfloat16)
    state = ours.embed(ids)
    for i in range(spec.n_layers):
        state = ours.block(i, state)
    assert state.hidden.dtype == torch.bfloat16
    torch.testing.assert_close(state.hidden, last["h"])
    logits = ours.head(state)
    assert logits.dtype == torch.float32
    assert (logits - hf_logits).abs().max() <= 0.25  # a bf16 ulp or two of the pre-softcap logit
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.85  # and not far from fp32


def test_hf_state_to_canonical():
    t = lambda v: torch.tensor([v])  # noqa: E731
    state = {
        "model.language_model.layers.0.input_layernorm.weight": t(0.25),
        "model.language_model.layers.0.self_attn.q_norm.weight": t(-0.5),
        "model.language_model.layers.0.self_attn.q_proj.weight": t(0.25),
        "model.language_model.embed_tokens.weight": t(3.0),
        "model.language_model.norm.weight": t(0.5),
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight": t(1.0),
        "model.embed_vision.embedding_projection.weight": t(1.0),
        "model.audio_tower.layers.0.norm.weight": t(1.0),
        "model.multi_modal_projector.mm_soft_emb_norm.weight": t(1.0),
        "lm_head.weight": t(3.0),
    }
    g4 = hf_state_to_canonical(state, "gemma4")
    assert g4 == {
        "layers.0.input_layernorm.weight": t(0.25),
        "layers.0.self_attn.q_norm.weight": t(-0.5),
        "layers.0.self_attn.q_proj.weight": t(0.25),
        "embed_tokens.weight": t(3.0),
        "norm.weight": t(0.5),
    }
    g3 = hf_state_to_canonical({k.replace("model.language_model.", "model."): v for k, v in state.items()}, "gemma3")
    assert set(g3) == set(g4)
    assert g3["layers.0.input_layernorm.weight"] == 1.25 and g3["layers.0.self_attn.q_norm.weight"] == 0.5
    assert g3["norm.weight"] == 1.5 and g3["layers.0.self_attn.q_proj.weight"] == 0.25  # only norms shift


def test_numpy_and_half_precision_weights():
    """Getters may return read-only numpy arrays or torch tensors of any float dtype."""
    _, spec, weights, ids, _ = tiny("gemma4_dense")
    as_np = {n: t.half().numpy() for n, t in weights.items()}
    for a in as_np.values():
        a.flags.writeable = False
    as_torch = {n: t.half() for n, t in weights.items()}
    logits = Gemma(spec, as_np.__getitem__).forward(ids)
    assert torch.equal(logits, Gemma(spec, as_torch.__getitem__).forward(ids)) and torch.isfinite(logits).all()


def test_forward_does_not_import_transformers():
    code = "import sys; sys.modules['transformers'] = None; import quantkit.models.gemma"
    subprocess.run([sys.executable, "-c", code], check=True)
