"""A Hugging Face checkpoint directory as a TensorSource.

Accepts `Gemma4ForConditionalGeneration` (the multimodal release: `text_config`,
text tensors under `model.language_model.*`, vision/audio towers skipped),
`Gemma4ForCausalLM` and `Gemma3ForCausalLM`; one `model.safetensors` or shards
listed in `model.safetensors.index.json`; bf16, fp16 or fp32. Tensors (or runs of rows of
them) are read lazily with pread, one at a time; safetensors validates the headers.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

from quantkit.calibration.tokenizer import TextTokenizer, from_tokenizer_json
from quantkit.errors import BadConfig, BadFile
from quantkit.formats import names
from quantkit.formats.gguf_reader import check_unchanged, file_stamp
from quantkit.formats.source import TensorInfo, TensorSource
from quantkit.models.spec import ModelSpec, spec_from_hf_config, tensor_shapes

TEXT_PREFIXES = ("model.language_model.", "model.")
SKIPPED_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.", "lm_head.")
DTYPES = {"BF16": 2, "F16": 2, "F32": 4}  # what a weight may be stored as
RAW_DTYPES = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "I32": np.dtype("<i4"),
              "I64": np.dtype("<i8")}


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BadFile(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise BadFile(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


def shard_map(directory: Path) -> dict[str, Path]:
    """File tensor name -> shard path, from the index or the single file."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        idx = read_json(index)
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise BadFile(f"{index}: 'weight_map' is missing or empty")
        out = {}
        for name, shard in wm.items():
            p = directory / str(shard)
            if not p.is_file():
                raise BadFile(f"{index}: tensor {name!r} is in shard {shard!r}, which does not exist")
            out[name] = p
        return out
    single = directory / "model.safetensors"
    if not single.is_file():
        raise BadFile(f"{directory}: neither model.safetensors nor model.safetensors.index.json found")
    return {name: single for name in open_safetensors(single).keys()}


def open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises SafetensorError / OSError
        raise BadFile(f"{path}: not a readable safetensors file ({e})") from e


class HFSource(TensorSource):
    def __init__(self, directory: Path):
        self.path = Path(directory)
        self.config = read_json(self.path / "config.json")
        self.spec: ModelSpec = spec_from_hf_config(self.config, str(self.path / "config.json"))
        self._handles = {}
        self._layouts = {}
        self._stamps = {}
        self._file_names = {}
        self.infos = {}
        self.skipped = {"towers": 0, "unused shared-layer K/V": 0}
        self._implied = tensor_shapes(self.spec)
        self.file_shards = shard_map(self.path)  # every tensor of the checkpoint, towers included -> its file
        for file_name, shard in self.file_shards.items():
            self._admit(file_name, shard)
        self.arch = self.spec.arch

    def _admit(self, file_name: str, shard: Path) -> None:
        """Add one tensor of the checkpoint to `infos` (or count it as skipped)."""
        canon = canonical_name(file_name)
        if canon is None:
            self.skipped["towers"] += 1
            return
        if self._unused(canon, file_name):
            return
        sl = self._slice(shard, file_name)
        dtype = sl.get_dtype()
        if dtype not in DTYPES:
            raise BadFile(f"{shard}: tensor {file_name!r} has dtype {dtype}; expected BF16, F16 or F32")
        shape = self._check_shape(shard, file_name, canon, tuple(int(d) for d in sl.get_shape()))
        self.infos[canon] = TensorInfo(canon, shape, dtype, int(np.prod(shape)) * DTYPES[dtype], file_name)
        self._file_names[canon] = shard

    def _unused(self, canon: str, file_name: str) -> bool:
        """True for the tensors nothing reads (counted as skipped); an error for a layer the config lacks."""
        i = names.layer_of(canon)
        if i is not None and i >= self.spec.n_layers:
            raise BadConfig(f"{self.path}: tensor {file_name!r} is for layer {i}, but the config has {self.spec.n_layers} layers")
        if i is not None and self.spec.kv_shared(i) and (".self_attn.k_" in canon or ".self_attn.v_" in canon):
            # The released E2B/E4B files carry k_proj/v_proj/k_norm on KV-shared layers; nothing reads them.
            self.skipped["unused shared-layer K/V"] += 1
            return True
        return False

    def _slice(self, shard: Path, file_name: str):
        try:
            return self._handle(shard).get_slice(file_name)
        except BadFile:
            raise
        except Exception:  # SafetensorError: the index names a tensor the shard lacks
            raise BadFile(f"{shard}: tensor {file_name!r} is not in this shard, though "
                          f"model.safetensors.index.json puts it there") from None

    def _check_shape(self, shard: Path, file_name: str, canon: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if canon in self._implied and shape != self._implied[canon]:
            raise BadConfig(f"{shard}: tensor {file_name!r} has shape {shape}; config.json implies {self._implied[canon]}")
        return shape

    def _handle(self, shard: Path):
        if shard not in self._handles:
            self._stamps[shard] = file_stamp(shard)
            self._handles[shard] = open_safetensors(shard)
        else:
            check_unchanged(shard, self._stamps[shard], file_stamp(shard))
        return self._handles[shard]

    def _read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        return self._pread(info, start, stop)

    def _read(self, info: TensorInfo) -> np.ndarray:
        a = self._pread(info, 0, info.shape[0] if info.shape else 1).reshape(info.shape)
        if self.spec.arch == "gemma3" and names.is_norm(info.name):
            a = a + np.float32(1.0)  # Gemma 3 computes x * (1 + w); store the effective multiplier
        return a

    def stored(self, file_name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype) of any tensor of the checkpoint by its file name, towers included, from its
        shard's header, as safetensors reads it."""
        sl = self._slice(self.file_shards[file_name], file_name)
        return tuple(int(d) for d in sl.get_shape()), sl.get_dtype()

    def read_stored(self, file_name: str) -> np.ndarray:
        """Any tensor of the checkpoint by its file name (a tower's too), whole, as float32 in its stored shape."""
        shard = self.file_shards[file_name]
        shape, dtype = self.stored(file_name)
        if dtype not in DTYPES:
            raise BadFile(f"{shard}: tensor {file_name!r} has dtype {dtype}; expected BF16, F16 or F32")
        a = self._pread_raw(shard, file_name, 0, shape[0] if shape else 1)
        return float32(a)

    def _pread(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32, read with pread rather than through an mmap: pages of a mapped
        multi-GB checkpoint would count towards the process's resident memory as the run touches them."""
        a = self._pread_raw(self._file_names[info.name], info.file_name, start, stop, info.shape)
        return float32(a)

    def _pread_raw(self, shard: Path, file_name: str, start: int, stop: int, shape=None) -> np.ndarray:
        """Rows [start, stop) of a tensor as stored (BF16 as uint16), checked against the shape it had when the
        run began."""
        self._handle(shard)  # notices a shard replaced or changed since the run began
        data_start, entries = self._layout(shard)
        dtype, stored, (begin, end) = entries[file_name]
        if shape is not None and tuple(stored) != tuple(shape):
            raise BadFile(f"{shard}: tensor {file_name!r} changed while reading")
        np_dtype = RAW_DTYPES[dtype]
        row = np_dtype.itemsize * (int(np.prod(stored[1:])) if len(stored) > 1 else 1)
        n = (stop - start) * row
        with open(shard, "rb") as f:
            raw = os.pread(f.fileno(), n, data_start + begin + start * row)
        if len(raw) != n:
            raise BadFile(f"{shard}: tensor {file_name!r} is cut short (the file ends inside it)")
        return np.frombuffer(raw, np_dtype).reshape((stop - start, *stored[1:]) if stored else ())

    def _layout(self, shard: Path) -> tuple[int, dict]:
        """(start of the data section, name -> (dtype, shape, data_offsets)) from the shard's header,
        which safe_open has already validated."""
        if shard not in self._layouts:
            with open(shard, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            self._layouts[shard] = (8 + n, {k: (v["dtype"], v["shape"], v["data_offsets"])
                                            for k, v in header.items() if k != "__metadata__"})
        return self._layouts[shard]

    def tokenizer(self) -> TextTokenizer:
        path = self.path / "tokenizer.json"
        if not path.is_file():
            raise BadFile(f"{self.path}: tokenizer.json not found (needed to tokenize text)")
        return from_tokenizer_json(path, self.spec.bos_token_id)


def canonical_name(file_name: str) -> str | None:
    """A Hugging Face tensor name -> quantkit's canonical name (the `model.language_model.` or `model.` prefix
    stripped), or None for the tied `lm_head.weight` and every vision/audio tower tensor. The one home of
    this rule: quantkit.models.gemma.hf_state_to_canonical applies it to in-memory state dicts."""
    if file_name.startswith(SKIPPED_PREFIXES):
        return None
    for p in TEXT_PREFIXES:
        if file_name.startswith(p):
            rest = file_name[len(p):]
            if rest.startswith(("vision_tower.", "audio_tower.", "embed_vision.", "embed_audio.")):
                return None
            return rest
    return None


def float32(a: np.ndarray) -> np.ndarray:
    """Stored floats as float32; bfloat16 (read as uint16) is the top half of a float32."""
    return (a.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else a.astype(np.float32)
