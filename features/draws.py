"""Seeded, hash-based draws: the one place the factory turns (seed, salt, key) into randomness.

A draw depends only on its key, never on row order, partitioning or the number of executors, so
the same seed gives the same rows anywhere. Spark side: ``uniform`` (xxhash64 of seed, salt and
keys). NumPy side: ``seeded_hash`` and the two idioms built on it — ``seeded_share`` (keep a
fraction: holdouts, negative downsampling) and ``seeded_sample`` (the n values with the smallest
hash: a reservoir sample).
"""

from __future__ import annotations

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
