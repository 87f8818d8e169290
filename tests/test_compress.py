"""`compress` end to end on a tiny random Gemma 4 (E-style) checkpoint."""

import numpy as np
import pytest

import tiny_models
import tiny_tokenizer
from quantkit.compress import CompressOptions, run
from quantkit.formats.gguf_source import GGUFSource
from quantkit.formats.gguf_reader import GGUFFile
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


def test_overrides_force_types_in_every_mode(checkpoint, tmp_path):
    """--tensor-type / --token-embedding-type / --output-tensor-type on top of --type, --like and --max-size; a
    pattern that matches nothing, a bad spec and a forced set larger than the budget are errors."""
    from quantkit.compress import make_plan
    from quantkit.errors import BadOption
    from quantkit.overrides import Overrides

    d, text = checkpoint
    src = HFSource(d)
    gguf = {n: r.gguf for n, r in src.table.items()}
    ov = Overrides.parse(("attn_v=q8_0", r"blk\.0\..*=Q5_0"), token_embedding_type="Q6_K")
    plan = make_plan(src, CompressOptions(type_name="Q4_0", overrides=ov)).types
    for n, t in plan.items():
        g = gguf[n]
        if src.table[n].fixed:
            want = "F32"
        elif g in ("token_embd.weight", "per_layer_token_embd.weight"):
            want = "Q6_K"
        elif "attn_v" in g:
            want = "Q8_0"  # the first matching pattern wins, blk.0.attn_v included
        elif g.startswith("blk.0."):
            want = "Q5_0"
        else:
            want = "Q4_0"
        want = registry.fallback_type(want, src.table[n].cols)  # rows a block does not divide
        assert t == want, (g, t, want)

    like = make_plan(src, CompressOptions(like="Q4_K_M", overrides=Overrides.parse(output_tensor_type="Q8_0"))).types
    assert like["embed_tokens.weight"] == "Q8_0"  # the tied output is the token embedding

    with pytest.raises(BadOption, match=r"--tensor-type nope=Q8_0: matches no quantizable tensor"):
        make_plan(src, CompressOptions(type_name="Q4_0", overrides=Overrides.parse(("nope=Q8_0",))))
    with pytest.raises(BadOption, match=r"expected REGEX=TYPE"):
        Overrides.parse(("attn_v",))
    with pytest.raises(BadOption, match=r"unknown tensor type 'Q9_9'"):
        Overrides.parse(("attn_v=Q9_9",))
    full = run(src, tmp_path / "q8", CompressOptions(type_name="Q8_0", method="rtn", eval_tokens=0, progress=False))
    with pytest.raises(BadOption, match=r"budget of [\d,]+ bytes is below the fixed-type tensors' [\d,]+ bytes"):
        run(src, tmp_path / "tight", CompressOptions(max_size=int(full.file_bytes * 0.6), method="rtn", eval_tokens=0,
                                                     progress=False, overrides=Overrides.parse(("blk=F32",))))
    assert not (tmp_path / "tight").exists()
    budget = run(src, tmp_path / "budget", CompressOptions(max_size=int(full.file_bytes * 0.8), method="rtn",
                                                           eval_tokens=0, progress=False, overrides=ov))
    assert budget.file_bytes <= int(full.file_bytes * 0.8)
    assert all(t == "Q8_0" for n, t in budget.plan.types.items() if "attn_v" in gguf[n])
    assert GGUFFile(budget.path).metadata["quantkit.recipe"].endswith(
        "--tensor-type attn_v=Q8_0 --tensor-type blk\\.0\\..*=Q5_0 --token-embedding-type Q6_K --method rtn")


def test_imatrix_file_is_the_importance(checkpoint, tmp_path):
    """--imatrix FILE with --method imatrix: no calibration runs, and every linear comes out as with quantkit's own
    capture over the same tokens (the file holds that capture); a file for another model, one missing a decoder
    tensor, and --method rtn are one-line errors."""
    from quantkit.calibration.imatrix import Imatrix, capture_imatrix, write_imatrix
    from quantkit.errors import BadOption

    d, text = checkpoint
    src = HFSource(d)
    imat = capture_imatrix(src, text, 1024, progress=False)
    path = write_imatrix(tmp_path / "imatrix.gguf", imat)
    opts = dict(like="Q4_K_M", method="imatrix", calib=text, calib_tokens=1024, eval_tokens=0, progress=False)
    own = run(src, tmp_path / "own", CompressOptions(**opts))
    given = run(src, tmp_path / "given", CompressOptions(**opts, imatrix_file=str(path)))
    assert "capture" in own.seconds and given.seconds["capture"] < own.seconds["capture"]
    a, b = GGUFFile(own.path), GGUFFile(given.path)
    linears = [src.table[n].gguf for n in imat.importance()]
    assert len(linears) >= 10 and all(np.array_equal(a.raw(g), b.raw(g)) for g in linears)
    assert b.metadata["quantkit.imatrix"] == "imatrix.gguf (llama.cpp imatrix file)"
    assert b.metadata["quantkit.calibration"] == "none"

    # a budget with GPTQ: the file is the sensitivity's importance, the Hessians come from calibration
    gptq = run(src, tmp_path / "gptq", CompressOptions(bits=3, method="gptq", calib=text, calib_tokens=1024,
                                                       eval_tokens=0, progress=False, imatrix_file=str(path)))
    assert gptq.plan.nbytes <= gptq.plan.budget and "calibrate+gptq" in gptq.seconds
    assert GGUFFile(gptq.path).metadata["quantkit.calibration"] == f"{text}:1024"

    with pytest.raises(BadOption, match=r"--method rtn uses no importance"):
        run(src, tmp_path / "x", CompressOptions(type_name="Q4_0", method="rtn", imatrix_file=str(path)))
    first = sorted(imat.sums)[0]
    short = Imatrix({g: s for g, s in imat.sums.items() if g != first},
                    {g: c for g, c in imat.counts.items() if g != first}, imat.datasets, imat.chunk_count, 512)
    write_imatrix(tmp_path / "short.gguf", short)
    with pytest.raises(BadOption, match=rf"--imatrix .*short\.gguf: no entry for {first}"):
        run(src, tmp_path / "x", CompressOptions(**{**opts, "imatrix_file": str(tmp_path / "short.gguf")}))
    other = tmp_path / "other"
    model, _ = tiny_models.gemma4_dense()
    model.save_pretrained(other)
    tiny_tokenizer.save(other)
    with pytest.raises(BadOption, match=r"--imatrix .*imatrix\.gguf: entry \S+ (is for a tensor this model does not "
                                        r"have|has \d+ columns).*another model"):
        run(HFSource(other), tmp_path / "x", CompressOptions(**{**opts, "imatrix_file": str(path)}))
    assert not (tmp_path / "x").exists()
