"""Byte-budget allocation: choose one type per tensor to minimise the total
estimated error subject to total bytes <= budget.

This is a multiple-choice knapsack. It is solved exactly over a discretised byte
axis by dynamic programming:

    D_k(c) = min_t [ D_{k-1}(c - w_kt) + e_kt ]

where w_kt is tensor k's size at type t in units of `budget / resolution` bytes,
rounded *up* (so every DP-feasible plan is truly under budget) and e_kt its
estimated error. The rounding can leave at most one unit per tensor unused, so a
final greedy pass spends the slack on the upgrades with the best error drop per
byte that still fit.

`exact=True` (file budgets, `--max-size`) makes the unit a multiple of the greatest
common divisor of all the sizes instead: where that divisor alone is fine enough
(the 270M: 5,120 bytes, against budgets under 1e9) nothing is rounded and the DP is
exact to the byte, so a budget that one plan fills exactly (a llama.cpp preset's
file size) admits that plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantkit.errors import BadOption


@dataclass(frozen=True)
class Option:
    type: str
    nbytes: int
    error: float


@dataclass(frozen=True)
class Allocation:
    types: dict[str, str]
    nbytes: int
    error: float


def allocate(items: dict[str, list[Option]], budget: int, resolution: int = 200_000, exact: bool = False) -> Allocation:
    names = list(items)
    if not names:
        return Allocation({}, 0, 0.0)
    floor = sum(min(o.nbytes for o in items[n]) for n in names)
    if floor > budget:
        raise BadOption(f"budget of {budget:,} bytes is below the smallest possible build ({floor:,} bytes)")
    common = math.gcd(*(o.nbytes for n in names for o in items[n])) if exact else 1
    unit = common * max(1, -(-budget // resolution // common))
    cap = budget // unit
    inf = np.inf
    dp = np.zeros(cap + 1)  # dp[c]: least error of the tensors so far within c units
    choice = np.zeros((len(names), cap + 1), dtype=np.int16)
    for k, n in enumerate(names):
        new = np.full(cap + 1, inf)
        for t, o in enumerate(items[n]):
            w = -(-o.nbytes // unit)
            if w > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[w:] = dp[: cap + 1 - w] + o.error
            better = cand < new
            new[better] = cand[better]
            choice[k, better] = t
        dp = new
    c = int(np.argmin(dp))
    if not np.isfinite(dp[c]):
        raise BadOption(f"budget of {budget:,} bytes cannot be met at a resolution of {unit} bytes")
    picked = {}
    for k in range(len(names) - 1, -1, -1):
        o = items[names[k]][choice[k, c]]
        picked[names[k]] = o
        c -= -(-o.nbytes // unit)
    picked = _spend_slack(items, picked, budget)
    return Allocation({n: o.type for n, o in picked.items()}, sum(o.nbytes for o in picked.values()),
                      float(sum(o.error for o in picked.values())))


def _spend_slack(items: dict[str, list[Option]], picked: dict[str, Option], budget: int) -> dict[str, Option]:
    picked = dict(picked)
    used = sum(o.nbytes for o in picked.values())
    while True:
        best, best_gain = None, 0.0
        for n, cur in picked.items():
            for o in items[n]:
                extra = o.nbytes - cur.nbytes
                gain = cur.error - o.error
                if gain > 0 and used + extra <= budget:
                    score = gain / max(extra, 1)
                    if score > best_gain:
                        best, best_gain = (n, o), score
        if best is None:
            return picked
        n, o = best
        used += o.nbytes - picked[n].nbytes
        picked[n] = o
