"""quantkit's type plans and imatrix files against llama.cpp itself (llama-cpp-python's libllama), on the real
Gemma 3 270M F32 base.

* For every preset, `llama_model_quantize` writes a file; quantkit's `recipes.like` must name the same type for
  every tensor (read back with quantkit's GGUFFile).
* An imatrix captured by quantkit on calibration text is written as a llama.cpp GGUF imatrix, read back, turned into
  importance (in_sum2 / counts, as tools/quantize does) and handed to `llama_model_quantize` through its
  `llama_model_imatrix_data` array (the struct is plain name/data/size, so ctypes is enough; the llama-quantize
  CLI path reads the same file format through common_imatrix_load). IQ3_XXS / IQ2_XXS require it; for Q4_0 and
  Q4_K_M the quantized bytes must equal quantkit's importance-weighted encoder on the same tensors.

Run: .venv/bin/pytest -m integration tests/integration/test_recipes_llamacpp.py -s
"""

from __future__ import annotations

import numpy as np
import pytest


from quantkit.calibration.imatrix import from_stats, read_imatrix, write_imatrix  # noqa: E402
from quantkit.formats import names  # noqa: E402
from quantkit.formats.gguf_reader import GGUFFile  # noqa: E402
from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.kernels import registry  # noqa: E402
from quantkit.recipes import like  # noqa: E402

from .llamacpp import llama_quantize  # noqa: E402

pytestmark = pytest.mark.integration

PRESETS = ["Q2_K", "Q3_K_M", "Q3_K_S", "Q4_0", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS",
           "IQ3_XXS", "IQ2_XXS"]
NEEDS_IMATRIX = ("IQ3_XXS", "IQ2_XXS")


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
def test_plan_matches_llama_quantize(preset, base, f32_270m, imatrix_file, tmp_path):
    imp = importance_by_gguf_name(imatrix_file) if preset in NEEDS_IMATRIX else None
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
