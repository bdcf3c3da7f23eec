"""Seeded draws (features/draws.py): a value's fate depends only on it, the seed and the salt."""

import numpy as np

from recfactory.features.draws import seeded_sample, seeded_share


def test_a_seeded_share_keeps_its_fraction_whatever_the_order():
    values = np.array([f"i{k}" for k in range(100_000)], dtype=object)
    mask = seeded_share(values, 7, "holdout", 0.3)
    assert abs(mask.mean() - 0.3) < 0.01
    perm = np.random.default_rng(0).permutation(len(values))
    assert np.array_equal(seeded_share(values[perm], 7, "holdout", 0.3), mask[perm])
    assert not np.array_equal(seeded_share(values, 7, "other", 0.3), mask)  # the salt matters
    assert not np.array_equal(seeded_share(values, 8, "holdout", 0.3), mask)  # so does the seed
    assert not seeded_share(values, 7, "holdout", 0.0).any() and seeded_share(values, 7, "holdout", 1.0).all()
    assert (mask <= seeded_share(values, 7, "holdout", 0.5)).all()  # nested as the fraction grows


def test_a_seeded_sample_is_the_same_set_whatever_the_order():
    values = np.array([f"i{k}" for k in range(5_000)], dtype=object)
    picked = set(values[seeded_sample(values, 3, "s", 100)])
    perm = np.random.default_rng(1).permutation(len(values))
    assert len(picked) == 100 and set(values[perm][seeded_sample(values[perm], 3, "s", 100)]) == picked
    assert len(seeded_sample(values[:10], 3, "s", 100)) == 10
