"""quantkit's type plans and imatrix files against llama.cpp itself (llama-cpp-python's libllama), on the real
Gemma 3 270M F32 base.

* For every preset, `llama_model_quantize` writes a file; quantkit's `recipes.like` must name the same type for
  every tensor (read back with quantkit's GGUFFile).
* The 270M's 640-wide rows send most 256-block types to their fallbacks and its n_gqa is 4, so for the IQ1_S /
  IQ1_M / IQ2_S / IQ2_M / IQ3_XS / IQ3_S / IQ3_M presets the plans are also checked on small synthetic layouts
  with 256-wide rows (n_gqa 2; Gemma 4 E-style PLE with KV-shared layers; MoE with 4 and 8 experts), with and
  without an imatrix.
* An imatrix captured by quantkit on calibration text is written as a llama.cpp GGUF imatrix, read back, turned into
  importance (in_sum2 / counts, as tools/quantize does) and handed to `llama_model_quantize` through its
  `llama_model_imatrix_data` array (the struct is plain name/data/size, so ctypes is enough; the llama-quantize
  CLI path reads the same file format through common_imatrix_load). IQ3_XXS / IQ2_XXS / IQ2_S / IQ2_M / IQ1_S /
  IQ1_M require it; for Q4_0 and Q4_K_M the quantized bytes must equal quantkit's importance-weighted encoder on
  the same tensors.

Run: .venv/bin/pytest -m integration tests/integration/test_recipes_llamacpp.py -s
"""

from __future__ import annotations

import numpy as np
import pytest


from quantkit.calibration.imatrix import from_stats, read_imatrix, write_imatrix  # noqa: E402
from quantkit.compress import make_plan, text_file_bytes  # noqa: E402
from quantkit.formats import names  # noqa: E402
from quantkit.formats.gguf_reader import GGUFFile  # noqa: E402
from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.kernels import registry  # noqa: E402
from quantkit.options import CompressOptions  # noqa: E402
from quantkit.recipes import like  # noqa: E402

from .llamacpp import copy_metadata, llama_quantize  # noqa: E402

pytestmark = pytest.mark.integration

PRESETS = ["Q2_K", "Q2_K_S", "Q3_K_M", "Q3_K_S", "Q4_0", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS",
           "IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ1_S", "IQ1_M"]
# llama-quant.cpp tensor_type_requires_imatrix: these presets write such tensors on the 270M (its ffn_down)
NEEDS_IMATRIX = ("Q2_K_S", "IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M")
SIZE_MATCH = 1e-3  # quantkit's planned --like file against llama.cpp's, relative
# presets run without an imatrix above that are run with one too (the IQ3 presets' rules do not read it; on the
# 270M their IQ3_XXS picks fall back to IQ4_NL on the 640-wide rows, so llama.cpp does not require one)
ALSO_WITH_IMATRIX = ["IQ3_XS", "IQ3_S", "IQ3_M"]


@pytest.fixture(scope="module")
def base(f32_270m):
    return GGUFSource(f32_270m)


@pytest.fixture(scope="module")
def imatrix_file(c4_capture_270m, tmp_path_factory):
    """A real imatrix: quantkit's capture of the 270M over the first 4 x 512 tokens of the built-in c4 text (the
    session's, conftest c4_capture_270m; test_imatrix_llamacpp.py checks it against llama-imatrix's)."""
    return write_imatrix(tmp_path_factory.mktemp("imatrix") / "imatrix.gguf",
                         from_stats(c4_capture_270m.stats, datasets=["c4"], chunk_size=c4_capture_270m.ctx))


def importance_by_gguf_name(path) -> dict[str, np.ndarray]:
    return {names.to_gguf(n) or n: v for n, v in read_imatrix(path).importance().items()}


@pytest.mark.parametrize("preset", PRESETS)
def test_plan_matches_llama_quantize(preset, base, f32_270m, request, tmp_path):
    imp = importance_by_gguf_name(request.getfixturevalue("imatrix_file")) if preset in NEEDS_IMATRIX else None
    _check_plan(preset, imp, base, f32_270m, tmp_path)


@pytest.mark.parametrize("preset", ALSO_WITH_IMATRIX)
def test_plan_matches_llama_quantize_with_imatrix(preset, base, f32_270m, imatrix_file, tmp_path):
    _check_plan(preset, importance_by_gguf_name(imatrix_file), base, f32_270m, tmp_path)


def _check_plan(preset, imp, base, f32_270m, tmp_path):
    out = tmp_path / f"{preset}.gguf"
    llama_quantize(f32_270m, out, preset, imp)
    f = GGUFFile(out)
    try:
        theirs = {names.from_gguf(t.name): t.ggml_type.name for t in f.tensors.values() if names.from_gguf(t.name)}
    finally:
        f.close()
    ours = like(preset, base.spec, base.table, has_imatrix=imp is not None)
    assert set(ours) == set(theirs)
    diff = {n: (ours[n], theirs[n]) for n in ours if ours[n] != theirs[n]}
    assert not diff, f"{preset}: {len(diff)} tensors differ, e.g. {list(diff.items())[:5]}"
    # and the file `compress --like` writes (planned exactly, as --dry-run prints it) has llama.cpp's size
    opts = CompressOptions(like=preset, method="imatrix" if imp is not None else "rtn")
    ours_bytes, theirs_bytes = text_file_bytes(base, make_plan(base, opts), opts), out.stat().st_size
    print(f"{preset}: quantkit {ours_bytes:,} llama.cpp {theirs_bytes:,} bytes")
    assert abs(ours_bytes - theirs_bytes) <= SIZE_MATCH * theirs_bytes


# layout -> (kv heads of 4 heads, experts, PLE width, KV-shared trailing layers); 8 layers, hidden 256
SYNTH_LAYERS = 8
SYNTH_LAYOUTS = {"gqa2": (2, 0, 0, 0), "e-ple-kv-shared": (1, 0, 256, 2), "moe4": (1, 4, 0, 0), "moe8": (2, 8, 0, 0)}
SYNTH_PRESETS = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ1_S", "IQ1_M",
                 "Q2_K_S"]
SYNTH_NO_IMATRIX = ("IQ3_S", "IQ3_M")  # the others give IQ1_* / IQ2_* / IQ3_XXS tensors there, which need one


def _synthetic_spec(n_kv, n_experts, ple, shared):
    from quantkit.formats.source import TensorInfo
    from quantkit.models.spec import LayerSpec, ModelSpec, tensor_shapes
    from quantkit.tensor_table import TensorTable

    n = SYNTH_LAYERS
    layers = tuple(LayerSpec(sliding=True, head_dim=64, n_kv_heads=n_kv, ffn_dim=512, rope_theta=1e4,
                             kv_source=n - shared - 1 if i >= n - shared else None) for i in range(n))
    spec = ModelSpec(arch="gemma4", vocab_size=512, hidden_size=256, n_heads=4, layers=layers, ple_dim=ple,
                     ple_vocab=512 if ple else 0, n_experts=n_experts, top_k=2 if n_experts else 0,
                     expert_ffn_dim=256 if n_experts else 0)
    shapes = tensor_shapes(spec)
    return spec, TensorTable.from_infos({k: TensorInfo(k, v, "F32", 0, k) for k, v in shapes.items()}), shapes


@pytest.fixture(scope="module")
def synthetic(q4km_270m, tmp_path_factory):
    """layout -> (spec, table, F32 GGUF path, importance by GGUF name). The GGUF carries the 270M's metadata (so
    llama.cpp loads it as gemma3) with block_count, head counts, widths and expert_count set to the layout's,
    and random weights in the layout's Gemma 4 tensors (llama_model_quantize reads hparams, not the graph; the
    rules look at n_head, n_head_kv, n_layer, n_expert and tensor names only)."""
    import gguf

    built = {}
    reader = gguf.GGUFReader(str(q4km_270m))  # once: it parses the 262,144-entry tokenizer in Python (about 10 s)

    def get(layout):
        if layout not in built:
            spec, table, shapes = _synthetic_spec(*SYNTH_LAYOUTS[layout])
            path = tmp_path_factory.mktemp("synth") / f"{layout}.gguf"
            keys = {"block_count": SYNTH_LAYERS, "embedding_length": spec.hidden_size,
                    "attention.head_count": spec.n_heads, "attention.head_count_kv": spec.layers[0].n_kv_heads,
                    "feed_forward_length": spec.layers[0].ffn_dim}
            if spec.n_experts:
                keys.update({"expert_count": spec.n_experts, "expert_used_count": spec.top_k})
            writer = gguf.GGUFWriter(str(path), "gemma3")
            copy_metadata(reader, writer, skip=tuple(f"gemma3.{k}" for k in
                                                     (*keys, "expert_count", "expert_used_count")))
            for k, v in keys.items():
                writer.add_uint32(f"gemma3.{k}", v)
            writer.add_file_type(0)  # ALL_F32
            rng = np.random.default_rng(3)
            imp = {}
            for canon, shape in shapes.items():
                g = names.to_gguf(canon)
                writer.add_tensor(g, (rng.standard_normal(shape) * 0.02).astype(np.float32))
                if len(shape) >= 2:  # one value per column (per expert for 3-D expert tensors)
                    size = shape[-1] * (shape[0] if len(shape) == 3 else 1)
                    imp[g] = rng.lognormal(0.0, 1.0, size).astype(np.float32)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            built[layout] = spec, table, path, imp
        return built[layout]

    return get


@pytest.mark.parametrize("preset,layout,with_imatrix", [
    pytest.param(p, lay, w, id=f"{p}-{lay}-{'imatrix' if w else 'no-imatrix'}")
    for p in SYNTH_PRESETS for lay in SYNTH_LAYOUTS for w in (True, False) if w or p in SYNTH_NO_IMATRIX])
def test_plan_matches_llama_quantize_synthetic(preset, layout, with_imatrix, synthetic, tmp_path):
    spec, table, src, imp = synthetic(layout)
    out = tmp_path / f"{preset}.gguf"
    llama_quantize(src, out, preset, imp if with_imatrix else None)
    f = GGUFFile(out)
    try:
        theirs = {names.from_gguf(t.name): t.ggml_type.name for t in f.tensors.values() if names.from_gguf(t.name)}
    finally:
        f.close()
    ours = like(preset, spec, table, has_imatrix=with_imatrix)
    assert set(ours) == set(theirs)
    diff = {n: (ours[n], theirs[n]) for n in ours if ours[n] != theirs[n]}
    assert not diff, f"{preset} {layout}: {len(diff)} tensors differ, e.g. {list(diff.items())[:5]}"


@pytest.mark.parametrize("preset", ["Q4_0", "Q4_K_M"])
def test_quantkit_imatrix_drives_llama_quantize(preset, base, f32_270m, imatrix_file, tmp_path):
    imp = importance_by_gguf_name(imatrix_file)
    assert "blk.0.ffn_down.weight" in imp and "token_embd.weight" not in imp
    out = tmp_path / f"{preset}-imat.gguf"
    llama_quantize(f32_270m, out, preset, imp)
    plan = like(preset, base.spec, base.table, has_imatrix=True)
    f = GGUFFile(out)
    checked = 0
    try:
        for g in ("blk.0.ffn_down.weight", "blk.3.attn_output.weight", "blk.5.ffn_up.weight", "blk.17.attn_v.weight"):
            t = f.tensors[g]
            canon = names.from_gguf(g)
            assert t.ggml_type.name == plan[canon]
            ours = registry.quantize(plan[canon], base.get(canon), importance=imp[g], name=g)
            np.testing.assert_array_equal(ours.reshape(-1), f.raw(g), err_msg=g)
            checked += 1
    finally:
        f.close()
    # the imatrix changed llama.cpp's choices where its rules say so (Q4_0: first n/8 ffn_down -> Q4_1)
    if preset == "Q4_0":
        assert plan["layers.0.mlp.down_proj.weight"] == "Q4_1"
    assert checked == 4


@pytest.mark.parametrize("preset,tensor_types,token_embd,output", [
    ("Q4_K_M", (r"blk\.[0-3]\.attn_v=q8_0", r"blk\.[0-2]\.ffn_down=q5_0"), None, None),
    ("Q3_K_M", ("ffn_up=iq4_nl", "attn_q=Q6_K"), "q4_0", None),
    ("Q2_K", ("attn_k=q8_0",), None, "q8_0"),
])
def test_overrides_match_llama_quantize(base, f32_270m, tmp_path, preset, tensor_types, token_embd, output):
    """`--like PRESET` with --tensor-type / --token-embedding-type / --output-tensor-type gives the types
    `llama-quantize` writes with the same flags, tensor by tensor. Overridden tensors do not advance llama.cpp's
    attn_v / ffn_down counters: at Q4_K_M that moves use_more_bits for the later layers (12 tensors differ if
    quantkit counted them)."""
    from quantkit.overrides import Overrides, apply
    from quantkit.plan import like as like_plan

    from .llamacpp_tools import llama_quantize_cli

    out = llama_quantize_cli(f32_270m, tmp_path / "x.gguf", preset, tensor_types=tensor_types,
                             token_embedding_type=token_embd, output_tensor_type=output)
    f = GGUFFile(out)
    try:
        theirs = {names.from_gguf(t.name): t.ggml_type.name for t in f.tensors.values() if names.from_gguf(t.name)}
    finally:
        f.close()
    forced = apply(Overrides.parse(tensor_types, token_embd, output), base.table).types
    ours = like_plan(base.spec, base.table, preset, forced=forced).types
    diff = {n: (ours[n], theirs[n]) for n in ours if ours[n] != theirs[n]}
    assert not diff, f"{preset} {tensor_types}: {len(diff)} tensors differ, e.g. {list(diff.items())[:5]}"
    assert len(forced) >= 4
