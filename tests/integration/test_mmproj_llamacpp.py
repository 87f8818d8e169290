"""The towers' mmproj against llama.cpp: the converter's own file (convert_hf_to_gguf.py --mmproj) and its mtmd library.

Three tiny random checkpoints in the release layout (Gemma4ForConditionalGeneration saved by transformers in bf16,
with processor_config.json): E-style with vision and audio towers, dense and MoE with a vision tower
(tests/tiny_models.py multimodal). Oracles:
  (a) at F16, F32, BF16 and Q8_0, quantkit's mmproj holds exactly the converter's tensors (names, order, types,
      shapes, bytes) and metadata (keys, order, types, values); only quantkit's provenance keys (PROVENANCE) differ;
  (b) mtmd loads quantkit's text GGUF + mmproj pair (vision, and audio for E-style) and encodes a random image and
      2 s of 16 kHz audio to exactly the embeddings of the converter's pair; a Q8_0 mmproj's are finite, and their
      relative error against F16 is printed.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGUFReader

import tiny_models
from quantkit.formats import gguf_writer, mmproj
from quantkit.formats.hf_source import HFSource

from .llamacpp import convert_hf

pytestmark = pytest.mark.integration

PROVENANCE = ("quantkit.version", "quantkit.recipe")  # the only keys the converter's file lacks
KINDS = ("e", "dense", "moe")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for kind in KINDS:
        d = tmp_path_factory.mktemp(f"mm-{kind}")
        tiny_models.save_release(tiny_models.multimodal(kind), d)
        out[kind] = d
    return out


def _contents(path):
    r = GGUFReader(path)
    meta = {k: (tuple(f.types), f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = [(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape), t.data.tobytes()) for t in r.tensors]
    return meta, tensors


@pytest.mark.parametrize("outtype", ["f16", "f32", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", KINDS)
def test_mmproj_is_the_converters(checkpoints, tmp_path, kind, outtype):
    d = checkpoints[kind]
    theirs = convert_hf(d, tmp_path / "theirs.gguf", outtype, mmproj=True)
    src = HFSource(d)
    plan = mmproj.plan_mmproj(src, outtype.upper(), {k: gguf_writer.string("x") for k in PROVENANCE})
    ours = mmproj.write_mmproj(src, tmp_path / "ours.gguf", plan)
    our_meta, our_tensors = _contents(ours)
    their_meta, their_tensors = _contents(theirs)
    assert [k for k in our_meta if k not in their_meta] == list(PROVENANCE)
    assert {k: v for k, v in our_meta.items() if k not in PROVENANCE} == their_meta
    assert [k for k in our_meta if k not in PROVENANCE] == list(their_meta)  # same order too
    assert [t[:3] for t in our_tensors] == [t[:3] for t in their_tensors]
    different = [t[0] for t, u in zip(our_tensors, their_tensors) if t[3] != u[3]]
    assert not different, different
    kinds = "vision + audio" if kind == "e" else "vision"
    print(f"\n{kind} {outtype}: {len(our_tensors)} tensors ({kinds}), {ours.stat().st_size:,} bytes "
          f"(converter {theirs.stat().st_size:,}); metadata and tensors identical but {', '.join(PROVENANCE)}")


# ---------------------------------------------------------------- mtmd


def _media(seed: int = 0):
    g = np.random.default_rng(seed)
    image = g.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)  # ny, nx, RGB
    t = np.arange(32000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * g.standard_normal(t.size)).astype(np.float32)
    return image, audio


def mtmd_embeddings(text_gguf, mmproj_gguf) -> dict[str, np.ndarray]:
    """Each medium's embeddings (n_tokens x n_embd) as mtmd encodes them from the pair, and what it supports."""
    import llama_cpp
    from llama_cpp import mtmd_cpp as M

    image, audio = _media()
    model = llama_cpp.llama_model_load_from_file(str(text_gguf).encode(), llama_cpp.llama_model_default_params())
    assert model, text_gguf
    params = M.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.warmup = False, 2, False
    ctx = M.mtmd_init_from_file(str(mmproj_gguf).encode(), model, params)
    assert ctx, f"mtmd_init_from_file refused {mmproj_gguf}"
    n_embd = llama_cpp.llama_model_n_embd(model)
    out = {"supports vision": M.mtmd_support_vision(ctx), "supports audio": M.mtmd_support_audio(ctx)}
    media = {"image": lambda: M.mtmd_bitmap_init(image.shape[1], image.shape[0],
                                                 image.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))}
    if out["supports audio"]:
        media["audio"] = lambda: M.mtmd_bitmap_init_from_audio(audio.size, audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    try:
        for name, make in media.items():
            bitmap = make()
            prompt = f"look: {M.mtmd_get_marker(ctx).decode()} done".encode()
            text = M.mtmd_input_text(prompt, len(prompt), True, True)
            chunks = M.mtmd_input_chunks_init()
            bitmaps = (M.mtmd_bitmap_p_ctypes * 1)(bitmap)
            assert M.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
            for i in range(M.mtmd_input_chunks_size(chunks)):
                chunk = M.mtmd_input_chunks_get(chunks, i)
                if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    continue
                assert M.mtmd_encode_chunk(ctx, chunk) == 0
                n = M.mtmd_input_chunk_get_n_tokens(chunk)
                out[name] = np.ctypeslib.as_array(M.mtmd_get_output_embd(ctx), shape=(n * n_embd,)).reshape(n, n_embd).copy()
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)
    finally:
        M.mtmd_free(ctx)
        llama_cpp.llama_model_free(model)
    return out


@pytest.mark.parametrize("kind", ["e", "dense"])
def test_mtmd_encodes_with_quantkits_pair_as_with_the_converters(checkpoints, tmp_path, kind):
    from click.testing import CliRunner

    from quantkit.cli import cli

    d = checkpoints[kind]
    ours = {}
    for mm_type in ("F16", "Q8_0"):
        out = tmp_path / mm_type
        run = CliRunner().invoke(cli, ["compress", str(d), "--type", "F16", "--method", "rtn", "--tokens", "0",
                                       "--mmproj-type", mm_type, "--out", str(out)], catch_exceptions=False)
        assert run.exit_code == 0, run.output
        ours[mm_type] = mtmd_embeddings(next(out.glob(f"{d.name}-*.gguf")), out / f"mmproj-{d.name}-{mm_type}.gguf")
    theirs = mtmd_embeddings(convert_hf(d, tmp_path / "text.gguf", "f16"),
                             convert_hf(d, tmp_path / "mmproj.gguf", "f16", mmproj=True))
    assert ours["F16"]["supports vision"] and theirs["supports vision"]
    assert ours["F16"]["supports audio"] == theirs["supports audio"] == (kind == "e")
    media = ["image", "audio"] if kind == "e" else ["image"]
    for m in media:
        assert ours["F16"][m].shape == theirs[m].shape and ours["F16"][m].size > 0
        assert np.array_equal(ours["F16"][m], theirs[m]), m
        q8 = ours["Q8_0"][m]
        assert np.isfinite(q8).all()
        rel = np.linalg.norm(q8 - theirs[m]) / np.linalg.norm(theirs[m])
        print(f"\n{kind} {m}: {theirs[m].shape[0]} embeddings x {theirs[m].shape[1]}, identical to the converter's "
              f"pair at F16; Q8_0 mmproj relative error {rel:.2e}")
