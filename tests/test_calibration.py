"""Streaming capture, imatrix files and lookup-table importance on tiny random Gemmas.

Oracles: a brute-force pass (the whole batch through `Gemma.forward` at once, every linear input kept), gguf-py's
GGUFReader for the imatrix layout, and the model's own forward for the table-importance claim.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache

import numpy as np
import pytest
import torch

from quantkit.calibration.capture import HEAD, capture
from quantkit.calibration.embed_importance import embed_importance, ple_importance
from quantkit.calibration.imatrix import from_stats, read_imatrix, write_imatrix
from quantkit.kernels import registry
from quantkit.models.gemma import Gemma, hf_state_to_canonical
from quantkit.models.spec import spec_from_hf_config
import tiny_models


def _canonical(model, config):
    spec = spec_from_hf_config(config)
    weights = {k: v.detach().float().numpy() for k, v in hf_state_to_canonical(model.state_dict(), spec.arch).items()}
    return spec, weights


@cache
def tiny(name: str):
    return _canonical(*tiny_models.BUILDERS[name]())


@cache
def tiny_ple32():
    """gemma4_e with 32-wide per-layer inputs, so the PLE table's 224 columns fit 32-blocks."""
    S, F = "sliding_attention", "full_attention"
    return _canonical(*tiny_models._gemma4(
        0, num_hidden_layers=7, layer_types=[S, S, F, S, S, F, F], num_kv_shared_layers=4,
        use_double_wide_mlp=True, hidden_size_per_layer_input=32, num_key_value_heads=1))


def brute_force(spec, weights, ids):
    """sum x^2, counts and X^T X of every linear input from one whole-batch forward (float64 throughout)."""
    xs, ex = defaultdict(list), defaultdict(lambda: defaultdict(list))
    m = Gemma(spec, weights.__getitem__)
    m.observer = lambda n, x: xs[n].append(x.double().clone())
    m.expert_observer = lambda n, e, x: ex[n][e].append(x.double().clone())
    m.forward(torch.as_tensor(ids))
    out = {}
    for n, parts in xs.items():
        X = torch.cat(parts)
        out[n] = (X.pow(2).sum(0).numpy(), X.shape[0], (X.T @ X).numpy())
    for n, per in ex.items():
        out[n] = {e: (torch.cat(p).pow(2).sum(0).numpy(), sum(len(t) for t in p)) for e, p in per.items()}
    return out


@pytest.mark.parametrize("name", ["gemma4_e", "gemma4_moe", "gemma3"])
def test_capture_matches_brute_force(name):
    spec, weights = tiny(name)
    ids = tiny_models.random_ids(batch=5, length=40, seed=1)
    res = capture(spec, weights.__getitem__, ids, batch_size=2, hessian=True, progress=False)
    ref = brute_force(spec, weights, ids)
    assert set(res.stats) == set(ref)
    assert HEAD in res.stats and res.stats[HEAD].count == ids.numel()
    for n, st in res.stats.items():
        if st.experts:
            for e in range(spec.n_experts):
                s2, c = ref[n].get(e, (np.zeros(st.sum_x2.shape[1]), 0))
                assert st.count[e] == c, (n, e)
                np.testing.assert_allclose(st.sum_x2[e], s2, rtol=1e-5, atol=1e-6, err_msg=f"{n}[{e}]")
            assert st.count.sum() == ids.numel() * spec.top_k
            continue
        s2, c, h = ref[n]
        assert st.count == c, n
        np.testing.assert_allclose(st.sum_x2, s2, rtol=1e-5, atol=1e-6, err_msg=n)
        np.testing.assert_allclose(st.hessian, h, rtol=1e-4, atol=1e-4 * np.abs(h).max(), err_msg=n)
        np.testing.assert_allclose(st.mean_x2(), (s2 / c).astype(np.float32), rtol=1e-5)


def test_sequential_mode_feeds_quantized_weights_forward():
    spec, weights = tiny("gemma4_dense")
    ids = tiny_models.random_ids(batch=3, length=24, seed=2)
    block0 = [n for n in weights if n.startswith("layers.0.") and n.endswith("proj.weight")]
    quant = {n: registry.dequantize("Q4_0", registry.quantize("Q4_0", weights[n]), weights[n].shape) for n in block0}
    seen = []

    def on_stage(i, stats):
        seen.append(i)
        return quant if i == 0 else None

    res = capture(spec, weights.__getitem__, ids, batch_size=2, on_stage=on_stage, progress=False)
    assert seen == list(range(-1, spec.n_layers + 1))
    plain = brute_force(spec, weights, ids)
    swapped = brute_force(spec, {**weights, **quant}, ids)
    for n, st in res.stats.items():
        # block 0 saw the original model's inputs; everything after it, the quantized block 0's outputs
        ref = plain[n] if n.startswith("layers.0.") else swapped[n]
        np.testing.assert_allclose(st.sum_x2, ref[0], rtol=1e-5, atol=1e-6, err_msg=n)
        if not n.startswith("layers.0."):
            assert not np.allclose(st.sum_x2, plain[n][0], rtol=1e-4), f"{n} did not see the quantized block 0"



def test_true_sequential_mode_replaces_each_linear_as_it_is_seen():
    """on_linear: one pass; a linear's statistics come from a model whose earlier linears (same block included)
    are already replaced, and the Hessians match a plain capture of that model."""
    spec, weights = tiny("gemma4_dense")
    ids = tiny_models.random_ids(batch=3, length=24, seed=2)
    q = lambda n: registry.dequantize("Q4_0", registry.quantize("Q4_0", weights[n]), weights[n].shape)  # noqa: E731
    block0 = [n for n in weights if n.startswith("layers.0.self_attn.") and n.endswith("proj.weight")]
    order, staged, handed = [], [], {}

    def on_linear(name, st):
        order.append(name)
        assert st.hessian is not None and st.count == ids.numel()
        handed[name] = st.hessian
        return q(name) if name in block0 else None

    def on_stage(i, stats):
        staged.extend(stats)
        handed.update({n: st.hessian for n, st in stats.items()})

    res = capture(spec, weights.__getitem__, ids, hessian=True, on_linear=on_linear, on_stage=on_stage,
                  progress=False)
    assert set(block0) <= set(order) and not set(block0) & set(staged)
    swapped = brute_force(spec, {**weights, **{n: q(n) for n in block0}}, ids)
    o = "layers.0.self_attn.o_proj.weight"
    assert o in block0
    for n, st in res.stats.items():
        s2, c, h = swapped[n]
        np.testing.assert_allclose(st.sum_x2, s2, rtol=1e-5, atol=1e-6, err_msg=n)
        assert st.hessian is None, "Hessians given to the callbacks must not be kept (memory grows with depth)"
        np.testing.assert_allclose(handed[n], h, rtol=1e-4, atol=1e-4 * np.abs(h).max(), err_msg=n)


def test_imatrix_file_round_trip_and_llamacpp_layout(tmp_path):
    from gguf import GGUFReader, GGMLQuantizationType

    spec, weights = tiny("gemma4_moe")
    ids = tiny_models.random_ids(batch=2, length=40, seed=3)
    res = capture(spec, weights.__getitem__, ids, progress=False)
    im = from_stats(res.stats, datasets=["c4"], chunk_size=40)
    path = write_imatrix(tmp_path / "imatrix.gguf", im)

    r = GGUFReader(path)  # independent reader: gguf-py
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["c4"]
    assert r.fields["imatrix.chunk_count"].contents() == 2 and r.fields["imatrix.chunk_size"].contents() == 40
    assert r.fields["imatrix.chunk_count"].types[0].name == "UINT32"
    names = [t.name for t in r.tensors]
    bases = sorted({n.rsplit(".", 1)[0] for n in names})  # entries in sorted order, in_sum2 then counts each
    assert names == [f"{b}.{s}" for b in bases for s in ("in_sum2", "counts")]
    assert "token_embd.weight.in_sum2" not in names  # llama-imatrix never records the tied head
    by = {t.name: t for t in r.tensors}
    q = by["blk.1.attn_q.weight.in_sum2"]
    assert q.tensor_type == GGMLQuantizationType.F32 and list(q.shape) == [spec.hidden_size, 1]
    assert list(by["blk.1.attn_q.weight.counts"].shape) == [1, 1]
    assert by["blk.1.attn_q.weight.counts"].data[0] == ids.numel()
    e = by["blk.1.ffn_gate_up_exps.weight.in_sum2"]
    assert list(e.shape) == [spec.hidden_size, spec.n_experts]
    assert list(by["blk.1.ffn_gate_up_exps.weight.counts"].shape) == [1, spec.n_experts]
    st = res.stats["layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.asarray(q.data).reshape(-1), st.sum_x2.astype(np.float32))

    back = read_imatrix(path)
    assert back.datasets == ["c4"] and back.chunk_count == 2 and back.chunk_size == 40
    imp = back.importance()
    for n, s in res.stats.items():
        if n == HEAD:
            continue
        np.testing.assert_array_equal(imp[n], s.mean_x2(), err_msg=n)
        np.testing.assert_array_equal(back.stats()[n].count, s.count)


def test_imatrix_importance_is_llamacpp_division(tmp_path):
    """in_sum2 / counts in float32 per expert, and 1 where an expert saw no token (tools/quantize load_imatrix)."""
    from quantkit.calibration.capture import LinearStats

    s = np.array([[3.0, 6.0], [5.0, 7.0], [1.0, 1.0]])
    st = {"layers.0.experts.down_proj": LinearStats("layers.0.experts.down_proj", s, np.array([3, 7, 0]))}
    back = read_imatrix(write_imatrix(tmp_path / "m.gguf", from_stats(st)))
    np.testing.assert_array_equal(back.importance()["layers.0.experts.down_proj"],
                                  np.array([[1, 2], [np.float32(5) / np.float32(7), 1], [1, 1]], np.float32))


def _logit_error(spec, weights, ids, name, table):
    ref = Gemma(spec, weights.__getitem__).forward(ids)
    out = Gemma(spec, {**weights, name: table}.__getitem__).forward(ids)
    return float((out - ref).pow(2).mean())


@pytest.mark.parametrize("table", ["embed_tokens_per_layer.weight", "embed_tokens.weight"])
def test_table_importance_predicts_output_sensitivity(table):
    """The derived per-column importance of a lookup table tracks the measured cost of an error in that column:
    perturb one column at a time with the same noise and measure the logit error on held-out tokens through the
    forward. (The first, norm-free form of the PLE derivation scored -0.5 here.)"""
    spec, weights = tiny_ple32()
    assert spec.ple_dim == 32
    calib = tiny_models.random_ids(batch=8, length=40, seed=4)
    held = tiny_models.random_ids(batch=8, length=40, seed=5)
    res = capture(spec, weights.__getitem__, calib, progress=False)
    imp = ple_importance(spec, res, weights.__getitem__) if table != "embed_tokens.weight" else embed_importance(res)
    w = weights[table]
    assert imp.shape == (w.shape[1],) and np.all(imp > 0)
    cols = list(range(0, w.shape[1], max(1, w.shape[1] // 40)))
    noise = 0.05 * np.random.default_rng(0).standard_normal(w.shape[0]).astype(np.float32)
    sens = []
    for c in cols:
        t = w.copy()
        t[:, c] += noise
        sens.append(_logit_error(spec, weights, held, table, t))
    corr = np.corrcoef(np.log(sens), np.log(imp[cols]))[0, 1]
    print(table, f"log-log correlation {corr:.3f}")
    assert corr > 0.3


def test_imatrix_command_writes_llama_cpp_imatrix(tmp_path):
    """`quantkit imatrix MODEL --out FILE`: every linear weight of the decoder under its llama.cpp name, with the
    token count of the calibration set, and token_embd with the lookup table's importance (the sums are the capture's, which test_capture_matches_brute_force checks
    against a brute-force forward and the integration tier against llama-imatrix)."""
    from click.testing import CliRunner

    import tiny_models
    import tiny_tokenizer
    from quantkit.calibration.imatrix import read_imatrix
    from quantkit.cli import cli
    from quantkit.formats import names
    from quantkit.formats.hf_source import HFSource

    d = tmp_path / "model"
    model, _ = tiny_models.gemma3()
    model.save_pretrained(d)
    tiny_tokenizer.save(d)
    calib = tmp_path / "calib.txt"
    calib.write_text(tiny_tokenizer.TEXT * 40)
    out = tmp_path / "imatrix.gguf"
    r = CliRunner().invoke(cli, ["imatrix", str(d), "--calib", str(calib), "--calib-tokens", "1024", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"wrote {out}: ") and "2 chunks of 512 tokens" in r.output
    imat = read_imatrix(out)
    src = HFSource(d)
    linears = {names.to_gguf(n) for n, i in src.infos.items() if len(i.shape) == 2 and n != "embed_tokens.weight"}
    assert set(imat.sums) == linears | {"token_embd.weight"}  # and the lookup table's importance, count 1
    assert all(int(imat.counts[g][0]) == 1024 for g in linears) and int(imat.counts["token_embd.weight"][0]) == 1
    assert imat.datasets == [str(calib)] and imat.chunk_size == 512 and imat.chunk_count == 2
