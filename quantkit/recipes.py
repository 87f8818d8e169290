"""llama.cpp-equivalent type plans: which ggml type every tensor gets under a llama-quantize preset.

    types = like("Q4_K_M", spec, source.table)   # canonical name -> ggml type name

The rules are llama.cpp's (src/llama-quant.cpp): `tensor_allows_quantization` decides which tensors are quantized
at all (the tensor table's `llama_quantizes`), `llama_tensor_get_type_impl` picks a type from the tensor's category,
the preset (ftype) and the position of the tensor among the model's attn_v / ffn_down / ffn_gate / ffn_up
tensors (or, with experts, its layer number), and
`tensor_type_fallback` (registry.fallback_type) demotes types whose block does not divide the row length.
llama.cpp walks the tensors sorted by (layer number, name) with non-layer tensors first,
counting attn_v tensors as it goes; `_order` reproduces that walk.

Gemma specifics that fall out of the rules: the token embedding is tied to the output, so `token_embd` and
`per_layer_token_embd` (both TOKEN_EMBD) take the output rule (Q6_K, Q5_K for IQ1/IQ2/IQ3_XXS presets, Q8_0 when the
default type's block does not divide the row); norms, 1-D tensors, `ffn_gate_inp`, `per_layer_model_proj` and
`layer_output_scale` are never quantized.
"""

from __future__ import annotations

import re
from typing import Mapping
from dataclasses import dataclass
from quantkit.errors import BadOption
from quantkit.kernels import registry
from quantkit.models.spec import ModelSpec
from quantkit.tensor_table import TensorTable

# preset -> default tensor type (llama_ftype_get_default_type)
PRESETS: dict[str, str] = {
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0",
    "Q2_K": "Q2_K", "Q2_K_S": "Q2_K",
    "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
    "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M",
    "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S",
    "IQ3_XXS": "IQ3_XXS", "IQ3_XS": "IQ3_S", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S",
    "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
}
# ftypes whose tied output / token embedding goes to Q5_K instead of Q6_K (only those quantkit offers are listed)
_LOW_OUTPUT = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ2_M")
# ftypes of llama.cpp's low-bit branch
_IQ2 = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M")
# of those, the ones that take IQ2_XXS for attn_output
_IQ1 = ("IQ1_S", "IQ1_M")
# of those, the ones that take IQ3_S (instead of Q2_K) for attn_v, the first ffn_down tensors and attn_output
_IQ2_SM = ("IQ2_S", "IQ2_M")


def category(gguf_name: str) -> str:
    """tensor_get_category (the same substring tests, in the same order)."""
    if gguf_name == "output.weight":
        return "output"
    if gguf_name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in gguf_name:
            return cat
    return "other"


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(gguf_name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    return int(m.group(1)) if m else -1


def _order(gguf_names: list[str]) -> list[str]:
    """llama_model_loader's weights_map order: by layer number (non-layer tensors = -1 first), then by name."""
    return sorted(gguf_names, key=lambda n: (_layer(n), n))


@dataclass
class _State:
    n_attn_v: int
    n_layer: int
    n_gqa: int
    n_expert: int
    tied: bool
    has_imatrix: bool
    i_attn_v: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0


def _choose(s: _State, ftype: str, t: str, name: str, cat: str, cols: int) -> str:
    """llama_tensor_get_type_impl, restricted to the ftypes in PRESETS (the Falcon and 70B branches cannot apply
    to Gemma and are left out)."""
    if cat == "output" or (s.tied and cat == "token_embd"):
        if cols % registry.block_size(t):
            return "Q8_0"
        if ftype in _LOW_OUTPUT:
            return "Q5_K"
        return t if t == "Q8_0" else "Q6_K"
    if cat == "token_embd":  # untied token embedding
        return "IQ3_S" if ftype in _IQ2_SM + ("IQ3_XXS",) else "Q2_K" if ftype in _IQ2 else t
    if ftype in _IQ2:
        low = "IQ3_S" if ftype in _IQ2_SM else "Q2_K"
        if cat == "attn_v":
            t = "Q4_K" if s.n_gqa >= 4 or s.n_expert >= 4 else low
            s.i_attn_v += 1
        elif s.n_expert == 8 and cat == "attn_k":
            t = "Q4_K"
        elif cat == "ffn_down":
            # the ffn_down tensor count (experts' too), not the layer number, even with experts
            if s.i_ffn_down < s.n_layer // 8:
                t = low
            s.i_ffn_down += 1
        elif cat == "attn_output":
            if s.n_expert == 8:
                t = "Q5_K"
            elif ftype in _IQ1:
                t = "IQ2_XXS"
            elif ftype in _IQ2_SM:
                t = "IQ3_S"
        return t
    if cat == "attn_v":
        if ftype == "Q2_K":
            t = "Q4_K" if s.n_gqa >= 4 else "Q3_K"
        elif ftype == "Q2_K_S" and s.n_gqa >= 4:
            t = "Q4_K"
        elif ftype == "IQ3_XXS":
            t = "Q4_K" if s.n_gqa >= 4 else "IQ3_XXS" if s.has_imatrix else "IQ3_S"
        elif ftype in ("IQ3_XS", "IQ3_S") and s.n_gqa >= 4:
            t = "Q4_K"
        elif ftype == "IQ3_M":
            t = "Q4_K"
        elif ftype == "Q3_K_M":
            t = "Q5_K" if s.i_attn_v < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            t = "Q5_K"
        elif ftype in ("IQ4_NL", "IQ4_XS") and s.n_gqa >= 4:
            t = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(s.i_attn_v, s.n_attn_v):
            t = "Q6_K"
        elif ftype == "Q4_K_S" and s.i_attn_v < 4:
            t = "Q5_K"
        if s.n_expert == 8:
            t = "Q8_0"
        s.i_attn_v += 1
    elif cat == "attn_k":
        if s.n_expert == 8:
            t = "Q8_0"
        elif ftype == "IQ3_XS":
            t = "IQ3_XXS"
        elif ftype == "IQ3_XXS":
            t = "IQ2_S"
    elif cat == "attn_q":
        if ftype == "IQ3_XS":
            t = "IQ3_XXS"
        elif ftype == "IQ3_XXS":
            t = "IQ2_S"
    elif cat == "ffn_down":
        # with experts llama.cpp reads the layer from the name; otherwise it counts ffn_down tensors
        i = _layer(name) if s.n_expert > 1 else s.i_ffn_down
        n = s.n_layer
        if ftype == "Q2_K":
            t = "Q3_K"
        elif ftype == "Q2_K_S":
            if i < n // 8:
                t = "Q4_K"
        elif ftype == "IQ3_XXS" and not s.has_imatrix:
            t = "Q4_K" if i < n // 8 else "Q3_K"
        elif ftype == "Q3_K_M":
            t = "Q5_K" if i < n // 16 else "Q4_K"  # (the Q3_K arm is Falcon-only)
        elif ftype == "IQ3_M" and (i < n // 8 or (s.n_expert == 8 and use_more_bits(i, n))):
            t = "Q4_K"
        elif ftype == "Q3_K_L":
            t = "Q5_K"
        elif ftype == "Q4_K_M":
            if use_more_bits(i, n):
                t = "Q6_K"
        elif i < n // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not s.has_imatrix:
            t = "Q5_K"
        elif ftype == "Q5_K_M" and use_more_bits(i, n):
            t = "Q6_K"
        elif ftype == "Q4_K_S" and i < n // 8:
            t = "Q5_K"
        elif ftype in ("Q4_0", "Q5_0") and s.has_imatrix and i < n // 8:
            t = "Q4_1" if ftype == "Q4_0" else "Q5_1"
        s.i_ffn_down += 1
    elif cat == "attn_output":
        if s.n_expert == 8:
            if ftype in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S",
                         "IQ3_M", "IQ4_XS"):
                t = "Q5_K"
        elif ftype == "Q2_K":
            t = "Q3_K"
        elif ftype == "IQ3_XXS":
            t = "IQ3_S"
        elif ftype == "Q3_K_M":
            t = "Q4_K"
        elif ftype == "Q3_K_L":
            t = "Q5_K"
        elif ftype == "IQ3_M":
            t = "Q4_K"
    elif cat in ("ffn_gate", "ffn_up"):
        # IQ3_XS: the middle layers' gate / up at IQ3_XXS. The position is the layer number with experts, else a
        # count of this category's tensors (each has its own counter)
        count = s.i_ffn_gate if cat == "ffn_gate" else s.i_ffn_up
        i = _layer(name) if s.n_expert > 1 else count
        n = s.n_layer
        if ftype == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            t = "IQ3_XXS"
        if cat == "ffn_gate":
            s.i_ffn_gate += 1
        else:
            s.i_ffn_up += 1
    return t


def like(preset: str, spec: ModelSpec, table: TensorTable, has_imatrix: bool = False,
         manual: Mapping[str, str] | None = None) -> dict[str, str]:
    """The type llama-quantize PRESET gives every tensor of the table (canonical name -> ggml type name).

    `has_imatrix`: whether an importance matrix is given (changes attn_v / ffn_down for some presets, as in
    llama.cpp). `manual`: the user's types (quantkit.overrides), which llama.cpp takes instead of its rules, so
    those tensors do not advance the rules' attn_v / ffn_down / ffn_gate / ffn_up counters either. Tensors
    llama.cpp does not quantize keep their float storage type (F32 if the source's is not a float type). Every type
    the offered presets pick (IQ1_S, IQ1_M, IQ2_S and IQ3_S included) is one quantkit encodes.
    """
    key = preset.upper()
    if key not in PRESETS:
        raise BadOption(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    default = PRESETS[key]
    by_gguf = {row.gguf: row for row in table.values()}
    order = _order(list(by_gguf))
    layer0 = spec.layers[0]
    s = _State(
        n_attn_v=sum(category(g) == "attn_v" for g in order),
        n_layer=spec.n_layers,
        n_gqa=spec.n_heads // layer0.n_kv_heads if layer0.n_kv_heads else 0,
        n_expert=spec.n_experts,
        tied="output.weight" not in by_gguf,
        has_imatrix=has_imatrix,
    )
    plan = {}
    for g in order:
        row = by_gguf[g]
        if not row.llama_quantizes:
            plan[row.name] = row.dtype if row.dtype in registry.FLOATS else "F32"
            continue
        if manual and row.name in manual:
            plan[row.name] = manual[row.name]
            continue
        t = _choose(s, key, default, g, category(g), row.cols)
        plan[row.name] = registry.fallback_type(t, row.cols)
    return {n: plan[n] for n in table}
