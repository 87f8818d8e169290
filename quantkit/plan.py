"""The plan: which ggml type every tensor of a build gets, and what it costs.

Three ways to make one:
  uniform(T)      every quantizable tensor at T (llama.cpp's fallback where rows don't fit T's block)
  like(PRESET)    llama-quantize's own per-tensor choices for PRESET (quantkit.recipes)
  budget(BYTES)   per-tensor types minimising the total estimated error under a byte budget
                  (quantkit.allocate); `--bits B` sets the budget with `bits_budget`

Norms, 1-D tensors, `.scale` tensors and the MoE router stay F32, as llama.cpp's
converter writes them. A plan needs only the headers (names and shapes), so
`--dry-run` can print it in seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

from quantkit import recipes
from quantkit.allocate import Option, allocate
from quantkit.errors import BadOption
from quantkit.formats import names
from quantkit.formats.source import TensorInfo
from quantkit.inspect import GROUPS, group_of
from quantkit.kernels import registry
from quantkit.models.spec import ModelSpec

UNIFORM_BITS = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 8: "Q8_0"}
# Candidates of the budget allocator, by the block size the rows allow.
CANDIDATES_256 = ("IQ2_XXS", "IQ2_XS", "Q2_K", "IQ3_XXS", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
CANDIDATES_32 = ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
NEEDS_DATA = tuple(t for t in CANDIDATES_256 if registry.get(t).needs_imatrix)
LOOKUP_TABLES = ("embed_tokens.weight", "embed_tokens_per_layer.weight")

ErrorFn = Callable[[str, str], float]  # (canonical name, type) -> estimated error


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    type: str
    nbytes: int
    group: str


@dataclass
class Plan:
    mode: str
    tensors: dict[str, PlannedTensor]
    budget: int | None = None

    @property
    def types(self) -> dict[str, str]:
        return {n: t.type for n, t in self.tensors.items()}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors.values())

    def by_group(self) -> dict[str, dict]:
        out = {}
        for g in GROUPS:
            rows = [t for t in self.tensors.values() if t.group == g]
            if rows:
                params = sum(math.prod(t.shape) for t in rows)
                b = sum(t.nbytes for t in rows)
                out[g] = {"params": params, "bytes": b, "bpw": 8 * b / params,
                          "types": dict(Counter(t.type for t in rows).most_common())}
        return out


def fixed_type(name: str, shape: tuple[int, ...]) -> str | None:
    """The type of a tensor that is never quantized, or None for a quantizable one."""
    if len(shape) < 2 or names.is_norm(name) or name.endswith(("layer_scalar", ".scale", "per_expert_scale")):
        return "F32"
    if name.endswith("router.proj.weight"):
        return "F32"  # ffn_gate_inp: the converter writes it F32 and llama-quantize never touches it
    return None


def from_types(infos: Mapping[str, TensorInfo], types: Mapping[str, str], mode: str, budget: int | None = None) -> Plan:
    tensors = {}
    for n, info in infos.items():
        t = types[n]
        tensors[n] = PlannedTensor(n, info.shape, t, registry.tensor_nbytes(t, info.shape), group_of(n))
    return Plan(mode, tensors, budget)


def uniform(infos: Mapping[str, TensorInfo], type_name: str) -> Plan:
    registry.get(type_name)  # unknown type -> BadInput
    types = {}
    for n, info in infos.items():
        fixed = fixed_type(n, info.shape)
        types[n] = fixed or registry.fallback_type(type_name, info.shape[-1])
    return from_types(infos, types, f"uniform {type_name}")


def like(spec: ModelSpec, infos: Mapping[str, TensorInfo], preset: str, has_imatrix: bool = False) -> Plan:
    types = recipes.like(preset, spec, infos, has_imatrix)
    for n, info in infos.items():
        fixed = fixed_type(n, info.shape)
        if fixed:
            types[n] = fixed
        elif types[n] in ("BF16", "F32") and len(info.shape) >= 2:
            types[n] = "F16"  # tensors llama-quantize leaves unquantized (per_layer_model_proj)
    missing = sorted({t for t in types.values() if t not in registry.TYPES})
    if missing:
        raise BadOption(f"--like {preset}: llama.cpp would use {', '.join(missing)}, which quantkit cannot encode")
    return from_types(infos, types, f"like {preset.upper()}")


def bits_budget(infos: Mapping[str, TensorInfo], bits: int) -> int:
    """Tensor bytes of a uniform B-bit build: B bits per weight plus one fp16 scale per
    32 weights (B + 0.5 bpw, the size of Q4_0 / Q8_0 at 4 / 8 bits). A tensor whose rows
    don't fit the B-bit K-quant's 256-block counts at llama.cpp's fallback type instead
    (on Gemma 3 270M's 640-wide rows that is Q4_0 for 2 and 3 bits), and never-quantized
    tensors at their fixed type."""
    total = 0
    for n, info in infos.items():
        fixed = fixed_type(n, info.shape)
        kquant = UNIFORM_BITS[bits]
        if fixed:
            total += registry.tensor_nbytes(fixed, info.shape)
        elif info.shape[-1] % registry.get(kquant).block_size == 0:
            total += math.prod(info.shape) * (bits + 0.5) // 8
        else:
            total += registry.tensor_nbytes(registry.fallback_type(kquant, info.shape[-1]), info.shape)
    return int(total)


def candidates(name: str, cols: int, with_data: bool) -> list[str]:
    pool = CANDIDATES_256 if cols % 256 == 0 else CANDIDATES_32
    fits = [t for t in pool if cols % registry.get(t).block_size == 0 and (with_data or t not in NEEDS_DATA)]
    return fits or ["F16"]  # rows no block divides stay F16, as llama.cpp's fallback does


def prior_error(info: TensorInfo, type_name: str) -> float:
    """Data-free estimate for planning without calibration: a uniform quantizer's
    noise power falls as 4^-bits, for every weight of the tensor."""
    return math.prod(info.shape) * 4.0 ** -registry.get(type_name).bits_per_weight


def budget(infos: Mapping[str, TensorInfo], nbytes: int, error: ErrorFn | None = None, with_data: bool = True,
           forced: Mapping[str, str] | None = None, mode: str | None = None) -> Plan:
    """Minimise Σ error(tensor, type) subject to Σ bytes <= nbytes (tensor data only).
    `forced` pins types (e.g. --ple-type); fixed tensors are F32."""
    forced = dict(forced or {})
    fixed_bytes = 0
    items: dict[str, list[Option]] = {}
    for n, info in infos.items():
        t = fixed_type(n, info.shape) or forced.get(n)
        if t:
            forced[n] = t
            fixed_bytes += registry.tensor_nbytes(t, info.shape)
            continue
        est = error or (lambda name, ty, info=info: prior_error(info, ty))
        items[n] = [Option(t, registry.tensor_nbytes(t, info.shape), est(n, t)) for t in candidates(n, info.shape[-1], with_data)]
    if fixed_bytes > nbytes:
        raise BadOption(f"budget of {nbytes:,} bytes is below the fixed-type tensors' {fixed_bytes:,} bytes")
    alloc = allocate(items, nbytes - fixed_bytes)
    return from_types(infos, {**forced, **alloc.types}, mode or f"budget {nbytes:,} bytes", nbytes)
