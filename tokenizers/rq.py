"""Balanced residual quantisation (RQ-KMeans) — the semantic-ID tokenizer's core. Arrays in,
arrays out; no Spark, no I/O.

Residual quantisation (QARM / OneRec): r¹ = e; at level l the code is c_l, a code of C_l near r^l,
and r^{l+1} = r^l − C_l[c_l]. What makes it *balanced*:

- **levels 1 … L−1: a capacity per code.** No code may hold more than ``⌈(1 + balance)·N/K_l⌉``
  items (OneRec's balanced k-means). Each level's codebook is fitted on the sample by faiss k-means
  from a k-means++ seeding (scikit-learn's, seeded), then refined by Lloyd iterations whose
  assignment step is that capacity-constrained assignment, so the centroids sit where the
  constrained assignment puts the points.
- **level L: a capacity per code within each prefix.** Items sharing the codes c_1 … c_{L−1} get
  at most ``⌈(1 + prefix_balance)·n_prefix/K_L⌉`` of them per last code among their
  ``candidates`` nearest codes: with the default 0, items of a prefix spread over distinct nearby
  last codes. That is where full-SID collisions are made or avoided, and the last level's residuals
  are the smallest, so spreading there costs the least reconstruction error. An item whose nearby
  codes are all taken keeps its nearest one (a collision, left to the collision handling): a far
  code would cost more reconstruction error than it saves collisions (1M × 64-d items in 2,000 Zipf
  blobs, 256³ codes: mean error 4.30 with a hard cap, 3.63 this way, 3.41 for faiss's RQ; collision
  rate 0.13, 0.31 and 0.90).

The constrained assignment (``_greedy``) is the regret-ordered greedy of capacitated assignment:
every item ranks its ``candidates`` nearest codes (faiss search, then re-scored in float64 so a
row's ranking does not depend on the batch it was searched in); items take their best code with
room in order of regret (the distance gap between their two best codes — those with the most to
lose choose first); items whose candidates are all full are placed in a second pass over every
code. It is O(N·candidates) after the search and exact in its constraints. It is not optimal:
on 200 points and 10 tight codes its cost is up to 1.5× the min-cost assignment's (test), but on
a 65k × 256-code level, canceling negative cycles in the code graph for 200 rounds (8 s) lowered
the cost by only 0.1%, so it is not worth the time there. Prices/Sinkhorn
duals were tried first: on tight, Zipf-sized clusters they do not converge (several centroids
sit on one blob with near-equal costs). Min-cost flow over the whole catalog does not scale, and faiss has no balanced
assignment (faiss #3123).

Prior occupancy: ``encode(..., prior=codes of published items)`` counts those items in every
capacity and never moves them, so daily runs add items to a generation without touching
published SIDs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import numba
import numpy as np

from recfactory.features.spec import Field, Seeded


class RQSpec(Seeded):
    codebook_sizes: tuple[Annotated[int, Field(ge=2)], ...] = Field(
        (256, 256, 256), min_length=1, description="Codes per level (e.g. 1024,4096,32768)."
    )
    balance: float | None = Field(
        1.0, ge=0, description="Levels 1..L−1: a code holds at most (1 + balance)·N/K items; none: plain k-means."
    )
    prefix_balance: float | None = Field(
        0.0,
        ge=0,
        description="Last level: at most (1 + prefix_balance)·n/K "
        "items per code among the n items of a prefix; none: plain nearest code.",
    )
    kmeans_iterations: int = Field(20, ge=1, description="faiss k-means iterations per level.")
    balanced_iterations: int = Field(10, ge=0, description="Capacity-constrained Lloyd iterations per level.")
    candidates: int = Field(32, ge=2, description="Nearest codes ranked per item by the balanced assignment.")

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)


@dataclass
class Codebooks:
    centroids: list[np.ndarray]  # per level K_l × d, float32

    @property
    def levels(self) -> int:
        return len(self.centroids)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.centroids)


@dataclass
class Encoding:
    codes: np.ndarray  # N × L int64
    residual_norms: np.ndarray  # N × L: ‖e − Σ_{l' ≤ l} C_l'[c_l']‖ after each level
    last_candidates: np.ndarray  # N × m: the last level's nearest codes, nearest first
    second_pass: list[int]  # per level: items whose candidates were all full (placed in a second
    # pass; on the last level, left on their nearest code)


def capacity(n: int, k: int, balance: float | None) -> int:
    """Most items a code may hold: ⌈(1 + balance)·n/k⌉ (no limit when balance is None)."""
    if balance is None:
        return max(n, 1)
    return max(1, math.ceil((1.0 + balance) * n / k))


def ranked_candidates(r: np.ndarray, c: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances float64, code ids) of each row's m nearest codes, nearest first, ties by
    code id. faiss finds them; the distances are recomputed exactly per row in float64, so the
    result does not depend on how rows were batched. When the candidates are the whole codebook,
    the exact scoring alone ranks them (no search needed)."""
    import faiss

    m = min(m, len(c))
    r32, c32 = np.ascontiguousarray(r, dtype=np.float32), np.ascontiguousarray(c, dtype=np.float32)
    if m == len(c):
        return _exact_ranked(r32, c32, np.tile(np.arange(len(c), dtype=np.int64), (len(r), 1)))
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c32)
    _, ids = index.search(r32, m)
    return _exact_ranked(r32, c32, ids.astype(np.int64))


@numba.njit(cache=True, parallel=True)
def _exact_ranked(r, c, ids):
    """Float64 squared distances to the candidate codes, each row sorted by (distance, code id)
    (insertion sort: faiss's order is already nearly right)."""
    d = np.empty(ids.shape, dtype=np.float64)
    out = ids.copy()
    for i in numba.prange(ids.shape[0]):
        for j in range(ids.shape[1]):
            s = 0.0
            k = ids[i, j]
            for t in range(r.shape[1]):
                diff = np.float64(r[i, t]) - np.float64(c[k, t])
                s += diff * diff
            # insert (s, k) into the sorted prefix
            p = j
            while p > 0 and (d[i, p - 1] > s or (d[i, p - 1] == s and out[i, p - 1] > k)):
                d[i, p] = d[i, p - 1]
                out[i, p] = out[i, p - 1]
                p -= 1
            d[i, p] = s
            out[i, p] = k
    return d, out


@numba.njit(cache=True)
def _greedy(rows, starts, cand, k, caps, prior_start, prior_codes):
    """Capacitated assignment, group by group. rows: item indices grouped (rows[starts[g]:starts[g+1]]
    is group g, in decision order); cand[i]: item i's codes, best first; caps[g]: the group's
    capacity per code; prior_codes[prior_start[g]:prior_start[g+1]]: codes already held in group g.
    Returns codes (−1 where every candidate was full)."""
    codes = np.full(cand.shape[0], -1, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for g in range(len(starts) - 1):
        for t in range(prior_start[g], prior_start[g + 1]):
            load[prior_codes[t]] += 1
        cap = caps[g]
        for t in range(starts[g], starts[g + 1]):
            i = rows[t]
            for j in range(cand.shape[1]):
                code = cand[i, j]
                if load[code] < cap:
                    codes[i] = code
                    load[code] += 1
                    break
        # reset only what this group touched
        for t in range(prior_start[g], prior_start[g + 1]):
            load[prior_codes[t]] = 0
        for t in range(starts[g], starts[g + 1]):
            if codes[rows[t]] >= 0:
                load[codes[rows[t]]] = 0
    return codes


def _greedy_by_group(groups, regret, cand, k, caps, ng, prior_groups, prior_codes):
    """``_greedy`` over rows ordered by group, then regret (descending), then position, with each
    group's prior codes counted. Returns codes (−1 where every candidate was full)."""
    rows = np.lexsort((np.arange(len(groups)), -regret, groups)).astype(np.int64)
    starts = np.searchsorted(groups[rows], np.arange(ng + 1)).astype(np.int64)
    po = np.argsort(prior_groups, kind="stable")
    pstart = np.searchsorted(prior_groups[po], np.arange(ng + 1)).astype(np.int64)
    return _greedy(rows, starts, cand, k, caps, pstart, prior_codes[po])


def constrained_assign(
    r: np.ndarray,
    c: np.ndarray,
    groups: np.ndarray,
    balance: float | None,
    candidates: int,
    prior_groups: np.ndarray | None = None,
    prior_codes: np.ndarray | None = None,
    search=ranked_candidates,
    overflow: str = "any",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Assign rows of r to codes of c with a capacity per (group, code) of ⌈(1+balance)·n_g/K⌉,
    n_g counting the group's rows and its prior items (which keep their codes).

    overflow: what happens to rows whose candidates are all full — "any": a second pass over every
    code (the capacity is hard); "nearest": they take their nearest code over capacity.
    Returns (codes, candidate distances, candidate ids (nearest first), rows whose candidates were
    all full).
    ``search(r, c, m)`` ranks candidates (``ranked_candidates``, or a distributed equivalent: its
    rows must not depend on how they are batched).
    """
    n, k = len(r), len(c)
    prior_groups = np.zeros(0, dtype=np.int64) if prior_groups is None else np.asarray(prior_groups, np.int64)
    prior_codes = np.zeros(0, dtype=np.int64) if prior_codes is None else np.asarray(prior_codes, np.int64)
    d, cand = search(r, c, candidates)
    if balance is None:
        return cand[:, 0].copy(), d, cand, 0
    ng = int(max(groups.max(initial=-1), prior_groups.max(initial=-1))) + 1
    sizes = np.bincount(groups, minlength=ng) + np.bincount(prior_groups, minlength=ng)
    caps = np.array([capacity(int(s), k, balance) for s in sizes], dtype=np.int64)
    regret = d[:, 1] - d[:, 0] if d.shape[1] > 1 else np.zeros(n)
    codes = _greedy_by_group(groups, regret, cand, k, caps, ng, prior_groups, prior_codes)
    rest = np.flatnonzero(codes < 0)
    if len(rest) and overflow == "nearest":  # over capacity on the nearest code rather than a far one
        codes[rest] = cand[rest, 0]
    elif len(rest):  # all candidates full: every code, with everything placed so far counted
        placed = codes >= 0
        pg = np.concatenate([prior_groups, groups[placed]])
        pc = np.concatenate([prior_codes, codes[placed]])
        _, cand_all = search(r[rest], c, k)
        codes2 = _greedy_by_group(groups[rest], regret[rest], cand_all, k, caps, ng, pg, pc)
        if (codes2 < 0).any():  # cannot happen: cap·K ≥ n_g for every group
            raise AssertionError("constrained assignment left items without a code")
        codes[rest] = codes2
    return codes, d, cand, len(rest)


def _kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """faiss k-means from a k-means++ seeding (scikit-learn, on at most 64·k points)."""
    import faiss
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    seed_rows = x if len(x) <= 64 * k else x[np.sort(rng.choice(len(x), 64 * k, replace=False))]
    init, _ = kmeans_plusplus(seed_rows, k, random_state=seed)
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, max_points_per_centroid=max(256, -(-len(x) // k)))
    km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _means(x: np.ndarray, codes: np.ndarray, old: np.ndarray) -> np.ndarray:
    import scipy.sparse as sp

    k = len(old)
    cnt = np.bincount(codes, minlength=k)
    member = sp.csr_matrix((np.ones(len(x)), (codes, np.arange(len(x)))), shape=(k, len(x)))
    sums = member @ x.astype(np.float64)
    new = old.copy()
    filled = cnt > 0
    new[filled] = (sums[filled] / cnt[filled, None]).astype(np.float32)
    return new


def fit_level(x: np.ndarray, k: int, balance: float | None, spec: RQSpec, seed: int) -> np.ndarray:
    """One level's codebook on x: k-means, then capacity-constrained Lloyd iterations."""
    if len(x) < k:
        raise ValueError(f"{len(x)} sample points cannot fit {k} codes: lower the codebook size or raise the sample")
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = _kmeans(x, k, spec.kmeans_iterations, seed)
    if balance is None:
        return c
    zero = np.zeros(len(x), dtype=np.int64)
    prev = None
    for _ in range(spec.balanced_iterations):
        codes, *_ = constrained_assign(x, c, zero, balance, spec.candidates)
        if prev is not None and np.array_equal(codes, prev):
            break  # converged: the means would not move
        c = _means(x, codes, c)
        prev = codes
    return c


def fit(sample: np.ndarray, spec: RQSpec) -> Codebooks:
    """Codebooks level by level on the sample's residuals (the last level without its per-prefix
    constraint: it is plain k-means of the residuals, assigned per prefix at encode time)."""
    r = np.ascontiguousarray(sample, dtype=np.float32).copy()
    if not np.isfinite(r).all():
        raise ValueError("the fit sample has non-finite values")
    cents = []
    zero = np.zeros(len(r), dtype=np.int64)
    for level, k in enumerate(spec.codebook_sizes):
        last = level == spec.levels - 1
        balance = None if last else spec.balance
        c = fit_level(r, k, balance, spec, spec.seed + 7919 * level)
        cents.append(c)
        if not last:
            codes, *_ = constrained_assign(r, c, zero, balance, spec.candidates)
            r -= c[codes]
    return Codebooks(cents)


def _group_ids(*prefixes: np.ndarray) -> list[np.ndarray]:
    """Dense group ids of the rows of several code-prefix arrays, over their union."""
    sizes = [len(p) for p in prefixes]
    allp = np.concatenate(prefixes)
    if allp.shape[1] == 0:
        ids = np.zeros(len(allp), dtype=np.int64)
    else:
        _, ids = np.unique(allp, axis=0, return_inverse=True)
        ids = ids.reshape(-1).astype(np.int64)
    return np.split(ids, np.cumsum(sizes)[:-1])


def encode(
    x: np.ndarray, books: Codebooks, spec: RQSpec, prior: np.ndarray | None = None, search=ranked_candidates
) -> Encoding:
    """Codes of the rows of x. ``prior``: codes (M × L) of items already published with these
    codebooks; they count in every capacity and keep their codes. ``search``: see
    ``constrained_assign`` — the nearest-code search is the O(N·K·d) part and can run distributed;
    the capacity bookkeeping after it is O(N·candidates) and runs here."""
    if x.shape[1] != books.centroids[0].shape[1]:
        raise ValueError(f"embeddings are {x.shape[1]}-d but the codebooks are {books.centroids[0].shape[1]}-d")
    if not np.isfinite(x).all():
        raise ValueError("embeddings have non-finite values")
    n, L = len(x), books.levels
    prior = np.zeros((0, L), dtype=np.int64) if prior is None else np.asarray(prior, dtype=np.int64)
    r = np.ascontiguousarray(x, dtype=np.float32).copy()
    codes = np.empty((n, L), dtype=np.int64)
    norms = np.empty((n, L), dtype=np.float32)
    second, last_cand = [], np.zeros((n, 0), dtype=np.int64)
    for level, c in enumerate(books.centroids):
        last = level == L - 1
        if last:
            groups, pgroups = _group_ids(codes[:, :level], prior[:, :level])
            balance = spec.prefix_balance
        else:
            groups, pgroups = np.zeros(n, np.int64), np.zeros(len(prior), np.int64)
            balance = spec.balance
        # the last level: an item whose nearest `candidates` codes are all taken in its prefix keeps its
        # nearest code (a collision for the collision handling) rather than a far one
        a, _, cand, n2 = constrained_assign(
            r,
            c,
            groups,
            balance,
            spec.candidates,
            pgroups,
            prior[:, level],
            search,
            overflow="nearest" if last else "any",
        )
        codes[:, level] = a
        second.append(n2)
        if last:
            last_cand = cand
        r -= c[a]
        norms[:, level] = np.linalg.norm(r, axis=1)
    return Encoding(codes, norms, last_cand, second)


def reconstruct(codes: np.ndarray, books: Codebooks, levels: int | None = None) -> np.ndarray:
    """Σ_l C_l[c_l] over the first `levels` levels (all by default)."""
    levels = books.levels if levels is None else levels
    out = np.zeros((len(codes), books.centroids[0].shape[1]), dtype=np.float32)
    for level in range(levels):
        out += books.centroids[level][codes[:, level]]
    return out
