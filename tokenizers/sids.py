"""From RQ codes to semantic IDs: hourglass mitigation, collision handling, metrics and token
features. Arrays in, arrays out; no Spark, no I/O.

Token matrices are N × L int64 with −1 where a token is omitted (a dropped level, or a removed
top token of a level: JD's "Breaking the Hourglass Phenomenon of Residual Quantization"), so SIDs
may have variable length. A full SID is the row of tokens plus, for the suffix strategy, the
suffix; collision handling makes it unique:

- ``suffix`` (TIGER / GRID): items sharing a token row get an extra last token 0..n−1, published
  items keeping theirs, new ones numbered after them in item order;
- ``reassign`` (FORGE / TorchEasyRec): at most σ items per token row; an overflowing new item moves
  its last token to the nearest free code among its last-level candidates, else to a seeded random
  free code of the same prefix (or, if the prefix itself is full, a random free row); with σ > 1
  the suffix then numbers the items sharing a row.

Published items never move (``fixed``), so adding items leaves existing SIDs unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recfactory.features.draws import mix64

LEVEL_PREFIX = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class Resolved:
    tokens: np.ndarray  # N × L, −1 = omitted
    suffix: np.ndarray  # N
    moved: int  # items whose last token changed (reassign)
    fell_back: int  # of those, placed on a random free code
    collisions_before: float  # collision rate of the input token rows
    collisions_after: float  # of (tokens, suffix)


def row_ids(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense id of each row's token tuple, rows per id)."""
    if len(tokens) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, inv, counts = np.unique(tokens, axis=0, return_inverse=True, return_counts=True)
    return inv.reshape(-1).astype(np.int64), counts


def collision_rate(tokens: np.ndarray, suffix: np.ndarray | None = None) -> float:
    """1 − distinct SIDs / items: the share of items that would need disambiguating."""
    if len(tokens) == 0:
        return 0.0
    full = tokens if suffix is None else np.column_stack([tokens, suffix])
    _, counts = row_ids(full)
    return 1.0 - len(counts) / len(tokens)


def omit_tokens(codes: np.ndarray, removed: list[np.ndarray]) -> np.ndarray:
    """Tokens from codes with the removed (level, code) pairs set to −1. removed[l] is a boolean
    mask over level l's codes."""
    tokens = codes.copy()
    for level, mask in enumerate(removed):
        if mask.any():
            tokens[mask[codes[:, level]], level] = -1
    return tokens


def hourglass_removal(
    codes: np.ndarray, sizes: tuple[int, ...], drop_levels: list[int], top_tokens: int, top_level: int
) -> list[np.ndarray]:
    """Removed-token masks per level: every code of the dropped levels, and the `top_tokens` most
    frequent codes of `top_level` (both 0-based; ties by code). The last level cannot be dropped
    (it carries the uniqueness)."""
    L = len(sizes)
    removed = [np.zeros(k, dtype=bool) for k in sizes]
    for lv in drop_levels:
        if not 0 <= lv < L - 1:
            raise ValueError(
                f"can drop levels 1..{L - 1} (1-based) of {L}, not level {lv + 1}: the last level "
                "carries the SID's uniqueness"
            )
        removed[lv][:] = True
    if top_tokens:
        if not 0 <= top_level < L - 1:
            raise ValueError(f"top-token removal applies to levels 1..{L - 1} (1-based), not {top_level + 1}")
        counts = np.bincount(codes[:, top_level], minlength=sizes[top_level])
        order = np.lexsort((np.arange(len(counts)), -counts))
        removed[top_level][order[:top_tokens]] = True
    return removed


def resolve(
    tokens: np.ndarray,
    fixed: np.ndarray,
    fixed_suffix: np.ndarray,
    strategy: str,
    *,
    order: np.ndarray,
    last_candidates: np.ndarray | None = None,
    sizes: tuple[int, ...] = (),
    max_per_sid: int = 1,
    seed: int = 0,
) -> Resolved:
    """Unique SIDs for every row.

    tokens: N × L; fixed: rows already published (their tokens and ``fixed_suffix`` are kept);
    order: a rank per row deciding who keeps a contested SID and who is numbered first (the job
    passes the rank of the item id, new items after published ones); last_candidates: each row's
    last-level codes nearest first, and sizes: the codebook sizes (reassign).
    """
    before = collision_rate(tokens)
    tokens = tokens.copy()
    suffix = np.where(fixed, fixed_suffix, -1).astype(np.int64)
    moved = fell = 0
    if strategy == "reassign":
        if last_candidates is None or len(sizes) != tokens.shape[1]:
            raise ValueError("reassign needs each item's last-level candidates and the codebook sizes")
        if max_per_sid < 1:
            raise ValueError("max_per_sid must be >= 1")
        # every pattern of omitted levels is its own SID space: Π of its kept levels' sizes × σ rows
        patterns, counts = np.unique(tokens < 0, axis=0, return_counts=True)
        for pat, c in zip(patterns, counts, strict=True):
            room = max_per_sid * math.prod(k for k, omitted in zip(sizes, pat, strict=True) if not omitted)
            if c > room:
                kept = " × ".join(str(k) for k, omitted in zip(sizes, pat, strict=True) if not omitted)
                raise ValueError(
                    f"{c} items cannot get unique SIDs from {kept} codes with at most {max_per_sid} "
                    f"per SID ({room}): add a level, use larger codebooks, remove fewer tokens or use "
                    "'suffix'"
                )
        moved, fell = _reassign(tokens, fixed, order, last_candidates, sizes, max_per_sid, seed)
    elif strategy != "suffix":
        raise ValueError(f"unknown collision strategy {strategy!r} (suffix or reassign)")
    _number(tokens, fixed, suffix, order)
    after = collision_rate(tokens, suffix)
    if after > 0:  # cannot happen: numbering makes every (tokens, suffix) distinct
        raise AssertionError(f"collision handling left a collision rate of {after}")
    return Resolved(tokens, suffix, moved, fell, before, after)


def _number(tokens: np.ndarray, fixed: np.ndarray, suffix: np.ndarray, order: np.ndarray) -> None:
    """Suffixes: fixed rows keep theirs; the others take the smallest unused numbers of their
    token row, in `order`."""
    ids, _ = row_ids(tokens)
    used: dict[int, set] = {}
    for i in np.flatnonzero(fixed):
        used.setdefault(int(ids[i]), set()).add(int(suffix[i]))
    nxt: dict[int, int] = {}
    for i in np.flatnonzero(~fixed)[np.argsort(order[~fixed], kind="stable")]:
        g = int(ids[i])
        s = nxt.get(g, 0)
        taken = used.get(g, ())
        while s in taken:
            s += 1
        suffix[i] = s
        nxt[g] = s + 1


def _reassign(
    tokens: np.ndarray,
    fixed: np.ndarray,
    order: np.ndarray,
    cand: np.ndarray,
    sizes: tuple[int, ...],
    sigma: int,
    seed: int,
) -> tuple[int, int]:
    """Move overflowing new rows' last tokens (in place). Returns (moved, fell back)."""
    load: dict[tuple, int] = {}
    for i in np.flatnonzero(fixed):
        key = tuple(tokens[i].tolist())
        load[key] = load.get(key, 0) + 1
    rng = np.random.default_rng(seed)
    new = np.flatnonzero(~fixed)
    overflow = []
    for i in new[np.argsort(order[new], kind="stable")]:  # first come (in order) keep their SID
        key = tuple(tokens[i].tolist())
        if load.get(key, 0) < sigma:
            load[key] = load.get(key, 0) + 1
        else:
            overflow.append(i)
    fell = 0
    k_last = sizes[-1]
    for i in overflow:
        prefix = tuple(tokens[i, :-1].tolist())
        target = next((prefix + (int(c),) for c in cand[i] if load.get(prefix + (int(c),), 0) < sigma), None)
        if target is None:
            fell += 1
            free = [c for c in range(k_last) if load.get(prefix + (c,), 0) < sigma]
            if free:
                target = prefix + (free[int(rng.integers(len(free)))],)
            else:  # the whole prefix is full: a random free row with the same omitted levels (one exists:
                # resolve checked each pattern's room)
                while target is None or load.get(target, 0) >= sigma:
                    target = tuple(
                        int(rng.integers(sizes[lv])) if tokens[i, lv] >= 0 else -1 for lv in range(len(sizes))
                    )
        load[target] = load.get(target, 0) + 1
        tokens[i] = target
    return len(overflow), fell


# ---- strings and features -------------------------------------------------------------------


def sid_strings(tokens: np.ndarray, suffix: np.ndarray, with_suffix: bool) -> list[str]:
    """``<a_12><b_7><c_201>`` (+ ``<s_0>``): one token per kept level, lettered by level, so
    variable-length SIDs stay unambiguous."""
    out = []
    for row, s in zip(tokens.tolist(), suffix.tolist(), strict=True):
        sid = "".join(f"<{LEVEL_PREFIX[lv]}_{c}>" for lv, c in enumerate(row) if c >= 0)
        out.append(sid + (f"<s_{s}>" if with_suffix else ""))
    return out


def token_features(tokens: np.ndarray, vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hashed SID token features for downstream models: (prefix n-gram ids N × L, bigram ids
    N × (L − 1)), each in [0, vocab_size), −1 where a token of the n-gram is omitted.

    Prefix n-grams (c1), (c1,c2), … (Google's "Better Generalization with Semantic IDs": the
    prefix-ngram parameterization) and level-tagged bigrams (c_l, c_{l+1}) (Meta's semantic-ID
    n-gram embeddings), hashed with the level and the n-gram kind so no two collide by
    construction of the key."""
    n, L = tokens.shape
    prefix = np.full((n, L), -1, dtype=np.int64)
    h = np.full(n, np.uint64(seed), dtype=np.uint64)
    ok = np.ones(n, dtype=bool)
    for lv in range(L):
        ok &= tokens[:, lv] >= 0
        key = (
            (np.uint64(1) << np.uint64(62)) | (np.uint64(lv) << np.uint64(40)) | tokens[:, lv].clip(0).astype(np.uint64)
        )
        h = mix64(h ^ key)
        prefix[ok, lv] = (h[ok] % np.uint64(vocab_size)).astype(np.int64)
    bigram = np.full((n, max(L - 1, 0)), -1, dtype=np.int64)
    for lv in range(L - 1):
        a, b = tokens[:, lv], tokens[:, lv + 1]
        both = (a >= 0) & (b >= 0)
        key = (
            (np.uint64(2) << np.uint64(62))
            | (np.uint64(lv) << np.uint64(48))
            | (a.clip(0).astype(np.uint64) << np.uint64(24))
            | b.clip(0).astype(np.uint64)
        )
        hb = mix64(key ^ np.uint64(seed))
        bigram[both, lv] = (hb[both] % np.uint64(vocab_size)).astype(np.int64)
    return prefix, bigram


# ---- metrics ----------------------------------------------------------------------------------


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal)."""
    s = np.sort(np.asarray(counts, dtype=np.float64))
    m = len(s)
    if m == 0 or s.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, m + 1) - m - 1) @ s / (m * s.sum()))


def token_stats(codes: np.ndarray, k: int) -> dict[str, float]:
    """Distribution of one level's tokens over its k codes (omitted tokens, −1, excluded)."""
    c = codes[codes >= 0]
    counts = np.bincount(c, minlength=k).astype(np.float64)
    total = counts.sum()
    p = counts[counts > 0] / total if total else np.zeros(0)
    entropy = float(-(p * np.log2(p)).sum()) if total else 0.0
    return {
        "tokens": float(total),
        "utilization": float((counts > 0).mean()),
        "entropy": entropy,
        "perplexity": float(2.0**entropy),
        "max_entropy": math.log2(k),
        "gini": gini(counts),
        "top_token_share": float(counts.max() / total) if total else 0.0,
        "max_code_size": float(counts.max()) if total else 0.0,
        "mean_code_size": float(total / k),
    }


def prefix_recall(codes: np.ndarray, neighbors: list[np.ndarray], n: int) -> tuple[float, float, int]:
    """Items sharing their first n codes vs their behaviour neighbours: (mean recall of the
    neighbours inside the item's prefix group, the same for random groups of equal sizes, items
    with neighbours)."""
    ids, counts = row_ids(codes[:, :n])
    rec, base, m = 0.0, 0.0, 0
    N = len(codes)
    for i, nb in enumerate(neighbors):
        if len(nb) == 0:
            continue
        rec += float((ids[nb] == ids[i]).mean())
        base += (counts[ids[i]] - 1) / max(N - 1, 1)
        m += 1
    return (rec / m, base / m, m) if m else (0.0, 0.0, 0)
