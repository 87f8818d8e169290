"""Fast tier for IQ1_S and IQ1_M (quantkit.kernels.iq1): decoders vs gguf-py, encoders' invariants.

gguf-py's ``dequantize`` is the judge of the decoders, bit for bit, on random
and adversarial blocks.  The encoders' bytes are compared with llama.cpp in
tests/integration/test_kernels_llamacpp.py (IMATRIX_TYPES); here: round trips,
missing importance, the 2048-point grid's neighbour lists, and the parts of
``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl`` the bytes depend on
(the delta sign bits, IQ1_M's d split over the scales' top nibbles).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

from gguf_blocks import assert_layout_covers, bits_equal, decode_both, field
from quantkit.errors import BadInput
from quantkit.kernels import iq1, iqgrid, registry

TYPES = ["IQ1_S", "IQ1_M"]
# byte offsets inside a block (ggml-common.h block_iq1_s / block_iq1_m; IQ1_M's d lives in the scales' top nibbles)
LAYOUT = {
    "IQ1_S": {"d": (0, 2), "qs": (2, 34), "qh": (34, 50)},
    "IQ1_M": {"qs": (0, 32), "qh": (32, 48), "scales": (48, 56)},
}


def _field(data: np.ndarray, qname: str, name: str) -> np.ndarray:
    return field(data, qname, LAYOUT[qname][name])


def _set_d(data: np.ndarray, qname: str, d_bits: int) -> None:
    """Put the fp16 bits d_bits in every block's d (IQ1_M: nibble k of d in the top nibble of scale word k)."""
    if qname == "IQ1_S":
        d = _field(data, qname, "d")
        d[..., 0] = d_bits & 0xFF
        d[..., 1] = d_bits >> 8
        return
    sc = _field(data, qname, "scales")
    for k in range(4):
        sc[..., 2 * k + 1] = (sc[..., 2 * k + 1] & 0x0F) | (((d_bits >> (4 * k)) & 0xF) << 4)


def _get_d(block: np.ndarray, qname: str) -> int:
    if qname == "IQ1_S":
        return int(block[0]) | int(block[1]) << 8
    sc = block[48:56].view("<u2")
    return int(sum(((int(sc[k]) >> 12) & 0xF) << (4 * k) for k in range(4)))


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20250311)


# ----------------------------------------------------------------- decoders


@pytest.mark.parametrize("qname", TYPES)
def test_layout_covers_the_block(qname):
    assert_layout_covers(qname, LAYOUT[qname], 0)


@pytest.mark.parametrize("qname", TYPES)
def test_decoder_matches_gguf_on_random_blocks(qname, rng):
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]][1]
    data = rng.integers(0, 256, (6, 8 * ts), dtype=np.uint8)
    for r in range(6):  # finite fp16 d, a different one per block
        for b in range(8):
            _set_d(data[r:r + 1, b * ts:(b + 1) * ts], qname, int(rng.integers(0, 0x7BFF)) | (0x8000 * (b % 2)))
    ours, ref = decode_both(qname, data)
    assert np.all(np.isfinite(ref))
    assert bits_equal(ours, ref)


@pytest.mark.parametrize("qname", TYPES)
def test_decoder_matches_gguf_on_random_bytes(qname, rng):
    """Fully random bytes: d may be Inf, NaN, denormal or negative."""
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]][1]
    data = rng.integers(0, 256, (6, 16 * ts), dtype=np.uint8)
    for b, bits in enumerate([0x7C00, 0x7FFF, 0x0001, 0xFC00]):
        _set_d(data[:, b * ts:(b + 1) * ts], qname, bits)
    ours, ref = decode_both(qname, data)
    finite = np.isfinite(ref)
    assert np.array_equal(finite, np.isfinite(ours))
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    assert bits_equal(ours[finite], ref[finite])


@pytest.mark.parametrize("qname", TYPES)
@pytest.mark.parametrize("case", ["zero_scales", "max_scales", "all_high_bits", "all_zero", "max_everything"])
@pytest.mark.parametrize("d_bits", [0x0001, 0x3C00, 0x7BFF, 0xFBFF])
def test_decoder_matches_gguf_on_adversarial_blocks(qname, case, d_bits, rng):
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]][1]
    data = rng.integers(0, 256, (2, 4 * ts), dtype=np.uint8)
    qh = _field(data, qname, "qh")
    if case == "zero_scales":  # IQ1_S: scale bits 12..14 of each u16 qh; IQ1_M: the low 12 bits of each scale word
        if qname == "IQ1_S":
            qh[..., 1::2] &= 0x8F
        else:
            sc = _field(data, qname, "scales")
            sc[..., 0::2] = 0
            sc[..., 1::2] &= 0xF0
    elif case == "max_scales":
        if qname == "IQ1_S":
            qh[..., 1::2] |= 0x70
        else:
            sc = _field(data, qname, "scales")
            sc[..., 0::2] = 0xFF
            sc[..., 1::2] |= 0x0F
    elif case == "all_high_bits":  # every grid index in the top of the grid, every delta negative
        qh[:] = 0xFF
    elif case == "all_zero":  # payload only: grid point 0, scale 0, delta +
        data[:] = 0
    else:
        data[:] = 0xFF
    _set_d(data, qname, d_bits)
    ours, ref = decode_both(qname, data)
    assert np.all(np.isfinite(ref))
    assert bits_equal(ours, ref)


@pytest.mark.parametrize("qname", TYPES)
def test_decoder_reads_index_bits_scale_and_delta(qname):
    """Hand-built blocks: grid points 0, 255, 256 and 2047 in the first 8 weights, scale 3 and a negative delta
    decode to d (2*3 + 1) (grid + -0.125)."""
    values = iqgrid.iq1s_grid().values
    ts = registry.get(qname).bytes_per_block
    for gi in (0, 255, 256, 2047):
        block = np.zeros((1, ts), np.uint8)
        _set_d(block, qname, 0x3C00)  # d = 1
        if qname == "IQ1_S":
            block[0, 2] = gi & 255
            qh = (gi >> 8) | (3 << 12) | 0x8000
            block[0, 34:36] = [qh & 0xFF, qh >> 8]
        else:
            block[0, 0] = gi & 255
            block[0, 32] = (gi >> 8) | 0x08
            block[0, 48] = 3  # scale of group 0
        y = registry.dequantize(qname, block, (1, 256))[0]
        expect = np.float32(7.0) * (values[gi] + np.float32(-0.125))
        assert bits_equal(y[:8], expect), gi
        assert _get_d(block[0], qname) == 0x3C00


# ----------------------------------------------------------------- grid


def test_neighbour_lists():
    """iq2xs_init_impl(GGML_TYPE_IQ1_S): 2048 points of levels 0..2; every reachable off-grid point lists the grid
    points at its 3 smallest distances, in (distance, index) order."""
    g = iqgrid.iq1s_grid()
    G, n = g.pos.shape
    assert (G, n) == (2048, 8) and g.levels.max() == 2 and set(np.unique(g.values)) == {-1.0, 0.0, 1.0}
    assert np.array_equal(g.values, g.levels.astype(np.float32) - 1)
    assert np.count_nonzero(g.kmap >= 0) == G
    rng = np.random.default_rng(3)
    off = np.nonzero((g.kmap < 0) & (g.nb_off >= 0))[0]
    assert off.size == 3 ** 8 - G  # every level-0..2 point not on the grid
    for u in rng.choice(off, 200, replace=False):
        p = 2 * ((u >> (2 * np.arange(n))) & 3) + 1
        d2 = ((g.pos - p) ** 2).sum(axis=1)
        allowed = np.unique(d2)[:3]
        expect = np.lexsort((np.arange(G), d2))
        expect = expect[np.isin(d2[expect], allowed)]
        cnt = g.nb_list[g.nb_off[u]]
        assert np.array_equal(g.nb_list[g.nb_off[u] + 1:g.nb_off[u] + 1 + cnt], expect)


# ----------------------------------------------------------------- encoders


def _rows(cols: int, rng) -> np.ndarray:
    n = rng.standard_normal(cols).astype(np.float32)
    idx = np.arange(cols)
    rows = [np.zeros(cols), np.full(cols, 0.75), np.full(cols, -3.0), np.where(idx == 7, 1e4, 1e-3 * n),
            n * 1e-30, n * 1e-40, np.sign(n) * 60000.0, np.abs(n), -np.abs(n),
            np.where(idx % 32 < 16, 0.0, n), np.where(idx % 256 < 128, 0.0, n), np.where(idx % 16 < 8, 0.0, n),
            np.round(n * 4) / 4, np.round(n), rng.standard_t(2, cols)]
    base = rng.standard_normal((8, cols)) * rng.uniform(1e-3, 20, (8, 1))
    return np.concatenate([np.array(rows), base]).astype(np.float32)


@pytest.mark.parametrize("qname", TYPES)
def test_round_trip_shape_and_finite(qname, rng):
    x = _rows(512, rng)
    imp = (rng.uniform(0, 2, 512) ** 3).astype(np.float32)
    imp[:7] = 0.0  # dead channels
    enc = registry.quantize(qname, x, importance=imp)
    assert enc.dtype == np.uint8 and enc.shape == (x.shape[0], 2 * registry.get(qname).bytes_per_block)
    dec = registry.dequantize(qname, enc, x.shape)
    assert dec.shape == x.shape and np.all(np.isfinite(dec))
    assert np.all(enc[0] == 0) and np.all(dec[0] == 0.0), "an all-zero row must encode to zero bytes"
    with np.errstate(all="ignore"):
        assert bits_equal(dec, gq.dequantize(enc, GGMLQuantizationType[qname]))
    g = rng.standard_normal((16, 512)).astype(np.float32)
    one = np.ones(512, np.float32)
    dec = registry.dequantize(qname, registry.quantize(qname, g, importance=one), g.shape)
    rel = np.sqrt(np.mean((dec - g) ** 2) / np.mean(g ** 2))
    assert rel < {"IQ1_S": 0.55, "IQ1_M": 0.5}[qname]
    # effort has no meaning here (the split search is exhaustive): same bytes
    assert np.array_equal(registry.quantize(qname, x, importance=imp, effort="fast"), enc)


@pytest.mark.parametrize("qname", TYPES)
def test_encoder_refuses_missing_importance(qname, rng):
    x = rng.standard_normal((2, 256)).astype(np.float32)
    assert registry.get(qname).needs_imatrix
    with pytest.raises(BadInput, match=f"{qname} needs importance"):
        registry.quantize(qname, x, name="t")
    if qname == "IQ1_S":
        with pytest.raises(ValueError, match="IQ1_S needs importance"):
            iq1.encode_iq1_s(x)
    else:  # the kernel itself has ggml's unweighted path (weights x^2), as IQ3_XXS does
        assert iq1.encode_iq1_m(x).shape == (2, 56)


@pytest.mark.parametrize("qname", TYPES)
def test_rows_are_independent(qname, rng):
    x = rng.standard_normal((9, 768)).astype(np.float32)
    imp = rng.uniform(0.1, 2, 768).astype(np.float32)
    full = registry.quantize(qname, x, importance=imp)
    for r in (0, 4, 8):
        assert np.array_equal(full[r], registry.quantize(qname, x[r:r + 1], importance=imp)[0])


def test_fallback_and_sizes():
    for qname, nbytes in (("IQ1_S", 50), ("IQ1_M", 56)):
        bt = registry.get(qname)
        assert (bt.block_size, bt.bytes_per_block) == (256, nbytes)
        assert registry.fallback_type(qname, 640) == "IQ4_NL" and registry.fallback_type(qname, 512) == qname
        assert registry.fallback_type(qname, 100) == "F16"


def test_iq1_s_delta_sign_follows_the_group(rng):
    """quantize_row_iq1_s_impl tries both shifted level sets, {-1, 0, 1} + 0.125 and - 0.125, for every group of 32:
    a group of positive weights and the same weights negated take opposite delta signs (qh bit 15)."""
    v = np.abs(rng.standard_normal(32)).astype(np.float32) + np.float32(0.5)
    x = np.concatenate([v, -v, np.tile(np.concatenate([v, -v]), 3)])[None]
    enc = registry.quantize("IQ1_S", x, importance=np.ones(256, np.float32))
    qh = _field(enc, "IQ1_S", "qh")[0, 0].view("<u2")
    signs = (qh >> 15) & 1
    assert np.all(signs[0::2] != signs[1::2])
    dec = registry.dequantize("IQ1_S", enc, x.shape)[0]
    assert np.all(np.sign(dec) == np.sign(x[0]))


def test_iq1_m_d_is_split_over_the_scale_nibbles(rng):
    """quantize_row_iq1_m_impl refits d over the whole block and stores its fp16 bits in the top nibbles of the four
    scale words; the decoded block is that d times the group scales."""
    x = rng.standard_normal((1, 256)).astype(np.float32)
    enc = registry.quantize("IQ1_M", x, importance=np.ones(256, np.float32))
    d = np.array([_get_d(enc[0], "IQ1_M")], np.uint16).view(np.float16)[0]
    assert 0.0 < float(d) < 1.0
    half = registry.quantize("IQ1_M", x * np.float32(0.5), importance=np.ones(256, np.float32))
    assert np.array_equal(half[0, :48], enc[0, :48])  # same points, deltas and scales: d halves (exactly)
    assert _get_d(half[0], "IQ1_M") == np.array([d / 2], np.float16).view(np.uint16)[0]
