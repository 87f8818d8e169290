"""quantkit's ggml encoders against llama.cpp itself (llama-cpp-python's libllama).

* Without importance weights: an F32 GGUF (gemma3 metadata, real Gemma 3 270M
  tensors dequantized to F32, plus random tensors with 256-multiple rows) goes
  through ``llama_model_quantize`` (pure=True, so every tensor gets the target
  type or llama.cpp's shape fallback); every quantized tensor in its output
  must equal quantkit's bytes for the same F32 data.
* With importance weights: the same through ``llama_model_quantize`` with an
  imatrix (random positive per-column values; the real activations are not
  needed to compare arithmetic). The types llama.cpp only writes with an
  imatrix (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS) are checked here only.
* IQ2_XXS / IQ2_XS / IQ3_XXS: a full 270M GGUF using quantkit's IQ tensors
  loads in llama.cpp and produces finite logits; weighted reconstruction errors
  on real tensors are printed next to Q2_K / Q3_K.

Run: .venv/bin/pytest -m integration tests/integration/test_kernels_llamacpp.py -s
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import gguf  # noqa: E402
import llama_cpp  # noqa: E402  (test dependency: missing must fail, not skip)

from quantkit.formats.gguf_model import FILE_TYPE  # noqa: E402
from quantkit.formats.gguf_reader import GGUFFile  # noqa: E402
from quantkit.kernels import group, registry  # noqa: E402

from .llamacpp import copy_metadata, llama_quantize  # noqa: E402

pytestmark = pytest.mark.integration

NTHREAD = 2

PLAIN_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ3_S"]
IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
                 "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ3_S", "IQ1_S", "IQ1_M"]
REAL_LAYERS = ("blk.0.", "blk.17.")


@pytest.fixture(scope="module")
def real_gguf(q4km_270m) -> Path:
    """The session's 270M Q4_K_M (conftest q4km_270m, in the quantkit cache), or QUANTKIT_GEMMA3_270M_GGUF."""
    return Path(os.environ.get("QUANTKIT_GEMMA3_270M_GGUF") or q4km_270m)


def _adversarial(cols: int, rng) -> np.ndarray:
    n = rng.standard_normal(cols).astype(np.float32)
    idx = np.arange(cols)
    rows = [np.zeros(cols), np.full(cols, 0.75), np.where(idx == 7, 1e4, 1e-3 * n), n * 1e-30,
            np.sign(n) * 60000.0, np.abs(n), -np.abs(n), np.where(idx % 32 < 16, 0.0, n),
            np.where(idx % 256 < 128, 0.0, n), np.round(n * 4) / 4, rng.standard_t(2, cols)]
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def real_reader(real_gguf) -> gguf.GGUFReader:
    """gguf-py's reader of the 270M, made once: it parses the 262,144-entry tokenizer arrays in Python (about 10 s)."""
    return gguf.GGUFReader(str(real_gguf))


@pytest.fixture(scope="module")
def f32_source(real_reader, tmp_path_factory):
    """Reduced F32 GGUF: gemma3 metadata without the tokenizer (llama_model_quantize reads hparams only, and every
    file made from it is read back with gguf-py, which would spend seconds on the vocabulary) + two real layers +
    random tensors."""
    rng = np.random.default_rng(7)
    reader = real_reader
    path = tmp_path_factory.mktemp("f32") / "source-f32.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    copy_metadata(reader, writer, skip=("tokenizer.",))
    writer.add_file_type(0)  # ALL_F32
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name.startswith(REAL_LAYERS) or t.name == "output_norm.weight":
            data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            tensors[t.name] = np.ascontiguousarray(data)
    tensors["blk.0.rand_gauss.weight"] = rng.standard_normal((48, 1024)).astype(np.float32) * 0.02
    tensors["blk.0.rand_adv.weight"] = np.concatenate([_adversarial(512, rng),
                                                       rng.standard_normal((8, 512)).astype(np.float32)])
    tensors["blk.0.rand_tail.weight"] = (rng.standard_t(3, (32, 768)) * 10.0 ** rng.uniform(-4, 1, (32, 1))
                                         ).astype(np.float32)
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, tensors


def _imatrix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    out = {}
    for name, arr in tensors.items():
        if arr.ndim == 2:
            imp = rng.lognormal(0.0, 1.5, arr.shape[1]).astype(np.float32)
            imp[rng.uniform(size=arr.shape[1]) < 0.02] = 0.0  # dead channels
            out[name] = imp
    return out


def _llama_quantize(src: Path, dst: Path, qname: str, imatrix: dict[str, np.ndarray] | None = None) -> None:
    """llama-quantize --pure at the preset whose default type is `qname`."""
    llama_quantize(src, dst, FILE_TYPE[qname].removeprefix("MOSTLY_"), imatrix, threads=NTHREAD, pure=True)


def _compare_all(out_path: Path, tensors, qname: str, imatrix=None) -> dict:
    reader = gguf.GGUFReader(str(out_path))
    stats = {"target": 0, "fallback": 0, "real": 0, "random": 0}
    mismatches = []
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32,):
            continue
        src = tensors[t.name]
        rows, cols = src.shape
        got_type = t.tensor_type.name
        assert got_type == registry.fallback_type(qname, cols), f"{t.name}: llama.cpp wrote {got_type}"
        imp = None if imatrix is None else imatrix[t.name]
        if imp is None and registry.get(got_type).needs_imatrix:
            pytest.fail(f"{t.name}: {got_type} written without an imatrix")
        ours = registry.quantize(got_type, src, importance=imp, name=t.name)
        theirs = np.asarray(t.data).view(np.uint8).reshape(rows, -1)
        if not np.array_equal(ours, theirs):
            bad_rows = np.nonzero((ours != theirs).any(axis=1))[0]
            mismatches.append(f"{t.name} [{got_type}] rows {bad_rows[:6].tolist()} of {rows}")
        stats["target" if got_type == qname else "fallback"] += 1
        stats["random" if "rand_" in t.name else "real"] += 1
    assert not mismatches, "bytes differ from llama.cpp: " + "; ".join(mismatches)
    return stats


@pytest.mark.parametrize("qname", PLAIN_TYPES)
def test_unweighted_encoder_matches_llama_quantize(qname, f32_source, tmp_path):
    src, tensors = f32_source
    out = tmp_path / f"{qname}.gguf"
    _llama_quantize(src, out, qname)
    stats = _compare_all(out, tensors, qname)
    print(f"\n{qname}: byte-identical to llama.cpp on {stats}")
    assert stats["target"] >= 3, "too few tensors were quantized to the target type"
    assert stats["real"] >= 10 and stats["random"] >= 3


@pytest.mark.parametrize("qname", IMATRIX_TYPES)
def test_imatrix_encoder_matches_llama_quantize(qname, f32_source, tmp_path):
    src, tensors = f32_source
    imatrix = _imatrix(tensors)
    out = tmp_path / f"{qname}-imatrix.gguf"
    _llama_quantize(src, out, qname, imatrix)
    stats = _compare_all(out, tensors, qname, imatrix)
    print(f"\n{qname} + imatrix: byte-identical to llama.cpp on {stats}")
    assert stats["target"] >= 3


# ----------------------------------------------------------------- IQ2/IQ3 in a real model


IQ_PLAN = {  # tensor-name suffix -> type, for layers whose rows fit 256-blocks
    "ffn_down.weight": ["IQ2_XXS", "IQ2_XS", "IQ3_XXS"],  # rotated across layers
    "attn_output.weight": ["IQ3_XXS", "IQ2_XS", "IQ2_XXS"],
}


def _proxy_importance(w: np.ndarray, seed: int) -> np.ndarray:
    """Stand-in imatrix for real tensors (no activations here): positive, skewed, deterministic."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(0.0, 1.0, w.shape[1]).astype(np.float32)


@pytest.fixture(scope="module")
def iq_model(real_reader, tmp_path_factory):
    reader = real_reader
    path = tmp_path_factory.mktemp("iq") / "gemma-3-270m-iq.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    copy_metadata(reader, writer)
    used = {}
    for t in reader.tensors:
        qtype = None
        for suffix, plan in IQ_PLAN.items():
            if t.name.endswith(suffix):
                layer = int(t.name.split(".")[1])
                qtype = plan[layer % len(plan)]
        if qtype is None:
            if t.tensor_type == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(t.name, np.asarray(t.data, np.float32))
            else:
                writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        data = registry.quantize(qtype, w, importance=_proxy_importance(w, len(used)), name=t.name)
        writer.add_tensor(t.name, data, raw_dtype=registry.get(qtype).ggml_type)
        used[t.name] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, used


def test_iq_model_loads_and_runs(iq_model, real_gguf):
    path, used = iq_model
    assert {"IQ2_XXS", "IQ2_XS", "IQ3_XXS"} <= set(used.values())
    f = GGUFFile(path)  # quantkit's reader: gguf-py's would parse the tokenizer again
    types = {name: t.ggml_type.name for name, t in f.tensors.items()}
    f.close()
    for name, q in used.items():
        assert types[name] == q
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=NTHREAD, logits_all=True, verbose=False)
    tokens = llm.tokenize(b"The capital of France is")
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)])
    assert logits.shape[1] >= 262144 - 1024
    assert np.all(np.isfinite(logits)), "non-finite logits from the IQ model"
    assert logits.std() > 0.1
    ref = llama_cpp.Llama(model_path=str(real_gguf), n_ctx=64, n_threads=NTHREAD, logits_all=True, verbose=False)
    ref.eval(tokens)
    ref_logits = np.array(ref.scores[: len(tokens)])
    corr = np.corrcoef(logits[-1], ref_logits[-1])[0, 1]
    top = llm.detokenize([int(np.argmax(logits[-1]))])
    print(f"\nIQ model: last-token logit correlation with Q4_K_M = {corr:.3f}, top token {top!r}")
    assert corr > 0.3


def test_iq_weighted_error_on_real_tensors(real_reader):
    picks = [t for t in real_reader.tensors
             if t.name in ("blk.0.ffn_down.weight", "blk.9.ffn_down.weight", "blk.17.attn_output.weight")]
    assert len(picks) == 3
    print()
    totals: dict[str, float] = {}
    for i, t in enumerate(picks):
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        imp = _proxy_importance(w, 100 + i)
        line = []
        for q in ["IQ2_XXS", "IQ2_XS", "Q2_K", "IQ3_XXS", "Q3_K"]:
            dec = registry.dequantize(q, registry.quantize(q, w, importance=imp, name=t.name), w.shape)
            rel = group.weighted_mse(w, dec, imp) / group.weighted_mse(w, np.zeros_like(w), imp)
            totals[q] = totals.get(q, 0.0) + rel
            line.append(f"{q} {rel:.4f} ({registry.get(q).bits_per_weight:.2f} bpw)")
        print(f"{t.name:28s} weighted rel. MSE: " + ", ".join(line))
    # more bits, less error
    assert totals["IQ2_XS"] < totals["IQ2_XXS"]
    assert totals["IQ3_XXS"] < totals["IQ2_XS"]
    assert totals["Q3_K"] < totals["Q2_K"]
