"""Counter-based random draws and alias tables, compiled with numba: what the walker
(``graph.walks``) and the skip-gram trainer (``graph.skipgram``) draw from.

Every draw is a SplitMix64 hash of (seed, position, step, draw): a value depends only on its
counters, never on the order of other draws — the same walks and the same negatives for a seed
whatever the number of shards, threads or Ray workers.
"""

from __future__ import annotations

import numba
import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, inline="always")
def _mix(x):
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def draw_hash(seed, position, step, draw):
    """64 random bits: SplitMix64 of (seed, walk position, step, draw)."""
    x = _mix(np.uint64(seed) + _GOLD * np.uint64(position + 1))
    return _mix(x ^ (np.uint64(step) * np.uint64(0x100000001B3) + np.uint64(draw) + _GOLD))


@numba.njit(cache=True, inline="always")
def draw_uniform(seed, position, step, draw):
    """U[0, 1) from the top 53 bits of `draw_hash`."""
    return np.float64(draw_hash(seed, position, step, draw) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, inline="always")
def alias_draw(h, lo, deg, prob, alias):
    """An edge index of the alias table over [lo, lo + deg) from one 64-bit hash: its high 32 bits
    pick the slot, its low 32 bits flip the slot's coin."""
    k = lo + min(np.int64(np.float64(h >> np.uint64(32)) * deg * 2.3283064365386963e-10), deg - 1)
    if np.float64(h & np.uint64(0xFFFFFFFF)) * 2.3283064365386963e-10 >= prob[k]:
        k = alias[k]
    return k


def uniforms(seed: int, positions: np.ndarray, step: int, draw: int) -> np.ndarray:
    """The walker's uniforms for these walk positions (tests and diagnostics)."""
    return _uniforms(np.uint64(seed), np.asarray(positions, dtype=np.int64), step, draw)


@numba.njit(cache=True)
def _uniforms(seed, positions, step, draw):
    out = np.empty(len(positions))
    for i in range(len(positions)):
        out[i] = draw_uniform(seed, positions[i], step, draw)
    return out


@numba.njit(cache=True)
def alias_tables(indptr, weights):
    """Per row, Vose's alias table over its edges: (prob, alias) with alias an edge index."""
    e = len(weights)
    prob = np.ones(e)
    alias = np.arange(e)
    small = np.empty(e, dtype=np.int64)
    large = np.empty(e, dtype=np.int64)
    for v in range(len(indptr) - 1):
        lo, hi = indptr[v], indptr[v + 1]
        deg = hi - lo
        if deg <= 1:
            continue
        total = 0.0
        for k in range(lo, hi):
            total += weights[k]
        ns, nl = 0, 0
        for k in range(lo, hi):
            prob[k] = weights[k] * deg / total
            if prob[k] < 1.0:
                small[ns] = k
                ns += 1
            else:
                large[nl] = k
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            s_ = small[ns]
            l_ = large[nl - 1]
            alias[s_] = l_
            prob[l_] = prob[l_] + prob[s_] - 1.0
            if prob[l_] < 1.0:
                nl -= 1
                small[ns] = l_
                ns += 1
        for i in range(nl):
            prob[large[i]] = 1.0
        for i in range(ns):
            prob[small[i]] = 1.0
    return prob, alias
