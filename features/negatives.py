"""Corpus negatives for retrieval training pairs, on arrays (no Spark, no I/O): the core of
``build_retrieval_pairs`` (issue 24), which hands it one user's rows at a time.

A row is one (user, positive item); each strategy draws ``k`` negatives for it and gives every
draw its sampling probability q(i) under that strategy — what a two-tower trainer subtracts as
log q(i) when it mixes these corpus negatives with its in-batch ones (sampled softmax with the
logQ correction, Yi et al., RecSys 2019):

- ``uniform``: every catalog item, q = 1 / N;
- ``popularity``: items in proportion to count^power (word2vec's unigram^0.75), q = c_i^a / sum c^a;
- ``exposed``: the user's impressions never followed by a positive, each exposure weighted by
  ``exposure_weight(position)`` (a non-click at the top is the current ranker's choice more than the
  user's judgement: down-weighted, so the negatives are not what production already pushes),
  q = w_i / sum w over the user's exposures;
- ``hard``: the positive's neighbours of rank [lo, hi) in an item embedding (a medium-similarity
  band: close enough to be hard, far enough not to be a missing positive), q = 1 / band size.

False negatives are never drawn: a candidate that is one of the user's positives (which covers
the positives of the user's sessions) or one of the positive's top Swing neighbours is redrawn
(another attempt's draw), up to ``max_attempts``; a row that cannot fill its k keeps -1 there.
Every draw is ``counter_uniform(seed, strategy, row key, slot, attempt)``: a row's negatives do not
depend on the other rows, the batch or the Spark partition it is drawn in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recfactory.features.draws import counter_uniform


@dataclass
class Forbidden:
    """Candidates a row may not get: ``user_keys`` (sorted user * n_items + item: the users'
    positives) and ``item_keys`` (sorted positive * n_items + item: each item's top Swing
    neighbours), over item indices 0..n_items-1."""

    n_items: int
    user_keys: np.ndarray
    item_keys: np.ndarray

    @staticmethod
    def of(n_items: int, user_pairs: tuple[np.ndarray, np.ndarray], item_pairs: tuple[np.ndarray, np.ndarray]):
        n = np.uint64(n_items)
        uk = np.unique(np.asarray(user_pairs[0]).astype(np.uint64) * n + np.asarray(user_pairs[1]).astype(np.uint64))
        ik = np.unique(np.asarray(item_pairs[0]).astype(np.uint64) * n + np.asarray(item_pairs[1]).astype(np.uint64))
        return Forbidden(n_items, uk, ik)

    def hits(self, users: np.ndarray, positives: np.ndarray, cand: np.ndarray) -> np.ndarray:
        n = np.uint64(self.n_items)
        c = np.asarray(cand).astype(np.uint64)
        out = _member(self.user_keys, np.asarray(users).astype(np.uint64) * n + c)
        return out | _member(self.item_keys, np.asarray(positives).astype(np.uint64) * n + c)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(keys.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


# A sampler maps (uniforms, row indices) to (items, q); items -1 where the row has no candidate.
Sampler = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def uniform_sampler(n_items: int) -> Sampler:
    def draw(u: np.ndarray, rows: np.ndarray):
        items = np.minimum((u * n_items).astype(np.int64), n_items - 1)
        return items, np.full(len(u), 1.0 / n_items)

    return draw


def popularity_sampler(counts: np.ndarray, power: float = 0.75) -> Sampler:
    """Items by count^power (inverse CDF over the cumulative weights; an item of count 0 is never
    drawn)."""
    w = np.asarray(counts, dtype=np.float64) ** power
    w[np.asarray(counts) <= 0] = 0.0
    total = w.sum()
    if total <= 0:
        raise ValueError("popularity negatives need at least one item with a positive count")
    cdf = np.cumsum(w) / total

    def draw(u: np.ndarray, rows: np.ndarray):
        items = np.minimum(np.searchsorted(cdf, u, side="right"), len(w) - 1)
        return items, w[items] / total

    return draw


def band_sampler(neighbours: np.ndarray, positives: np.ndarray, lo: int, hi: int) -> Sampler:
    """Uniform over the row's positive's neighbours of rank [lo, hi) (``neighbours``: n_items x
    >= hi item indices, best first, -1 past the item's last neighbour)."""
    band = neighbours[:, lo:hi]
    size = (band >= 0).sum(axis=1)  # neighbours are filled from the best: -1 only at the end

    def draw(u: np.ndarray, rows: np.ndarray):
        p = positives[rows]
        s = size[p]
        j = np.minimum((u * s).astype(np.int64), np.maximum(s - 1, 0))
        items = np.where(s > 0, band[p, j], -1)
        return items, np.where(s > 0, 1.0 / np.maximum(s, 1), 0.0)

    return draw


def exposure_weight(position: np.ndarray, discount: float) -> np.ndarray:
    """An exposure's weight by its slate position (1-based, as the events' ``context['position']``):
    1 - discount / log2(position + 1), so position 1 weighs 1 - discount; 1 where the position is
    unknown (< 1, e.g. -1 for a missing one)."""
    pos = np.asarray(position, dtype=np.float64)
    w = 1.0 - discount / np.log2(np.maximum(pos, 1) + 1)
    return np.where(pos < 1, 1.0, np.clip(w, 0.0, 1.0))


def exposed_sampler(row_users: np.ndarray, offsets: np.ndarray, items: np.ndarray, weights: np.ndarray) -> Sampler:
    """By weight over the row's user's exposures (``row_users``: the user index of each row): user
    u's are items[offsets[u]:offsets[u+1]], one entry per distinct exposed item, its weight the sum
    over its exposures."""
    w = np.asarray(weights, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(w)])

    def draw(u: np.ndarray, rows: np.ndarray):
        us = row_users[rows]
        a, b = offsets[us], offsets[us + 1]
        base, tot = cum[a], cum[b] - cum[a]
        ok = tot > 0
        if not len(items):
            return np.full(len(u), -1, dtype=np.int64), np.zeros(len(u))
        at = np.clip(np.searchsorted(cum, base + u * tot, side="right") - 1, a, np.maximum(b - 1, a))
        at = np.minimum(at, len(items) - 1)
        return np.where(ok, items[at], -1), np.where(ok, w[at] / np.where(ok, tot, 1.0), 0.0)

    return draw


def draw(
    strategy: str,
    sampler: Sampler,
    row_keys: np.ndarray,
    users: np.ndarray,
    positives: np.ndarray,
    k: int,
    seed: int,
    forbidden: Forbidden,
    max_attempts: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """(items, q), both rows x k: the strategy's k negatives of every row (``row_keys``: a stable
    integer key per row, e.g. a hash of user and item ids), -1 / 0.0 where none could be drawn
    without a forbidden candidate in ``max_attempts`` tries. Draws within a row may repeat (the
    draws are independent, as a sampled-softmax trainer assumes)."""
    n = len(row_keys)
    out = np.full((n, k), -1, dtype=np.int64)
    q = np.zeros((n, k))
    if not n or not k:
        return out, q
    rows = np.repeat(np.arange(n), k)
    slots = np.tile(np.arange(k), n)
    todo = np.arange(n * k)
    for attempt in range(max_attempts):
        u = counter_uniform(seed, f"negative-{strategy}", np.asarray(row_keys)[rows[todo]], slots[todo], attempt)
        cand, prob = sampler(u, rows[todo])
        bad = (cand < 0) | forbidden.hits(users[rows[todo]], positives[rows[todo]], np.maximum(cand, 0))
        good = todo[~bad]
        out[rows[good], slots[good]] = cand[~bad]
        q[rows[good], slots[good]] = prob[~bad]
        todo = todo[bad]
        if not len(todo):
            break
    return out, q
