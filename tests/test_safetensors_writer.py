"""compressed-tensors safetensors builds (formats/safetensors_model.py, formats/safetensors_writer.py).

Oracles: the compressed_tensors library (0.20.0) itself — its pack_to_int32, its PackedQuantizationCompressor
decompress (every tensor must decode to exactly quantkit's values) and compress (fed quantkit's decoded values, it
must produce the same packed bytes) and its QuantizationConfig schema; transformers' AutoModelForCausalLM /
Gemma4ForConditionalGeneration loading the directory, whose logits must equal quantkit's reference forward on
the same decoded weights; the source checkpoint for every tensor copied unquantized.

What a runtime decodes: (q - zp) · scale in the dtype the scale has when it is applied. transformers' default load
casts the scale to the model's dtype first (fp32 here: the exact product, group_dequantize); the library's
decompress on the stored bf16 scale, and transformers' dequantize=True path, compute in bf16 (stored_values).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import tiny_models
import tiny_tokenizer
from quantkit.cli import cli
from quantkit.errors import BadInput, IOFailure, UnsupportedModel
from quantkit.formats import atomic
from quantkit.formats import pack_quantized as pq
from quantkit.formats import safetensors_model as sm
from quantkit.formats import safetensors_writer
from quantkit.formats.compressed_source import PackQuantizedSource
from quantkit.formats.hf_source import HFSource
from quantkit.inspect import inspect_path
from quantkit.kernels import group
from quantkit.models.gemma import Gemma
from quantkit.sources import open_source

S, F = "sliding_attention", "full_attention"


def gemma4_e_wide(seed: int = 5):
    """E-style (PLE, KV sharing, double-wide MLP) with every Linear row a multiple of 128, so any group size
    gives one config group (the tiny gemma4_e has 16-wide PLE projections, which fall back to per channel)."""
    return tiny_models._gemma4(
        seed, num_hidden_layers=5, layer_types=[S, F, S, S, F], num_kv_shared_layers=2, use_double_wide_mlp=True,
        hidden_size=128, intermediate_size=128, hidden_size_per_layer_input=128, num_key_value_heads=1,
    )


def gemma4_multimodal(seed: int = 6):
    """Gemma4ForConditionalGeneration: the tiny E-style text model plus a one-layer vision tower."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    from transformers.models.gemma4.configuration_gemma4 import Gemma4VisionConfig

    text, _ = tiny_models.gemma4_e(seed)
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16, position_embedding_size=64)
    config = Gemma4Config(text_config=text.config.to_dict(), vision_config=vision.to_dict(), audio_config=None,
                          image_token_id=500, boi_token_id=501, eoi_token_id=502, video_token_id=503,
                          boa_token_id=504, audio_token_id=505, eoa_token_index=506)
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    sd = {"model.language_model." + k.removeprefix("model."): v for k, v in text.state_dict().items()
          if k.startswith("model.")}
    assert not [k for k in model.load_state_dict(sd, strict=False).missing_keys if "language_model" in k]
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for n, p in model.model.vision_tower.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in n else 0.0))
    return model


def _save(model, d: Path) -> HFSource:
    """The checkpoint as released models are: bf16 safetensors, with a tokenizer."""
    model.to(torch.bfloat16).save_pretrained(d)
    tiny_tokenizer.save(d, tiny_models.VOCAB)
    return HFSource(d)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    out = {}
    for name, build in (("e", lambda: tiny_models.gemma4_e()[0]), ("wide", lambda: gemma4_e_wide()[0]),
                        ("dense", lambda: tiny_models.gemma4_dense()[0]), ("moe", lambda: tiny_models.gemma4_moe()[0]),
                        ("gemma3", lambda: tiny_models.gemma3()[0]), ("multimodal", gemma4_multimodal)):
        out[name] = _save(build(), tmp_path_factory.mktemp(name))
    return out


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for p in sorted(d.glob("*.safetensors")):
        with safe_open(str(p), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def _reference(src: HFSource, schemes, importance=None) -> dict[str, group.GroupQuant]:
    """quantkit's own quantization of every planned tensor, computed here independently of the writer."""
    importance = importance or {}
    return {n: group.group_quantize(src.get(n), s.bits, s.group_size, s.symmetric, importance=importance.get(n),
                                    scale_dtype=pq.SCALE_DTYPE[src.infos[n].dtype])
            for n, s in schemes.items()}


def _file_name(src: HFSource, canonical: str) -> str:
    return src.infos[canonical].file_name


def _library_decompress(d: Path):
    """module -> (compressed_tensors' decompressed weight, the scheme it chose, the stored tensors)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_targets

    qc = QuantizationConfig.model_validate(json.loads((d / "config.json").read_text())["quantization_config"])
    target_to_scheme = {t: s for s in qc.config_groups.values() for t in s.targets}
    tensors = _tensors(d)
    out = {}
    for name in tensors:
        if not name.endswith(".weight_packed"):
            continue
        m = name.removesuffix(".weight_packed")
        scheme = target_to_scheme[match_targets(m, torch.nn.Linear(1, 1), list(target_to_scheme))[0]]
        sd = {k[len(m) + 1:]: v for k, v in tensors.items() if k.startswith(m + ".weight_")}
        comp = BaseCompressor.get_value_from_registry(scheme.format or qc.format)
        out[m] = (comp.decompress(sd, scheme)["weight"], scheme, sd)
    return out


def _logits_loaded(d: Path, ids, **kw):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager", **kw).eval()
    with torch.no_grad():
        return model(ids).logits


def _logits_quantkit(src: HFSource, values: dict[str, np.ndarray], ids):
    return Gemma(src.spec, lambda n: values[n] if n in values else src.get(n))(ids)


# ---------------------------------------------------------------- the packing


@pytest.mark.parametrize("bits", pq.BITS)
def test_packing_is_compressed_tensors_own(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    rng = np.random.default_rng(bits)
    for rows, cols in ((37, 16), (5, 40), (64, 128), (3, 100), (33, 256)):
        q = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(rows, cols)).astype(np.int8)
        ours = pq.pack_int32(q, bits)
        assert np.array_equal(ours, pack_to_int32(torch.from_numpy(q), bits).numpy())
        assert np.array_equal(pq.pack_zero_points(q, bits), pack_to_int32(torch.from_numpy(q), bits, packed_dim=0).numpy())
        assert np.array_equal(unpack_from_int32(torch.from_numpy(ours), bits, torch.Size((rows, cols))).numpy(), q)
        assert np.array_equal(pq.unpack_int32(ours, bits, cols), q)


# ---------------------------------------------------------------- the library decodes every tensor exactly


@pytest.mark.parametrize("bits", pq.BITS)
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_library_decompresses_every_tensor_exactly(sources, tmp_path, bits, group_size, symmetric):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    src = sources["wide"]
    schemes = sm.uniform_schemes(src, bits, group_size, symmetric)
    assert {s.group_size for s in schemes.values()} == {group_size}  # one config group, no fallback
    rng = np.random.default_rng(bits * 100 + group_size)
    importance = {n: rng.uniform(0.1, 2.0, src.infos[n].shape[1]).astype(np.float32) for n in schemes}
    out = sm.write_safetensors(src, tmp_path / "build", schemes, importance=importance, progress=False)
    ref = _reference(src, schemes, importance)
    lib = _library_decompress(out)
    assert set(lib) == {_file_name(src, n).removesuffix(".weight") for n in schemes}
    stored = _tensors(out)
    for n, gq in ref.items():
        weight, scheme, sd = lib[_file_name(src, n).removesuffix(".weight")]
        assert (scheme.weights.num_bits, scheme.weights.group_size, scheme.weights.symmetric) == (bits, group_size, symmetric)
        assert weight.dtype == torch.bfloat16 and weight.shape == src.infos[n].shape
        assert torch.equal(weight.float(), torch.from_numpy(pq.stored_values(gq, "BF16"))), n
        # fed quantkit's exact values, the library's own compressor writes the same packed words
        feed = {"weight": torch.from_numpy(group.group_dequantize(gq)), "weight_scale": torch.from_numpy(gq.scales)}
        if not symmetric:
            feed["weight_zero_point"] = torch.from_numpy(gq.zero_points)
        again = PackedQuantizationCompressor.compress(feed, scheme)
        assert torch.equal(again["weight_packed"], sd["weight_packed"]), n
        assert symmetric == ("weight_zero_point" not in sd)
        if not symmetric:
            assert torch.equal(again["weight_zero_point"], sd["weight_zero_point"]), n
    # read back as a TensorSource, the build decodes to the library's values; the rest reads as the source
    back = open_source(str(out))
    assert isinstance(back, PackQuantizedSource) and list(back.infos) == list(src.infos)
    for n, info in src.infos.items():
        if n in schemes:
            weight = lib[_file_name(src, n).removesuffix(".weight")][0].float().numpy()
            assert back.infos[n].dtype == schemes[n].label and back.infos[n].shape == info.shape
            assert np.array_equal(back.get(n), weight), n
            assert np.array_equal(back.rows(n, 3, 7), weight[3:7]), n
        else:
            assert back.infos[n] == info and np.array_equal(back.get(n), src.get(n)), n
    # everything else is the source's own bytes
    with safe_open(str(src.path / "model.safetensors"), framework="pt") as h:
        for name in h.keys():
            if name.removesuffix(".weight") not in lib:
                assert torch.equal(stored[name], h.get_tensor(name)) and stored[name].dtype == torch.bfloat16, name


def test_quantization_config_follows_the_schema(sources, tmp_path):
    from compressed_tensors.quantization import QuantizationConfig

    src = sources["moe"]
    out = sm.write_safetensors(src, tmp_path / "moe", sm.uniform_schemes(src, 4, 32), progress=False)
    config = json.loads((out / "config.json").read_text())
    qc = config.pop("quantization_config")
    source_config = json.loads((src.path / "config.json").read_text())
    assert config == source_config  # the rest of config.json is the source's
    assert set(qc) == {"quant_method", "format", "version", "quantization_status", "global_compression_ratio",
                       "ignore", "kv_cache_scheme", "sparsity_config", "transform_config", "config_groups"}
    assert (qc["quant_method"], qc["format"], qc["quantization_status"]) == ("compressed-tensors", "pack-quantized", "compressed")
    (grp,) = qc["config_groups"].values()
    assert grp["targets"] == ["Linear"] and grp["format"] == "pack-quantized"
    assert grp["weights"] == {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32,
                              "actorder": None, "dynamic": False, "block_structure": None, "scale_dtype": None,
                              "zp_dtype": None}
    # every Linear / Embedding module that stays bf16: the tied head, the embedding, the MoE routers
    routers = [f"model.layers.{i}.router.proj" for i in range(src.spec.n_layers)]
    assert qc["ignore"] == ["lm_head", "model.embed_tokens", *routers]
    parsed = QuantizationConfig.model_validate(qc)
    assert parsed.config_groups["group_0"].weights.num_bits == 4
    # the expert stacks (3-D parameters, not Linear modules) are copied unquantized
    stored = _tensors(out)
    assert stored["model.layers.0.experts.gate_up_proj"].dtype == torch.bfloat16


# ---------------------------------------------------------------- transformers loads the build


@pytest.mark.parametrize("bits", [8, 4])
def test_transformers_logits_match_quantkit_forward(sources, tmp_path, bits):
    """The tiny E-style model at group 32 (its 16-wide PLE projections per channel: a second config group),
    sharded, loaded by transformers in fp32; quantkit's forward on group_dequantize's values."""
    src = sources["e"]
    schemes = sm.uniform_schemes(src, bits, 32)
    assert {s.group_size for s in schemes.values()} == {32, -1}
    out = sm.write_safetensors(src, tmp_path / "build", schemes, progress=False, shard_bytes=150_000)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = {}
    for s in shards:
        with safe_open(str(out / s), framework="pt") as h:
            stored.update({k: s for k in h.keys()})
    assert index["weight_map"] == stored
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in _tensors(out).values())
    ids = tiny_models.random_ids()
    values = {n: group.group_dequantize(gq) for n, gq in _reference(src, schemes).items()}
    loaded = _logits_loaded(out, ids)
    delta = (loaded - _logits_quantkit(src, values, ids)).abs().max().item()
    off = (loaded - _logits_quantkit(src, {}, ids)).abs().max().item()
    print(f"\n{bits}-bit g32 symmetric, tiny Gemma 4 E-style: max |Δlogit| transformers vs quantkit = {delta:.3g} "
          f"(vs the unquantized model: {off:.3g})")
    assert delta <= 1e-3 and off > 1e-2


@pytest.mark.parametrize("name", ["dense", "moe", "gemma3"])
def test_transformers_loads_dense_moe_and_gemma3(sources, tmp_path, name):
    src = sources[name]
    schemes = sm.uniform_schemes(src, 8, 128)
    out = sm.write_safetensors(src, tmp_path / name, schemes, progress=False)
    ids = tiny_models.random_ids()
    values = {n: group.group_dequantize(gq) for n, gq in _reference(src, schemes).items()}
    delta = (_logits_loaded(out, ids) - _logits_quantkit(src, values, ids)).abs().max().item()
    print(f"\n8-bit g128 ({name}): max |Δlogit| = {delta:.3g}")
    assert delta <= 1e-3


def test_asymmetric_build_loads_with_dequantize(sources, tmp_path):
    """transformers 5.23 loads asymmetric pack-quantized builds through dequantize=True, which decodes in the
    stored scale dtype (bf16) with the one config group's scheme."""
    from transformers import CompressedTensorsConfig

    src = sources["wide"]
    schemes = sm.uniform_schemes(src, 4, 128, symmetric=False)
    out = sm.write_safetensors(src, tmp_path / "asym", schemes, progress=False)
    ids = tiny_models.random_ids()
    values = {n: pq.stored_values(gq, "BF16") for n, gq in _reference(src, schemes).items()}
    got = _logits_loaded(out, ids, quantization_config=CompressedTensorsConfig(dequantize=True))
    delta = (got - _logits_quantkit(src, values, ids)).abs().max().item()
    print(f"\n4-bit g128 asymmetric (dequantize=True): max |Δlogit| = {delta:.3g}")
    assert delta <= 1e-3


def test_multimodal_build_keeps_the_towers(sources, tmp_path):
    from transformers import Gemma4ForConditionalGeneration

    src = sources["multimodal"]
    assert src.skipped["towers"] > 0
    schemes = sm.uniform_schemes(src, 4, 32)
    out = sm.write_safetensors(src, tmp_path / "mm", schemes, progress=False)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "re:.*vision_tower.*" in qc["ignore"] and "re:.*embed_vision.*" in qc["ignore"]
    model = Gemma4ForConditionalGeneration.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    original = Gemma4ForConditionalGeneration.from_pretrained(src.path, dtype=torch.float32).eval()
    theirs = dict(original.model.vision_tower.named_parameters())
    assert all(torch.equal(p, theirs[k]) for k, p in model.model.vision_tower.named_parameters())
    ids = tiny_models.random_ids()
    with torch.no_grad():
        got = model(input_ids=ids).logits
    values = {n: group.group_dequantize(gq) for n, gq in _reference(src, schemes).items()}
    assert (got - _logits_quantkit(src, values, ids)).abs().max().item() <= 1e-3


def test_gptq_build_decodes_to_gptq_values(sources, tmp_path, monkeypatch):
    """compress --format safetensors --method gptq: the library decodes every tensor to the values GPTQ chose,
    and transformers' logits are quantkit's forward on them."""
    from quantkit import compress
    from quantkit.workdir import WorkDir

    src = sources["e"]
    chosen = {}
    save = WorkDir.save_group

    def record(work, name, gq):
        chosen[name] = gq
        save(work, name, gq)

    monkeypatch.setattr(WorkDir, "save_group", record)
    opts = compress.CompressOptions(bits=4, method="gptq", calib_tokens=512, progress=False, format="safetensors",
                                    group_size=32)
    result = compress.run_safetensors(src, tmp_path / "run", opts)
    assert result.path == tmp_path / "run" / f"{src.path.name}-int4-g32-gptq"
    assert not (tmp_path / "run" / "work").exists()
    schemes = sm.uniform_schemes(src, 4, 32)
    assert set(chosen) == set(schemes)  # every Linear went through GPTQ
    lib = _library_decompress(result.path)
    for n, gq in chosen.items():
        assert torch.equal(lib[_file_name(src, n).removesuffix(".weight")][0].float(),
                           torch.from_numpy(pq.stored_values(gq, "BF16"))), n
    rtn = _reference(src, schemes)
    assert any(not np.array_equal(chosen[n].codes, rtn[n].codes) for n in schemes)  # GPTQ is not the rtn search
    ids = tiny_models.random_ids()
    values = {n: group.group_dequantize(gq) for n, gq in chosen.items()}
    assert (_logits_loaded(result.path, ids) - _logits_quantkit(src, values, ids)).abs().max().item() <= 1e-3
    meta = safe_open(str(result.path / "model.safetensors"), framework="pt").metadata()
    assert meta["quantkit.recipe"] == "--format safetensors --bits 4 --group-size 32 --method gptq"


# ---------------------------------------------------------------- safety


def _listing(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(d.rglob("*"))}


def test_interrupted_write_leaves_nothing_and_a_rerun_is_identical(sources, tmp_path):
    src = sources["e"]
    schemes = sm.uniform_schemes(src, 4, 32, symmetric=False)
    clean = _listing(sm.write_safetensors(src, tmp_path / "clean", schemes, progress=False, shard_bytes=150_000))
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= set(clean)
    dest = tmp_path / "out"
    dest.mkdir()
    build = dest / "build"
    real_get = src.get
    for n_ok in (0, 5, 20, len(schemes) - 1):
        seen = []

        def get(name, n_ok=n_ok):
            if len(seen) == n_ok:
                raise KeyboardInterrupt("killed")
            seen.append(name)
            return real_get(name)

        src.get = get
        try:
            with pytest.raises(KeyboardInterrupt):
                sm.write_safetensors(src, build, schemes, progress=False, shard_bytes=150_000)
        finally:
            del src.get
        assert os.listdir(dest) == [], n_ok
    # a failure while encoding (the GPTQ hook) also leaves nothing
    with pytest.raises(RuntimeError, match="disk on fire"):
        sm.write_safetensors(src, build, schemes, progress=False,
                             encoded=lambda name: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    assert os.listdir(dest) == []
    sm.write_safetensors(src, build, schemes, progress=False, shard_bytes=150_000)
    assert _listing(build) == clean
    # a failed rewrite leaves the previous build as it was; a good one replaces it, byte-identical again
    sm.write_safetensors(src, build, sm.uniform_schemes(src, 8, 32), progress=False)
    previous = _listing(build)
    src.get = lambda name: (_ for _ in ()).throw(KeyboardInterrupt("killed"))
    try:
        with pytest.raises(KeyboardInterrupt):
            sm.write_safetensors(src, build, schemes, progress=False, shard_bytes=150_000)
    finally:
        del src.get
    assert os.listdir(dest) == ["build"] and _listing(build) == previous
    sm.write_safetensors(src, build, schemes, progress=False, shard_bytes=150_000)
    assert os.listdir(dest) == ["build"] and _listing(build) == clean


def test_large_tensors_in_chunks_of_rows_write_the_same_bytes(sources, tmp_path, monkeypatch):
    """Tensors over CHUNK_VALUES are read, quantized and written by rows (the PLE table, a 31B MLP): the bytes equal
    those of the whole tensor at once, zero points (packed across rows) included."""
    src = sources["e"]
    schemes = sm.uniform_schemes(src, 2, 32, symmetric=False)
    whole = _listing(sm.write_safetensors(src, tmp_path / "whole", schemes, progress=False))
    monkeypatch.setattr(sm, "CHUNK_VALUES", 1000)
    assert len(sm._row_ranges(256, 64)) == 8
    assert _listing(sm.write_safetensors(src, tmp_path / "chunked", schemes, progress=False)) == whole


def test_verification_failure_leaves_nothing(sources, tmp_path, monkeypatch):
    src = sources["e"]

    def bad_verify(tmp, *args):
        raise IOFailure(f"{tmp}: tensor bytes read back differ from those written (checksum)")

    monkeypatch.setattr(safetensors_writer, "verify", bad_verify)
    with pytest.raises(IOFailure, match="checksum"):
        sm.write_safetensors(src, tmp_path / "build", sm.uniform_schemes(src, 4, 32), progress=False)
    assert os.listdir(tmp_path) == []


def test_writer_checks_what_the_encoder_returns(tmp_path):
    entries = [safetensors_writer.TensorEntry("a", (2, 3), "F32"), safetensors_writer.TensorEntry("b", (4,), "I64")]
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int64)
    with pytest.raises(BadInput, match="encoder returned 16 bytes"):
        safetensors_writer.write(tmp_path / "x.safetensors", {}, entries, [("a", a), ("b", b[:2])])
    with pytest.raises(BadInput, match="more than"):
        safetensors_writer.write(tmp_path / "x.safetensors", {}, entries, [("a", a), ("a", a), ("b", b)])
    assert os.listdir(tmp_path) == []
    # chunks of a tensor in order, tensors interleaved, any order
    path = safetensors_writer.write(tmp_path / "x.safetensors", {"k": "v"}, entries,
                                    [("a", a[:1]), ("b", b), ("a", a[1:])])
    with safe_open(str(path), framework="numpy") as h:
        assert h.metadata() == {"k": "v"}
        assert np.array_equal(h.get_tensor("a"), a) and np.array_equal(h.get_tensor("b"), b)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~atomic.umask())


def test_refusals(sources, tmp_path):
    src = sources["e"]
    with pytest.raises(BadInput, match="lookup tables stay"):
        sm.write_safetensors(src, tmp_path / "b", {"embed_tokens.weight": pq.IntScheme(4, 32)}, progress=False)
    with pytest.raises(BadInput, match="only 2-D Linear"):
        sm.write_safetensors(src, tmp_path / "b", {"norm.weight": pq.IntScheme(4, -1)}, progress=False)
    with pytest.raises(BadInput, match="not a multiple of group size"):
        sm.write_safetensors(src, tmp_path / "b", {"layers.0.per_layer_projection.weight": pq.IntScheme(4, 32)},
                             progress=False)
    with pytest.raises(BadInput, match="3-bit"):
        pq.IntScheme(3, 32)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="not a safetensors build"):
        sm.write_safetensors(src, other, sm.uniform_schemes(src, 4, 32), progress=False)
    assert _listing(other) == {"keep.txt": b"mine"}
    assert sorted(os.listdir(tmp_path)) == ["notes"]


def test_gguf_source_is_refused(tmp_path):
    from quantkit.formats.gguf_model import write_gguf
    from quantkit.formats.gguf_source import GGUFSource

    model, _ = tiny_models.gemma4_dense()
    d = tmp_path / "hf"
    hf = _save(model, d)
    write_gguf(hf, tmp_path / "m.gguf", progress=False)
    with pytest.raises(UnsupportedModel, match="Hugging Face checkpoint"):
        sm.plan_safetensors(GGUFSource(tmp_path / "m.gguf"))


# ---------------------------------------------------------------- the command line


def test_cli_compress_and_inspect(sources, tmp_path):
    src = sources["e"]
    run = CliRunner().invoke(cli, ["compress", str(src.path), "--format", "safetensors", "--bits", "4",
                                   "--group-size", "32", "--method", "rtn", "--tokens", "0", "--out", str(tmp_path)])
    assert run.exit_code == 0, run.output
    build = tmp_path / f"{src.path.name}-int4-g32-rtn"
    assert f"wrote {build}" in run.output and "int4-g32" in run.output
    assert (tmp_path / "plan.json").exists()
    inv = inspect_path(build)
    rows = {r.name: r for r in inv.tensors}
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert (q.type, q.shape) == ("int4-g32", [128, 64])
    assert q.nbytes == 128 * 64 // 2 + 128 * 2 * 2 + 16  # packed words, bf16 scales, weight_shape
    assert rows["model.layers.0.per_layer_projection.weight"].type == "int4-channel"
    assert rows["model.embed_tokens.weight"].type == "BF16"
    assert not any(".weight_" in n for n in rows)
    assert inv.n_params == sum(int(np.prod(i.shape)) for i in src.infos.values())
    assert 4.5 < inv.totals()["attention"]["bpw"] < 4.6
    shown = CliRunner().invoke(cli, ["inspect", str(build)])
    assert shown.exit_code == 0 and "int4-g32" in shown.output
    # options that do not fit the format
    bad = CliRunner().invoke(cli, ["compress", str(src.path), "--format", "safetensors", "--bits", "3",
                                   "--method", "rtn", "--tokens", "0", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "expected one of 2, 4, 8" in str(bad.exception or bad.output)
    bad = CliRunner().invoke(cli, ["compress", str(src.path), "--bits", "4", "--asym", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--format safetensors" in bad.output


def test_safetensors_build_gets_a_report_judged_on_transformers_logits(sources, tmp_path):
    """`compress --format safetensors` evaluates its build (read back by formats.compressed_source) like a GGUF
    one. Oracle: transformers' logits of the loaded build (dequantize=True: decoded in the stored bf16 scale's dtype,
    as a bf16 runtime computes; one config group) and of the source, scored with the same metrics."""
    from transformers import CompressedTensorsConfig

    from quantkit.calibration.text import eval_chunks
    from quantkit.reports.metrics import Scorer
    from quantkit.reports.results import RunReport

    src = sources["wide"]
    run = CliRunner().invoke(cli, ["compress", str(src.path), "--format", "safetensors", "--bits", "4", "--method",
                                   "rtn", "--tokens", "1024", "--judge", "llama.cpp", "--out", str(tmp_path)])
    assert run.exit_code == 0, run.output
    report = RunReport.load(tmp_path)
    assert report.judge == "quantkit"  # llama.cpp runs GGUF files only
    (build,) = report.builds
    assert Path(build.path) == tmp_path / f"{src.path.name}-int4-g128-rtn" and build.file_bytes > 0
    ids = torch.from_numpy(eval_chunks(src.tokenizer(), "wiki", 1024).ids).long()
    scorer = Scorer()
    loaded = _logits_loaded(Path(build.path), ids, quantization_config=CompressedTensorsConfig(dequantize=True))
    for row, ours, ref in zip(ids, loaded, _logits_loaded(src.path, ids)):
        scorer.add(ours, row, ref)
    expected = scorer.result()
    assert build.ppl == pytest.approx(expected.ppl, rel=1e-4)
    assert build.mean_kld == pytest.approx(expected.mean_kld, rel=1e-3, abs=1e-7) and build.mean_kld > 0
    assert build.top1 == pytest.approx(expected.top1)
    shown = CliRunner().invoke(cli, ["eval", build.path, "--ref", str(src.path), "--tokens", "1024"])
    assert shown.exit_code == 0 and f"perplexity {build.ppl:.4f}" in shown.output, shown.output


def test_gemma3_gguf_source_becomes_a_gemma3_directory(sources, tmp_path):
    """A Gemma 3 GGUF (the embedded 270M's kind) has no Hugging Face directory to copy: the build is written as a
    Gemma3ForCausalLM directory in float32 with a config made from the GGUF's spec. Oracles: the spec read back
    from that config; transformers' logits of the loaded build, scored like quantkit's report."""
    from quantkit.calibration.text import eval_chunks
    from quantkit.formats.gguf_model import write_gguf
    from quantkit.formats.gguf_source import GGUFSource
    from quantkit.reports.metrics import Scorer
    from quantkit.reports.results import RunReport

    gguf_path = write_gguf(sources["gemma3"], tmp_path / "m.gguf", progress=False)
    src = GGUFSource(gguf_path)
    run = CliRunner().invoke(cli, ["compress", str(gguf_path), "--format", "safetensors", "--bits", "8", "--method",
                                   "rtn", "--tokens", "1024", "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    (build,) = RunReport.load(tmp_path / "out").builds
    back = open_source(build.path)
    assert isinstance(back, PackQuantizedSource) and back.spec == src.spec
    assert back.infos["layers.0.mlp.down_proj.weight"].dtype == "int8-g128"
    for n in ("norm.weight", "layers.0.input_layernorm.weight", "embed_tokens.weight"):
        assert np.array_equal(back.get(n), src.get(n)), n  # the GGUF's values, norms as multipliers again
    ids = torch.from_numpy(eval_chunks(src.tokenizer(), "wiki", 1024).ids).long()
    scorer = Scorer()
    ref = torch.stack([torch.from_numpy(x) for x in
                       (Gemma(src.spec, src)(ids[i:i + 1])[0].numpy() for i in range(len(ids)))])
    for row, ours, r in zip(ids, _logits_loaded(Path(build.path), ids), ref):
        scorer.add(ours, row, r)
    expected = scorer.result()
    assert build.ppl == pytest.approx(expected.ppl, rel=1e-4)
    assert build.mean_kld == pytest.approx(expected.mean_kld, rel=1e-2, abs=1e-6)
