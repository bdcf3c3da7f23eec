"""GBDT leaf tokenizer: the global leaf vocabulary, encoding, recalibration and the NE metrics."""

import numpy as np
import pytest

from recfactory.features.samples import recalibrate
from recfactory.tokenizers.gbdt import (
    GBDTSpec,
    calibration_ratio,
    encode_leaves,
    leaf_vocab,
    normalized_entropy,
    one_hot,
    train,
    tree_offsets,
)


def data(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    logit = 1.5 * X[:, 0] - X[:, 1] * X[:, 2] - 2.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return X, y


def test_leaf_vocabulary_is_dense_and_encodes_the_raw_score():
    X, y = data()
    spec = GBDTSpec(num_trees=12, num_leaves=8, min_data_in_leaf=20, bagging_fraction=1.0, feature_fraction=1.0)
    booster = train(X, y, spec, [f"x{i}" for i in range(5)], threads=1)
    vocab = leaf_vocab(booster)
    assert vocab["global_id"].tolist() == list(range(len(vocab)))
    for _, g in vocab.groupby("tree"):
        assert g["leaf"].tolist() == list(range(len(g)))
        assert g["count"].sum() == len(X)  # no bagging: every row reaches one leaf
    leaves = encode_leaves(booster, X, tree_offsets(vocab))
    assert leaves.shape == (len(X), 12)
    direct = booster.predict(X, pred_leaf=True)
    assert (leaves - tree_offsets(vocab)[None, :] == direct).all()
    # the leaf values of a row's leaves add up to the booster's raw score
    raw = vocab["leaf_value"].to_numpy()[leaves].sum(1)
    np.testing.assert_allclose(raw, booster.predict(X, raw_score=True), rtol=1e-9, atol=1e-9)
    oh = one_hot(leaves, len(vocab))
    assert oh.shape == (len(X), len(vocab)) and (oh.sum(1) == 12).all()


def test_recalibration_recovers_the_true_rate_after_negative_downsampling():
    """Four buckets with known click rates; negatives kept at rate w: the downsampled rate of each
    bucket, recalibrated, is the true rate again (up to sampling noise)."""
    rng = np.random.default_rng(1)
    rates = np.array([0.01, 0.05, 0.1, 0.3])
    bucket = rng.integers(0, 4, 800_000)
    y = rng.random(len(bucket)) < rates[bucket]
    for w in (0.5, 0.1, 0.02):
        keep = y | (rng.random(len(y)) < w)
        seen = np.array([y[keep & (bucket == b)].mean() for b in range(4)])
        assert (seen > rates * 1.5).all()  # downsampling inflates the rate
        np.testing.assert_allclose(recalibrate(seen, w), rates, rtol=0.06)


def test_a_gbdt_on_downsampled_rows_is_calibrated_after_recalibration():
    rng = np.random.default_rng(2)
    X, y = data(n=60_000, seed=2)
    w = 0.1
    keep = (y == 1) | (rng.random(len(y)) < w)
    booster = train(X[keep], y[keep], GBDTSpec(num_trees=200, num_leaves=8), [f"x{i}" for i in range(5)], threads=1)
    p = booster.predict(X)
    q = recalibrate(p, w)
    assert calibration_ratio(y, p) > 2 and calibration_ratio(y, q) == pytest.approx(1.0, abs=0.1)
    assert normalized_entropy(y, q) < min(1.0, normalized_entropy(y, p))


def test_normalized_entropy_against_its_definition():
    y = np.array([1, 0, 0, 0], dtype=float)
    assert normalized_entropy(y, np.full(4, 0.25)) == pytest.approx(1.0)
    p = np.array([0.9, 0.1, 0.2, 0.1])
    ll = -np.mean([np.log(0.9), np.log(0.9), np.log(0.8), np.log(0.9)])
    h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert normalized_entropy(y, p) == pytest.approx(ll / h)


def test_single_label_is_refused():
    with pytest.raises(ValueError, match="single label"):
        train(np.zeros((10, 1)), np.zeros(10), GBDTSpec(), ["x"])


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_compiled_leaf_encoder_equals_lightgbm_pred_leaf(zero_as_missing):
    import lightgbm as lgb

    from recfactory.tokenizers.gbdt import LeafEncoder

    rng = np.random.default_rng(3)
    X, y = data(6000, seed=3)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values, both directions
    X[:, 3] = np.where(rng.random(len(X)) < 0.3, 0.0, X[:, 3])  # a column with many zeros
    X[:, 4] = np.round(X[:, 4])  # ties on thresholds
    params = {
        "objective": "binary",
        "num_leaves": 15,
        "min_data_in_leaf": 20,
        "verbose": -1,
        "zero_as_missing": zero_as_missing,
        "seed": 1,
        "deterministic": True,
    }
    booster = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=30)
    offsets = tree_offsets(leaf_vocab(booster))
    enc = LeafEncoder(booster.model_to_string(), offsets)
    assert not enc.categorical and enc.num_trees == 30
    Xt, _ = data(3000, seed=4)
    Xt[rng.random(Xt.shape) < 0.1] = np.nan
    Xt[:300] = 0.0
    Xt[300:400] = 1e-40  # LightGBM reads |x| <= 1e-35 as zero
    Xt[400:500] = -np.inf
    Xt[500:600] = np.inf
    Xt[:, 4] = np.round(Xt[:, 4])
    expected = booster.predict(Xt, pred_leaf=True) + offsets[None, :]
    got = enc.encode(Xt)
    assert got.dtype == np.int32 and np.array_equal(got, expected)
    with pytest.raises(ValueError, match="features"):
        enc.encode(Xt[:, : enc.num_features - 1])


def test_leaf_encoder_single_leaf_trees_and_categorical_fallback():
    import lightgbm as lgb

    from recfactory.tokenizers.gbdt import LeafEncoder

    X, y = data(2000, seed=5)
    # no split is worth its gain: single-leaf trees (no split arrays in the text)
    stump = lgb.train(
        {"objective": "binary", "num_leaves": 4, "min_data_in_leaf": 1500, "verbose": -1, "min_gain_to_split": 1e9},
        lgb.Dataset(X, label=y),
        num_boost_round=3,
    )
    enc = LeafEncoder(stump.model_to_string())
    assert enc.num_trees == stump.num_trees() >= 1 and (enc.n_leaves == 1).all()
    assert np.array_equal(enc.encode(X), np.tile(np.arange(enc.num_trees), (len(X), 1)))
    Xc = X.copy()
    Xc[:, 0] = np.floor(np.abs(Xc[:, 0]) * 3)  # a categorical column
    cat = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 8,
            "min_data_in_leaf": 20,
            "verbose": -1,
            "min_data_per_group": 5,
            "cat_smooth": 1,
        },
        lgb.Dataset(Xc, label=y, categorical_feature=[0]),
        num_boost_round=10,
    )
    enc = LeafEncoder(cat.model_to_string())
    assert enc.categorical
    offsets = tree_offsets(leaf_vocab(cat))
    assert np.array_equal(enc.encode(Xc), cat.predict(Xc, pred_leaf=True) + offsets[None, :])
