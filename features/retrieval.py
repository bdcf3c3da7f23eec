"""Retrieval training pairs on arrays (no Spark, no I/O): the plan ``build_retrieval_pairs`` runs
over index arrays — which positives are kept for evaluation, and every training positive's corpus
negatives by strategy (``features.negatives``).

Rows are the distinct (user, item) positives visible as of the date (each with its latest ts); each
user's last ``holdout`` positives (by ts, ties by item) are the evaluation rows (``split = test``,
no negatives: a trainer ranks every item for them), the rest are ``train`` rows. The negatives of a
train row are drawn strategy by strategy, in the order of ``STRATEGIES``, with the false-negative
filter of every strategy: the user's positives (train and test) and the positive's top Swing
neighbours. A row's ``positive_q`` is its item's share of the train positives: the probability an
in-batch negative is that item, which a trainer subtracts as log q for its in-batch negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import model_validator

from recfactory.features import negatives as ng
from recfactory.features.schema import POSITIVE_EVENT_TYPES
from recfactory.features.spec import Field, Seeded

STRATEGIES: tuple[str, ...] = ("uniform", "popularity", "exposed", "hard")


class RetrievalSpec(Seeded):
    """The pairs and their negatives (a count of 0 turns a strategy off)."""

    positive_types: tuple[str, ...] = Field(
        POSITIVE_EVENT_TYPES, min_length=1, description="Event types that make a (user, item) positive."
    )
    holdout: int = Field(1, ge=0, description="Each user's last positives kept for evaluation (split test).")
    uniform_negatives: int = Field(4, ge=0, description="Uniform negatives per train positive (q = 1 / items).")
    popularity_negatives: int = Field(4, ge=0, description="Popularity^power negatives per train positive.")
    popularity_power: float = Field(0.75, ge=0, le=1, description="Exponent of the popularity negatives' counts.")
    exposed_negatives: int = Field(
        2, ge=0, description="Negatives from the user's impressions never followed by a positive."
    )
    exposure_discount: float = Field(
        0.5,
        ge=0,
        le=1,
        description="An exposure's weight: 1 - discount / log2(position + 1), position 1-based (0: all alike).",
    )
    hard_negatives: int = Field(2, ge=0, description="Hard negatives per train positive, from the embedding's band.")
    hard_rank_min: int = Field(10, ge=0, description="Hard negatives: the band's first neighbour rank (0-based).")
    hard_rank_max: int = Field(50, ge=1, description="Hard negatives: the band's end rank (exclusive).")
    swing_filter: int = Field(
        20, ge=0, description="The positive's top Swing neighbours never drawn as its negatives (false negatives)."
    )
    max_attempts: int = Field(32, ge=1, description="Redraws of a false negative before the slot stays empty.")

    @model_validator(mode="after")
    def _band(self):
        if self.hard_rank_max <= self.hard_rank_min:
            raise ValueError(
                f"hard_rank_max ({self.hard_rank_max}) must exceed hard_rank_min ({self.hard_rank_min}): an empty band"
            )
        return self


@dataclass
class PairInputs:
    """Index arrays: the distinct positives (users, items, ts) over n_users x n_items; ``row_keys``
    a stable key per positive (a hash of its ids); the exposures (user, item, weight), one per
    distinct exposed pair; the Swing filter (item, neighbour) pairs; ``neighbours``: the hard
    negatives' n_items x >= hard_rank_max item ranking by embedding similarity (-1 past the last),
    or None when hard negatives are off."""

    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    row_keys: np.ndarray
    n_users: int
    n_items: int
    exposures: tuple[np.ndarray, np.ndarray, np.ndarray]
    swing: tuple[np.ndarray, np.ndarray]
    neighbours: np.ndarray | None


@dataclass
class Pairs:
    test: np.ndarray  # bool per positive: an evaluation row
    positive_q: np.ndarray  # per positive: its item's share of the train positives (0 for test rows' unseen)
    negatives: dict[str, tuple[np.ndarray, np.ndarray]]  # strategy -> (items, q), rows x k, over the train rows
    train_rows: np.ndarray  # the positives' indices the negatives' rows are


def last_per_user(users: np.ndarray, items: np.ndarray, ts: np.ndarray, n: int) -> np.ndarray:
    """Each user's last n rows by (ts, item) as a mask (every row of a user with at most n rows is
    kept for training instead: a user needs a training positive to be evaluated)."""
    users, items, ts = np.asarray(users), np.asarray(items), np.asarray(ts)
    out = np.zeros(len(users), dtype=bool)
    if not n or not len(users):
        return out
    order = np.lexsort((items, ts, users))
    u = users[order]
    start = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    size = np.diff(np.r_[start, len(u)])
    rank_from_end = np.repeat(start + size, size) - np.arange(len(u))  # 1 for a user's last row
    keep = (rank_from_end <= n) & (np.repeat(size, size) > n)
    out[order[keep]] = True
    return out


def plan(inp: PairInputs, spec: RetrievalSpec) -> Pairs:
    test = last_per_user(inp.users, inp.items, inp.ts, spec.holdout)
    train = np.flatnonzero(~test)
    tu, ti = inp.users[train], inp.items[train]
    counts = np.bincount(ti, minlength=inp.n_items)
    positive_q = counts[inp.items] / max(len(train), 1)
    forbidden = ng.Forbidden.of(inp.n_items, (inp.users, inp.items), inp.swing)
    ex_u, ex_i, ex_w = (np.asarray(a) for a in inp.exposures)
    order = np.lexsort((ex_i, ex_u))
    ex_u, ex_i, ex_w = ex_u[order], ex_i[order], ex_w[order]
    offsets = np.searchsorted(ex_u, np.arange(inp.n_users + 1))
    samplers = {
        "uniform": (spec.uniform_negatives, lambda: ng.uniform_sampler(inp.n_items)),
        "popularity": (spec.popularity_negatives, lambda: ng.popularity_sampler(counts, spec.popularity_power)),
        "exposed": (spec.exposed_negatives, lambda: ng.exposed_sampler(tu, offsets, ex_i, ex_w)),
        "hard": (
            spec.hard_negatives,
            lambda: ng.band_sampler(_need(inp.neighbours), ti, spec.hard_rank_min, spec.hard_rank_max),
        ),
    }
    negatives = {}
    for strategy in STRATEGIES:
        k, make = samplers[strategy]
        if k:
            negatives[strategy] = ng.draw(
                strategy, make(), inp.row_keys[train], tu, ti, k, spec.seed, forbidden, spec.max_attempts
            )
    return Pairs(test, positive_q, negatives, train)


def _need(neighbours: np.ndarray | None) -> np.ndarray:
    if neighbours is None:
        raise ValueError("hard negatives need the item neighbour ranking (or --hard-negatives 0)")
    return neighbours
