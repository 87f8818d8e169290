"""Fast tier for quantkit.kernels: codecs vs gguf-py, group quant, registry.

gguf-py is the judge here: every decoder must equal ``gguf.quants.dequantize``
bit for bit, and for the types gguf-py can quantize (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0) our unweighted encoder must equal ``gguf.quants.quantize`` byte for byte.
Byte-exactness of the other encoders against llama.cpp is checked in
tests/integration/test_kernels_llamacpp.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq
from numba import njit

from quantkit.errors import BadInput
from quantkit.kernels import fp, group, registry

QUANT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
               "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"]
GGUF_ENCODABLE = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# byte offsets of the fp16 scale fields inside one block (ggml-common.h)
F16_FIELDS = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ4_NL": [0], "IQ4_XS": [0], "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0],
}


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _adversarial_rows(cols: int, rng: np.random.Generator) -> np.ndarray:
    """Rows a quantizer can trip on: zeros, constants, outliers, tiny and huge values."""
    n = rng.standard_normal(cols).astype(np.float32)
    rows = [
        np.zeros(cols),
        np.full(cols, 0.75),
        np.full(cols, -3.0),
        np.where(np.arange(cols) == 7, 1e4, 1e-3 * n),  # one huge outlier
        n * 1e-30,  # tiny but normal
        n * 1e-40,  # float32 denormals
        np.sign(n) * 60000.0,  # max-magnitude-ish, fp16 scale near its limit
        np.abs(n),  # all positive
        -np.abs(n),  # all negative
        n * (np.arange(cols) % 2 * 2 - 1),  # alternating signs
        np.where(np.arange(cols) % 32 < 16, 0.0, n),  # half-empty sub-blocks
        np.round(n * 4) / 4,  # ties on the rounding grid
        rng.standard_t(2, cols),  # heavy tails
    ]
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(scope="module")
def weights(rng):
    """Random rows at several magnitudes plus adversarial rows, 512 wide (fits every block size)."""
    base = rng.standard_normal((24, 512)).astype(np.float32) * rng.uniform(1e-3, 20, (24, 1)).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([base, _adversarial_rows(512, rng)]).astype(np.float32))


@pytest.fixture(scope="module")
def importance(rng):
    imp = (rng.uniform(0, 2, 512) ** 3).astype(np.float32)
    imp[:5] = 0.0
    return imp


# ----------------------------------------------------------------- scalar helpers


@njit
def _enc16(a, out):
    for i in range(a.size):
        out[i] = fp.fp32_to_fp16(a[i])


@njit
def _dec16(h, out):
    for i in range(h.size):
        out[i] = fp.fp16_to_fp32(h[i])


@njit
def _nearest(a, out):
    for i in range(a.size):
        out[i] = fp.nearest_int(a[i])


def test_fp16_conversion_matches_numpy(rng):
    h = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, np.float32)
    _dec16(h, out)
    ref = h.view(np.float16).astype(np.float32)
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))
    finite = ref[np.isfinite(ref)]
    mids = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact ties between halves
    x = np.concatenate([
        finite, mids.astype(np.float32), np.nextafter(finite, np.float32(np.inf)),
        (rng.standard_normal(200_000) * np.exp(rng.uniform(-25, 12, 200_000))).astype(np.float32),
        np.float32([65504, 65519.996, 65520, 1e9, -1e9, 2.9802322e-08, 2.9802326e-08, 1e-45]),
    ]).astype(np.float32)
    enc = np.empty(x.size, np.int64)
    _enc16(x, enc)
    with np.errstate(over="ignore"):
        assert np.array_equal(enc, x.astype(np.float16).view(np.uint16).astype(np.int64))


def test_nearest_int_is_round_half_even(rng):
    x = np.concatenate([(rng.standard_normal(100_000) * 1000), np.arange(-300, 300, 0.5)]).astype(np.float32)
    out = np.empty(x.size, np.int64)
    _nearest(x, out)
    assert np.array_equal(out, np.rint(x).astype(np.int64))


# ----------------------------------------------------------------- decoders


def _random_blocks(qname: str, nrows: int, nblocks: int, rng) -> np.ndarray:
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]]
    return rng.integers(0, 256, (nrows, nblocks * ts), dtype=np.uint8)


@pytest.mark.parametrize("qname", QUANT_TYPES)
def test_decoder_matches_gguf_on_random_bytes(qname, rng):
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]]
    data = _random_blocks(qname, 8, 2048 // bs, rng)
    # finite scales first: keep every fp16 field away from Inf/NaN exponents
    for off in F16_FIELDS[qname]:
        view = data.reshape(8, -1, ts)
        view[:, :, off + 1] &= 0x7B
    ours = registry.dequantize(qname, data, (8, data.shape[1] // ts * bs))
    ref = gq.dequantize(data, GGMLQuantizationType[qname])
    assert _bits_equal(ours, ref)
    # then fully random bytes, Inf/NaN scales included
    data = _random_blocks(qname, 8, 2048 // bs, rng)
    ours = registry.dequantize(qname, data, (8, data.shape[1] // ts * bs))
    with np.errstate(all="ignore"):
        ref = gq.dequantize(data, GGMLQuantizationType[qname])
    finite = np.isfinite(ref)
    assert np.array_equal(finite, np.isfinite(ours))
    assert _bits_equal(ours[finite], ref[finite])
    assert np.array_equal(np.isnan(ours), np.isnan(ref))


@pytest.mark.parametrize("qname", QUANT_TYPES)
@pytest.mark.parametrize("scale_bits", [0x0000, 0x0001, 0x03FF, 0x3C00, 0x7BFF, 0xFBFF, 0x8001])
def test_decoder_matches_gguf_on_extreme_scales(qname, scale_bits, rng):
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]]
    data = _random_blocks(qname, 2, 512 // bs if bs < 512 else 1, rng)
    view = data.reshape(2, -1, ts)
    for off in F16_FIELDS[qname]:
        view[:, :, off] = scale_bits & 0xFF
        view[:, :, off + 1] = scale_bits >> 8
    if qname.startswith(("Q4_0", "Q8_0")):
        view[0, 0, 2:] = 0  # an all-zero payload as well
    cols = data.shape[1] // ts * bs
    ours = registry.dequantize(qname, data, (2, cols))
    ref = gq.dequantize(data, GGMLQuantizationType[qname])
    assert _bits_equal(ours, ref)


@pytest.mark.parametrize("qname", ["F32", "F16", "BF16"])
def test_float_types_round_trip(qname, weights):
    enc = registry.quantize(qname, weights)
    assert enc.shape == (weights.shape[0], registry.row_nbytes(qname, weights.shape[1]))
    dec = registry.dequantize(qname, enc, weights.shape)
    ref = gq.dequantize(enc, GGMLQuantizationType[qname]).reshape(weights.shape)
    assert _bits_equal(dec, ref)
    if qname == "F32":
        assert _bits_equal(dec, weights)
    if qname == "F16":
        with np.errstate(over="ignore"):
            assert np.array_equal(enc.view(np.float16), weights.astype(np.float16))
    if qname == "BF16":
        assert np.array_equal(enc, gq.quantize(weights, GGMLQuantizationType.BF16).reshape(enc.shape))


# ----------------------------------------------------------------- encoders


@pytest.mark.parametrize("qname", GGUF_ENCODABLE)
def test_encoder_matches_gguf_quantize(qname, weights, rng):
    more = (rng.standard_normal((16, 1024)) * 10 ** rng.uniform(-6, 4, (16, 1))).astype(np.float32)
    for x in (weights, more, _adversarial_rows(64, rng)):
        ours = registry.quantize(qname, x)
        with np.errstate(all="ignore"):
            ref = gq.quantize(x, GGMLQuantizationType[qname])
        assert ours.shape == ref.shape
        bad = np.nonzero((ours != ref).any(axis=1))[0]
        assert bad.size == 0, f"{qname}: rows {bad[:8]} differ from gguf-py"


# relative RMS error bound of a round trip on Gaussian data, per type
RT_BOUND = {"Q8_0": 0.008, "Q6_K": 0.025, "Q5_0": 0.05, "Q5_1": 0.05, "Q5_K": 0.05, "Q4_0": 0.1,
            "Q4_1": 0.1, "Q4_K": 0.1, "IQ4_NL": 0.1, "IQ4_XS": 0.1, "Q3_K": 0.18,
            "IQ3_S": 0.17, "IQ3_XXS": 0.22, "IQ2_S": 0.3, "Q2_K": 0.35, "IQ2_XS": 0.35, "IQ2_XXS": 0.4}


@pytest.mark.parametrize("qname", QUANT_TYPES)
def test_round_trip_error(qname, rng):
    x = rng.standard_normal((32, 512)).astype(np.float32)
    imp = np.ones(512, np.float32) if registry.get(qname).needs_imatrix else None
    enc = registry.quantize(qname, x, importance=imp, name="gauss")
    assert enc.dtype == np.uint8 and enc.shape == (32, registry.row_nbytes(qname, 512))
    dec = registry.dequantize(qname, enc, x.shape)
    assert np.all(np.isfinite(dec))
    rel = np.sqrt(np.mean((dec - x) ** 2) / np.mean(x ** 2))
    assert rel < RT_BOUND[qname], f"{qname}: relative RMS error {rel:.4f}"
    # decoding our own bytes agrees with gguf-py too
    assert _bits_equal(dec, gq.dequantize(enc, GGMLQuantizationType[qname]))


@pytest.mark.parametrize("qname", QUANT_TYPES)
def test_adversarial_blocks_stay_finite(qname, weights, importance):
    imp = importance if registry.get(qname).needs_imatrix else None
    enc = registry.quantize(qname, weights, importance=imp)
    dec = registry.dequantize(qname, enc, weights.shape)
    assert np.all(np.isfinite(dec))
    assert np.all(dec[24] == 0.0), "an all-zero row must decode to zeros"


@pytest.mark.parametrize("qname", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                                   "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"])
def test_importance_lowers_weighted_error(qname, rng):
    """With a strongly skewed imatrix, the weighted search must beat the unweighted one where it counts."""
    x = rng.standard_normal((64, 512)).astype(np.float32)
    imp = np.where(rng.uniform(size=512) < 0.1, 100.0, 0.01).astype(np.float32)
    flat = np.ones(512, np.float32) if registry.get(qname).needs_imatrix else None
    plain = registry.dequantize(qname, registry.quantize(qname, x, importance=flat), x.shape)
    weighted = registry.dequantize(qname, registry.quantize(qname, x, importance=imp), x.shape)
    e_plain = group.weighted_mse(x, plain, imp)
    e_weighted = group.weighted_mse(x, weighted, imp)
    assert e_weighted < e_plain, f"{qname}: weighted {e_weighted:.3g} vs plain {e_plain:.3g}"


def test_importance_changes_the_bytes(rng):
    x = rng.standard_normal((4, 256)).astype(np.float32)
    imp = rng.uniform(0, 5, 256).astype(np.float32)
    assert not np.array_equal(registry.quantize("Q4_K", x), registry.quantize("Q4_K", x, importance=imp))


def test_q8_0_ignores_importance(rng):
    x = rng.standard_normal((4, 256)).astype(np.float32)
    imp = rng.uniform(0, 5, 256).astype(np.float32)
    assert np.array_equal(registry.quantize("Q8_0", x), registry.quantize("Q8_0", x, importance=imp))


def test_encoders_are_row_independent(rng):
    """Parallel chunking must not leak state between blocks: quantizing a row alone gives the same bytes."""
    x = rng.standard_normal((9, 512)).astype(np.float32)
    imp = rng.uniform(0.1, 2, 512).astype(np.float32)
    for qname in ["Q4_K", "Q3_K", "IQ4_XS", "IQ2_XS", "IQ2_S", "IQ3_S"]:
        full = registry.quantize(qname, x, importance=imp)
        for r in (0, 4, 8):
            assert np.array_equal(full[r], registry.quantize(qname, x[r:r + 1], importance=imp)[0])


def test_row_ranges_in_threads_give_the_same_bytes(rng, monkeypatch):
    """registry.in_row_ranges: the bytes and the decoded values do not depend on how many threads split the rows."""
    x = rng.standard_normal((37, 1024)).astype(np.float32)
    x[29, 700] = np.nan
    imp = rng.uniform(0.1, 2, 1024).astype(np.float32)
    one = {}
    monkeypatch.setattr(registry.numba, "get_num_threads", lambda: 1)
    for qname in ["Q8_0", "Q4_K", "IQ2_XXS", "IQ1_M", "F16"]:
        data = registry.quantize(qname, np.nan_to_num(x), importance=imp)
        one[qname] = data, registry.dequantize(qname, data, x.shape)
    monkeypatch.setattr(registry, "MIN_VALUES_PER_THREAD", 1024)
    monkeypatch.setattr(registry.numba, "get_num_threads", lambda: 3)
    for qname, (data, values) in one.items():
        split = registry.quantize(qname, np.nan_to_num(x), importance=imp)
        assert np.array_equal(split, data)
        assert np.array_equal(registry.dequantize(qname, split, x.shape), values)
    with pytest.raises(BadInput, match=r"\(row 29, col 700\)"):  # the first NaN found in a later range
        registry.quantize("Q8_0", x)


# ----------------------------------------------------------------- registry


def test_registry_sizes_match_gguf():
    for name in registry.names():
        bt = registry.get(name)
        assert bt.ggml_type == GGMLQuantizationType[name]
        assert GGML_QUANT_SIZES[bt.ggml_type] == (bt.block_size, bt.bytes_per_block)
        assert bt.bits_per_weight == pytest.approx(8 * bt.bytes_per_block / bt.block_size)
        shape = (3, 5, 512)
        assert registry.tensor_nbytes(name, shape) == 15 * 512 // bt.block_size * bt.bytes_per_block
    assert registry.get(GGMLQuantizationType.Q6_K).name == "Q6_K"
    assert registry.get("q4_k").name == "Q4_K"
    with pytest.raises(BadInput):
        registry.get("Q7_K")


def test_registry_needs_imatrix():
    # llama-quant.cpp tensor_requires_imatrix: IQ3_S is not among them
    assert {n for n in registry.names() if registry.get(n).needs_imatrix} == {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS",
                                                                             "IQ2_S", "IQ3_XXS"}


def test_fallback_table():
    # llama-quant.cpp tensor_type_fallback
    expect = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
              "IQ4_XS": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ3_XXS": "IQ4_NL",
              "IQ2_S": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL"}
    for name, fb in expect.items():
        assert registry.fallback_type(name, 640) == fb
        assert registry.fallback_type(name, 512) == name
        assert registry.fallback_type(name, 100) == "F16"
    for name in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"]:
        assert registry.fallback_type(name, 640) == name
        assert registry.fallback_type(name, 100) == "F16"


def test_non_multiple_rows_raise_with_tensor_and_type(rng):
    x = rng.standard_normal((4, 640)).astype(np.float32)
    with pytest.raises(BadInput) as e:
        registry.quantize("Q4_K", x, name="blk.3.ffn_up.weight")
    assert "blk.3.ffn_up.weight" in str(e.value) and "Q4_K" in str(e.value) and "Q5_0" in str(e.value)
    with pytest.raises(BadInput):
        registry.tensor_nbytes("Q4_0", (4, 33))
    with pytest.raises(BadInput):
        registry.dequantize("Q8_0", np.zeros(34, np.uint8), (1, 33))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("qname", ["Q8_0", "Q4_K", "IQ4_NL", "F16"])
def test_nonfinite_weights_raise_with_index(qname, bad, rng):
    x = rng.standard_normal((6, 256)).astype(np.float32)
    x[4, 77] = bad
    x[5, 3] = bad
    with pytest.raises(BadInput) as e:
        registry.quantize(qname, x, name="blk.0.attn_q.weight")
    msg = str(e.value)
    assert "blk.0.attn_q.weight" in msg and "row 4" in msg and "col 77" in msg


def test_bad_importance_and_missing_imatrix(rng):
    x = rng.standard_normal((2, 256)).astype(np.float32)
    with pytest.raises(BadInput, match="importance"):
        registry.quantize("Q4_K", x, importance=np.ones(255, np.float32))
    with pytest.raises(BadInput, match="importance"):
        registry.quantize("Q4_K", x, importance=np.full(256, np.nan, np.float32))
    with pytest.raises(BadInput, match="imatrix"):
        registry.quantize("IQ2_XS", x, name="t")


def test_dequantize_shape_and_size_checks(rng):
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    enc = registry.quantize("Q4_0", x)
    assert enc.shape == (6, 2 * 18)
    assert registry.dequantize("Q4_0", enc, x.shape).shape == (2, 3, 64)
    with pytest.raises(BadInput):
        registry.dequantize("Q4_0", enc[:, :18], x.shape)


# ----------------------------------------------------------------- group quantization


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_group_round_trip(bits, group_size, symmetric, rng):
    x = (rng.standard_normal((16, 256)) + (0 if symmetric else 0.5)).astype(np.float32)
    g = group.group_quantize(x, bits, group_size, symmetric, clip_search=False)
    gs = 256 if group_size == -1 else group_size
    assert g.codes.dtype == np.int8 and g.codes.shape == x.shape
    assert g.codes.min() >= -(2 ** (bits - 1)) and g.codes.max() <= 2 ** (bits - 1) - 1
    assert g.scales.shape == (16, 256 // gs)
    dec = group.group_dequantize(g)
    # without clipping every weight is within half a step (plus float slack) of its group's grid
    step = np.repeat(g.scales, gs, axis=1)
    assert np.all(np.abs(dec - x) <= 0.5 * step * (1 + 1e-5) + 1e-7)
    if symmetric:
        assert g.zero_points is None
        absmax = np.abs(x).reshape(16, -1, gs).max(axis=2)
        np.testing.assert_allclose(g.scales, absmax / ((2 ** bits - 1) / 2), rtol=1e-6)
    else:
        lo = np.minimum(x.reshape(16, -1, gs).min(axis=2), 0)
        hi = np.maximum(x.reshape(16, -1, gs).max(axis=2), 0)
        scale = (hi - lo) / (2 ** bits - 1)
        np.testing.assert_allclose(g.scales, scale, rtol=1e-6)
        zp = np.clip(np.rint(-(2 ** (bits - 1)) - lo / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        assert np.array_equal(g.zero_points.astype(np.int64), zp.astype(np.int64))


@pytest.mark.parametrize("symmetric", [True, False])
def test_group_zero_is_representable(symmetric, rng):
    x = rng.standard_normal((8, 128)).astype(np.float32) + 3.0  # all positive groups
    x[:, ::5] = 0.0
    x[3] = 0.0
    g = group.group_quantize(x, 4, 32, symmetric)
    dec = group.group_dequantize(g)
    assert np.all(dec[x == 0.0] == 0.0)
    assert np.all(np.isfinite(dec))


def test_group_matches_compressed_tensors_formulas(rng):
    import torch
    import compressed_tensors.quantization as ct
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_deq
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_q
    from compressed_tensors.quantization.utils import calculate_qparams

    x = rng.standard_normal((8, 128)).astype(np.float32)
    for symmetric in (True, False):
        args = ct.QuantizationArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=32)
        t = torch.from_numpy(x)
        grouped = t.reshape(8, 4, 32)
        scale, zp = calculate_qparams(grouped.amin(dim=2), grouped.amax(dim=2), args)
        q = ct_q(t, scale, zp, args)
        deq = ct_deq(q, scale, zp, args)
        g = group.group_quantize(x, 4, 32, symmetric, clip_search=False)
        np.testing.assert_allclose(g.scales, scale.numpy(), rtol=1e-6)
        assert np.array_equal(g.codes.astype(np.int64), q.numpy().astype(np.int64))
        np.testing.assert_allclose(group.group_dequantize(g), deq.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_increases_weighted_mse(bits, symmetric, rng):
    x = rng.standard_t(3, (32, 256)).astype(np.float32)
    imp = (rng.uniform(0, 3, 256) ** 2).astype(np.float32)
    plain = group.group_quantize(x, bits, 64, symmetric, importance=imp, clip_search=False)
    clipped = group.group_quantize(x, bits, 64, symmetric, importance=imp)
    e_plain = (imp[None, :] * (group.group_dequantize(plain) - x).astype(np.float64) ** 2).reshape(32, 4, 64).sum(2)
    e_clip = (imp[None, :] * (group.group_dequantize(clipped) - x).astype(np.float64) ** 2).reshape(32, 4, 64).sum(2)
    assert np.all(e_clip <= e_plain * (1 + 1e-9) + 1e-12)
    assert e_clip.sum() < e_plain.sum()  # heavy tails: clipping must help somewhere


def test_group_scale_dtype_rounding(rng):
    x = rng.standard_normal((4, 128)).astype(np.float32)
    g = group.group_quantize(x, 4, 32, True, scale_dtype="bfloat16")
    assert np.array_equal(g.scales, g.scales.astype(np.float32).view(np.uint32).__and__(0xFFFF0000).view(np.float32))
    g16 = group.group_quantize(x, 4, 32, True, scale_dtype="float16")
    assert np.array_equal(g16.scales, g16.scales.astype(np.float16).astype(np.float32))


def test_group_errors(rng):
    x = rng.standard_normal((4, 100)).astype(np.float32)
    with pytest.raises(BadInput, match="w.x"):
        group.group_quantize(x, 4, 32, name="w.x")
    with pytest.raises(BadInput):
        group.group_quantize(x[:, :96], 5, 32)
    y = rng.standard_normal((4, 128)).astype(np.float32)
    y[2, 9] = np.nan
    with pytest.raises(BadInput, match="row 2, col 9"):
        group.group_quantize(y, 4, 32)
