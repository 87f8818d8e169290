"""quantkit's GGUF writer against llama.cpp's own converter, quantizer and runtime.

* Tiny random Gemma 4 checkpoints saved by transformers (E-style: PLE + KV sharing + double-wide MLP, with the
  redundant shared-layer k_proj / v_proj / k_norm added to the safetensors as in the released E2B/E4B files;
  26B-style MoE with K=V and global KV heads; 31B-style dense), each with a tiny Gemma-style tokenizer, are
  written as F32 GGUF by quantkit and by `convert_hf_to_gguf.py --outtype f32` (from the llama-cpp-python
  0.3.36 source package). Every tensor in quantkit's file has the converter's name, shape, type and bytes;
  the converter's only extra tensors are the shared layers' unused K/V; every metadata key has the same value
  and type; llama.cpp's logits on the two files are identical; and llama.cpp on quantkit's file agrees with
  transformers' fp32 logits (mean KL <= 1e-2; llama.cpp's GELU table keeps it from being exact).
* At Q8_0 and Q4_K for every tensor llama-quantize may quantize, quantkit's tensors are byte-identical to
  `llama_model_quantize` (pure) of the converter's F32 file, and llama.cpp's logits on the two are identical.
* The real Gemma 3 270M re-written as F32 from its Q4_K_M GGUF equals `write_f32_base`'s file tensor for
  tensor and key for key, and llama.cpp's logits on the two are identical.

Run: .venv/bin/pytest -m integration tests/integration/test_gguf_converter.py
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models
import tiny_tokenizer
from quantkit.formats.gguf_model import plan_gguf, write_gguf
from quantkit.tensor_table import kept_f32
from quantkit.formats.gguf_reader import GGUFFile
from quantkit.formats.gguf_source import GGUFSource
from quantkit.formats.hf_source import HFSource

from .llamacpp import Judge, convert_hf

pytestmark = pytest.mark.integration

CASES = ("gemma4_e", "gemma4_moe", "gemma4_dense")
QUANT = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_K": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
SHARED_KV = ("attn_k.weight", "attn_v.weight", "attn_k_norm.weight")


def _add_redundant_shared_kv(d, model) -> set[str]:
    """Give the KV-shared layers the k_proj / v_proj / k_norm the released E2B/E4B safetensors carry."""
    c = model.config
    first = c.num_hidden_layers - c.num_kv_shared_layers
    path = d / "model.safetensors"
    tensors = load_file(path)
    g = torch.Generator().manual_seed(7)
    added = set()
    for i in range(first, c.num_hidden_layers):
        lc = c.per_layer_config[i]
        hd, kv, h = lc.head_dim, lc.num_key_value_heads, c.hidden_size
        p = f"model.layers.{i}.self_attn."
        tensors[p + "k_proj.weight"] = torch.randn(kv * hd, h, generator=g) * h**-0.5
        tensors[p + "v_proj.weight"] = torch.randn(kv * hd, h, generator=g) * h**-0.5
        tensors[p + "k_norm.weight"] = torch.rand(hd, generator=g) + 0.5
        added |= {f"blk.{i}.{n}" for n in SHARED_KV}
    save_file(tensors, path, metadata={"format": "pt"})
    return added


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> dict(dir, model, conv, ours, extra): both F32 GGUFs of one tiny checkpoint."""
    cache = {}

    def get(name):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            model, _ = tiny_models.build(name)
            model.save_pretrained(d)
            tiny_tokenizer.save(d, tiny_models.VOCAB)
            extra = _add_redundant_shared_kv(d, model) if name == "gemma4_e" else set()
            hf = HFSource(d)
            assert hf.skipped["unused shared-layer K/V"] == len(extra)
            conv = convert_hf(d, d.parent / f"{name}.conv.gguf")
            ours = write_gguf(hf, d.parent / f"{name}.quantkit.gguf", progress=False)
            cache[name] = dict(dir=d, model=model, source=hf, conv=conv, ours=ours, extra=extra)
        return cache[name]

    return get


def _same_value(a, b) -> bool:
    if isinstance(a, (list, np.ndarray)) or isinstance(b, (list, np.ndarray)):
        return len(a) == len(b) and np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _compare_metadata(ours: GGUFFile, theirs: GGUFFile, skip=()) -> None:
    mine = {k for k in ours.metadata if not k.startswith("quantkit.")}
    assert mine == set(theirs.metadata), (sorted(mine - set(theirs.metadata)), sorted(set(theirs.metadata) - mine))
    for k, v in theirs.metadata.items():
        if k in skip:
            continue
        assert ours.value_types[k] == theirs.value_types[k], k
        assert _same_value(ours.metadata[k], v), (k, str(ours.metadata[k])[:200], str(v)[:200])


def _compare_tensors(ours: GGUFFile, theirs: GGUFFile, extra=frozenset()) -> None:
    assert set(theirs.tensors) - set(ours.tensors) == set(extra)
    assert set(ours.tensors) <= set(theirs.tensors)
    for name, t in ours.tensors.items():
        u = theirs.tensors[name]
        assert (t.ne, t.ggml_type) == (u.ne, u.ggml_type), (name, t.ne, u.ne, t.ggml_type.name, u.ggml_type.name)
        assert np.array_equal(ours.raw(name), theirs.raw(name)), f"{name}: bytes differ"


def _logits(path, ids) -> np.ndarray:
    j = Judge(path)
    out = j.logits(ids)
    del j
    gc.collect()
    return out


def _mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    lp = torch.log_softmax(torch.from_numpy(p_logits).double(), -1)
    lq = torch.log_softmax(torch.from_numpy(q_logits).double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


@pytest.mark.parametrize("name", CASES)
def test_f32_file_equals_the_converters(name, built):
    b = built(name)
    ours, conv = GGUFFile(b["ours"]), GGUFFile(b["conv"])
    _compare_tensors(ours, conv, b["extra"])
    # the converter counts the unused shared-layer K/V into the size label; nothing reads it
    _compare_metadata(ours, conv, skip=("general.size_label",) if b["extra"] else ())


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_logits(name, built):
    b = built(name)
    ids = tiny_models.random_ids(1, 40, seed=5)[0].tolist()
    mine = _logits(b["ours"], ids)
    theirs = _logits(b["conv"], ids)
    assert np.abs(mine - theirs).max() <= 1e-6
    with torch.no_grad():
        ref = b["model"](torch.tensor([ids])).logits[0].float().numpy()
    kl = _mean_kl(ref, mine)
    print(f"{name}: mean KL(transformers fp32 || llama.cpp on quantkit F32) = {kl:.2e}, max |dlogit| {np.abs(ref - mine).max():.3f}")
    assert kl <= 1e-2


def _llama_quantize(src, dst, qname: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = getattr(llama_cpp, QUANT[qname])
    params.pure = True  # every quantizable tensor gets the target type (or llama.cpp's shape fallback)
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


@pytest.mark.parametrize("qname", list(QUANT))
@pytest.mark.parametrize("name", CASES)
def test_quantized_tensors_equal_llama_quantize(name, qname, built, tmp_path):
    b = built(name)
    theirs_path = tmp_path / f"llama.{qname}.gguf"
    _llama_quantize(b["conv"], theirs_path, qname)
    # llama-quantize never quantizes per_layer_model_proj (llama-quant.cpp tensor_allows_quantization)
    types = {p.canonical: qname for p in plan_gguf(b["source"])
             if p.canonical and not kept_f32(p.entry.name, p.entry.shape) and "per_layer_model_proj" not in p.entry.name}
    ours_path = write_gguf(b["source"], tmp_path / f"quantkit.{qname}.gguf", types=types, progress=False)
    ours, theirs = GGUFFile(ours_path), GGUFFile(theirs_path)
    assert any(t.ggml_type.name == qname for t in ours.tensors.values())
    _compare_tensors(ours, theirs, b["extra"])
    ids = tiny_models.random_ids(1, 24, seed=6)[0].tolist()
    mine, ref = _logits(ours_path, ids), _logits(theirs_path, ids)
    assert np.all(np.isfinite(mine)) and np.abs(mine - ref).max() <= 1e-6


def test_gemma3_270m_rewritten_as_f32(q4km_270m, f32_270m, tmp_path):
    ours_path = write_gguf(GGUFSource(q4km_270m), tmp_path / "270m.f32.gguf", progress=False)
    ours, base = GGUFFile(ours_path), GGUFFile(f32_270m)
    assert list(ours.tensors) == list(base.tensors)
    _compare_tensors(ours, base)
    _compare_metadata(ours, base)
    judge = Judge(f32_270m)
    ids = judge.tokenize("The quick brown fox jumps over the lazy dog because")
    ref = judge.logits(ids)
    del judge
    gc.collect()
    assert np.abs(_logits(ours_path, ids) - ref).max() <= 1e-6
