"""The vision and audio towers of a multimodal Gemma 4 checkpoint as llama.cpp's mmproj GGUF, the file its `mtmd`
library loads beside the text GGUF (projector types `gemma4v` and `gemma4a`).

    plan = plan_mmproj(source, "F16")          # source: formats.hf_source.HFSource of a Gemma4ForConditionalGeneration
    write_mmproj(source, out / "mmproj-NAME-F16.gguf", plan)

The file is what llama.cpp's converter writes for the same checkpoint (`convert_hf_to_gguf.py --mmproj --outtype
f16|bf16|f32|q8_0`, class Gemma4VisionAudioModel on MmprojModel): the same tensors in the same order, names, shapes,
types and bytes, and the same metadata, plus quantkit's provenance keys. Its rules, as this module applies them:

  tensors   every tensor of the checkpoint outside the text model (model.vision_tower.*, model.embed_vision.*,
            model.audio_tower.*, model.embed_audio.*), in file order. Names: the audio tower's prefix becomes
            `conformer.` and `.linear.` drops out; the vision encoder's `model.vision_tower.encoder.` becomes
            `vision_model.model.` and `.linear.weight` becomes `.weight`; then gguf-py's MMPROJ tensor-name map
            (`a.blk.N.*`, `v.blk.N.*`, `mm.*`).
  data      scalars (the clipped linears' input/output bounds) become 1-D; the audio attention's `per_dim_scale` /
            `per_dim_key_scale` pass through softplus; the audio depthwise conv drops its middle axis; the patch
            embedder [n_embd, p·p·3] becomes [n_embd, 3, p, p] (its columns are HWC, ggml's im2col gives CHW).
  types     F32 for 1-D tensors, norms, anything not named `.weight`, the audio convolutions (names with `.conv`,
            or `_conv` and `.weight`) and the position table; the patch embedder F16 in an F16 file, else F32;
            every other weight the file's type, and F16 where a Q8_0 row does not fit 32-wide blocks.
  metadata  general.* from the directory (gguf-py's Metadata heuristics, as for the text file); clip.* from
            config.json's vision_config / audio_config, the text model's hidden size (the projection dim) and the
            processor config's image_mean / image_std (processor_config.json, `image_processor` merged up, over
            preprocessor_config.json). The audio encoder's FFN length is 4 × its hidden size, its mel bins
            `input_feat_size` (default 128); the image size is 224 (unused by gemma4v).

Writing streams one tensor at a time through formats.gguf_writer (atomic, verified).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantkit.errors import BadConfig, BadFile, BadOption
from quantkit.formats import gguf_writer
from quantkit.formats.gguf_writer import TensorEntry, Value
from quantkit.kernels import registry

MMPROJ_TYPES = ("F16", "BF16", "F32", "Q8_0")
NAME_SUFFIXES = (".weight", ".bias", ".input_max", ".input_min", ".output_max", ".output_min")
IMAGE_SIZE = 224  # written because clip.cpp reads the key; gemma4v sizes images itself
DEFAULT_EPS = 1e-6
DEFAULT_MEL_BINS = 128


@dataclass(frozen=True)
class MmTensor:
    """One tensor of the mmproj: where it comes from, what is written, and how its values change on the way."""

    source: str  # the checkpoint's name
    entry: TensorEntry  # GGUF name, numpy-order shape, type
    transform: str | None = None  # "softplus" | "depthwise" | "patch" | None


@dataclass(frozen=True)
class MmprojPlan:
    type_name: str  # --mmproj-type
    tensors: list[MmTensor]
    metadata: dict[str, Value]

    @property
    def nbytes(self) -> int:
        return sum(t.entry.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(t.entry.shape)) for t in self.tensors)

    def summary(self) -> str:
        kinds = [k for k, key in (("vision", "clip.has_vision_encoder"), ("audio", "clip.has_audio_encoder"))
                 if key in self.metadata]
        return (f"mmproj ({' + '.join(kinds)}, {self.type_name}): {len(self.tensors)} tensors, "
                f"{self.n_params:,} weights, {self.nbytes:,} bytes of tensor data")


def has_towers(config: dict) -> bool:
    """Whether a Hugging Face config.json describes a checkpoint with a vision (and maybe audio) tower."""
    return isinstance(config, dict) and bool(config.get("vision_config"))


def plan_mmproj(source, type_name: str = "F16", provenance: dict[str, Value] | None = None) -> MmprojPlan:
    """What the mmproj of `source` (an HFSource whose config has towers) holds at `type_name`. Every check that
    can fail (options, configs, processor config, tensor names) happens here, before any heavy work."""
    type_name = type_name.upper()
    if type_name not in MMPROJ_TYPES:
        raise BadOption(f"--mmproj-type {type_name}: expected one of {', '.join(MMPROJ_TYPES)}")
    config = source.config
    vision, audio = config.get("vision_config") or None, config.get("audio_config") or None
    for key, sub in (("vision_config", vision), ("audio_config", audio)):
        if sub is not None and not isinstance(sub, dict):
            raise BadConfig(f"{source.path / 'config.json'}: {key} is {sub!r}; expected an object")
    if vision is None:
        raise BadConfig(f"{source.path / 'config.json'}: no vision_config; this checkpoint has no towers")
    tensors = _tensors(source, type_name, n_blocks=max(_int(source, vision, "num_hidden_layers", "vision_config"),
                                                       _int(source, audio, "num_hidden_layers", "audio_config")
                                                       if audio else 0))
    meta = _metadata(source, vision, audio, type_name, tensors)
    meta.update(provenance or {})
    return MmprojPlan(type_name, tensors, meta)


def write_mmproj(source, path: Path, plan: MmprojPlan, progress: bool = False) -> Path:
    """Write the planned mmproj at `path`, one tensor in memory at a time."""
    by_name = {t.entry.name: t for t in plan.tensors}

    def encode(entry: TensorEntry) -> np.ndarray:
        t = by_name[entry.name]
        a = _transformed(source.read_stored(t.source), t.transform, entry.shape)
        # ±Inf is a value here (a clipped linear's open bound); NaN is refused in every type
        if np.isnan(a).any():
            raise BadFile(f"{source.file_shards[t.source]}: tensor {t.source!r} holds NaN")
        return registry.quantize(entry.type_name, a, name=t.source, keep_nonfinite=entry.type_name in registry.FLOATS)

    return gguf_writer.write(path, plan.metadata, [t.entry for t in plan.tensors], encode, progress=progress)


# ---------------------------------------------------------------- tensors


def _tensors(source, type_name: str, n_blocks: int) -> list[MmTensor]:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(n_blocks, 1))
    out = []
    for name, shard in source.file_shards.items():
        if "language_model." in name:
            continue
        shape, _ = source.stored(name)
        audio = "audio_tower" in name or "embed_audio" in name
        hf_name, transform = _renamed(name, audio)
        new = names.get_name(hf_name, try_suffixes=NAME_SUFFIXES)
        if new is None:
            raise BadFile(f"{shard}: tensor {name!r} is not a Gemma 4 vision or audio tower tensor llama.cpp knows")
        if transform == "patch":
            if len(shape) != 2 or shape[1] % 3 or round((shape[1] // 3) ** 0.5) ** 2 != shape[1] // 3:
                raise BadFile(f"{shard}: tensor {name!r} has shape {shape}; expected [n_embd, 3·p·p]")
            p = round((shape[1] // 3) ** 0.5)
            shape = (shape[0], 3, p, p)
        elif transform == "depthwise":
            if len(shape) != 3 or shape[1] != 1:
                raise BadFile(f"{shard}: tensor {name!r} has shape {shape}; expected [channels, 1, kernel]")
            shape = (shape[0], shape[2])
        shape = shape or (1,)  # scalars are written 1-D
        out.append(MmTensor(name, TensorEntry(new, shape, _type(name, new, shape, audio, type_name)), transform))
    if not out:
        raise BadFile(f"{source.path}: config.json has a vision_config but the checkpoint holds no tower tensors")
    return out


def _renamed(name: str, audio: bool) -> tuple[str, str | None]:
    """The checkpoint name as the converter hands it to gguf-py's name map, and the tensor's transform."""
    transform = None
    if audio:
        name = name.replace("model.audio_tower.", "conformer.").replace(".linear.", ".")
        if name.endswith(("per_dim_key_scale", "per_dim_scale")):
            name, transform = name + ".weight", "softplus"
        if "lconv1d.depthwise_conv1d" in name and name.endswith(".weight"):
            transform = "depthwise"
        return name, transform
    name = name.replace("model.vision_tower.encoder.", "vision_model.model.").replace(".linear.weight", ".weight")
    if name.endswith(("layer_scalar", "position_embedding_table")):
        name += ".weight"
    if name.endswith("patch_embedder.input_proj.weight"):
        transform = "patch"
    return name, transform


def _type(name: str, new: str, shape: tuple[int, ...], audio: bool, type_name: str) -> str:
    """The converter's type for one tensor (MmprojModel / Gemma4VisionAudioModel tensor_force_quant, then
    ModelBase.prepare_tensors' float rules)."""
    if (audio and (".conv" in name or ("_conv" in name and ".weight" in name))) or "position_embedding_table" in name:
        return "F32"
    if len(shape) <= 1 or new.endswith("_norm.weight") or not new.endswith(".weight"):
        return "F32"
    if ".patch_embd.weight" in new:
        return "F16" if type_name == "F16" else "F32"
    if type_name == "Q8_0" and shape[-1] % registry.block_size("Q8_0"):
        return "F16"  # gguf-py cannot quantize the row; the converter falls back to F16
    return type_name


def _transformed(a: np.ndarray, transform: str | None, shape: tuple[int, ...]) -> np.ndarray:
    """The stored values as the mmproj holds them, in its (planned) `shape`; the depthwise conv's squeeze and
    the scalars' 1-D form are plain reshapes."""
    if transform == "softplus":  # torch's, as the converter computes it, in float32
        import torch

        a = torch.nn.functional.softplus(torch.from_numpy(np.ascontiguousarray(a))).numpy()
    if transform == "patch":  # [n_embd, p·p·3] (HWC) -> [n_embd, 3, p, p]
        n, _, p, _ = shape
        return np.ascontiguousarray(a.reshape(n, p, p, 3).transpose(0, 3, 1, 2))
    return a.reshape(shape)


# ---------------------------------------------------------------- metadata


def processor_config(directory: Path) -> dict:
    """preprocessor_config.json, then processor_config.json over it (each with its `media_proc_cfg` /
    `image_processor` section merged to the top), as the converter reads them; {} if neither exists."""
    from quantkit.formats.hf_source import read_json

    merged: dict = {}
    for name, section in (("preprocessor_config.json", "media_proc_cfg"), ("processor_config.json", "image_processor")):
        path = directory / name
        if path.is_file():
            cfg = read_json(path)
            if not isinstance(cfg, dict):
                raise BadFile(f"{path}: expected a JSON object, found {type(cfg).__name__}")
            if isinstance(cfg.get(section), dict):
                cfg = {**cfg, **cfg[section]}
            merged.update(cfg)
    return merged


def _image_norm(source) -> tuple[list[float], list[float]]:
    cfg = processor_config(source.path)
    where = " or ".join(str(source.path / n) for n in ("processor_config.json", "preprocessor_config.json"))
    out = []
    for key in ("image_mean", "image_std"):
        v = cfg.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            missing = "is missing" if not cfg else (f"has no {key}" if v is None else f"has {key} {json.dumps(v)}")
            raise BadConfig(f"{where} {missing}: the mmproj needs the image processor's image_mean and image_std "
                            "(three numbers each); --no-mmproj builds the text model only")
        out.append([float(x) for x in v])
    return out[0], out[1]


def _int(source, cfg: dict, key: str, section: str) -> int:
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise BadConfig(f"{source.path / 'config.json'}: {section}.{key} is {v!r}; expected a positive integer")
    return v


def _metadata(source, vision: dict, audio: dict | None, type_name: str, tensors: list[MmTensor]) -> dict[str, Value]:
    """The converter's keys in its order: general.*, then MmprojModel's and Gemma4VisionAudioModel's clip.*."""
    import gguf

    from quantkit.formats.gguf_model import QUANTIZATION_VERSION, file_type_of, general_metadata, parameter_counts

    mean, std = _image_norm(source)
    text_hidden = source.spec.hidden_size
    w = gguf.GGUFWriter(path=None, arch="clip")
    w.add_file_type(file_type_of(type_name))
    w.add_clip_has_vision_encoder(True)
    w.add_vision_projection_dim(text_hidden)
    w.add_vision_image_size(IMAGE_SIZE)
    w.add_vision_patch_size(_int(source, vision, "patch_size", "vision_config"))
    w.add_vision_embedding_length(_int(source, vision, "hidden_size", "vision_config"))
    w.add_vision_feed_forward_length(_int(source, vision, "intermediate_size", "vision_config"))
    w.add_vision_block_count(_int(source, vision, "num_hidden_layers", "vision_config"))
    w.add_vision_head_count(_int(source, vision, "num_attention_heads", "vision_config"))
    w.add_vision_image_mean(mean)
    w.add_vision_image_std(std)
    if audio:
        hidden = _int(source, audio, "hidden_size", "audio_config")
        w.add_clip_has_audio_encoder(True)
        w.add_audio_projection_dim(text_hidden)
        w.add_audio_embedding_length(hidden)
        w.add_audio_feed_forward_length(4 * hidden)
        w.add_audio_block_count(_int(source, audio, "num_hidden_layers", "audio_config"))
        w.add_audio_head_count(_int(source, audio, "num_attention_heads", "audio_config"))
    w.add_clip_vision_projector_type(gguf.VisionProjectorType.GEMMA4V)
    w.add_vision_attention_layernorm_eps(float(vision.get("layer_norm_eps", DEFAULT_EPS)))
    if audio:
        w.add_clip_audio_projector_type(gguf.VisionProjectorType.GEMMA4A)
        w.add_audio_num_mel_bins(int(audio.get("input_feat_size", DEFAULT_MEL_BINS)))
        w.add_audio_attention_layernorm_eps(float(audio.get("layer_norm_eps", DEFAULT_EPS)))
    meta = general_metadata(Path(source.path), "clip", gguf.GGUFType.MMPROJ,
                            parameter_counts([t.entry for t in tensors]))
    meta.update(gguf_writer.collected(w))
    meta["general.quantization_version"] = gguf_writer.u32(QUANTIZATION_VERSION)
    return meta
