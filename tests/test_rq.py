"""Balanced RQ-KMeans and semantic-ID logic against brute-force references on small data."""

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from recfactory.tokenizers.rq import RQSpec, capacity, constrained_assign, encode, fit, reconstruct
from recfactory.tokenizers.sids import (
    collision_rate,
    gini,
    hourglass_removal,
    omit_tokens,
    prefix_recall,
    resolve,
    sid_strings,
    token_features,
    token_stats,
)


def blobs(n=1500, d=8, k=12, seed=0):
    rng = np.random.default_rng(seed)
    sizes = 1 / np.arange(1, k + 1)
    cl = rng.choice(k, n, p=sizes / sizes.sum())
    return (rng.normal(size=(k, d))[cl] * 3 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_unconstrained_encode_is_the_residual_recursion():
    x = blobs()
    spec = RQSpec(codebook_sizes=(8, 6, 5), balance=None, prefix_balance=None, seed=3)
    books = fit(x, spec)
    enc = encode(x, books, spec)
    r = x.astype(np.float64)
    for level, c in enumerate(books.centroids):
        d = ((r[:, None, :] - c[None, :, :].astype(np.float64)) ** 2).sum(-1)
        assert (enc.codes[:, level] == d.argmin(1)).all()
        r = r - c[enc.codes[:, level]]
        np.testing.assert_allclose(enc.residual_norms[:, level], np.linalg.norm(r, axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reconstruct(enc.codes, books), x - r, atol=1e-4)


@pytest.mark.parametrize("balance,prefix_balance", [(0.0, 0.0), (0.3, 0.0), (1.0, 0.5)])
def test_balance_within_the_stated_capacity(balance, prefix_balance):
    x = blobs(seed=1)
    spec = RQSpec(codebook_sizes=(16, 8, 8), balance=balance, prefix_balance=prefix_balance, seed=1)
    books = fit(x, spec)
    codes = encode(x, books, spec).codes
    n = len(x)
    for level in range(2):
        assert np.bincount(codes[:, level]).max() <= capacity(n, 16 if level == 0 else 8, balance)
    _, prefix = np.unique(codes[:, :2], axis=0, return_inverse=True)
    for g in np.unique(prefix):
        rows = codes[prefix.reshape(-1) == g, 2]
        assert np.bincount(rows).max() <= math.ceil((1 + prefix_balance) * len(rows) / 8)


def test_unbalanced_blobs_get_balanced_codes():
    """Zipf blobs: plain k-means puts far more than N/K items on a code; the balanced fit does not."""
    x = blobs(n=3000, k=6, seed=2)
    plain = encode(x, b := fit(x, s := RQSpec(codebook_sizes=(16, 4), balance=None, prefix_balance=None)), s).codes
    bal = encode(x, fit(x, t := RQSpec(codebook_sizes=(16, 4), balance=0.2)), t).codes
    assert np.bincount(plain[:, 0]).max() > 1.2 * capacity(3000, 16, 0.2)
    assert np.bincount(bal[:, 0]).max() <= capacity(3000, 16, 0.2)
    assert b.sizes == (16, 4)


@pytest.mark.parametrize("balance,bound", [(2.0, 1.0 + 1e-9), (0.5, 1.4), (0.0, 1.6)])
def test_greedy_assignment_against_the_optimal_capacitated_assignment(balance, bound):
    """Brute force: min-cost assignment over every code's capacity slots (Hungarian). When the
    capacity does not bind, the greedy is the optimum; when it binds, it stays within the bound."""
    from recfactory.tokenizers.rq import _kmeans

    rng = np.random.default_rng(4)
    ratios = []
    for trial in range(5):
        cl = rng.choice(5, 200, p=[0.5, 0.2, 0.1, 0.1, 0.1])
        x = (rng.normal(size=(5, 4))[cl] * 2 + 0.5 * rng.normal(size=(200, 4))).astype(np.float32)
        c = _kmeans(x, 10, 20, trial)
        cap = capacity(200, 10, balance)
        codes, *_ = constrained_assign(x, c, np.zeros(200, np.int64), balance, candidates=10)
        assert np.bincount(codes, minlength=10).max() <= cap
        cost = ((x[:, None] - c[None]) ** 2).sum(-1).astype(np.float64)
        slots = np.repeat(np.arange(10), cap)
        r, s = linear_sum_assignment(cost[:, slots])
        best = cost[r, slots[s]].sum()
        ratios.append(cost[np.arange(200), codes].sum() / best)
    assert min(ratios) >= 1 - 1e-9 and max(ratios) <= bound, ratios


def test_prior_items_count_in_capacity_and_keep_their_codes():
    x = blobs(n=1200, seed=5)
    spec = RQSpec(codebook_sizes=(8, 8), balance=0.0, seed=5)
    books = fit(x[:800], spec)
    old = encode(x[:800], books, spec).codes
    new = encode(x[800:], books, spec, prior=old).codes
    none = encode(x[:0], books, spec, prior=old)  # a day without new items
    assert none.codes.shape == (0, 2) and none.last_candidates.shape[0] == 0
    both = np.vstack([old, new])
    assert np.bincount(both[:, 0]).max() <= capacity(1200, 8, 0.0)
    _, prefix = np.unique(both[:, :1], axis=0, return_inverse=True)
    for g in np.unique(prefix):
        rows = both[prefix.reshape(-1) == g, 1]
        assert np.bincount(rows).max() <= math.ceil(len(rows) / 8)


def _check_unique(res, tokens_in, fixed, fixed_suffix):
    full = np.column_stack([res.tokens, res.suffix])
    assert len(np.unique(full, axis=0)) == len(full)
    assert (res.tokens[fixed] == tokens_in[fixed]).all()
    assert (res.suffix[fixed] == fixed_suffix[fixed]).all()
    assert res.collisions_after == 0.0


def test_suffix_strategy_numbers_items_in_order_after_published_ones():
    tokens = np.array([[1, 2], [1, 2], [1, 2], [3, 4], [1, 2]], dtype=np.int64)
    fixed = np.array([False, True, False, False, False])
    fixed_suffix = np.array([0, 0, 0, 0, 0])
    res = resolve(tokens, fixed, fixed_suffix, "suffix", order=np.array([4, 0, 2, 3, 1]))
    _check_unique(res, tokens, fixed, fixed_suffix)
    assert res.suffix.tolist() == [3, 0, 2, 0, 1]  # published item keeps 0; then by order
    assert res.collisions_before == pytest.approx(1 - 2 / 5)


@pytest.mark.parametrize("sigma", [1, 2])
def test_reassign_strategy_moves_to_free_candidates_and_reports_fallbacks(sigma):
    rng = np.random.default_rng(0)
    n, k = 200, 8
    tokens = np.column_stack([rng.integers(0, 30, n), rng.integers(0, 2, n)]).astype(np.int64)
    cand = np.stack([rng.permutation(k)[:2] for _ in range(n)])  # 2 candidates: some must fall back
    tokens[:, 1] = cand[:, 0]
    idx = np.flatnonzero(rng.random(n) < 0.2)  # published rows: distinct SIDs among themselves
    fixed = np.zeros(n, dtype=bool)
    fixed[idx[np.unique(tokens[idx], axis=0, return_index=True)[1]]] = True
    fixed_suffix = np.zeros(n, dtype=np.int64)
    res = resolve(
        tokens,
        fixed,
        fixed_suffix,
        "reassign",
        order=np.arange(n),
        last_candidates=cand,
        sizes=(30, k),
        max_per_sid=sigma,
        seed=1,
    )
    _check_unique(res, tokens, fixed, fixed_suffix)
    _, per_sid = np.unique(res.tokens, axis=0, return_counts=True)
    assert per_sid.max() <= sigma
    crowded = np.bincount(tokens[:, 0], minlength=30)[tokens[:, 0]] > k * sigma
    assert (res.tokens[~crowded, 0] == tokens[~crowded, 0]).all()  # only the last token moves, unless
    assert (res.tokens[crowded, 0] != tokens[crowded, 0]).any() == (sigma == 1)  # the prefix is full
    assert res.moved == int((res.tokens != tokens).any(1).sum()) > 0
    assert 0 < res.fell_back <= res.moved
    if sigma == 1:
        assert (res.suffix == 0).all()
        with pytest.raises(ValueError, match="cannot get unique SIDs"):
            resolve(
                tokens,
                fixed,
                fixed_suffix,
                "reassign",
                order=np.arange(n),
                last_candidates=cand,
                sizes=(3, k),
                max_per_sid=1,
            )
        omitted = tokens.copy()
        omitted[:20, 0] = -1  # 20 items on the pattern (−1, c): only k = 8 rows
        with pytest.raises(ValueError, match="20 items cannot get unique SIDs from 8 codes"):
            resolve(
                omitted,
                np.zeros(n, bool),
                fixed_suffix,
                "reassign",
                order=np.arange(n),
                last_candidates=cand,
                sizes=(30, k),
                max_per_sid=1,
            )
    again = resolve(
        tokens,
        fixed,
        fixed_suffix,
        "reassign",
        order=np.arange(n),
        last_candidates=cand,
        sizes=(30, k),
        max_per_sid=sigma,
        seed=1,
    )
    assert (again.tokens == res.tokens).all()


def test_hourglass_removal_and_variable_length_sids():
    codes = np.array([[0, 5, 1], [1, 5, 2], [2, 5, 3], [0, 4, 1], [1, 3, 0]], dtype=np.int64)
    removed = hourglass_removal(codes, (3, 6, 4), drop_levels=[], top_tokens=1, top_level=1)
    assert np.flatnonzero(removed[1]).tolist() == [5]
    tokens = omit_tokens(codes, removed)
    assert tokens[:3, 1].tolist() == [-1, -1, -1] and tokens[3, 1] == 4
    assert sid_strings(tokens[:1], np.zeros(1, np.int64), False) == ["<a_0><c_1>"]
    assert sid_strings(tokens[3:4], np.array([2]), True) == ["<a_0><b_4><c_1><s_2>"]
    dropped = omit_tokens(codes, hourglass_removal(codes, (3, 6, 4), [0], 0, 1))
    assert (dropped[:, 0] == -1).all()
    with pytest.raises(ValueError, match="last level"):
        hourglass_removal(codes, (3, 6, 4), [2], 0, 1)


def test_token_features_are_hashed_prefixes_and_bigrams():
    tokens = np.array([[1, 2, 3], [1, 2, 4], [1, 7, 3], [1, -1, 3]], dtype=np.int64)
    pre, bi = token_features(tokens, vocab_size=1000, seed=0)
    assert pre.shape == (4, 3) and bi.shape == (4, 2)
    assert ((pre[:, 0] >= 0) & (pre[:, 0] < 1000)).all()
    assert pre[0, 0] == pre[1, 0] == pre[2, 0] and pre[0, 1] == pre[1, 1] != pre[2, 1]
    assert pre[0, 2] != pre[1, 2]
    assert pre[3, 1] == -1 and pre[3, 2] == -1 and bi[3].tolist() == [-1, -1]
    assert bi[0, 0] == bi[1, 0] and bi[0, 1] != bi[2, 1]
    assert (token_features(tokens, 1000, 0)[0] == pre).all()
    assert not (token_features(tokens, 1000, 1)[0] == pre).all()


def test_metrics_against_direct_formulas():
    assert gini(np.array([5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 9])) == pytest.approx(2 / 3)
    st = token_stats(np.array([0, 0, 1, 1, -1]), 4)
    assert st["utilization"] == 0.5 and st["entropy"] == pytest.approx(1.0) and st["perplexity"] == pytest.approx(2.0)
    assert st["top_token_share"] == 0.5
    assert collision_rate(np.array([[1, 2], [1, 2], [3, 4]])) == pytest.approx(1 / 3)
    codes = np.array([[0, 1], [0, 2], [1, 1], [1, 1]])
    rec, base, m = prefix_recall(codes, [np.array([1, 2]), np.array([0]), np.array([3]), np.array([], int)], 1)
    assert m == 3 and rec == pytest.approx((0.5 + 1 + 1) / 3) and base == pytest.approx(1 / 3)
