"""The user's per-tensor types, as llama-quantize takes them (src/llama-quant.cpp llama_tensor_get_type):

    --token-embedding-type T   token_embd and per_layer_token_embd (the latter unless a --tensor-type names it)
    --output-tensor-type T     output.weight; for a tied embedding (Gemma) token_embd, unless
                               --token-embedding-type or a --tensor-type names it
    --tensor-type REGEX=T      every other tensor whose GGUF name REGEX (lowercased, as llama-quantize does)
                               matches anywhere (std::regex_search); the first matching pattern wins; repeatable

Only quantizable tensors take an override (the tensor table's `fixed` ones stay F32), and a type whose block
does not divide a tensor's rows becomes llama.cpp's fallback for it (registry.fallback_type).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from quantkit.errors import BadOption
from quantkit.kernels import registry
from quantkit.tensor_table import TensorTable

TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")


@dataclass(frozen=True)
class Overrides:
    tensor_types: tuple[tuple[str, str], ...] = ()  # (regex, type), in the order given
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None

    @classmethod
    def parse(cls, tensor_types: tuple[str, ...] = (), token_embedding_type: str | None = None,
              output_tensor_type: str | None = None) -> "Overrides":
        pairs = []
        for spec in tensor_types:
            pattern, sep, t = spec.partition("=")  # as tools/quantize parse_tensor_type: the first '=', lowercased
            pattern = pattern.lower()
            if not sep or not pattern:
                raise BadOption(f"--tensor-type {spec!r}: expected REGEX=TYPE, e.g. attn_v=Q8_0")
            try:
                re.compile(pattern)
            except re.error as e:
                raise BadOption(f"--tensor-type {spec!r}: {pattern!r} is not a regular expression ({e})") from None
            pairs.append((pattern, _type(f"--tensor-type {spec}", t)))
        return cls(tuple(pairs), token_embedding_type and _type("--token-embedding-type", token_embedding_type),
                   output_tensor_type and _type("--output-tensor-type", output_tensor_type))

    def __bool__(self) -> bool:
        return bool(self.tensor_types or self.token_embedding_type or self.output_tensor_type)

    def label(self) -> list[str]:
        """The overrides as command-line flags."""
        return ([f"--tensor-type {p}={t}" for p, t in self.tensor_types]
                + ([f"--token-embedding-type {self.token_embedding_type}"] if self.token_embedding_type else [])
                + ([f"--output-tensor-type {self.output_tensor_type}"] if self.output_tensor_type else []))


@dataclass
class Applied:
    """What the overrides did to one model: canonical name -> forced type, and which tensors each flag matched."""

    types: dict[str, str] = field(default_factory=dict)
    matched: dict[str, list[str]] = field(default_factory=dict)  # flag -> GGUF names


def _type(flag: str, t: str) -> str:
    name = t.upper()
    if name not in registry.TYPES:
        raise BadOption(f"{flag}: unknown tensor type {t!r}; expected one of {', '.join(registry.TYPES)}")
    return name


def apply(overrides: Overrides, table: TensorTable) -> Applied:
    """The types `overrides` force on `table`'s tensors (see the module doc). An override that matches no tensor is
    an error: a typo would otherwise build silently without it."""
    out = Applied({}, {flag: [] for flag in overrides.label()})
    tied = not any(row.gguf == "output.weight" for row in table.values())
    patterns = [(re.compile(p), t, f"--tensor-type {p}={t}") for p, t in overrides.tensor_types]
    for row in table.values():
        if row.fixed:
            continue
        named = next(((t, flag) for rx, t, flag in patterns if rx.search(row.gguf)), None)
        t = flag = None
        if overrides.token_embedding_type and row.gguf in TOKEN_EMBD and not (
                row.gguf == "per_layer_token_embd.weight" and named):
            t, flag = overrides.token_embedding_type, f"--token-embedding-type {overrides.token_embedding_type}"
        elif overrides.output_tensor_type and row.gguf == "output.weight":
            t, flag = overrides.output_tensor_type, f"--output-tensor-type {overrides.output_tensor_type}"
        elif named:
            t, flag = named
        elif overrides.output_tensor_type and tied and row.gguf in TOKEN_EMBD:
            t, flag = overrides.output_tensor_type, f"--output-tensor-type {overrides.output_tensor_type}"
        if t is not None:
            out.types[row.name] = registry.fallback_type(t, row.cols)
            out.matched[flag].append(row.gguf)
    unused = [flag for flag, hits in out.matched.items() if not hits]
    if unused:
        raise BadOption(f"{unused[0]}: matches no quantizable tensor of this model")
    return out
