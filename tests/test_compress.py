"""`compress` end to end on a tiny random Gemma 4 (E-style) checkpoint."""

import numpy as np
import pytest

import tiny_models
import tiny_tokenizer
from quantkit.compress import CompressOptions, run
from quantkit.formats.gguf_source import GGUFSource
from quantkit.formats.hf_source import HFSource
from quantkit.kernels import registry


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_e")
    model, _ = tiny_models.gemma4_e()
    model.save_pretrained(d)
    tiny_tokenizer.save(d)
    text = d / "calib.txt"
    text.write_text(tiny_tokenizer.TEXT * 30)
    return d, str(text)


def test_type_rtn_round_trip(checkpoint, tmp_path):
    d, _ = checkpoint
    src = HFSource(d)
    res = run(src, tmp_path, CompressOptions(type_name="Q8_0", method="rtn", eval_tokens=0, progress=False))
    build = GGUFSource(res.path)
    w = src.get("layers.0.mlp.down_proj.weight")
    want = registry.dequantize("Q8_0", registry.quantize("Q8_0", w), w.shape)
    np.testing.assert_array_equal(build.get("layers.0.mlp.down_proj.weight"), want)
    assert build.infos["layers.0.input_layernorm.weight"].dtype == "F32"
    assert not (tmp_path / "work").exists()


def test_gptq_is_deterministic_and_standard(checkpoint, tmp_path):
    d, text = checkpoint
    opts = dict(type_name="Q4_0", method="gptq", calib=text, calib_tokens=1024, eval_tokens=0, progress=False)
    a = run(HFSource(d), tmp_path / "a", CompressOptions(**opts))
    b = run(HFSource(d), tmp_path / "b", CompressOptions(**opts))
    assert a.path.read_bytes() == b.path.read_bytes()
    build = GGUFSource(a.path)
    assert build.infos["layers.0.self_attn.q_proj.weight"].dtype == "Q4_0"


def test_max_size_lands_under_budget(checkpoint, tmp_path):
    d, text = checkpoint
    src = HFSource(d)
    full = run(src, tmp_path / "q8", CompressOptions(type_name="Q8_0", method="rtn", eval_tokens=0, progress=False))
    target = int(full.file_bytes * 0.8)
    res = run(src, tmp_path / "budget", CompressOptions(max_size=target, method="imatrix", calib=text,
                                                       calib_tokens=1024, eval_tokens=0, progress=False))
    assert res.file_bytes <= target
    assert len({t for t in res.plan.types.values() if t != "F32"}) >= 2  # a real mix, not one type


def test_recipe_rebuilds_the_plan_and_refuses_another_model(checkpoint, tmp_path):
    """--recipe plan.json: an earlier run's per-tensor types, with another method; a recipe made for another model
    is refused, naming the first tensor that differs."""
    from quantkit.compress import compress
    from quantkit.errors import BadOption
    from quantkit.formats.gguf_reader import GGUFFile

    d, text = checkpoint
    src = HFSource(d)
    first = compress(src, tmp_path / "like", CompressOptions(like="Q3_K_M", method="rtn", eval_tokens=0,
                                                            progress=False))
    recipe = tmp_path / "like" / "plan.json"
    again = run(src, tmp_path / "again", CompressOptions(recipe_file=str(recipe), method="rtn", eval_tokens=0,
                                                         progress=False))
    assert again.plan.types == first.plan.types and len(set(first.plan.types.values())) >= 3
    a, b = GGUFFile(first.path), GGUFFile(again.path)  # same types, same method: the same tensor bytes
    assert list(a.tensors) == list(b.tensors) and all(np.array_equal(a.raw(n), b.raw(n)) for n in a.tensors)
    assert b.metadata["quantkit.recipe"] == f"--recipe {recipe} --method rtn"
    assert len(set(again.path.name.split("-")) & {"recipe", "like", "rtn"}) == 2  # recipe-like-Q3_K_M-rtn...

    other = tmp_path / "other"
    model, _ = tiny_models.gemma4_dense()
    model.save_pretrained(other)
    tiny_tokenizer.save(other)
    with pytest.raises(BadOption, match=r"--recipe .*plan\.json: tensor \S+ .*made for another model"):
        run(HFSource(other), tmp_path / "x", CompressOptions(recipe_file=str(recipe), method="rtn", eval_tokens=0,
                                                             progress=False))
    recipe.write_text("{not json")
    with pytest.raises(BadOption, match=r"--recipe .*plan\.json: not a quantkit plan\.json"):
        run(src, tmp_path / "y", CompressOptions(recipe_file=str(recipe), method="rtn", eval_tokens=0, progress=False))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before anything is written
