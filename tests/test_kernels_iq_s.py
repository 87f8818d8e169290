"""Fast tier for IQ2_S and IQ3_S (quantkit.kernels.iquants): decoders vs gguf-py, encoders' invariants.

gguf-py's ``dequantize`` is the judge of the decoders, bit for bit, on random
and adversarial blocks.  The encoders' bytes are compared with llama.cpp in
tests/integration/test_kernels_iq_s_llamacpp.py; here: round trips, missing
importance, the grid tables' neighbour lists, and the block layout quirk of
``quantize_row_iq3_s_impl`` (all-zero groups shift the later groups' points
and signs forward) that byte-exactness depends on.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

from gguf_blocks import assert_layout_covers, bits_equal, decode_both, field
from quantkit.errors import BadInput
from quantkit.kernels import iqgrid, iquants, registry

TYPES = ["IQ2_S", "IQ3_S"]
# byte offsets inside a block (ggml-common.h block_iq2_s / block_iq3_s)
LAYOUT = {
    "IQ2_S": {"qs": (2, 34), "signs": (34, 66), "qh": (66, 74), "scales": (74, 82)},
    "IQ3_S": {"qs": (2, 66), "qh": (66, 74), "signs": (74, 106), "scales": (106, 110)},
}


def _field(data: np.ndarray, qname: str, name: str) -> np.ndarray:
    return field(data, qname, LAYOUT[qname][name])


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20250301)


# ----------------------------------------------------------------- decoders


@pytest.mark.parametrize("qname", TYPES)
def test_layout_covers_the_block(qname):
    assert_layout_covers(qname, LAYOUT[qname], 2)


@pytest.mark.parametrize("qname", TYPES)
def test_decoder_matches_gguf_on_random_blocks(qname, rng):
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]][1]
    data = rng.integers(0, 256, (6, 8 * ts), dtype=np.uint8)
    data.reshape(6, 8, ts)[:, :, 1] &= 0x7B  # finite fp16 d
    ours, ref = decode_both(qname, data)
    assert np.all(np.isfinite(ref))
    assert bits_equal(ours, ref)


@pytest.mark.parametrize("qname", TYPES)
def test_decoder_matches_gguf_on_random_bytes(qname, rng):
    """Fully random bytes: d may be Inf, NaN, denormal or negative."""
    ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]][1]
    data = rng.integers(0, 256, (6, 16 * ts), dtype=np.uint8)
    data.reshape(6, 16, ts)[:, :4, 0:2] = [[0x00, 0x7C], [0xFF, 0x7F], [0x01, 0x00], [0x00, 0xFC]]
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
    if case == "zero_scales":
        _field(data, qname, "scales")[:] = 0
    elif case == "max_scales":
        _field(data, qname, "scales")[:] = 0xFF
    elif case == "all_high_bits":  # every grid index in the top part of the grid, every sign negative
        _field(data, qname, "qh")[:] = 0xFF
        _field(data, qname, "signs")[:] = 0xFF
    elif case == "all_zero":  # payload only: grid point 0, scale 0 (still not zero: 0.5 d 0.25 8 / d 1)
        data[:] = 0
    else:
        data[:] = 0xFF
    blocks = data.reshape(2, 4, ts)
    blocks[:, :, 0] = d_bits & 0xFF
    blocks[:, :, 1] = d_bits >> 8
    ours, ref = decode_both(qname, data)
    assert np.all(np.isfinite(ref))
    assert bits_equal(ours, ref)


@pytest.mark.parametrize("qname", TYPES)
def test_decoder_reads_the_high_index_bits(qname):
    """One hand-built block per grid index bit: the value decoded is that grid point's (not gguf-py's word)."""
    grid = (iqgrid.iq2s_grid() if qname == "IQ2_S" else iqgrid.iq3s_grid()).values
    ts = registry.get(qname).bytes_per_block
    n = grid.shape[1]
    for gi in (0, 255, 256, grid.shape[0] - 1):
        block = np.zeros((1, ts), np.uint8)
        block[0, 0:2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
        _field(block, qname, "qs")[0, 0, 0] = gi & 255
        _field(block, qname, "qh")[0, 0, 0] = gi >> 8  # first point of group 0: qh[0] bits 0..1 (IQ2_S) / bit 0
        _field(block, qname, "signs")[0, 0, 0] = 0b10  # second weight negative
        y = registry.dequantize(qname, block, (1, 256))[0]
        db = np.float32(0.125) if qname == "IQ2_S" else np.float32(1.0)  # d (0.5 + 0) 0.25 / d (1 + 2*0)
        expect = db * grid[gi] * np.where(np.arange(n) == 1, -1, 1).astype(np.float32)
        assert bits_equal(y[:n], expect), gi


# ----------------------------------------------------------------- grids


@pytest.mark.parametrize("qname, nwant", [("IQ2_S", 1), ("IQ3_S", 3)])
def test_neighbour_lists(qname, nwant):
    """iq2xs_init_impl / iq3xs_init_impl: every reachable off-grid point lists the grid points at its
    nwant smallest distances, in (distance, index) order."""
    g = iqgrid.iq2s_grid() if qname == "IQ2_S" else iqgrid.iq3s_grid()
    G, n = g.pos.shape
    bits = 2 if n == 8 else 3
    assert G == (1024 if qname == "IQ2_S" else 512)
    assert np.count_nonzero(g.kmap >= 0) == G
    rng = np.random.default_rng(3)
    off = np.nonzero((g.kmap < 0) & (g.nb_off >= 0))[0]
    assert off.size > 0
    for u in rng.choice(off, 200, replace=False):
        p = 2 * ((u >> (bits * np.arange(n))) & ((1 << bits) - 1)) + 1
        d2 = ((g.pos - p) ** 2).sum(axis=1)
        allowed = np.unique(d2)[:nwant]
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
            np.where(idx % 32 < 16, 0.0, n), np.where(idx % 256 < 128, 0.0, n), np.where(idx % 64 < 32, n, 0.0),
            np.round(n * 4) / 4, rng.standard_t(2, cols)]
    base = rng.standard_normal((8, cols)) * rng.uniform(1e-3, 20, (8, 1))
    return np.concatenate([np.array(rows), base]).astype(np.float32)


@pytest.mark.parametrize("qname", TYPES)
@pytest.mark.parametrize("effort", ["exact", "fast"])
def test_round_trip_shape_and_finite(qname, effort, rng):
    x = _rows(512, rng)
    imp = (rng.uniform(0, 2, 512) ** 3).astype(np.float32)
    imp[:7] = 0.0  # dead channels
    enc = registry.quantize(qname, x, importance=imp, effort=effort)
    assert enc.dtype == np.uint8 and enc.shape == (x.shape[0], 2 * registry.get(qname).bytes_per_block)
    dec = registry.dequantize(qname, enc, x.shape)
    assert dec.shape == x.shape and np.all(np.isfinite(dec))
    assert np.all(enc[0] == 0) and np.all(dec[0] == 0.0), "an all-zero row must encode to zero bytes"
    with np.errstate(all="ignore"):
        assert bits_equal(dec, gq.dequantize(enc, GGMLQuantizationType[qname]))
    g = rng.standard_normal((16, 512)).astype(np.float32)
    one = np.ones(512, np.float32)
    dec = registry.dequantize(qname, registry.quantize(qname, g, importance=one, effort=effort), g.shape)
    rel = np.sqrt(np.mean((dec - g) ** 2) / np.mean(g ** 2))
    assert rel < {"IQ2_S": 0.3, "IQ3_S": 0.17}[qname] * (1.15 if effort == "fast" else 1.0)


@pytest.mark.parametrize("qname", ["IQ2_S"])  # IQ3_S, as in llama.cpp, also quantizes without importance
def test_encoder_refuses_missing_importance(qname, rng):
    x = rng.standard_normal((2, 256)).astype(np.float32)
    assert registry.get(qname).needs_imatrix
    with pytest.raises(BadInput, match=f"{qname} needs importance"):
        registry.quantize(qname, x, name="t")
    if qname == "IQ2_S":
        with pytest.raises(ValueError, match="IQ2_S needs importance"):
            iquants.encode_iq2_s(x)
    else:  # the kernel itself has ggml's unweighted path (weights x^2), as IQ3_XXS does
        assert iquants.encode_iq3_s(x).shape == (2, 110)


def _late_and_early(qname: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """One block holding the same 128 random weights in its second half (late) and in its first (early), the
    rest zeros, encoded with flat importance."""
    v = rng.standard_normal(128).astype(np.float32)
    z = np.zeros(128, np.float32)
    imp = np.ones(256, np.float32)
    return (registry.quantize(qname, np.concatenate([z, v])[None], importance=imp),
            registry.quantize(qname, np.concatenate([v, z])[None], importance=imp))


def test_iq3_s_zero_groups_shift_points_and_signs_forward(rng):
    """quantize_row_iq3_s_impl advances its qs / signs pointers only past groups of 32 that are not all
    zero: four zero groups then four data groups store the data groups' points and signs where the same
    data placed first would have them; qh and the scales stay at the groups' own positions."""
    a, b = _late_and_early("IQ3_S", rng)
    assert np.array_equal(a[0, :2], b[0, :2])  # same d
    assert np.array_equal(_field(a, "IQ3_S", "qs"), _field(b, "IQ3_S", "qs"))
    assert np.all(_field(b, "IQ3_S", "qs")[0, 0, 32:] == 0)
    assert np.array_equal(_field(a, "IQ3_S", "signs"), _field(b, "IQ3_S", "signs"))
    assert np.array_equal(_field(a, "IQ3_S", "qh")[0, 0, 4:], _field(b, "IQ3_S", "qh")[0, 0, :4])
    assert np.all(_field(a, "IQ3_S", "qh")[0, 0, :4] == 0)
    assert np.array_equal(_field(a, "IQ3_S", "scales")[0, 0, 2:], _field(b, "IQ3_S", "scales")[0, 0, :2])
    # ggml's decoder reads group ib's points at ib: the late groups come back from the wrong bytes
    dec = registry.dequantize("IQ3_S", a, (1, 256))[0]
    assert np.all(dec[:128] != 0.0) and not np.allclose(dec[128:], registry.dequantize("IQ3_S", b, (1, 256))[0, :128])


def test_iq2_s_groups_are_independent_of_their_position(rng):
    """IQ2_S indexes every field by group (no pointer shift): the same data in the other half of the block
    gives the same points and signs at the other positions."""
    a, b = _late_and_early("IQ2_S", rng)
    assert np.array_equal(_field(a, "IQ2_S", "qs")[0, 0, 16:], _field(b, "IQ2_S", "qs")[0, 0, :16])
    assert np.array_equal(_field(a, "IQ2_S", "signs")[0, 0, 16:], _field(b, "IQ2_S", "signs")[0, 0, :16])
    assert np.array_equal(_field(a, "IQ2_S", "scales")[0, 0, 4:], _field(b, "IQ2_S", "scales")[0, 0, :4])
    dec_a = registry.dequantize("IQ2_S", a, (1, 256))[0]
    dec_b = registry.dequantize("IQ2_S", b, (1, 256))[0]
    assert bits_equal(dec_a[128:], dec_b[:128]) and bits_equal(dec_a[:128], dec_b[128:])
