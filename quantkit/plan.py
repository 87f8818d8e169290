"""The plan: which ggml type every tensor of a build gets, and what it costs.

Three ways to make one:
  uniform(T)      every quantizable tensor at T (llama.cpp's fallback where rows don't fit T's block)
  like(PRESET)    llama-quantize's own per-tensor choices for PRESET (quantkit.recipes)
  budget(BYTES)   per-tensor types minimising the total estimated error under a byte budget
                  (quantkit.allocate); `--bits B` sets the budget with `bits_budget`

Every plan reads the run's tensor table (quantkit.tensor_table): the tensors it never quantizes stay F32, as
llama.cpp's converter writes them. A plan needs only the headers (names and shapes), so `--dry-run` can print it
in seconds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

from quantkit import recipes
from quantkit.allocate import Option, allocate
from quantkit.errors import BadOption
from quantkit.formats.names import GROUPS
from quantkit.kernels import registry
from quantkit.models.spec import ModelSpec
from quantkit.tensor_table import TensorRow, TensorTable

# --bits B: the type whose block and fallback decide which rows count at B + 0.5 bpw (the largest key <= B)
UNIFORM_BITS = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0"}
BITS_RANGE = (1.1, 8.0)  # below 1.1 + 0.5 bpw no candidate type fits (the smallest, IQ1_S, is 1.5625 bpw)
# Candidates of the budget allocator, by the block size the rows allow: every type quantkit encodes, 1.56 to 8.5 bpw
# (IQ3_S and Q3_K have the same size, 3.4375 bpw; the allocator keeps the one with the lower measured error).
CANDIDATES_256 = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K", "IQ3_XXS", "Q3_K", "IQ3_S", "IQ4_XS",
                  "Q4_K", "Q5_K", "Q6_K", "Q8_0")
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

    def to_json(self) -> bytes:
        """plan.json: the one schema, written beside every build and into the work folder."""
        return json.dumps({"mode": self.mode, "budget": self.budget,
                           "tensors": {n: asdict(t) for n, t in self.tensors.items()}}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, table: TensorTable) -> "Plan":
        d = json.loads(data)
        return from_types(table, {n: t["type"] for n, t in d["tensors"].items()}, d["mode"], d["budget"])


    def summary(self) -> str:
        """The plan as a table by tensor group (printed by compress, written into report.md)."""
        lines = [f"plan: {self.mode}", f"{'group':<12}{'params':>16}{'bytes':>16}{'bpw':>8}  types"]
        for g, v in self.by_group().items():
            types = ", ".join(f"{t}×{c}" for t, c in v["types"].items())
            lines.append(f"{g:<12}{v['params']:>16,}{v['bytes']:>16,}{v['bpw']:>8.3f}  {types}")
        lines.append(f"{'total':<12}{self.n_params:>16,}{self.nbytes:>16,}{8 * self.nbytes / self.n_params:>8.3f}"
                     + (f"  (budget {self.budget:,})" if self.budget else ""))
        return "\n".join(lines)

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


def from_types(table: TensorTable, types: Mapping[str, str], mode: str, budget: int | None = None) -> Plan:
    tensors = {}
    for n, row in table.items():
        t = types[n]
        tensors[n] = PlannedTensor(n, row.shape, t, registry.tensor_nbytes(t, row.shape), row.group)
    return Plan(mode, tensors, budget)


def recipe(path: Path, table: TensorTable) -> Plan:
    """The per-tensor types of an earlier run's plan.json (`--recipe`), for this model's tensor table: every tensor
    must be there with the same shape and a type quantkit can write for it; the first that is not is named."""
    where = f"--recipe {path}"
    try:
        tensors = json.loads(path.read_bytes())["tensors"]
        types = {n: t["type"] for n, t in tensors.items()}
        shapes = {n: tuple(t["shape"]) for n, t in tensors.items()}
    except OSError as e:
        raise BadOption(f"{where}: cannot read it ({e.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadOption(f"{where}: not a quantkit plan.json ({type(e).__name__}: {e})") from None
    for n, row in table.items():
        if n not in types:
            raise BadOption(f"{where}: tensor {row.gguf} ({n}) is not in the recipe: it was made for another model")
        if shapes[n] != row.shape:
            raise BadOption(f"{where}: tensor {row.gguf} has shape {list(shapes[n])} in the recipe, "
                            f"{list(row.shape)} in this model: it was made for another model")
        t = types[n]
        if t not in registry.TYPES:
            raise BadOption(f"{where}: tensor {row.gguf}: {t!r} is not a ggml type quantkit writes")
        if row.fixed and t != row.fixed:
            raise BadOption(f"{where}: tensor {row.gguf} is kept {row.fixed}; the recipe asks for {t}")
        if row.cols % registry.get(t).block_size:
            raise BadOption(f"{where}: tensor {row.gguf}: {t} blocks do not divide its rows of {row.cols}")
    extra = [n for n in types if n not in table]
    if extra:
        raise BadOption(f"{where}: tensor {extra[0]} is not in this model: the recipe was made for another model")
    return from_types(table, types, f"recipe {path.name}")


def uniform(table: TensorTable, type_name: str) -> Plan:
    registry.get(type_name)  # unknown type -> BadInput
    types = {n: row.fixed or registry.fallback_type(type_name, row.cols) for n, row in table.items()}
    return from_types(table, types, f"uniform {type_name}")


def like(spec: ModelSpec, table: TensorTable, preset: str, has_imatrix: bool = False,
         forced: Mapping[str, str] | None = None) -> Plan:
    types = recipes.like(preset, spec, table, has_imatrix, forced)
    for n, row in table.items():
        if row.fixed:
            types[n] = row.fixed
        elif types[n] in ("BF16", "F32"):
            types[n] = "F16"  # tensors llama-quantize leaves unquantized (per_layer_model_proj)
    missing = sorted({t for t in types.values() if t not in registry.TYPES})
    if missing:
        raise BadOption(f"--like {preset}: llama.cpp would use {', '.join(missing)}, which quantkit cannot encode")
    return from_types(table, types, f"like {preset.upper()}")


def bits_budget(table: TensorTable, bits: float) -> int:
    """Tensor bytes of a uniform B-bit build: B bits per weight plus one fp16 scale per
    32 weights (B + 0.5 bpw, the size of Q4_0 / Q8_0 at 4 / 8 bits; B may be fractional).
    A tensor whose rows don't fit the B-bit K-quant's 256-block (UNIFORM_BITS) counts at
    llama.cpp's fallback type instead (on Gemma 3 270M's 640-wide rows that is Q4_0 for 2
    and 3 bits), and never-quantized tensors at their fixed type."""
    lo, hi = BITS_RANGE
    if not lo <= bits <= hi:
        raise BadOption(f"--bits {bits}: expected a number from {lo:g} to {hi:g}")
    total = 0
    kquant = UNIFORM_BITS[max([k for k in UNIFORM_BITS if k <= bits], default=min(UNIFORM_BITS))]
    for row in table.values():
        if row.fixed:
            total += registry.tensor_nbytes(row.fixed, row.shape)
        elif row.cols % registry.get(kquant).block_size == 0:
            total += row.n_params * (bits + 0.5) // 8
        else:
            total += registry.tensor_nbytes(registry.fallback_type(kquant, row.cols), row.shape)
    return int(total)


def candidates(cols: int, with_data: bool) -> list[str]:
    pool = CANDIDATES_256 if cols % 256 == 0 else CANDIDATES_32
    fits = [t for t in pool if cols % registry.get(t).block_size == 0 and (with_data or t not in NEEDS_DATA)]
    return fits or ["F16"]  # rows no block divides stay F16, as llama.cpp's fallback does


def prior_error(row: TensorRow, type_name: str) -> float:
    """Data-free estimate for planning without calibration: a uniform quantizer's
    noise power falls as 4^-bits, for every weight of the tensor."""
    return row.n_params * 4.0 ** -registry.get(type_name).bits_per_weight


def pinned(table: TensorTable, nbytes: int, forced: Mapping[str, str] | None = None, align: int = 1) -> dict[str, str]:
    """The types a budget does not choose: the fixed tensors' and `forced` ones (e.g. --ple-type, --tensor-type);
    an error naming the bytes when they alone do not fit in `nbytes`."""
    pins = {n: row.fixed or forced[n] for n, row in table.items() if row.fixed or n in (forced or {})}
    pinned_bytes = sum(stored_nbytes(t, table[n].shape, align) for n, t in pins.items())
    if pinned_bytes > nbytes:
        raise BadOption(f"budget of {nbytes:,} bytes is below the fixed-type tensors' {pinned_bytes:,} bytes")
    return pins


def stored_nbytes(type_name: str, shape: tuple[int, ...], align: int = 1) -> int:
    """A tensor's bytes at `type_name`, padded to `align` as a file stores it (GGUF: 32)."""
    return -(-registry.tensor_nbytes(type_name, shape) // align) * align


def budget(table: TensorTable, nbytes: int, error: ErrorFn | None = None, with_data: bool = True,
           forced: Mapping[str, str] | None = None, mode: str | None = None, align: int = 1,
           exact: bool = False) -> Plan:
    """Minimise Σ error(tensor, type) subject to Σ bytes <= nbytes (tensor data only, each tensor padded to `align`:
    a file budget counts the padding its format adds; `exact`: to the byte, see quantkit.allocate). `forced` pins
    types (e.g. --ple-type); fixed tensors are F32."""
    pins = pinned(table, nbytes, forced, align)
    items: dict[str, list[Option]] = {}
    for n, row in table.items():
        if n in pins:
            continue
        est = error or (lambda name, ty, row=row: prior_error(row, ty))
        items[n] = [Option(t, stored_nbytes(t, row.shape, align), est(n, t)) for t in candidates(row.cols, with_data)]
    pinned_bytes = sum(stored_nbytes(t, table[n].shape, align) for n, t in pins.items())
    alloc = allocate(items, nbytes - pinned_bytes, exact=exact)
    return from_types(table, {**pins, **alloc.types}, mode or f"budget {nbytes:,} bytes", nbytes)
