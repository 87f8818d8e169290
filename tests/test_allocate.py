"""The byte-budget allocator against brute force on small instances."""

import itertools

import numpy as np
import pytest

from quantkit.allocate import Option, allocate
from quantkit.errors import BadOption


def _instance(rng, n_tensors, n_types):
    items = {}
    for k in range(n_tensors):
        size = int(rng.integers(1_000, 50_000))
        bpw = np.sort(rng.uniform(2, 9, n_types))
        # error falls roughly like 4^-bits, scaled by a per-tensor sensitivity
        sens = rng.uniform(0.1, 10)
        items[f"t{k}"] = [Option(f"b{b:.2f}", int(size * b / 8), float(sens * 4.0 ** -b)) for b in bpw]
    return items


def _brute(items, budget):
    best = (np.inf, None)
    names = list(items)
    for combo in itertools.product(*(items[n] for n in names)):
        size = sum(o.nbytes for o in combo)
        err = sum(o.error for o in combo)
        if size <= budget and err < best[0]:
            best = (err, combo)
    return best[0]


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    items = _instance(rng, 6, 4)
    lo = sum(min(o.nbytes for o in v) for v in items.values())
    hi = sum(max(o.nbytes for o in v) for v in items.values())
    budget = int(lo + (hi - lo) * rng.uniform(0.2, 0.8))
    a = allocate(items, budget)
    assert a.nbytes <= budget
    exact = _brute(items, budget)
    assert a.error <= exact * 1.01 + 1e-15  # discretisation may cost at most a hair


def test_uses_budget_within_one_percent():
    rng = np.random.default_rng(42)
    items = _instance(rng, 300, 6)
    hi = sum(max(o.nbytes for o in v) for v in items.values())
    budget = int(hi * 0.6)
    a = allocate(items, budget)
    assert budget * 0.99 <= a.nbytes <= budget


def test_exact_allocation_is_optimal_to_the_byte():
    """exact=True (file budgets): with sizes on a common 512-byte step and a resolution that leaves the budget's unit
    finer than that step, the DP rounds nothing and finds the brute-force optimum every time (the rounding DP misses
    it on one of these 40 instances: that the test can tell them apart is checked too)."""
    misses = {True: 0, False: 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        items = {f"t{k}": [Option(f"b{j}", 512 * int(n), float(e)) for j, (n, e) in
                           enumerate(zip(np.sort(rng.integers(1, 400, 4)), np.sort(rng.random(4))[::-1]))]
                 for k in range(6)}
        lo = sum(min(o.nbytes for o in v) for v in items.values())
        hi = sum(max(o.nbytes for o in v) for v in items.values())
        budget = int(lo + (hi - lo) * rng.uniform(0.2, 0.9))
        best = _brute(items, budget)
        for exact in (True, False):
            a = allocate(items, budget, resolution=2000, exact=exact)
            assert a.nbytes <= budget
            misses[exact] += a.error > best + 1e-12
    assert misses == {True: 0, False: 1}


def test_impossible_budget_is_a_clear_error():
    items = {"a": [Option("Q2_K", 100, 1.0)]}
    with pytest.raises(BadOption, match="below the smallest possible build"):
        allocate(items, 99)


def test_bits_budget_is_b_plus_half_bit_per_weight():
    from quantkit.formats.source import TensorInfo
    from quantkit.plan import bits_budget
    from quantkit.tensor_table import TensorTable

    infos = {"layers.0.mlp.down_proj.weight": TensorInfo("layers.0.mlp.down_proj.weight", (64, 512), "F32", 0, "x"),
             "layers.0.mlp.up_proj.weight": TensorInfo("layers.0.mlp.up_proj.weight", (512, 640), "F32", 0, "y"),
             "norm.weight": TensorInfo("norm.weight", (640,), "F32", 0, "z")}
    # 2.5 bpw for the 512-wide rows; 640-wide rows fall back to Q4_0 (18 bytes per 32 weights); the norm stays F32
    assert bits_budget(TensorTable.from_infos(infos), 2) == 64 * 512 * 5 // 16 + 512 * 640 // 32 * 18 + 640 * 4


def test_bits_budget_takes_fractional_and_intermediate_targets():
    """--bits 2.5 / 5 / 6: B + 0.5 bpw where the B-bit K-quant's block fits (2.5 -> Q2_K's rule, 5 -> Q5_K's:
    a 640-wide row falls back to Q5_1 = 6 bpw), and a target below what the smallest types allow is refused."""
    from quantkit.formats.source import TensorInfo
    from quantkit.plan import bits_budget
    from quantkit.tensor_table import TensorTable

    infos = {"layers.0.mlp.down_proj.weight": TensorInfo("layers.0.mlp.down_proj.weight", (64, 512), "F32", 0, "x"),
             "layers.0.mlp.up_proj.weight": TensorInfo("layers.0.mlp.up_proj.weight", (512, 640), "F32", 0, "y")}
    table = TensorTable.from_infos(infos)
    assert bits_budget(table, 2.5) == 64 * 512 * 3 // 8 + 512 * 640 // 32 * 18  # 640 wide: Q2_K -> Q4_0
    assert bits_budget(table, 5) == 64 * 512 * 5.5 // 8 + 512 * 640 // 32 * 24  # 640 wide: Q5_K -> Q5_1
    assert bits_budget(table, 6) == 64 * 512 * 6.5 // 8 + 512 * 640 // 32 * 34  # 640 wide: Q6_K -> Q8_0
    with pytest.raises(BadOption, match=r"--bits 1: expected a number from 1.1 to 8"):
        bits_budget(table, 1)
