"""The streaming GGUF writer and the Gemma GGUF model writer.

Oracles: the transformers config / tokenizer the tiny checkpoints were built from, gguf-py's GGUFReader and its
Q8_0 quantizer, and the HF source itself (a round trip must give back every value exactly). The comparison with
llama.cpp's own converter and quantizer is in tests/integration/test_gguf_converter.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import gguf
from gguf import GGMLQuantizationType, GGUFReader

import tiny_models
import tiny_tokenizer
from quantkit.errors import BadInput
from quantkit.formats import gguf_writer, names
from quantkit.formats.gguf_model import plan_gguf, write_gguf
from quantkit.tensor_table import kept_f32
from quantkit.formats.gguf_reader import GGUFFile
from quantkit.formats.gguf_source import GGUFSource
from quantkit.formats.hf_source import HFSource

S = "sliding_attention"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (directory, transformers model)."""
    out = {}
    for name in ("gemma4_e", "gemma4_moe", "gemma4_dense", "gemma3"):
        d = tmp_path_factory.mktemp(name)
        model, _ = tiny_models.build(name)
        model.save_pretrained(d)
        tiny_tokenizer.save(d, tiny_models.VOCAB)
        out[name] = (d, model)
    return out


@pytest.fixture(scope="module")
def written(checkpoints, tmp_path_factory):
    """name -> path of quantkit's F32 GGUF of that checkpoint."""
    d = tmp_path_factory.mktemp("gguf")
    return {name: write_gguf(HFSource(ckpt), d / f"{name}.gguf", progress=False) for name, (ckpt, _) in checkpoints.items()}


def _files_in(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


# -- round trip -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gemma4_e", "gemma4_moe", "gemma4_dense", "gemma3"])
def test_round_trip_gives_back_the_model(name, checkpoints, written):
    hf = HFSource(checkpoints[name][0])
    g = GGUFSource(written[name])
    hf_spec = dataclasses.replace(hf.spec, rms_eps=float(np.float32(hf.spec.rms_eps)))  # GGUF stores it as float32
    if name == "gemma3":
        # llama.cpp's gemma3 scales queries by 1/sqrt(head_dim); the tiny config's query_pre_attn_scalar differs on purpose
        hf_spec = dataclasses.replace(hf_spec, attn_scale=g.spec.attn_scale)
    assert g.spec == hf_spec
    assert list(g.infos) == list(hf.infos)
    for n, info in hf.infos.items():
        assert g.infos[n].shape == info.shape, n
        np.testing.assert_array_equal(g.get(n), hf.get(n), err_msg=n)
    f = GGUFFile(written[name])
    assert f.data_offset % 32 == 0 and all((t.offset - f.data_offset) % 32 == 0 for t in f.tensors.values())


def test_metadata_follows_the_transformers_model(checkpoints, written):
    model = checkpoints["gemma4_e"][1]
    c = model.config
    d = c.to_dict()
    layers = [c.per_layer_config[i] for i in range(c.num_hidden_layers)]
    full = next(lc for lc, t in zip(layers, c.layer_types) if t != S)
    swa = next(lc for lc, t in zip(layers, c.layer_types) if t == S)
    m = GGUFFile(written["gemma4_e"]).metadata
    a = "gemma4."
    assert m[a + "block_count"] == c.num_hidden_layers and m[a + "embedding_length"] == d["hidden_size"]
    assert m[a + "attention.sliding_window_pattern"].tolist() == [t == S for t in c.layer_types]
    assert m[a + "feed_forward_length"].tolist() == [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    assert m[a + "attention.shared_kv_layers"] == d["num_kv_shared_layers"]
    assert m[a + "embedding_length_per_layer_input"] == d["hidden_size_per_layer_input"]
    assert m[a + "attention.key_length"] == m[a + "attention.value_length"] == full.head_dim
    assert m[a + "attention.key_length_swa"] == m[a + "attention.value_length_swa"] == swa.head_dim
    assert m[a + "rope.dimension_count"] == full.head_dim and m[a + "rope.dimension_count_swa"] == swa.head_dim
    assert m[a + "rope.freq_base"] == d["rope_parameters"]["full_attention"]["rope_theta"]
    assert m[a + "rope.freq_base_swa"] == d["rope_parameters"]["sliding_attention"]["rope_theta"]
    assert m[a + "attention.sliding_window"] == d["sliding_window"]
    assert m[a + "context_length"] == d["max_position_embeddings"]
    assert m[a + "final_logit_softcapping"] == d["final_logit_softcapping"]
    assert m[a + "attention.layer_norm_rms_epsilon"] == np.float32(d["rms_norm_eps"])
    assert m["general.architecture"] == "gemma4" and m["general.file_type"] == 0 and m["general.quantization_version"] == 2
    for k in ("quantkit.version", "quantkit.recipe", "quantkit.calibration", "quantkit.imatrix"):
        assert isinstance(m[k], str)
    # proportional RoPE: the rotated pairs of a full-attention head get factor 1, the rest 1e30
    f = GGUFFile(written["gemma4_e"])
    rope = f.raw("rope_freqs.weight").view(np.float32)
    n_rot = int(full.head_dim * d["rope_parameters"]["full_attention"]["partial_rotary_factor"]) // 2
    assert rope.shape == (full.head_dim // 2,)
    assert np.all(rope[:n_rot] == 1.0) and np.all(rope[n_rot:] == np.float32(1e30))

    moe = checkpoints["gemma4_moe"][1].config
    dm = moe.to_dict()
    m = GGUFFile(written["gemma4_moe"]).metadata
    assert m[a + "expert_count"] == dm["num_experts"] and m[a + "expert_used_count"] == dm["top_k_experts"]
    assert m[a + "expert_feed_forward_length"] == dm["moe_intermediate_size"]
    kv = [moe.per_layer_config[i].num_key_value_heads for i in range(moe.num_hidden_layers)]
    assert len(set(kv)) > 1 and m[a + "attention.head_count_kv"].tolist() == kv


def test_tokenizer_metadata_agrees_with_transformers(checkpoints, written):
    from transformers import AutoTokenizer

    d = checkpoints["gemma4_e"][0]
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    m = GGUFFile(written["gemma4_e"]).metadata
    n = len(tok)
    assert m["tokenizer.ggml.model"] == "gemma4"
    assert m["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(n)))
    types = m["tokenizer.ggml.token_type"]
    control = {i for i in range(n) if types[i] == 3}
    assert control == set(tok.all_special_ids)
    assert {m["tokenizer.ggml.tokens"][i] for i in range(n) if types[i] == 6} == {f"<0x{b:02X}>" for b in range(256)}
    user = {m["tokenizer.ggml.tokens"][i] for i in range(n) if types[i] == 4}
    assert user == set(tiny_tokenizer.VISIBLE) | {tiny_tokenizer.ADDED}
    assert m["tokenizer.ggml.bos_token_id"] == tok.bos_token_id and m["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert m["tokenizer.ggml.padding_token_id"] == tok.pad_token_id and m["tokenizer.ggml.unknown_token_id"] == tok.unk_token_id
    merges = json.loads((d / "tokenizer.json").read_text())["model"]["merges"]
    assert m["tokenizer.ggml.merges"] == [" ".join(p) for p in merges]
    assert m["tokenizer.ggml.add_bos_token"] is True and m["tokenizer.ggml.add_space_prefix"] is False
    assert m["tokenizer.chat_template"] == tok.chat_template
    np.testing.assert_array_equal(m["tokenizer.ggml.scores"], np.full(n, -1000.0, np.float32))


def test_embed_tokens_trimmed_to_the_tokenizer(checkpoints, tmp_path):
    """Gemma3Model.modify_tensors (inherited by Gemma4Model) keeps len(model.vocab) + len(added_tokens) rows."""
    src_dir = checkpoints["gemma4_dense"][0]
    d = tmp_path / "ckpt"
    d.mkdir()
    for p in src_dir.iterdir():
        (d / p.name).symlink_to(p)
    for p in ("tokenizer.json", "tokenizer_config.json"):
        (d / p).unlink()
    tiny_tokenizer.save(d, 480)
    tj = json.loads((d / "tokenizer.json").read_text())
    rows = len(tj["model"]["vocab"]) + len(tj["added_tokens"])
    assert rows < tiny_models.VOCAB
    hf = HFSource(d)
    g = GGUFSource(write_gguf(hf, tmp_path / "t.gguf", progress=False))
    np.testing.assert_array_equal(g.get("embed_tokens.weight"), hf.get("embed_tokens.weight")[:rows])


def test_rewriting_a_gguf_reproduces_it(written, tmp_path):
    """From a GGUF source the writer behaves like llama-quantize at the same types: same file, byte for byte."""
    for name in ("gemma4_e", "gemma3"):
        again = write_gguf(GGUFSource(written[name]), tmp_path / f"{name}.gguf", progress=False)
        assert again.read_bytes() == written[name].read_bytes(), name


# -- tensor types ---------------------------------------------------------------------------------

def _quantizable(plan_entries):
    return {p.canonical: "Q8_0" for p in plan_entries if p.canonical and not kept_f32(p.entry.name, p.entry.shape)}


def test_q8_0_bytes_match_gguf_py(checkpoints, tmp_path):
    hf = HFSource(checkpoints["gemma4_moe"][0])
    types = _quantizable(plan_gguf(hf))
    assert "layers.0.router.proj.weight" not in types and "layers.0.experts.gate_up_proj" in types
    path = write_gguf(hf, tmp_path / "q8.gguf", types=types, progress=False)
    f = GGUFFile(path)
    assert f.metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    for canon, info in hf.infos.items():
        t = f.tensors[names.to_gguf(canon)]
        a = hf.get(canon)
        if canon in types:
            assert t.ggml_type == GGMLQuantizationType.Q8_0, canon
            expect = gguf.quants.quantize(a, GGMLQuantizationType.Q8_0)
        else:
            assert t.ggml_type == GGMLQuantizationType.F32, canon
            expect = a.astype("<f4")
        assert bytes(f.raw(t.name)) == expect.tobytes(), canon


def test_types_llama_cpp_keeps_in_f32_are_refused(checkpoints, tmp_path):
    hf = HFSource(checkpoints["gemma4_moe"][0])
    for canon in ("layers.0.input_layernorm.weight", "layers.0.router.proj.weight", "layers.0.router.scale",
                  "layers.0.layer_scalar"):
        with pytest.raises(BadInput, match="F32"):
            plan_gguf(hf, {canon: "Q8_0"})
    with pytest.raises(BadInput, match="does not have"):
        plan_gguf(hf, {"layers.99.mlp.up_proj.weight": "Q8_0"})
    assert not list(tmp_path.iterdir())


def test_missing_importance_fails_before_writing(checkpoints, tmp_path):
    hf = HFSource(checkpoints["gemma4_e"][0])
    with pytest.raises(BadInput, match="importance"):
        write_gguf(hf, tmp_path / "x.gguf", types={"layers.3.mlp.down_proj.weight": "IQ2_XXS"}, progress=False)
    with pytest.raises(BadInput, match="provenance"):
        write_gguf(hf, tmp_path / "x.gguf", provenance={"recipie": "typo"}, progress=False)
    assert not list(tmp_path.iterdir())


def test_block_fallback_follows_llama_cpp(checkpoints):
    """llama-quant.cpp tensor_type_fallback: Q4_K rows of 64 (not a multiple of 256) become Q5_0; rows of 112
    (the PLE table: 7 layers x 16) fit no 32-block either and become F16."""
    hf = HFSource(checkpoints["gemma4_e"][0])
    plan = {p.canonical: p.entry.type_name for p in plan_gguf(hf, {
        "layers.0.mlp.gate_proj.weight": "Q4_K", "layers.3.mlp.down_proj.weight": "Q4_K",
        "embed_tokens_per_layer.weight": "Q4_K"})}
    assert plan["layers.0.mlp.gate_proj.weight"] == "Q5_0"  # rows of hidden_size 64
    assert plan["layers.3.mlp.down_proj.weight"] == "Q4_K"  # rows of 2 x 128 (double-wide)
    assert plan["embed_tokens_per_layer.weight"] == "F16"


# -- the streaming writer -------------------------------------------------------------------------

def _small_plan(rng):
    md = {
        "general.architecture": gguf_writer.string("gemma3"),
        "general.alignment": gguf_writer.u32(64),
        "test.array": gguf_writer.array(np.arange(5, dtype=np.int32), gguf.GGUFValueType.INT32),
        "test.strings": gguf_writer.array(["a", "ü", ""], gguf.GGUFValueType.STRING),
        "test.flag": gguf_writer.boolean(True),
        "test.f": gguf_writer.f32(0.25),
    }
    data = {
        "a.weight": rng.standard_normal((3, 40)).astype(np.float32),
        "b.weight": rng.standard_normal((2, 64)).astype(np.float32),
        "c.weight": rng.standard_normal((7,)).astype(np.float32),
        "d.weight": rng.standard_normal((2, 2, 32)).astype(np.float32),
    }
    types = {"a.weight": "F32", "b.weight": "Q8_0", "c.weight": "F32", "d.weight": "F16"}
    entries = [gguf_writer.TensorEntry(n, a.shape, types[n]) for n, a in data.items()]
    from quantkit.kernels import registry

    return md, entries, lambda e: registry.quantize(e.type_name, data[e.name], name=e.name), data


def test_writer_output_reads_in_gguf_py(tmp_path):
    md, entries, encode, data = _small_plan(np.random.default_rng(0))
    path = gguf_writer.write(tmp_path / "w.gguf", md, entries, encode)
    r = GGUFReader(path)
    assert r.alignment == 64
    assert r.fields["test.array"].contents() == [0, 1, 2, 3, 4]
    assert r.fields["test.strings"].contents() == ["a", "ü", ""]
    assert r.fields["test.flag"].contents() is True and r.fields["test.f"].contents() == 0.25
    assert [t.name for t in r.tensors] == list(data)
    for t in r.tensors:
        assert t.data_offset % 64 == 0
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(data[t.name].shape)
        tol = {"F32": 0, "F16": 1e-3, "Q8_0": 2e-2}[t.tensor_type.name]
        np.testing.assert_allclose(got, data[t.name], atol=tol * float(np.abs(data[t.name]).max()))


def test_interrupted_write_leaves_nothing_and_a_rerun_is_identical(tmp_path):
    md, entries, encode, _ = _small_plan(np.random.default_rng(1))
    clean = gguf_writer.write(tmp_path / "clean.gguf", md, entries, encode).read_bytes()
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    for n_ok in range(len(entries)):
        calls = []

        def failing(e, n_ok=n_ok):
            if len(calls) == n_ok:
                raise KeyboardInterrupt("killed")
            calls.append(e.name)
            return encode(e)

        with pytest.raises(KeyboardInterrupt):
            gguf_writer.write(out, md, entries, failing)
        assert _files_in(out.parent) == set(), n_ok
    out.write_bytes(b"previous build")
    with pytest.raises(BadInput, match="encoder returned"):
        gguf_writer.write(out, md, entries, lambda e: encode(e)[:-1])
    assert _files_in(out.parent) == {"model.gguf"} and out.read_bytes() == b"previous build"
    gguf_writer.write(out, md, entries, encode)
    assert out.read_bytes() == clean and _files_in(out.parent) == {"model.gguf"}


def test_model_write_interrupted_mid_file(checkpoints, written, tmp_path):
    hf = HFSource(checkpoints["gemma4_dense"][0])
    real_get = hf.get
    seen = []

    def get(name):
        if len(seen) == 5:
            raise RuntimeError("disk on fire")
        seen.append(name)
        return real_get(name)

    hf.get = get
    out = tmp_path / "m.gguf"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_gguf(hf, out, progress=False)
    assert not list(tmp_path.iterdir())
    hf.get = real_get
    write_gguf(hf, out, progress=False)
    assert out.read_bytes() == written["gemma4_dense"].read_bytes()
    assert write_gguf(hf, tmp_path / "again.gguf", progress=False).read_bytes() == out.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["again.gguf", "m.gguf"]
