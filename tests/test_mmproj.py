"""The towers' mmproj GGUF (formats/mmproj.py, quantkit/towers.py) on tiny multimodal release-layout checkpoints.

Oracles here: gguf-py (its GGUFReader reads the file; its `quants.quantize` encodes each expected tensor as llama.cpp's
converter does, so the stored bytes must equal it) and the checkpoint itself read with safetensors and torch, the
converter's transforms (softplus, the patch embedder's HWC -> CHW reshape, the depthwise conv's squeeze) written out
here. The converter's own output is the oracle of the integration tier (tests/integration/test_mmproj_llamacpp.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import tiny_models
from quantkit.cli import cli
from quantkit.errors import BadConfig
from quantkit.formats import mmproj
from quantkit.formats.hf_source import HFSource


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for kind in ("e", "dense"):
        d = tmp_path_factory.mktemp(f"mm-{kind}")
        tiny_models.save_release(tiny_models.multimodal(kind), d)
        out[kind] = d
    return out


def _stored(d: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(d / "model.safetensors"), framework="pt") as h:
        return {k: h.get_tensor(k) for k in h.keys() if "language_model." not in k}


def _expected(name: str, t: torch.Tensor) -> np.ndarray:
    """The converter's value for one checkpoint tensor, in float32, computed here from its description."""
    x = t.float()
    if name.endswith(("per_dim_scale", "per_dim_key_scale")):
        x = torch.nn.functional.softplus(x)
    if "depthwise_conv1d" in name:
        x = x[:, 0, :]
    if name.endswith("patch_embedder.input_proj.weight"):
        p = int(round((x.shape[1] // 3) ** 0.5))
        x = x.reshape(x.shape[0], p, p, 3).permute(0, 3, 1, 2)
    return x.reshape(-1).numpy().reshape(x.shape or (1,))


@pytest.mark.parametrize("kind", ["e", "dense"])
@pytest.mark.parametrize("type_name", mmproj.MMPROJ_TYPES)
def test_every_tower_tensor_is_stored_as_gguf_py_encodes_it(checkpoints, tmp_path, kind, type_name):
    src = HFSource(checkpoints[kind])
    plan = mmproj.plan_mmproj(src, type_name)
    path = mmproj.write_mmproj(src, tmp_path / "mmproj.gguf", plan)
    stored = _stored(checkpoints[kind])
    r = gguf.GGUFReader(path)
    assert len(r.tensors) == len(stored) == len(plan.tensors)
    by_name = {t.entry.name: t.source for t in plan.tensors}
    for t in r.tensors:
        want = _expected(by_name[t.name], stored[by_name[t.name]])
        qtype = t.tensor_type
        assert tuple(int(d) for d in reversed(t.shape)) == want.shape, t.name
        assert t.data.tobytes() == gguf.quants.quantize(want, qtype).tobytes(), t.name
        if qtype != gguf.GGMLQuantizationType.F32:
            assert want.ndim >= 2 and t.name.endswith(".weight") and "_norm" not in t.name
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["v.position_embd.weight"] == "F32"
    assert types["v.patch_embd.weight"] == ("F16" if type_name == "F16" else "F32")
    assert types["v.blk.0.attn_q.weight"] == type_name
    if kind == "e":
        assert types["a.conv1d.0.weight"] == "F32" and types["a.blk.0.conv_dw.weight"] == "F32"
        # 48-wide rows cannot be Q8_0 blocks: F16, as gguf-py's QuantError makes the converter write
        assert types["mm.a.input_projection.weight"] == ("F16" if type_name == "Q8_0" else type_name)


def test_metadata_follows_the_configs(checkpoints):
    src = HFSource(checkpoints["e"])
    meta = {k: v.value for k, v in mmproj.plan_mmproj(src, "Q8_0").metadata.items()}
    cfg = json.loads((checkpoints["e"] / "config.json").read_text())
    v, a = cfg["vision_config"], cfg["audio_config"]
    assert meta["general.architecture"] == "clip" and meta["general.type"] == "mmproj"
    assert meta["general.file_type"] == 7  # MOSTLY_Q8_0
    assert meta["clip.vision.projector_type"] == "gemma4v" and meta["clip.audio.projector_type"] == "gemma4a"
    assert meta["clip.vision.projection_dim"] == meta["clip.audio.projection_dim"] == cfg["text_config"]["hidden_size"]
    assert (meta["clip.vision.embedding_length"], meta["clip.vision.block_count"], meta["clip.vision.patch_size"]) == \
        (v["hidden_size"], v["num_hidden_layers"], v["patch_size"])
    assert meta["clip.audio.feed_forward_length"] == 4 * a["hidden_size"] and meta["clip.audio.num_mel_bins"] == 128
    assert list(meta["clip.vision.image_mean"]) == [0, 0, 0] and list(meta["clip.vision.image_std"]) == [1, 1, 1]
    dense = {k: v.value for k, v in mmproj.plan_mmproj(HFSource(checkpoints["dense"]), "F16").metadata.items()}
    assert "clip.has_audio_encoder" not in dense and dense["clip.has_vision_encoder"]


def test_image_normalisation_comes_from_the_processor_config(checkpoints, tmp_path):
    d = tmp_path / "ckpt"
    tiny_models.save_release(tiny_models.multimodal("dense"), d,
                             processor={"image_processor": {"image_mean": [0.5, 0.25, 0.125], "image_std": [2, 2, 2]}})
    meta = mmproj.plan_mmproj(HFSource(d), "F16").metadata
    assert list(meta["clip.vision.image_mean"].value) == [0.5, 0.25, 0.125]
    (d / "processor_config.json").unlink()
    (d / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]}))
    assert np.allclose(mmproj.plan_mmproj(HFSource(d), "F16").metadata["clip.vision.image_mean"].value, [0.1, 0.2, 0.3])
    (d / "preprocessor_config.json").write_text(json.dumps({"image_std": [1, 1, 1]}))
    with pytest.raises(BadConfig, match=r"preprocessor_config\.json has no image_mean.*--no-mmproj"):
        mmproj.plan_mmproj(HFSource(d), "F16")


# ---------------------------------------------------------------- the command line


def _compress(*args):
    return CliRunner().invoke(cli, ["compress", *map(str, args)], catch_exceptions=False)


def test_compress_writes_the_mmproj_beside_the_build(checkpoints, tmp_path):
    d = checkpoints["e"]
    run = _compress(d, "--bits", "2", "--calib-tokens", "1024", "--tokens", "512", "--out", tmp_path)
    assert run.exit_code == 0, run.output
    mm = tmp_path / f"mmproj-{d.name}-F16.gguf"
    text = tmp_path / f"{d.name}-bits2-gptq.gguf"
    assert mm.is_file() and text.is_file()
    line = f"on device: text {text.stat().st_size:,} + mmproj {mm.stat().st_size:,} = " \
           f"{text.stat().st_size + mm.stat().st_size:,} bytes"
    assert line in run.output
    assert json.loads((tmp_path / "report.json").read_text())["builds"][0]["mmproj_bytes"] == mm.stat().st_size
    assert line in (tmp_path / "report.md").read_text()
    shown = CliRunner().invoke(cli, ["inspect", str(text)])
    assert f"mmproj beside it: {mm.name} (161 tensors, {mm.stat().st_size:,} bytes)" in shown.output
    assert line in shown.output
    # --dry-run names the same sizes before anything is written
    dry = _compress(d, "--type", "Q8_0", "--method", "rtn", "--mmproj-type", "q8_0", "--dry-run",
                    "--out", tmp_path / "dry")
    assert dry.exit_code == 0 and not (tmp_path / "dry").exists()
    assert re.search(r"mmproj \(vision \+ audio, Q8_0\): \d+ tensors", dry.output)
    wet = _compress(d, "--type", "Q8_0", "--method", "rtn", "--mmproj-type", "q8_0", "--tokens", "0",
                    "--out", tmp_path / "wet")
    sizes = [(tmp_path / "wet" / n).stat().st_size for n in (f"{d.name}-typeQ8_0-rtn.gguf", f"mmproj-{d.name}-Q8_0.gguf")]
    assert f"on device: text {sizes[0]:,} + mmproj {sizes[1]:,} = {sum(sizes):,} bytes" in dry.output + wet.output
    assert dry.output.count(f"on device: text {sizes[0]:,} + mmproj {sizes[1]:,}") == 1  # the dry run knew


def test_no_mmproj_and_sources_without_towers_say_so(checkpoints, tmp_path):
    run = _compress(checkpoints["dense"], "--type", "Q8_0", "--method", "rtn", "--tokens", "0", "--no-mmproj",
                    "--out", tmp_path / "a")
    assert run.exit_code == 0 and "no mmproj: --no-mmproj (text only)" in run.output
    assert not list((tmp_path / "a").glob("mmproj-*"))
    text_only = tmp_path / "text-only"
    model, _ = tiny_models.gemma4_dense()
    model.save_pretrained(text_only)
    import tiny_tokenizer

    tiny_tokenizer.save(text_only)
    run = _compress(text_only, "--type", "Q8_0", "--method", "rtn", "--tokens", "0", "--out", tmp_path / "b")
    assert run.exit_code == 0 and "no mmproj: text-only has no vision or audio tower" in run.output
    gguf_file = next((tmp_path / "b").glob("*.gguf"))
    run = _compress(gguf_file, "--type", "Q8_0", "--method", "rtn", "--tokens", "0", "--out", tmp_path / "c")
    assert run.exit_code == 0 and f"no mmproj: {gguf_file.name} is a GGUF file" in run.output


def test_missing_processor_config_fails_before_any_work(checkpoints, tmp_path, capfd):
    import shutil
    import subprocess
    import sys

    d = tmp_path / "ckpt"
    shutil.copytree(checkpoints["e"], d)
    (d / "processor_config.json").unlink()
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "quantkit", "compress", str(d), "--bits", "4", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(d))}/processor_config\.json or .*preprocessor_config\.json is "
                        r"missing: the mmproj needs the image processor's image_mean and image_std .*; --no-mmproj "
                        r"builds the text model only", line), line
    assert not out.exists() or not any(out.iterdir())
