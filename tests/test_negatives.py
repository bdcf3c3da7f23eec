"""Corpus negatives (features.negatives) against brute force: each strategy's draws follow its q,
q is the brute-force probability of the drawn item, false negatives are never drawn, and a row's
negatives do not depend on the rows drawn beside it."""

from __future__ import annotations

import numpy as np
import pytest

from recfactory.features import negatives as ng

N_ITEMS = 30


def _empty() -> ng.Forbidden:
    e = np.zeros(0, np.int64)
    return ng.Forbidden.of(N_ITEMS, (e, e), (e, e))


def _samplers(rng):
    counts = rng.integers(0, 20, N_ITEMS)
    counts[:3] = 0  # never drawn by popularity
    nb = np.full((N_ITEMS, 12), -1)
    for i in range(N_ITEMS):
        row = [j for j in rng.permutation(N_ITEMS) if j != i][: int(rng.integers(3, 13))]
        nb[i, : len(row)] = row
    # exposures: user u's distinct items and summed weights, CSR by user
    n_users = 5
    exp = {
        u: {int(i): float(rng.random()) + 0.1 for i in rng.choice(N_ITEMS, 6, replace=False)} for u in range(n_users)
    }
    exp[4] = {}  # a user without exposures
    offsets = np.cumsum([0] + [len(exp[u]) for u in range(n_users)])
    items = np.array([i for u in range(n_users) for i in exp[u]], dtype=np.int64)
    weights = np.array([w for u in range(n_users) for w in exp[u].values()])
    return counts, nb, exp, offsets, items, weights


def _brute_q(strategy, counts, nb, exp, lo, hi, user, positive):
    """The strategy's distribution for one row, by enumeration."""
    if strategy == "uniform":
        return np.full(N_ITEMS, 1 / N_ITEMS)
    if strategy == "popularity":
        w = np.where(counts > 0, counts.astype(float) ** 0.75, 0.0)
        return w / w.sum()
    if strategy == "hard":
        band = [j for j in nb[positive, lo:hi] if j >= 0]
        q = np.zeros(N_ITEMS)
        q[band] = 1 / len(band) if band else 0
        return q
    q = np.zeros(N_ITEMS)
    tot = sum(exp[user].values())
    for i, w in exp[user].items():
        q[i] = w / tot
    return q


@pytest.mark.parametrize("strategy", ["uniform", "popularity", "hard", "exposed"])
def test_each_strategy_draws_by_its_q_and_reports_it(strategy):
    rng = np.random.default_rng(0)
    counts, nb, exp, offsets, items, weights = _samplers(rng)
    n_rows, k, lo, hi = 4000, 5, 2, 10
    users = np.arange(n_rows) % 4  # users 0..3 have exposures
    positives = np.full(n_rows, 7)
    sampler = {
        "uniform": ng.uniform_sampler(N_ITEMS),
        "popularity": ng.popularity_sampler(counts),
        "hard": ng.band_sampler(nb, positives, lo, hi),
        "exposed": ng.exposed_sampler(users, offsets, items, weights),
    }[strategy]
    got, q = ng.draw(strategy, sampler, np.arange(n_rows) * 7919, users, positives, k, 3, _empty())
    assert (got >= 0).all() and got.shape == q.shape == (n_rows, k)
    for u in range(4):
        want = _brute_q(strategy, counts, nb, exp, lo, hi, u, 7)
        g, qq = got[users == u].ravel(), q[users == u].ravel()
        assert np.allclose(qq, want[g])  # the reported q is the item's probability
        freq = np.bincount(g, minlength=N_ITEMS) / len(g)
        assert np.abs(freq - want).max() < 0.03, (u, np.abs(freq - want).max())
        assert (want[g] > 0).all()  # nothing outside the support (zero counts, outside the band)


def test_false_negatives_are_never_drawn_and_the_rest_keep_their_proportions():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 20, N_ITEMS)
    n_rows, k = 3000, 4
    users = np.arange(n_rows) % 3
    positives = (np.arange(n_rows) // 3) % 2  # items 0 and 1
    mine = {0: [2, 3, 4], 1: [5], 2: list(range(6, 20))}  # the users' positives
    swing = {0: [20, 21], 1: [22]}  # the positives' top Swing neighbours
    up = (np.array([u for u in mine for _ in mine[u]]), np.array([i for u in mine for i in mine[u]]))
    ip = (np.array([p for p in swing for _ in swing[p]]), np.array([i for p in swing for i in swing[p]]))
    forbidden = ng.Forbidden.of(N_ITEMS, up, ip)
    got, q = ng.draw("popularity", ng.popularity_sampler(counts), np.arange(n_rows), users, positives, k, 5, forbidden)
    assert (got >= 0).all()
    w = counts.astype(float) ** 0.75
    for u in mine:
        for p in swing:
            sel = (users == u) & (positives == p)
            g = got[sel].ravel()
            banned = set(mine[u]) | set(swing[p])
            assert not banned & set(g.tolist())
            allowed = np.array([i for i in range(N_ITEMS) if i not in banned])
            want = w[allowed] / w[allowed].sum()  # rejection keeps the allowed items' proportions
            freq = np.bincount(g, minlength=N_ITEMS)[allowed] / len(g)
            assert np.abs(freq - want).max() < 0.04
            assert np.allclose(q[sel].ravel(), w[g] / w.sum())  # q: the strategy's, before filtering


def test_a_rows_negatives_do_not_depend_on_the_rows_beside_it():
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 20, N_ITEMS)
    users, positives = rng.integers(0, 10, 500), rng.integers(0, N_ITEMS, 500)
    keys = rng.integers(0, 2**62, 500)
    forbidden = ng.Forbidden.of(N_ITEMS, (users, positives), (positives, (positives + 1) % N_ITEMS))
    full, fq = ng.draw("popularity", ng.popularity_sampler(counts), keys, users, positives, 6, 9, forbidden)
    part = rng.permutation(500)[:120]
    sub, sq = ng.draw(
        "popularity", ng.popularity_sampler(counts), keys[part], users[part], positives[part], 6, 9, forbidden
    )
    assert np.array_equal(sub, full[part]) and np.array_equal(sq, fq[part])
    other, _ = ng.draw("popularity", ng.popularity_sampler(counts), keys, users, positives, 6, 10, forbidden)
    assert not np.array_equal(other, full)  # another seed, other draws


def test_a_row_with_no_allowed_candidate_keeps_minus_one():
    every = np.arange(N_ITEMS)
    forbidden = ng.Forbidden.of(N_ITEMS, (np.zeros(N_ITEMS, np.int64), every), (np.zeros(0, np.int64),) * 2)
    got, q = ng.draw(
        "uniform", ng.uniform_sampler(N_ITEMS), np.array([1, 2]), np.array([0, 1]), np.array([0, 0]), 3, 1, forbidden
    )
    assert (got[0] == -1).all() and (q[0] == 0).all()  # user 0 has every item as a positive
    assert (got[1] >= 0).all()
    # no exposure, no band: -1 too
    nb = np.full((N_ITEMS, 5), -1)
    got, _ = ng.draw(
        "hard", ng.band_sampler(nb, np.array([4]), 1, 5), np.array([1]), np.array([1]), np.array([4]), 2, 1, forbidden
    )
    assert (got == -1).all()


def test_exposure_weights_discount_the_top_positions():
    w = ng.exposure_weight(np.array([1, 2, 10, -1, 0]), 0.5)
    assert w[0] == pytest.approx(0.5) and w[1] == pytest.approx(1 - 0.5 / np.log2(3))
    assert w[0] < w[1] < w[2] < 1 and w[3] == w[4] == 1.0  # unknown positions: full weight
    assert (ng.exposure_weight(np.arange(1, 11), 0.0) == 1).all()
