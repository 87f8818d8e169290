"""Lattice tables for IQ1_S / IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S, built at first use.

The grids themselves come from gguf-py (``gguf.quants.IQ2_XXS`` etc.), which
ships them packed for its dequantizers.  Each grid point is a group of 8 (IQ2)
or 4 (IQ3) values; we convert every value to its level ``l`` (index into the
class's ``grid_map``).  The encoders of llama.cpp work with odd positions
``2*l + 1`` and the decoders with the ``grid_map`` bytes.

The search tables are what ggml-quants.c ``iq2xs_init_impl`` /
``iq3xs_init_impl`` compute: ``kmap[u]`` gives the grid index of the packed
level vector ``u`` (2 bits per level for IQ2, 3 for IQ3) or -1 when ``u`` is not
on the grid; for such ``u`` the neighbour list holds every grid point whose
squared distance to ``u`` is among the ``nwant`` smallest distinct distances
(nwant = 2 for IQ2_XXS, IQ2_XS and IQ3_XXS, 1 for IQ2_S, 3 for IQ3_S with its
512-point grid and for IQ1_S / IQ1_M with their shared 2048-point grid of
values -1, 0, 1), ordered by (distance, grid index).  Only the ``u`` the
encoders can reach (IQ2: levels 0..2; IQ3: levels 0..7) are filled in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from gguf import quants as _gq
from numba import njit


@dataclass(frozen=True)
class IQGrid:
    levels: np.ndarray  # int64 [G, n]: level index l of each value
    pos: np.ndarray  # int64 [G, n]: 2*l + 1 (encoder coordinates)
    values: np.ndarray  # float32 [G, n]: decoded grid values (grid_map bytes)
    kmap: np.ndarray  # int32 [kmap_size]: grid index or -1
    nb_off: np.ndarray  # int32 [kmap_size]: offset into nb_list, -1 if none
    nb_list: np.ndarray  # int32: at nb_off[u]: count, then grid indices
    ksigns: np.ndarray  # int64 [128]: sign byte for each 7-bit sign index


def _levels_from_gguf(cls) -> tuple[np.ndarray, np.ndarray]:
    cls.init_grid()
    grid = np.asarray(cls.grid, dtype=np.float32).reshape(cls.grid_shape)
    gmap = np.asarray(cls.grid_map, dtype=np.float32)
    levels = np.argmax(grid[..., None] == gmap[None, None, :], axis=-1).astype(np.int64)
    if not np.array_equal(gmap[levels], grid):
        raise RuntimeError(f"unexpected grid values in gguf-py {cls.__name__}")
    return levels, grid


@njit(nogil=True, cache=True)
def _neighbour_tables(pos, kmap, bits, maxl, nwant):
    G, n = pos.shape
    size = kmap.shape[0]
    mask = (1 << bits) - 1
    reachable = np.zeros(size, np.bool_)
    for u in range(size):
        ok = True
        for k in range(n):
            if ((u >> (bits * k)) & mask) > maxl:
                ok = False
        reachable[u] = ok and kmap[u] < 0
    counts = np.zeros(size, np.int64)
    keys = np.empty(G, np.int64)
    for sweep in range(2):
        if sweep == 1:
            total = 0
            for u in range(size):
                if reachable[u]:
                    total += 1 + counts[u]
            nb_list = np.zeros(total, np.int32)
            nb_off = np.full(size, -1, np.int32)
            cur = 0
            for u in range(size):
                if reachable[u]:
                    nb_off[u] = cur
                    cur += 1 + counts[u]
        for u in range(size):
            if not reachable[u]:
                continue
            for j in range(G):
                d2 = 0
                for k in range(n):
                    p = 2 * ((u >> (bits * k)) & mask) + 1
                    d2 += (pos[j, k] - p) * (pos[j, k] - p)
                keys[j] = d2 * G + j  # sort by (distance, index) like iq2_compare_func
            srt = np.sort(keys)
            d_first = srt[0] // G
            nhave = 1
            cnt = 0
            for j in range(G):
                dj = srt[j] // G
                if dj > d_first:
                    if nhave == nwant:
                        break
                    d_first = dj
                    nhave += 1
                if sweep == 1:
                    nb_list[nb_off[u] + 1 + cnt] = srt[j] % G
                cnt += 1
            if sweep == 0:
                counts[u] = cnt
            else:
                nb_list[nb_off[u]] = cnt
    return nb_off, nb_list


def _build(cls, bits: int, maxl: int, nwant: int) -> IQGrid:
    levels, values = _levels_from_gguf(cls)
    G, n = levels.shape
    pos = 2 * levels + 1
    kmap_size = 1 << (bits * n)
    kmap = np.full(kmap_size, -1, np.int32)
    weights = (1 << (bits * np.arange(n, dtype=np.int64)))
    kmap[(levels * weights).sum(axis=1)] = np.arange(G, dtype=np.int32)
    nb_off, nb_list = _neighbour_tables(pos, kmap, bits, maxl, nwant)
    ksigns = np.frombuffer(_gq.IQ2_XXS.ksigns, dtype=np.uint8).astype(np.int64)
    return IQGrid(levels, pos, values, kmap, nb_off, nb_list, ksigns)


@functools.lru_cache(maxsize=None)
def iq2xxs_grid() -> IQGrid:
    return _build(_gq.IQ2_XXS, bits=2, maxl=2, nwant=2)


@functools.lru_cache(maxsize=None)
def iq2xs_grid() -> IQGrid:
    return _build(_gq.IQ2_XS, bits=2, maxl=2, nwant=2)


@functools.lru_cache(maxsize=None)
def iq3xxs_grid() -> IQGrid:
    return _build(_gq.IQ3_XXS, bits=3, maxl=7, nwant=2)


@functools.lru_cache(maxsize=None)
def iq2s_grid() -> IQGrid:
    return _build(_gq.IQ2_S, bits=2, maxl=2, nwant=1)  # iq2xs_init_impl(GGML_TYPE_IQ2_S): 1024 points


@functools.lru_cache(maxsize=None)
def iq3s_grid() -> IQGrid:
    return _build(_gq.IQ3_S, bits=3, maxl=7, nwant=3)  # iq3xs_init_impl(512)


@functools.lru_cache(maxsize=None)
def iq1s_grid() -> IQGrid:
    """iq2xs_init_impl(GGML_TYPE_IQ1_S / IQ1_M): kgrid_1bit_2048, levels 0..2 for -1, 0, 1, nwant 3."""
    return _build(_gq.IQ1_S, bits=2, maxl=2, nwant=3)
