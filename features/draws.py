"""Seeded, hash-based draws: the one place the factory turns (seed, salt, key) into randomness.

A draw depends only on its key, never on row order, partitioning or the number of executors, so
the same seed gives the same rows anywhere. Spark side: ``uniform`` (xxhash64 of seed, salt and
keys). NumPy side: ``seeded_hash`` and the two idioms built on it — ``seeded_share`` (keep a
fraction: holdouts, negative downsampling) and ``seeded_sample`` (the n values with the smallest
hash: a reservoir sample). Integer keys in NumPy (node and row indices): ``mix64`` (splitmix64) and
``counter_uniform``, vectorized and equal for a key whichever other keys are drawn with it.
"""

from __future__ import annotations

import hashlib

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

_U53 = float(1 << 53)
_SHARE_SCALE = 1_000_000  # seeded_share's resolution: fractions in steps of 1e-6


def uniform(seed: int, *keys: Column | str, salt: str) -> Column:
    """Deterministic U[0,1) from the keys."""
    h = F.xxhash64(F.lit(seed), F.lit(salt), *keys)
    return (h.bitwiseAND(F.lit((1 << 53) - 1))).cast("double") / F.lit(_U53)


def seeded_hash(values, seed: int, salt: str):
    """The NumPy-side counterpart of `uniform`: a seeded 64-bit hash (uint64 array) of each value,
    independent of row order and partitioning (pandas' hash with the key salt + zero-padded seed)."""
    import pandas as pd

    key = f"{salt}{seed:0{16 - len(salt)}d}"[:16]
    return pd.util.hash_pandas_object(pd.Series(values, dtype=object), index=False, hash_key=key).to_numpy()


def seeded_share(values, seed: int, salt: str, fraction: float) -> np.ndarray:
    """A boolean mask keeping about `fraction` of the values: those whose seeded hash falls in the
    first `fraction` of [0, 1e6) (a value's fate depends only on it, the seed and the salt)."""
    return (seeded_hash(values, seed, salt) % _SHARE_SCALE) < fraction * _SHARE_SCALE


def seeded_sample(values, seed: int, salt: str, n: int) -> np.ndarray:
    """Indices of the (at most) n values with the smallest seeded hash, smallest first: a sample that
    does not depend on row order or partitioning."""
    return np.argsort(seeded_hash(values, seed, salt), kind="stable")[:n]


def mix64(values: np.ndarray | np.unsignedinteger | int) -> np.ndarray:
    """splitmix64's finalizer of uint64 values (a bijection that scatters nearby keys)."""
    z = np.asarray(values).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_uniform(seed: int, salt: str, *keys) -> np.ndarray:
    """U[0,1) (float64, 53 bits) per row of the integer key arrays (or scalars, broadcast): a pure
    function of (seed, salt, keys), so a row's draw never depends on the batch it is drawn in."""
    salt_key = int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little")
    h = mix64(np.uint64(seed) ^ np.uint64(salt_key))
    for k in keys:
        h = mix64(h ^ np.asarray(k).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / _U53
