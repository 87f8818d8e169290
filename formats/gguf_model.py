"""Gemma 3 / Gemma 4 GGUF files as llama.cpp reads them, from any TensorSource.

    plan = plan_gguf(source, types)                 # what would be written: names, shapes, types, bytes
    write_gguf(source, "out.gguf", types, importance, provenance)

From a Hugging Face directory the file matches what llama.cpp's converter
(`convert_hf_to_gguf.py`, conversion/gemma.py Gemma3Model / Gemma4Model) writes:
the same metadata keys and values, tensor names, F32 for the tensors it always
keeps in F32, the generated `rope_freqs` for Gemma 4's proportional RoPE, the
`embed_tokens` rows trimmed to the tokenizer's size, and the tokenizer (formats.gguf_vocab).
Gemma 3 directories get the same tokenizer.json-based "gemma4" BPE vocabulary (the
converter would read tokenizer.model with sentencepiece instead); the rest is Gemma3Model's.
From a GGUF file it behaves like llama-quantize: every metadata key (tokenizer
included) and `rope_freqs` are carried over, and only the tensor types,
`general.file_type` and the provenance keys change.

`types` maps canonical tensor names to ggml type names; tensors it does not name
are written as F32. Where a type's block does not divide the row length,
llama.cpp's fallback type is used (registry.fallback_type).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from gguf.constants import GGUFValueType, LlamaFileType

import quantkit
from quantkit.errors import BadInput, UnsupportedModel
from quantkit.formats import gguf_vocab, gguf_writer
from quantkit.formats.gguf_source import GGUFSource
from quantkit.formats.gguf_writer import TensorEntry, Value, array, collected, f32, string, u32
from quantkit.formats.source import TensorSource
from quantkit.kernels import registry
from quantkit.models.spec import ModelSpec
from quantkit.tensor_table import kept_f32

ROPE_FREQS = "rope_freqs.weight"
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
PROVENANCE_KEYS = ("recipe", "calibration", "imatrix")
# tensor type -> the llama_ftype whose default type it is (general.file_type of a file mostly of it), K-quants as
# their _M preset
FILE_TYPE = {
    "F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
    "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1",
    "Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M",
    "Q6_K": "MOSTLY_Q6_K", "IQ2_XXS": "MOSTLY_IQ2_XXS", "IQ2_XS": "MOSTLY_IQ2_XS", "IQ3_XXS": "MOSTLY_IQ3_XXS",
    "IQ4_NL": "MOSTLY_IQ4_NL", "IQ4_XS": "MOSTLY_IQ4_XS",
    "IQ2_S": "MOSTLY_IQ2_M", "IQ3_S": "MOSTLY_IQ3_S",  # the ftypes whose default type they are (llama-quant.cpp)
    "IQ1_S": "MOSTLY_IQ1_S", "IQ1_M": "MOSTLY_IQ1_M",
}
CHUNK_VALUES = 1 << 25  # 2-D tensors larger than this (128 MB as float32) are read and quantized in row chunks


@dataclass(frozen=True)
class FileTensor:
    """A tensor as the GGUF file holds it."""

    canonical: str | None  # None for tensors derived here (rope_freqs)
    entry: TensorEntry
    requested: str  # the type asked for (entry.type_name may be llama.cpp's fallback)

    @property
    def nbytes(self) -> int:
        return self.entry.nbytes


def plan_gguf(source: TensorSource, types: Mapping[str, str] | None = None) -> list[FileTensor]:
    """The file's tensors in order: rope_freqs (Gemma 4), then the source's tensors as its tensor table stores
    them, each at the type `types` asks for or llama.cpp's fallback for its rows (F32 where not named)."""
    types = dict(types or {})
    unknown = sorted(set(types) - set(source.infos))
    if unknown:
        raise BadInput(f"the type plan names tensors the model does not have: {', '.join(unknown[:5])}")
    out: list[FileTensor] = []
    rope = _rope_freqs(source)
    if rope is not None:
        out.append(FileTensor(None, TensorEntry(ROPE_FREQS, rope.shape, "F32"), "F32"))
    for row in source.table.values():
        want = registry.get(types.get(row.name, "F32")).name
        if row.fixed and want != row.fixed:
            raise BadInput(f"tensor {row.gguf}: llama.cpp keeps it in F32 (1-D, norm, router or scale); the plan asks for {want}")
        actual = want if want in registry.FLOATS else registry.fallback_type(want, row.cols)
        out.append(FileTensor(row.name, TensorEntry(row.gguf, row.shape, actual), want))
    return out


def file_type(plan: list[FileTensor]) -> int:
    """general.file_type: the type holding most weights among the tensors that may be quantized."""
    counts: dict[str, int] = {}
    for p in plan:
        if not kept_f32(p.entry.name, p.entry.shape):
            counts[p.entry.type_name] = counts.get(p.entry.type_name, 0) + int(np.prod(p.entry.shape))
    quant = {t: n for t, n in counts.items() if t not in registry.FLOATS}
    pool = quant or counts
    top = max(sorted(pool), key=pool.get) if pool else "F32"
    return file_type_of(top)


def file_type_of(type_name: str) -> int:
    """general.file_type of a file whose main type is `type_name` (the llama_ftype it is the default type of)."""
    return int(LlamaFileType[FILE_TYPE[type_name]])


def write_gguf(
    source: TensorSource,
    out_path: Path,
    types: Mapping[str, str] | None = None,
    importance: Mapping[str, np.ndarray] | None = None,
    provenance: Mapping[str, str] | None = None,
    progress: bool = True,
    encoded: Callable[[str], np.ndarray | None] | None = None,
    effort: str = "exact",
) -> Path:
    """Write `source` as a GGUF llama.cpp runs; returns the path. See the module doc.

    `encoded(canonical_name)` may supply a tensor's finished ggml bytes (e.g. from GPTQ);
    when it returns None the tensor is quantized here, with `importance` if given, and
    `effort` for the IQ2/IQ3 grid types' scale search (registry.quantize)."""
    plan = plan_gguf(source, types)
    importance = dict(importance or {})
    extra = sorted(set(importance) - set(source.infos))
    if extra:
        raise BadInput(f"importance given for tensors the model does not have: {', '.join(extra[:5])}")
    for p in plan:  # fail before writing anything
        if registry.get(p.entry.type_name).needs_imatrix and p.canonical not in importance and encoded is None:
            raise BadInput(f"tensor {p.entry.name}: type {p.entry.type_name} needs importance weights (an imatrix)")
    meta = gguf_metadata(source, plan, provenance)
    by_name = {p.entry.name: p for p in plan}
    rope = _rope_freqs(source)

    def encode(entry: TensorEntry) -> np.ndarray:
        p = by_name[entry.name]
        if p.canonical is None:
            return registry.quantize("F32", rope, name=entry.name)
        if encoded is not None and (data := encoded(p.canonical)) is not None:
            return data
        imp = None if entry.type_name in registry.FLOATS else importance.get(p.canonical)
        if len(entry.shape) == 2 and entry.shape[0] * entry.shape[1] > CHUNK_VALUES:
            return _quantize_rows(source, p.canonical, entry, imp, effort)
        return _quantize(entry, source.table.read(p.canonical), imp, effort)

    return gguf_writer.write(Path(out_path), meta, [p.entry for p in plan], encode, progress=progress)


def _quantize_rows(source: TensorSource, canonical: str, entry: TensorEntry, imp: np.ndarray | None, effort: str):
    """A large 2-D tensor (the PLE table, the token embedding) read and quantized in chunks of rows: ggml blocks never
    span rows, so the bytes equal those of the whole tensor quantized at once."""
    rows, cols = entry.shape
    step = max(1, CHUNK_VALUES // cols)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        yield registry.quantize(entry.type_name, source.rows(canonical, start, stop), importance=imp,
                                name=f"{entry.name}[{start}:{stop}]", effort=effort)


def _quantize(entry: TensorEntry, a: np.ndarray, imp: np.ndarray | None, effort: str = "exact") -> np.ndarray:
    if imp is not None:
        imp = np.asarray(imp, np.float32)
        if a.ndim == 3 and imp.ndim == 2:  # experts: one importance row per expert
            if imp.shape != (a.shape[0], a.shape[2]):
                raise BadInput(f"tensor {entry.name}: importance has shape {imp.shape}, expected {(a.shape[0], a.shape[2])}")
            return np.concatenate([
                registry.quantize(entry.type_name, a[e], importance=imp[e], name=f"{entry.name}[{e}]", effort=effort).reshape(-1)
                for e in range(a.shape[0])
            ])
    return registry.quantize(entry.type_name, a, importance=imp, name=entry.name, effort=effort)


# -- rope_freqs ---------------------------------------------------------------------------------

def _rope_freqs(source: TensorSource) -> np.ndarray | None:
    """Gemma 4's proportional RoPE as llama.cpp's NEOX rope with frequency factors
    (Gemma4Model.generate_extra_tensors): 1.0 for the rotated pairs of a full-attention
    head, 1e30 (no rotation) for the rest. A GGUF source's own tensor is carried over."""
    if isinstance(source, GGUFSource):
        t = source.file.tensors.get(ROPE_FREQS)
        return None if t is None else registry.dequantize(t.ggml_type, source.file.raw(ROPE_FREQS), t.shape)
    spec = source.spec
    full = [l for l in spec.layers if not l.sliding]
    if spec.arch != "gemma4" or not full:
        return None
    hd, frac = full[0].head_dim, full[0].rope_fraction
    n_rot = int(hd * frac / 2)
    return np.array([1.0] * n_rot + [1e30] * (hd // 2 - n_rot), dtype=np.float32)


# -- metadata -----------------------------------------------------------------------------------

def gguf_metadata(source: TensorSource, plan: list[FileTensor], provenance: Mapping[str, str] | None = None) -> dict[str, Value]:
    ftype = file_type(plan)
    if isinstance(source, GGUFSource):
        meta = _carried_metadata(source, ftype)
    else:
        config = getattr(source, "config", None)
        if config is None:
            raise UnsupportedModel(f"{source.path}: writing GGUF needs a Hugging Face or GGUF source")
        meta = general_metadata(Path(source.path), source.spec.arch, "model", parameter_counts(p.entry for p in plan))
        meta.update(_hf_metadata(source.spec, config, ftype))
        meta.update(gguf_vocab.hf_tokenizer_metadata(Path(source.path)))
    prov = dict(provenance or {})
    bad = sorted(set(prov) - set(PROVENANCE_KEYS))
    if bad:
        raise BadInput(f"unknown provenance keys {bad}; expected {', '.join(PROVENANCE_KEYS)}")
    meta["quantkit.version"] = string(quantkit.__version__)
    for k in PROVENANCE_KEYS:
        meta[f"quantkit.{k}"] = string(str(prov.get(k, "none")))
    return meta


def _carried_metadata(source: GGUFSource, ftype: int) -> dict[str, Value]:
    """llama-quantize keeps every key and sets general.file_type / general.quantization_version."""
    meta: dict[str, Value] = {}
    for key, value in source.file.metadata.items():
        if key.startswith("quantkit."):
            continue
        vtype, itype = source.file.value_types[key]
        vt = GGUFValueType(vtype)
        meta[key] = Value(vt, value, None if itype is None else GGUFValueType(itype))
    meta["general.quantization_version"] = u32(QUANTIZATION_VERSION)
    meta["general.file_type"] = u32(ftype)
    return meta


def parameter_counts(entries: Iterable[TensorEntry]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, expert count) over the written tensors, counted like
    gguf-py's GGUFWriter.get_total_parameter_count (3-D `_exps.` tensors are per-expert)."""
    total = shared = expert = expert_sum = n_exp = 0
    for e in entries:
        size = int(np.prod(e.shape))
        total += size
        if "_exps." in e.name and len(e.shape) >= 3:
            count = e.shape[0]
            expert += size // count
            expert_sum += count
            n_exp += 1
        else:
            shared += size
    return total, shared, expert, expert_sum // n_exp if n_exp else 0


def general_metadata(path: Path, arch: str, gguf_type: str, counts: tuple[int, int, int, int]) -> dict[str, Value]:
    """general.* as the converter writes them for a checkpoint directory: gguf-py's Metadata heuristics over the
    model card, config and directory name (name, basename, size label, license, sampling, ...)."""
    import gguf

    md = gguf.Metadata.load(None, path, None, counts[0])
    if md.name is None:
        md.name = path.name
    if md.size_label is None and counts[0] > 0:
        md.size_label = gguf.size_label(*counts)
    collector = gguf.GGUFWriter(path=None, arch=arch)
    collector.add_type(gguf_type)
    md.set_gguf_meta_model(collector)
    return collected(collector)


def _ints(values: list[int]) -> Value:
    return array(np.array(values, np.int32), GGUFValueType.INT32)


def _hf_metadata(spec: ModelSpec, config: dict, ftype: int) -> dict[str, Value]:
    """The keys convert_hf_to_gguf.py writes for gemma3 / gemma4, in its order
    (TextModel, then Gemma3Model, then Gemma4Model .set_gguf_parameters). Values come
    from the ModelSpec; the config only decides where the converter writes an array
    instead of a scalar, or leaves a key out."""
    hp = {**config, **(config.get("text_config") or {})}
    arch = spec.arch
    a = f"{arch}."
    layers = spec.layers
    full = [l for l in layers if not l.sliding]
    swa = [l for l in layers if l.sliding]
    n_kv = [l.n_kv_heads for l in layers]
    ffn = [l.ffn_dim for l in layers]

    m: dict[str, Value] = {
        a + "block_count": u32(spec.n_layers),
        a + "context_length": u32(spec.context_length),
        a + "embedding_length": u32(spec.hidden_size),
        a + "feed_forward_length": u32(ffn[0]),
        a + "attention.head_count": u32(spec.n_heads),
        a + "attention.head_count_kv": u32(n_kv[0]),
    }
    if arch == "gemma3" and full and full[0].rope_scale != 1.0:
        m[a + "rope.scaling.type"] = string("linear")
        m[a + "rope.scaling.factor"] = f32(full[0].rope_scale)
    m[a + "rope.freq_base"] = f32(full[0].rope_theta if full else 1e6)
    if swa:
        m[a + "rope.freq_base_swa"] = f32(swa[0].rope_theta)
    m[a + "attention.layer_norm_rms_epsilon"] = f32(spec.rms_eps)
    if spec.moe:
        m[a + "expert_count"] = u32(spec.n_experts)
        m[a + "expert_used_count"] = u32(spec.top_k)
    hd_full = full[0].head_dim if full else layers[0].head_dim
    hd_swa = swa[0].head_dim if swa else hd_full
    m[a + "attention.key_length"] = u32(hd_full if arch == "gemma4" else layers[0].head_dim)
    m[a + "attention.value_length"] = m[a + "attention.key_length"]
    m["general.file_type"] = u32(ftype)
    if spec.final_logit_softcap:
        m[a + "final_logit_softcapping"] = f32(spec.final_logit_softcap)
    if hp.get("sliding_window_pattern", hp.get("_sliding_window_pattern")) != 1:
        m[a + "attention.sliding_window"] = u32(spec.sliding_window)
    if arch == "gemma4":
        m[a + "attention.shared_kv_layers"] = u32(sum(l.kv_source is not None for l in layers))
        m[a + "embedding_length_per_layer_input"] = u32(spec.ple_dim)
        m[a + "attention.sliding_window_pattern"] = array(np.array([l.sliding for l in layers]), GGUFValueType.BOOL)
        m[a + "attention.key_length_swa"] = u32(hd_swa)
        m[a + "attention.value_length_swa"] = u32(hd_swa)
        if spec.moe:
            m[a + "expert_feed_forward_length"] = u32(spec.expert_ffn_dim)
        if hp.get("use_double_wide_mlp") or len(set(ffn)) > 1:
            m[a + "feed_forward_length"] = _ints(ffn)
        full_kv_set = hp.get("num_global_key_value_heads") is not None or any(
            "num_key_value_heads" in (o or {}) and i < len(layers) and not layers[i].sliding
            for i, o in ((int(k), v) for k, v in (hp.get("per_layer_config") or {}).items())
        )
        if full_kv_set or len(set(n_kv)) > 1:
            m[a + "attention.head_count_kv"] = _ints(n_kv)
        m[a + "rope.dimension_count"] = u32(hd_full)
        m[a + "rope.dimension_count_swa"] = u32(int(hd_swa * (swa[0].rope_fraction if swa else 1.0)))
    elif len(set(n_kv)) > 1 or len(set(ffn)) > 1:
        raise UnsupportedModel(f"{arch}: per-layer KV heads or FFN sizes are not supported by llama.cpp's {arch}")
    m["general.quantization_version"] = u32(QUANTIZATION_VERSION)
    return m
