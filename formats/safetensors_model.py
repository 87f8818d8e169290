"""Gemma 3 / Gemma 4 compressed-tensors builds: a Hugging Face directory that transformers and vLLM load.

    schemes = uniform_schemes(source, bits=4, group_size=128)     # canonical name -> IntScheme
    write_safetensors(source, "out/model-w4g128", schemes, importance, provenance)

The source is a Hugging Face checkpoint directory (formats.hf_source), whose names every tensor keeps, or a
Gemma 3 GGUF, written as a Gemma3ForCausalLM directory in float32 (config.json from its spec, its tokenizer.json). Each quantized Linear `<m>.weight` becomes the four tensors of compressed-tensors' "pack-quantized"
format (formats.pack_quantized); codes and scales come from kernels/group.py or, for GPTQ, from `encoded(name)`.

Everything else is copied byte for byte in the source's dtype: norms, scalars, the MoE router and expert
stacks (3-D parameters of one module, which pack-quantized does not cover: it handles Linear and Embedding
modules), the lookup tables (below) and the vision/audio towers. config.json is the
source's with `quantization_config` added (compressed-tensors' QuantizationConfig schema; `ignore` names every Linear or
Embedding module that stays unquantized); shards over `shard_bytes` are split with
model.safetensors.index.json; tokenizer, generation and processor files are copied from the source.
Tensors the source carries but no runtime reads (the KV-shared layers' k/v projections, see
formats.hf_source) are left out.

Lookup tables (`embed_tokens`, `embed_tokens_per_layer`) always stay in the source dtype. compressed-tensors
0.20.0 can compress `torch.nn.Embedding` modules (COMPRESSIBLE_MODULE_TYPES), but transformers 5.23 cannot load
such a Gemma build: the compressed module has no `.weight`, which Gemma's `_init_weights` and the tied
`lm_head` both read (tried with either table, with and without `dequantize=True`), and vLLM's
compressed-tensors path has no quantized Embedding. Google's own w4a16 checkpoints keep them in bf16 too.

Loading in transformers 5.23 with compressed-tensors 0.20.0 (both checked by tests/test_safetensors_writer.py):
the default path decompresses symmetric builds with any number of config groups, into the model's dtype;
asymmetric builds need `quantization_config=CompressedTensorsConfig(dequantize=True)` (the default path sizes
the zero point unpacked and refuses the checkpoint, the library's own asymmetric output included), and that
path decodes every dense module with the first config group's scheme, so it needs a single group (every row a
multiple of the group size: true of Gemma 3 270M, Gemma 4 E2B, E4B and 31B at 128; the 26B-A4B's 2112-wide down
projections take group 64, a second group).

Safety: the whole directory is built under a temporary name beside the destination; every file in it
is written through formats.atomic (each shard verified as formats.safetensors_writer does, each JSON and
copied file read back and compared), the directory is fsynced and renamed into place at the end. Any
failure removes it and leaves the destination as it was.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

import quantkit
from quantkit.errors import BadInput, IOFailure
from quantkit.formats import names, safetensors_writer
from quantkit.formats.atomic import atomic_write, fsync_dir, install_dir, replaceable_dir, temp_dir, umask
from quantkit.formats.hf_source import HFSource, canonical_name
from quantkit.formats.pack_quantized import (CT_FORMAT, CT_VERSION, SCALE_DTYPE, TORCH_DTYPE, IntScheme, fit_group,
                                             pack_int32, pack_zero_points)
from quantkit.formats.safetensors_writer import TensorEntry
from quantkit.formats.source import TensorSource
from quantkit.kernels import group
from quantkit.models.configs import gemma3_config

DEFAULT_SHARD_BYTES = 4 * 10**9
CHUNK_VALUES = 1 << 25  # tensors larger than this are read, quantized and written in chunks of rows
PROVENANCE_KEYS = ("recipe", "calibration", "imatrix")
LOOKUP_TABLES = ("embed_tokens.weight", "embed_tokens_per_layer.weight")
SIDE_FILES = ("generation_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
              "chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


# ---------------------------------------------------------------- the plan


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """A canonical tensor that is the weight of a Linear module a build may compress (the lookup tables and
    the MoE router stay in the source dtype)."""
    return (len(shape) == 2 and name.endswith(".weight") and not names.is_norm(name) and name not in LOOKUP_TABLES
            and not name.endswith("router.proj.weight"))


def uniform_schemes(source: TensorSource, bits: int, group_size: int = 128, symmetric: bool = True
                    ) -> dict[str, IntScheme]:
    """Every quantizable Linear weight at `bits`, with the group size each row length allows (fit_group)."""
    out = {}
    for n, info in source.infos.items():
        if quantizable(n, info.shape):
            out[n] = IntScheme(bits, fit_group(info.shape[1], group_size), symmetric)
    return out


@dataclass(frozen=True)
class BuildTensor:
    """One tensor of the source and what the build stores for it."""

    file_name: str  # the source's name, e.g. model.language_model.layers.0.self_attn.q_proj.weight
    canonical: str | None  # quantkit's name; None for tensors only copied (towers, an untied lm_head)
    shard: Path | None  # the source file holding it; None for a GGUF source (written from its float32 values)
    shape: tuple[int, ...]
    dtype: str  # the source's safetensors dtype
    scheme: IntScheme | None
    entries: tuple[TensorEntry, ...]  # what the build stores

    @property
    def module(self) -> str:
        return self.file_name.removesuffix(".weight")

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


def _entries(file_name: str, shape: tuple[int, ...], dtype: str, s: IntScheme | None) -> tuple[TensorEntry, ...]:
    if s is None:
        return (TensorEntry(file_name, shape, dtype),)
    m = file_name.removesuffix(".weight")
    rows, cols = shape
    out = [TensorEntry(f"{m}.weight_packed", (rows, math.ceil(cols * s.bits / 32)), "I32"),
           TensorEntry(f"{m}.weight_scale", (rows, s.n_groups(cols)), dtype)]
    if not s.symmetric:
        out.append(TensorEntry(f"{m}.weight_zero_point", (math.ceil(rows * s.bits / 32), s.n_groups(cols)), "I32"))
    out.append(TensorEntry(f"{m}.weight_shape", (2,), "I64"))
    return tuple(out)


def plan_safetensors(source: TensorSource, schemes: Mapping[str, IntScheme] | None = None) -> list[BuildTensor]:
    """What would be written, in the source's file order. A Hugging Face source keeps its names and dtypes; a
    Gemma 3 GGUF source becomes a Gemma3ForCausalLM directory (`model.` + canonical names, float32: the GGUF's
    values exactly)."""
    schemes = dict(schemes or {})
    unknown = sorted(set(schemes) - set(source.infos))
    if unknown:
        raise BadInput(f"the plan names tensors the model does not have: {', '.join(unknown[:5])}")
    out = []
    for file_name, canon, shard, shape, dtype in _stored_tensors(source):
        s = schemes.get(canon) if canon is not None else None
        if s is not None:
            _check_scheme(file_name, canon, shape, dtype, s)
        out.append(BuildTensor(file_name, canon, shard, shape, dtype, s, _entries(file_name, shape, dtype, s)))
    return out


def stored_dtype(source: TensorSource, canonical: str) -> str:
    """The dtype a tensor has in the build, which its pack-quantized scales take too: the Hugging Face source's
    own, F32 for a GGUF source (its dequantized values, exactly)."""
    return source.infos[canonical].dtype if isinstance(source, HFSource) else "F32"


def hf_config(source: TensorSource) -> dict:
    """The build's config.json before its quantization_config: the source's own, or one made from a GGUF's spec."""
    return dict(source.config) if isinstance(source, HFSource) else gemma3_config(source.spec)


def _stored_tensors(source: TensorSource) -> Iterator[tuple[str, str | None, Path | None, tuple[int, ...], str]]:
    """(file name, canonical name or None, shard, shape, dtype) of every tensor the build carries."""
    if not isinstance(source, HFSource):
        hf_config(source)  # refuses what cannot become a Hugging Face directory, before anything is read
        for canon, info in source.infos.items():
            yield "model." + canon, canon, None, info.shape, stored_dtype(source, canon)
        return
    for file_name, shard in source.file_shards.items():
        canon = canonical_name(file_name)
        if canon is not None and canon not in source.infos:
            continue  # unused KV-shared k/v projections: nothing reads them
        yield file_name, canon, shard, *source.stored(file_name)


def _check_scheme(file_name: str, canon: str, shape: tuple[int, ...], dtype: str, s: IntScheme) -> None:
    if canon in LOOKUP_TABLES:
        raise BadInput(f"tensor {file_name}: lookup tables stay {dtype} in safetensors builds (transformers "
                       "cannot load a compressed Gemma embedding, vLLM has no quantized Embedding)")
    if not quantizable(canon, shape):
        raise BadInput(f"tensor {file_name}: only 2-D Linear weights can be pack-quantized (shape {shape})")
    if dtype not in TORCH_DTYPE:
        raise BadInput(f"tensor {file_name}: source dtype {dtype} cannot hold the scales")
    if s.group_size != -1 and shape[1] % s.group_size:
        raise BadInput(f"tensor {file_name}: row length {shape[1]} is not a multiple of group size {s.group_size}")


def quantization_config(plan: list[BuildTensor]) -> dict:
    """config.json's `quantization_config` (compressed-tensors QuantizationConfig)."""
    by_scheme: dict[IntScheme, list[BuildTensor]] = {}
    for p in plan:
        if p.scheme is not None:
            by_scheme.setdefault(p.scheme, []).append(p)
    if not by_scheme:
        raise BadInput("the plan quantizes no tensor: a compressed-tensors build needs at least one")

    # The scheme holding the most modules targets the class "Linear"; any other names its modules, which
    # compressed-tensors and vLLM match before class names. Named targets come first: the library's matcher
    # stops at the first target that matches a module and warns about the named ones it never reached.
    key = (lambda s: (s.bits, s.group_size, s.symmetric))
    main = max(sorted(by_scheme, key=key), key=lambda s: len(by_scheme[s]))
    order = sorted((s for s in by_scheme if s != main), key=key) + [main]
    groups = {}
    for i, s in enumerate(order):
        targets = ["Linear"] if s == main else [p.module for p in by_scheme[s]]
        groups[f"group_{i}"] = {"targets": targets, "weights": s.weights_args(), "input_activations": None,
                                "output_activations": None, "format": CT_FORMAT}
    ignore = ["lm_head"]
    towers = []
    for p in plan:
        if p.scheme is not None:
            continue
        if p.canonical is None:
            root = p.file_name.removeprefix("model.").split(".")[0]
            if root != "lm_head" and f"re:.*{root}.*" not in towers:
                towers.append(f"re:.*{root}.*")
        elif len(p.shape) == 2 and p.canonical.endswith(".weight") and not names.is_norm(p.canonical):
            ignore.append(p.module)
    return {"quant_method": "compressed-tensors", "format": CT_FORMAT, "version": CT_VERSION,
            "quantization_status": "compressed", "global_compression_ratio": None, "ignore": ignore + towers,
            "kv_cache_scheme": None, "sparsity_config": {}, "transform_config": {}, "config_groups": groups}


def shards(plan: list[BuildTensor], shard_bytes: int) -> list[list[BuildTensor]]:
    """Consecutive tensors into shards of at most `shard_bytes` (a larger tensor gets a shard of its own)."""
    out: list[list[BuildTensor]] = [[]]
    size = 0
    for p in plan:
        if out[-1] and size + p.nbytes > shard_bytes:
            out.append([])
            size = 0
        out[-1].append(p)
        size += p.nbytes
    return out


def shard_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


# ---------------------------------------------------------------- writing


def write_safetensors(
    source: TensorSource,
    out_dir: Path,
    schemes: Mapping[str, IntScheme],
    importance: Mapping[str, np.ndarray] | None = None,
    provenance: Mapping[str, str] | None = None,
    progress: bool = True,
    encoded: Callable[[str], group.GroupQuant | None] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write the build directory `out_dir` (see the module doc); returns it.

    `schemes` maps canonical names to IntScheme (uniform_schemes makes one). `encoded(canonical)` may supply
    a tensor's finished GroupQuant (e.g. from GPTQ); when it returns None the tensor is quantized here with
    kernels/group.py, weighted by `importance[canonical]` (E[x^2] per input column) if given."""
    out_dir = Path(out_dir)
    plan = plan_safetensors(source, schemes)
    importance = dict(importance or {})
    extra = sorted(set(importance) - set(schemes))
    if extra:
        raise BadInput(f"importance given for tensors the plan does not quantize: {', '.join(extra[:5])}")
    prov = dict(provenance or {})
    bad = sorted(set(prov) - set(PROVENANCE_KEYS))
    if bad:
        raise BadInput(f"unknown provenance keys {bad}; expected {', '.join(PROVENANCE_KEYS)}")
    config = hf_config(source)
    config["quantization_config"] = quantization_config(plan)
    meta = {"format": "pt", "quantkit.version": quantkit.__version__}
    meta.update({f"quantkit.{k}": str(prov.get(k, "none")) for k in PROVENANCE_KEYS})
    parts = shards(plan, shard_bytes)
    files = shard_names(len(parts))
    side = _side_files(source)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    replaceable_dir(out_dir)
    try:
        with temp_dir(out_dir) as tmp:
            from tqdm import tqdm

            bar = tqdm(total=sum(p.nbytes for p in plan), unit="B", unit_scale=True, desc=f"writing {out_dir.name}",
                       disable=not progress, leave=False)
            try:
                for part, name in zip(parts, files):
                    entries = [e for p in part for e in p.entries]
                    chunks = (c for p in part for c in _encode(source, p, importance.get(p.canonical), encoded))
                    safetensors_writer.write(tmp / name, meta, entries, chunks, progress=bar)
            finally:
                bar.close()
            if len(parts) > 1:
                weight_map = {e.name: f for part, f in zip(parts, files) for p in part for e in p.entries}
                index = {"metadata": {"total_size": sum(p.nbytes for p in plan)}, "weight_map": dict(sorted(weight_map.items()))}
                atomic_write(tmp / "model.safetensors.index.json", _json_bytes(index))
            atomic_write(tmp / "config.json", _json_bytes(config))
            for name, data in side.items():
                atomic_write(tmp / name, data)
            os.chmod(tmp, 0o777 & ~umask())
            fsync_dir(tmp)
            install_dir(tmp, out_dir)
    except OSError as e:
        raise IOFailure(f"{out_dir}: writing failed ({e.strerror or e})") from e
    fsync_dir(out_dir.parent)
    return out_dir


def _row_ranges(rows: int, cols: int) -> list[tuple[int, int]]:
    if rows * cols <= CHUNK_VALUES:
        return [(0, rows)]
    step = max(32, CHUNK_VALUES // cols // 32 * 32)  # whole int32 words of the dim-0-packed zero points
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]


def _encode(source: TensorSource, p: BuildTensor, imp: np.ndarray | None,
            encoded: Callable[[str], group.GroupQuant | None] | None) -> Iterator[tuple[str, object]]:
    """(entry name, bytes) pieces of one planned tensor, in each entry's byte order."""
    if p.scheme is None:
        yield from _copy(source, p)
        return
    s, m = p.scheme, p.module
    rows, cols = p.shape
    gq = encoded(p.canonical) if encoded is not None else None
    if gq is not None:
        _check_encoded(p, gq)
        pieces: Iterator[group.GroupQuant] = iter([gq])
    else:
        ranges = _row_ranges(rows, cols)
        pieces = (group.group_quantize(source.get(p.canonical) if len(ranges) == 1 else source.rows(p.canonical, a, b),
                                       s.bits, s.group_size, s.symmetric, importance=imp,
                                       scale_dtype=SCALE_DTYPE[p.dtype], name=p.file_name)
                  for a, b in ranges)
    for q in pieces:
        yield f"{m}.weight_packed", pack_int32(q.codes, s.bits)
        yield f"{m}.weight_scale", _torch_bytes(torch.from_numpy(q.scales).to(TORCH_DTYPE[p.dtype]))
        if not s.symmetric:
            yield f"{m}.weight_zero_point", pack_zero_points(q.zero_points, s.bits)
    yield f"{m}.weight_shape", np.array(p.shape, np.int64)


def _check_encoded(p: BuildTensor, gq: group.GroupQuant) -> None:
    s = p.scheme
    if (gq.bits, gq.group_size, gq.symmetric, gq.codes.shape) != (s.bits, s.group_size, s.symmetric, p.shape):
        raise BadInput(f"tensor {p.file_name}: encoded as {gq.bits}-bit group {gq.group_size} "
                       f"{'sym' if gq.symmetric else 'asym'} {gq.codes.shape}, the plan says {s.label} {p.shape}")
    rounded = torch.from_numpy(gq.scales).to(TORCH_DTYPE[p.dtype]).float().numpy()
    if not np.array_equal(rounded, gq.scales):
        raise BadInput(f"tensor {p.file_name}: encoded scales are not {p.dtype} values (quantize with "
                       f"scale_dtype={SCALE_DTYPE[p.dtype]!r})")


def _side_files(source: TensorSource) -> dict[str, bytes]:
    """Tokenizer, generation and processor files: the source directory's own, or a GGUF's tokenizer.json."""
    if not isinstance(source, HFSource):
        return {"tokenizer.json": source.tokenizer().tok.to_str().encode("utf-8")}
    return {p.name: p.read_bytes() for p in sorted(Path(source.path).iterdir()) if p.name in SIDE_FILES and p.is_file()}


def _copy(source: TensorSource, p: BuildTensor) -> Iterator[tuple[str, object]]:
    """The source tensor's own bytes, in chunks of rows for a large one; a GGUF source's float32 values, norms in
    Gemma 3's stored form (x · (1 + w): w = multiplier - 1)."""
    from safetensors import safe_open

    if p.shard is None:
        a = source.get(p.canonical)
        yield p.file_name, (a - np.float32(1.0) if source.spec.arch == "gemma3" and names.is_norm(p.canonical) else a)
        return
    with safe_open(str(p.shard), framework="pt") as h:
        if len(p.shape) < 2 or math.prod(p.shape) <= CHUNK_VALUES:
            yield p.file_name, _torch_bytes(h.get_tensor(p.file_name))
            return
        sl = h.get_slice(p.file_name)
        step = max(1, CHUNK_VALUES // math.prod(p.shape[1:]))
        for a in range(0, p.shape[0], step):
            yield p.file_name, _torch_bytes(sl[a:a + step])


def _torch_bytes(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _json_bytes(d: dict) -> bytes:
    return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode("utf-8")
