"""ModelSpec: the architecture facts every stage needs, parsed once from a
Hugging Face config or from GGUF metadata.

Per-layer geometry differs inside one Gemma 4 model (full layers have a wider
head, maybe other KV-head counts, double-wide MLPs in KV-shared layers), so a
spec holds one `LayerSpec` per decoder layer instead of global numbers.

Norm convention: quantkit always stores the *effective* RMSNorm multiplier.
Gemma 3 checkpoints keep `w` and compute `x * (1 + w)`; the HF loader (formats.hf_source) adds the 1
once (as llama.cpp's converter does), so the forward multiplies by the stored
weight for both architectures.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from quantkit.errors import BadConfig, UnsupportedModel

ARCHES = ("gemma3", "gemma4")
LAYER_TYPES = ("sliding_attention", "full_attention")
MAX_LAYERS = 1024  # bounds per-layer lists before they are built (the largest Gemma has 62 layers)


@dataclass(frozen=True)
class LayerSpec:
    sliding: bool
    head_dim: int
    n_kv_heads: int
    ffn_dim: int  # dense MLP intermediate size (doubled in Gemma 4 double-wide shared layers)
    rope_theta: float
    rope_fraction: float = 1.0  # share of head_dim rotated ("proportional" RoPE: 0.25)
    rope_scale: float = 1.0  # linear position scaling (Gemma 3 large models' global layers)
    kv_source: int | None = None  # KV-shared layer: index of the layer whose K/V it reuses
    k_eq_v: bool = False  # no v_proj: V is the raw k_proj output (Gemma 4 full layers)


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # "gemma3" | "gemma4"
    vocab_size: int
    hidden_size: int
    n_heads: int
    layers: tuple[LayerSpec, ...]
    rms_eps: float = 1e-6
    sliding_window: int = 512
    attn_scale: float = 1.0  # Gemma 4: 1.0; Gemma 3: query_pre_attn_scalar ** -0.5
    final_logit_softcap: float | None = None
    context_length: int = 131072
    ple_dim: int = 0  # hidden_size_per_layer_input; 0 = no Per-Layer Embeddings
    ple_vocab: int = 0
    n_experts: int = 0
    top_k: int = 0
    expert_ffn_dim: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 1
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def moe(self) -> bool:
        return self.n_experts > 0

    def kv_shared(self, i: int) -> bool:
        return self.layers[i].kv_source is not None


def config_number(v, key: str, where: str, kind: type = int, minimum: float | None = 1, maximum: float | None = None):
    """A config or metadata value checked to be a number of `kind` (an integral float counts as an
    integer) in [minimum, maximum]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or (kind is int and not float(v).is_integer()):
        raise BadConfig(f"{where}: {key} is {v!r}; expected {'an integer' if kind is int else 'a number'}")
    v = kind(v)
    if minimum is not None and v < minimum:
        raise BadConfig(f"{where}: {key} is {v}; expected {'a positive integer' if minimum == 1 else f'at least {minimum}'}")
    if maximum is not None and v > maximum:
        raise BadConfig(f"{where}: {key} is {v}; expected at most {maximum}")
    return v


def text_config_of(config: dict, where: str = "config.json") -> tuple[str, dict]:
    """Return (arch, text config dict) for a HF config.json of a supported Gemma."""
    if not isinstance(config, dict):
        raise BadConfig(f"{where}: expected a JSON object, found {type(config).__name__}")
    if not isinstance(config.get("text_config") or {}, dict):
        raise BadConfig(f"{where}: text_config is {config['text_config']!r}; expected a JSON object")
    archs = config.get("architectures") or []
    model_type = config.get("model_type", "")
    if config.get("text_config") and (model_type in ("gemma4", "gemma3") or any("ConditionalGeneration" in a for a in archs)):
        text = dict(config["text_config"])
        model_type = text.get("model_type", model_type)
    else:
        text = config
    if model_type.startswith("gemma4"):
        return "gemma4", text
    if model_type.startswith("gemma3"):
        return "gemma3", text
    raise UnsupportedModel(
        f"{where}: model_type {model_type!r} (architectures {archs}) is not supported; "
        "expected a Gemma 3 or Gemma 4 text model"
    )


def kv_sources(layer_types: list[str], n_shared: int) -> list[int | None]:
    """KV sharing (transformers `kv_sharing_modes`): layers i >= L - S reuse the K/V
    of the *last* non-shared layer of the same attention type."""
    n = len(layer_types)
    first = n - n_shared
    out: list[int | None] = [None] * n
    for i in range(first, n):
        src = [j for j in range(first) if layer_types[j] == layer_types[i]]
        if not src:
            raise BadConfig(f"layer {i} ({layer_types[i]}) is KV-shared but no earlier layer of that type exists")
        out[i] = src[-1]
    return out


def spec_from_hf_config(config: dict, where: str = "config.json") -> ModelSpec:
    """Field by field: a missing, mistyped or out-of-range value is a BadConfig naming the key."""
    try:
        return _spec_from_hf_config(config, where)
    except (TypeError, ValueError, AttributeError, LookupError, ArithmeticError) as e:  # a nested field of the wrong shape
        raise BadConfig(f"{where}: unexpected value in the config ({type(e).__name__}: {e})") from e


def _spec_from_hf_config(config: dict, where: str) -> ModelSpec:
    arch, t = text_config_of(config, where)
    prefix = "" if t is config else "text_config."

    def num(key, default=None, kind=int, minimum=1, maximum=None):
        if t.get(key) is None:
            if default is None:
                raise BadConfig(f"{where}: missing required key {prefix + key!r}")
            return default
        return config_number(t[key], prefix + key, where, kind, minimum, maximum)

    n_layers = num("num_hidden_layers", maximum=MAX_LAYERS)
    hidden = num("hidden_size")
    n_heads = num("num_attention_heads")
    head_dim = num("head_dim", hidden // n_heads)
    n_kv = num("num_key_value_heads", n_heads)
    ffn = num("intermediate_size")
    eps = num("rms_norm_eps", 1e-6, float, None)
    window = num("sliding_window", 4096)
    layer_types = t.get("layer_types") or []
    if not isinstance(layer_types, list):
        raise BadConfig(f"{where}: {prefix}layer_types is {layer_types!r}; expected a list of {' / '.join(LAYER_TYPES)}")
    if bad := [lt for lt in layer_types if lt not in LAYER_TYPES]:
        raise BadConfig(f"{where}: {prefix}layer_types holds {bad[0]!r}; expected {' / '.join(LAYER_TYPES)}")
    layer_types = list(layer_types)
    if arch == "gemma3":
        if not layer_types:
            pattern = int(t.get("sliding_window_pattern", 6))
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
        if len(layer_types) != n_layers:
            raise BadConfig(f"{where}: layer_types has {len(layer_types)} entries, num_hidden_layers is {n_layers}")
        rope = t.get("rope_parameters") or {}
        full_rope = rope.get("full_attention", rope) if isinstance(rope, dict) else {}
        slide_rope = rope.get("sliding_attention", {}) if isinstance(rope, dict) else {}
        theta_full = float(full_rope.get("rope_theta", t.get("rope_theta", 1e6)))
        theta_slide = float(slide_rope.get("rope_theta", t.get("rope_local_base_freq", 1e4)))
        scaling = t.get("rope_scaling") or (full_rope if full_rope.get("rope_type") == "linear" else None)
        full_scale = float(scaling.get("factor", 1.0)) if scaling and scaling.get("rope_type", "linear") == "linear" else 1.0
        layers = tuple(
            LayerSpec(
                sliding=lt == "sliding_attention",
                head_dim=head_dim,
                n_kv_heads=n_kv,
                ffn_dim=ffn,
                rope_theta=theta_slide if lt == "sliding_attention" else theta_full,
                rope_scale=1.0 if lt == "sliding_attention" else full_scale,
            )
            for lt in layer_types
        )
        qpas = float(t.get("query_pre_attn_scalar") or head_dim)
        if t.get("attn_logit_softcapping"):
            raise UnsupportedModel(f"{where}: attn_logit_softcapping is not supported")
        return ModelSpec(
            arch=arch, vocab_size=num("vocab_size"), hidden_size=hidden, n_heads=n_heads, layers=layers,
            rms_eps=eps, sliding_window=window, attn_scale=qpas**-0.5,
            final_logit_softcap=t.get("final_logit_softcapping"),
            context_length=int(t.get("max_position_embeddings", 32768)),
            bos_token_id=int(t.get("bos_token_id", 2) or 2), eos_token_id=_first(t.get("eos_token_id", 1)),
        )

    # Gemma 4 (configuration_gemma4.py __post_init__ / per_layer_config / kv_sharing_modes)
    if not layer_types:
        layer_types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layers)]
    if len(layer_types) != n_layers:
        raise BadConfig(f"{where}: layer_types has {len(layer_types)} entries, num_hidden_layers is {n_layers}")
    layer_types[-1] = "full_attention"  # transformers forces the last layer to full attention
    k_eq_v = bool(t.get("attention_k_eq_v", False))
    overrides = {int(k): v for k, v in (t.get("per_layer_config") or {}).items()}
    if not overrides:
        g_hd = int(t.get("global_head_dim") or 512)
        g_kv = t.get("num_global_key_value_heads")
        o = {"head_dim": g_hd}
        if k_eq_v and g_kv is not None:
            o["num_key_value_heads"] = int(g_kv)
        overrides = {i: o for i, lt in enumerate(layer_types) if lt == "full_attention"}
    rope = t.get("rope_parameters") or {}
    r_slide = rope.get("sliding_attention", {"rope_theta": 1e4})
    r_full = rope.get("full_attention", {"rope_theta": 1e6, "partial_rotary_factor": 0.25, "rope_type": "proportional"})
    n_shared = num("num_kv_shared_layers", 0, minimum=0)
    sources = kv_sources(layer_types, n_shared)
    double = bool(t.get("use_double_wide_mlp", False))
    layers = []
    for i, lt in enumerate(layer_types):
        o = overrides.get(i, {})
        sliding = lt == "sliding_attention"
        r = r_slide if sliding else r_full
        frac = float(r.get("partial_rotary_factor", 1.0)) if r.get("rope_type", "default") == "proportional" else 1.0
        layers.append(
            LayerSpec(
                sliding=sliding,
                head_dim=int(o.get("head_dim", head_dim)),
                n_kv_heads=int(o.get("num_key_value_heads", n_kv)),
                ffn_dim=ffn * (2 if double and sources[i] is not None else 1),
                rope_theta=float(r.get("rope_theta", 1e4 if sliding else 1e6)),
                rope_fraction=frac,
                kv_source=sources[i],
                k_eq_v=k_eq_v and not sliding,
            )
        )
    ple = num("hidden_size_per_layer_input", 0, minimum=0)
    moe = bool(t.get("enable_moe_block", False))
    return ModelSpec(
        arch=arch, vocab_size=num("vocab_size"), hidden_size=hidden, n_heads=n_heads, layers=tuple(layers),
        rms_eps=eps, sliding_window=window, attn_scale=1.0,
        final_logit_softcap=t.get("final_logit_softcapping"),
        context_length=int(t.get("max_position_embeddings", 131072)),
        ple_dim=ple, ple_vocab=num("vocab_size_per_layer_input") if ple else 0,
        n_experts=num("num_experts") if moe else 0,
        top_k=num("top_k_experts") if moe else 0,
        expert_ffn_dim=num("moe_intermediate_size") if moe else 0,
        bos_token_id=int(t.get("bos_token_id", 2) or 2), eos_token_id=_first(t.get("eos_token_id", 1)),
    )


def _first(v) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


def tensor_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every text tensor a checkpoint of `spec` holds (canonical names, PyTorch
    shapes, as transformers' Gemma 3 / Gemma 4 text models define their parameters),
    in checkpoint order."""
    h, v = spec.hidden_size, spec.vocab_size
    out: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (v, h)}
    if spec.ple_dim:
        lp = spec.n_layers * spec.ple_dim
        out["embed_tokens_per_layer.weight"] = (spec.ple_vocab, lp)
        out["per_layer_model_projection.weight"] = (lp, h)
        out["per_layer_projection_norm.weight"] = (spec.ple_dim,)
    for i, layer in enumerate(spec.layers):
        p = f"layers.{i}."
        q = spec.n_heads * layer.head_dim
        kv = layer.n_kv_heads * layer.head_dim
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (q, h)
        out[p + "self_attn.q_norm.weight"] = (layer.head_dim,)
        if layer.kv_source is None:
            out[p + "self_attn.k_proj.weight"] = (kv, h)
            out[p + "self_attn.k_norm.weight"] = (layer.head_dim,)
            if not layer.k_eq_v:
                out[p + "self_attn.v_proj.weight"] = (kv, h)
        out[p + "self_attn.o_proj.weight"] = (h, q)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "pre_feedforward_layernorm.weight"] = (h,)
        out[p + "mlp.gate_proj.weight"] = (layer.ffn_dim, h)
        out[p + "mlp.up_proj.weight"] = (layer.ffn_dim, h)
        out[p + "mlp.down_proj.weight"] = (h, layer.ffn_dim)
        out[p + "post_feedforward_layernorm.weight"] = (h,)
        if spec.arch == "gemma4":
            out[p + "layer_scalar"] = (1,)
        if spec.ple_dim:
            out[p + "per_layer_input_gate.weight"] = (spec.ple_dim, h)
            out[p + "per_layer_projection.weight"] = (h, spec.ple_dim)
            out[p + "post_per_layer_input_norm.weight"] = (h,)
        if spec.moe:
            e, f = spec.n_experts, spec.expert_ffn_dim
            out[p + "router.proj.weight"] = (e, h)
            out[p + "router.scale"] = (h,)
            out[p + "router.per_expert_scale"] = (e,)
            out[p + "experts.gate_up_proj"] = (e, 2 * f, h)
            out[p + "experts.down_proj"] = (e, h, f)
            out[p + "pre_feedforward_layernorm_2.weight"] = (h,)
            out[p + "post_feedforward_layernorm_1.weight"] = (h,)
            out[p + "post_feedforward_layernorm_2.weight"] = (h,)
    out["norm.weight"] = (h,)
    return out
