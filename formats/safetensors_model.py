"""Gemma 3 / Gemma 4 compressed-tensors builds: a Hugging Face directory that transformers and vLLM load.

    schemes = uniform_schemes(source, bits=4, group_size=128)     # canonical name -> IntScheme
    write_safetensors(source, "out/model-w4g128", schemes, importance, provenance)

The source must be a Hugging Face checkpoint directory (formats.hf_source). Every tensor keeps the source's
own name. Each quantized Linear `<m>.weight` becomes, in compressed-tensors' "pack-quantized" format
(compressed_tensors/compressors/pack_quantized, quantization.md §5):

    <m>.weight_packed      int32 [out, ceil(in·b/32)]   codes + 2^(b-1), element i at bits i·b.. (little-endian)
    <m>.weight_scale       source dtype [out, in/group] ([out, 1] per channel)
    <m>.weight_zero_point  int32 [ceil(out·b/32), groups], packed the same way along dim 0 (asymmetric only)
    <m>.weight_shape       int64 [2] = [out, in]

and decodes to w = (q - zp) · scale, computed in the dtype the scale has when it is applied
(compressed-tensors `_dequantize`): the stored dtype in the library's decompress (`stored_values` gives exactly
those numbers), the model's dtype after transformers' default load (in fp32 that is group_dequantize's exact
product). Codes and scales come from kernels/group.py (scales rounded to the storage dtype before the codes are
chosen) or, for GPTQ, from `encoded(name)`.

Everything else is copied byte for byte in the source's dtype: norms, scalars, the MoE router and expert
stacks (3-D parameters of one module, which pack-quantized does not cover: it handles Linear and Embedding
modules), the lookup tables (below) and the vision/audio towers. config.json is the
source's with `quantization_config` added (schema: quantization.md §5; `ignore` names every Linear or
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

Safety: the whole directory is built under a temporary name beside the destination; each shard is
verified as formats.safetensors_writer does, each JSON and copied file is read back and compared, all
are fsynced, and the directory is renamed into place at the end. Any failure removes it and leaves the
destination as it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

import quantkit
from quantkit.errors import BadInput, IOFailure, UnsupportedModel
from quantkit.formats import names, safetensors_writer
from quantkit.formats.hf_source import HFSource, _canonical, shard_map
from quantkit.formats.safetensors_writer import TensorEntry
from quantkit.formats.source import TensorSource
from quantkit.kernels import group

CT_FORMAT = "pack-quantized"
CT_VERSION = "0.20.0"  # the compressed-tensors release whose layout and config schema this follows
BITS = (2, 4, 8)  # 3-bit packing changed in compressed-tensors 0.20 (PR #715); 2/4/8 read the same in every release
DEFAULT_SHARD_BYTES = 4 * 10**9
CHUNK_VALUES = 1 << 25  # tensors larger than this are read, quantized and written in chunks of rows
PROVENANCE_KEYS = ("recipe", "calibration", "imatrix")
LOOKUP_TABLES = ("embed_tokens.weight", "embed_tokens_per_layer.weight")
SIDE_FILES = ("generation_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
              "chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")
_TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
SCALE_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@dataclass(frozen=True)
class IntScheme:
    """Weight-only integer quantization of one tensor: b-bit codes, one scale (and zero point) per group
    of `group_size` weights along the row, or per output channel with group_size -1."""

    bits: int
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self):
        if self.bits not in BITS:
            raise BadInput(f"{self.bits}-bit pack-quantized weights are not supported; use one of {BITS}")
        if self.group_size not in group.SUPPORTED_GROUPS:
            raise BadInput(f"group size {self.group_size} is not supported; use one of {group.SUPPORTED_GROUPS}")

    @property
    def label(self) -> str:
        g = "channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits}-{g}" + ("" if self.symmetric else "-asym")

    def weights_args(self) -> dict:
        """The `weights` entry of a config group (compressed-tensors QuantizationArgs)."""
        return {"num_bits": self.bits, "type": "int", "symmetric": self.symmetric,
                "strategy": "channel" if self.group_size == -1 else "group",
                "group_size": self.group_size, "actorder": None, "dynamic": False,
                "block_structure": None, "scale_dtype": None, "zp_dtype": None}

    def n_groups(self, cols: int) -> int:
        return 1 if self.group_size == -1 else cols // self.group_size


# ---------------------------------------------------------------- the int32 packing


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed b-bit codes [rows, cols] (int8) -> int32 [rows, ceil(cols·b/32)]: code + 2^(b-1) of element j
    at bits (j·b) mod 32 of word (j·b) div 32, little-endian (compressed-tensors `pack_to_int32`, b | 32)."""
    if bits not in BITS:
        raise BadInput(f"cannot pack {bits}-bit codes; use one of {BITS}")
    rows, cols = codes.shape
    per = 32 // bits
    u = (codes.astype(np.int32) + (1 << (bits - 1))).astype(np.uint32)
    pad = -cols % per
    if pad:
        u = np.pad(u, ((0, 0), (0, pad)))
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    words = np.bitwise_or.reduce(u.reshape(rows, -1, per) << shifts, axis=2)
    return np.ascontiguousarray(words.astype(np.uint32).view(np.int32))


def unpack_int32(words: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Inverse of pack_int32: int32 [rows, words] -> int8 codes [rows, cols]."""
    per = 32 // bits
    u = words.view(np.uint32)[:, :, None] >> (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    u = (u & np.uint32((1 << bits) - 1)).reshape(words.shape[0], -1)[:, :cols]
    return (u.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)


def pack_zero_points(zps: np.ndarray, bits: int) -> np.ndarray:
    """Zero points [rows, groups] packed along dim 0 -> int32 [ceil(rows·b/32), groups]."""
    return np.ascontiguousarray(pack_int32(np.ascontiguousarray(zps.T), bits).T)


def stored_values(gq: group.GroupQuant, dtype: str) -> np.ndarray:
    """The weights a runtime decodes from the stored tensors, as float32: (q - zp) · scale evaluated in the
    scale's dtype (the float32 product of a 9-bit integer and a bf16/fp16 scale is exact, so this is the
    float32 result rounded once to that dtype)."""
    return torch.from_numpy(group.group_dequantize(gq)).to(_TORCH[dtype]).float().numpy()


# ---------------------------------------------------------------- the plan


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """A canonical tensor that is the weight of a Linear module a build may compress (the lookup tables and
    the MoE router stay in the source dtype)."""
    return (len(shape) == 2 and name.endswith(".weight") and not names.is_norm(name) and name not in LOOKUP_TABLES
            and not name.endswith("router.proj.weight"))


def fit_group(cols: int, group_size: int) -> int:
    """`group_size` if it divides the row, else the largest smaller supported group that does, else -1 (one
    group per output channel)."""
    if group_size == -1:
        return -1
    for g in sorted((g for g in group.SUPPORTED_GROUPS if 0 < g <= group_size), reverse=True):
        if cols % g == 0:
            return g
    return -1


def uniform_schemes(source: TensorSource, bits: int, group_size: int = 128, symmetric: bool = True
                    ) -> dict[str, IntScheme]:
    """Every quantizable Linear weight at `bits`, with the group size each row length allows (fit_group)."""
    out = {}
    for n, info in source.infos.items():
        if quantizable(n, info.shape):
            out[n] = IntScheme(bits, fit_group(info.shape[1], group_size), symmetric)
    return out


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the source and what the build stores for it."""

    file_name: str  # the source's name, e.g. model.language_model.layers.0.self_attn.q_proj.weight
    canonical: str | None  # quantkit's name; None for tensors only copied (towers, an untied lm_head)
    shard: Path  # the source file holding it
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


def plan_safetensors(source: TensorSource, schemes: Mapping[str, IntScheme] | None = None) -> list[PlannedTensor]:
    """What would be written, in the source's file order."""
    if not isinstance(source, HFSource):
        raise UnsupportedModel(f"{source.path}: safetensors builds are written from a Hugging Face checkpoint "
                               "directory (its names, config and tokenizer files are carried over)")
    schemes = dict(schemes or {})
    unknown = sorted(set(schemes) - set(source.infos))
    if unknown:
        raise BadInput(f"the plan names tensors the model does not have: {', '.join(unknown[:5])}")
    from safetensors import safe_open

    out = []
    handles = {}
    for file_name, shard in shard_map(source.path).items():
        canon = _canonical(file_name)
        if canon is not None and canon not in source.infos:
            continue  # unused KV-shared k/v projections: nothing reads them
        if shard not in handles:
            handles[shard] = safe_open(str(shard), framework="pt")
        sl = handles[shard].get_slice(file_name)
        shape, dtype = tuple(int(d) for d in sl.get_shape()), sl.get_dtype()
        s = schemes.get(canon) if canon is not None else None
        if s is not None:
            if canon in LOOKUP_TABLES:
                raise BadInput(f"tensor {file_name}: lookup tables stay {dtype} in safetensors builds (transformers "
                               "cannot load a compressed Gemma embedding, vLLM has no quantized Embedding)")
            if not quantizable(canon, shape):
                raise BadInput(f"tensor {file_name}: only 2-D Linear weights can be pack-quantized (shape {shape})")
            if dtype not in _TORCH:
                raise BadInput(f"tensor {file_name}: source dtype {dtype} cannot hold the scales")
            if s.group_size != -1 and shape[1] % s.group_size:
                raise BadInput(f"tensor {file_name}: row length {shape[1]} is not a multiple of group size "
                               f"{s.group_size}")
        out.append(PlannedTensor(file_name, canon, shard, shape, dtype, s, _entries(file_name, shape, dtype, s)))
    return out


def quantization_config(plan: list[PlannedTensor]) -> dict:
    """config.json's `quantization_config` (compressed-tensors QuantizationConfig, quantization.md §5)."""
    by_scheme: dict[IntScheme, list[PlannedTensor]] = {}
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


def shards(plan: list[PlannedTensor], shard_bytes: int) -> list[list[PlannedTensor]]:
    """Consecutive tensors into shards of at most `shard_bytes` (a larger tensor gets a shard of its own)."""
    out: list[list[PlannedTensor]] = [[]]
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
    config = dict(source.config)
    config["quantization_config"] = quantization_config(plan)
    meta = {"format": "pt", "quantkit.version": quantkit.__version__}
    meta.update({f"quantkit.{k}": str(prov.get(k, "none")) for k in PROVENANCE_KEYS})
    parts = shards(plan, shard_bytes)
    files = shard_names(len(parts))
    side = [p for p in sorted(Path(source.path).iterdir()) if p.name in SIDE_FILES and p.is_file()]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(out_dir)
    try:
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial"))
    except OSError as e:
        raise IOFailure(f"{out_dir}: cannot create a temporary directory in {out_dir.parent} ({e.strerror})") from e
    try:
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
            _write_file(tmp / "model.safetensors.index.json", _json_bytes(index))
        _write_file(tmp / "config.json", _json_bytes(config))
        for p in side:
            _write_file(tmp / p.name, p.read_bytes())
        os.chmod(tmp, 0o777 & ~safetensors_writer.umask())
        safetensors_writer.fsync_dir(tmp)
        _install(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise IOFailure(f"{out_dir}: writing failed ({e.strerror or e})") from e
        raise
    safetensors_writer.fsync_dir(out_dir.parent)
    return out_dir


def _row_ranges(rows: int, cols: int) -> list[tuple[int, int]]:
    if rows * cols <= CHUNK_VALUES:
        return [(0, rows)]
    step = max(32, CHUNK_VALUES // cols // 32 * 32)  # whole int32 words of the dim-0-packed zero points
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]


def _encode(source: TensorSource, p: PlannedTensor, imp: np.ndarray | None,
            encoded: Callable[[str], group.GroupQuant | None] | None) -> Iterator[tuple[str, object]]:
    """(entry name, bytes) pieces of one planned tensor, in each entry's byte order."""
    if p.scheme is None:
        yield from _copy(p)
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
        yield f"{m}.weight_scale", _torch_bytes(torch.from_numpy(q.scales).to(_TORCH[p.dtype]))
        if not s.symmetric:
            yield f"{m}.weight_zero_point", pack_zero_points(q.zero_points, s.bits)
    yield f"{m}.weight_shape", np.array(p.shape, np.int64)


def _check_encoded(p: PlannedTensor, gq: group.GroupQuant) -> None:
    s = p.scheme
    if (gq.bits, gq.group_size, gq.symmetric, gq.codes.shape) != (s.bits, s.group_size, s.symmetric, p.shape):
        raise BadInput(f"tensor {p.file_name}: encoded as {gq.bits}-bit group {gq.group_size} "
                       f"{'sym' if gq.symmetric else 'asym'} {gq.codes.shape}, the plan says {s.label} {p.shape}")
    rounded = torch.from_numpy(gq.scales).to(_TORCH[p.dtype]).float().numpy()
    if not np.array_equal(rounded, gq.scales):
        raise BadInput(f"tensor {p.file_name}: encoded scales are not {p.dtype} values (quantize with "
                       f"scale_dtype={SCALE_DTYPE[p.dtype]!r})")


def _copy(p: PlannedTensor) -> Iterator[tuple[str, object]]:
    """The source tensor's own bytes, in chunks of rows for a large one."""
    from safetensors import safe_open

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


def _write_file(path: Path, data: bytes) -> None:
    """`data` to `path` through a temporary file: written, fsynced, read back and compared, renamed."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if tmp.read_bytes() != data:
            raise IOFailure(f"{tmp}: bytes read back differ from those written")
        os.chmod(tmp, 0o666 & ~safetensors_writer.umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_replaceable(out_dir: Path) -> None:
    """An existing destination is replaced only if it is a build (config.json and safetensors) or empty."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise BadInput(f"{out_dir}: exists and is not a directory; refusing to replace it with a build")
    entries = list(out_dir.iterdir())
    if entries and not ((out_dir / "config.json").is_file() and any(p.suffix == ".safetensors" for p in entries)):
        raise BadInput(f"{out_dir}: exists and is not a safetensors build; refusing to replace it")


def _install(tmp: Path, out_dir: Path) -> None:
    """Rename the finished directory into place; a previous build is moved aside first and removed after."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
    os.rename(out_dir, old / "build")
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old / "build", out_dir)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
