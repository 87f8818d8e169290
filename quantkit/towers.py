"""The mmproj stage of `quantkit compress`: a multimodal Gemma 4 checkpoint's vision and audio towers written as
llama.cpp's mmproj GGUF beside the text build (formats.mmproj), at --mmproj-type (F16 by default, as the public
releases ship it). Planned before any heavy work, so a checkpoint that cannot have one fails in seconds; written
after the text file. The towers are not calibrated or budgeted: --max-size is the text file's budget."""

from __future__ import annotations

import time
from pathlib import Path

import quantkit
from quantkit.formats import gguf_writer, mmproj
from quantkit.formats.source import TensorSource
from quantkit.options import CompressOptions, mmproj_path


def plan(source: TensorSource, opts: CompressOptions) -> tuple[mmproj.MmprojPlan | None, str | None]:
    """(the mmproj's plan, None), or (None, the one line that says why this build has none)."""
    if opts.format != "gguf":
        return None, None  # a safetensors build carries the towers in its own directory
    config = getattr(source, "config", None)
    if config is None:
        return None, f"no mmproj: {source.path.name} is a GGUF file, which holds a text model only"
    if not mmproj.has_towers(config):
        return None, f"no mmproj: {source.path.name} has no vision or audio tower (a text-only checkpoint)"
    if opts.mmproj_type is None:
        return None, "no mmproj: --no-mmproj (text only)"
    provenance = {"quantkit.version": gguf_writer.string(quantkit.__version__),
                  "quantkit.recipe": gguf_writer.string(f"--mmproj-type {opts.mmproj_type}")}
    return mmproj.plan_mmproj(source, opts.mmproj_type, provenance), None


def file_bytes(p: mmproj.MmprojPlan) -> int:
    """The mmproj file's exact size: header, metadata, tensor infos and padded data."""
    return gguf_writer.layout(p.metadata, [t.entry for t in p.tensors])[2]


def write(source: TensorSource, out_dir: Path, p: mmproj.MmprojPlan, opts: CompressOptions) -> tuple[Path, float]:
    t = time.perf_counter()
    path = mmproj.write_mmproj(source, mmproj_path(source, out_dir, p.type_name), p, progress=opts.progress)
    return path, time.perf_counter() - t


def on_device(text_bytes: int, mmproj_bytes: int, budgeted: bool) -> str:
    """The line that adds the two files up (what a phone stores)."""
    note = " (--max-size budgets the text file)" if budgeted else ""
    return (f"on device: text {text_bytes:,} + mmproj {mmproj_bytes:,} = {text_bytes + mmproj_bytes:,} bytes"
            f"{note}")

