"""A semantic-ID run as a pure core (NumPy and pandas: no Spark, no Ray, no tables): the checks of
the embedding rows, the plan (which items keep a published SID, which are new), the assignment
(encode → hourglass removal → collision handling → SID strings) and the metrics and gates.
``jobs/build_sids.py`` reads the tables, runs the fit on Ray, and writes what this returns.

A generation is one set of codebooks (``tokenizers.rq``) with the options it was fitted with (its
spec); its id is ``<fit date>.<hash of spec and centroids>`` (``generation_id``), unique across
dates and runs, so a (generation, level, code) names exactly one centroid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd

from recfactory.features.draws import seeded_sample
from recfactory.features.spec import Field, Spec
from recfactory.tokenizers import sids as S
from recfactory.tokenizers.rq import Codebooks, Encoding, RQSpec, encode

# the token statistics of `sids.token_stats` a level's metrics row carries as they are
TOKEN_STATS = (
    "utilization",
    "entropy",
    "perplexity",
    "max_entropy",
    "gini",
    "top_token_share",
    "max_code_size",
    "mean_code_size",
)
LEVEL_METRICS = (
    "codebook_size",
    "items",
    *TOKEN_STATS,
    "removed_tokens",
    "recon_error",
    "relative_recon_error",
    "prefix_recall",
    "prefix_recall_random",
)
TOTAL_METRICS = (
    "collision_rate_before",
    "collision_rate_after",
    "max_items_per_sid_before",
    "sid_gini_before",
    "sid_gini_after",
    "moved",
    "fell_back_fraction",
    "candidates_full_items",
    "new_items",
    "kept_items",
    "removed_items",
    "new_recon_error",
    "kept_recon_error",
    "fit_seconds",
    "encode_seconds",
)


class SidSpec(RQSpec):
    """A generation's codebooks (``RQSpec``) and the rules that turn codes into SIDs: hourglass
    removal and collision handling. Fixed per generation (its identity names them)."""

    drop_levels: list[int] = Field([], description="Hourglass: levels (1-based, not the last) left out of the SIDs.")
    remove_top_tokens: int = Field(
        0,
        ge=0,
        description="Hourglass: the most frequent tokens of --top-token-level "
        "removed from the SIDs of their items (variable-length SIDs).",
    )
    top_token_level: int = Field(2, ge=1, description="The level whose top tokens --remove-top-tokens removes.")
    collision: Literal["suffix", "reassign"] = Field(
        "suffix",
        description="suffix: an extra last token "
        "0..n−1; reassign: at most --max-per-sid items per SID, "
        "overflow moves to a free last-level code.",
    )
    max_per_sid: int = Field(1, ge=1, description="reassign: items per SID before moving (> 1 adds a suffix).")
    reassign_candidates: int = Field(
        16, ge=1, description="reassign: nearest last-level codes tried before a seeded random free one."
    )

    def rules(self) -> dict:
        """The SID rules as a generation's identity records them."""
        return {
            "drop_levels": sorted(self.drop_levels),
            "remove_top_tokens": self.remove_top_tokens,
            "top_token_level": self.top_token_level,
            "collision": self.collision,
            "max_per_sid": self.max_per_sid,
            "reassign_candidates": self.reassign_candidates,
        }


class SidGates(Spec):
    """The quality gates a run passes before anything is published."""

    gate_max_collision_rate: float = Field(0.5, ge=0, le=1, description="Largest collision rate before handling.")
    gate_min_utilization: float = Field(
        0.1, ge=0, le=1, description="Smallest share of used codes on every kept level."
    )
    gate_max_relative_recon_error: float = Field(0.9, gt=0, description="Largest mean ‖e − ê‖² / ‖e‖².")
    gate_min_recall_lift: float = Field(
        1.0,
        ge=0,
        description="Level-1 prefix recall must be at least this times "
        "its random baseline (when item_similarity has the date).",
    )


def generation_id(as_of, gspec: dict, centroids: list[np.ndarray]) -> str:
    """A generation's identity: its fit date and a hash of what it fixes (the spec and every
    centroid). Unique across dates and runs; a rerun that fits the same codebooks gets the same id
    (and replaces the same rows), one that fits different codebooks gets another, so a
    (generation, level, code) always names exactly one centroid."""
    h = hashlib.sha256(json.dumps(gspec, sort_keys=True).encode() + as_of.isoformat().encode())
    for c in centroids:
        h.update(np.ascontiguousarray(c, dtype=np.float32).tobytes())
    return f"{as_of.isoformat()}.{h.hexdigest()[:12]}"


def generation_seed(generation: str) -> int:
    """The token-feature hash seed of a generation (stable, from its id)."""
    return int(hashlib.sha256(generation.encode()).hexdigest()[:15], 16)


def check_vectors(
    item_ids: Sequence, vectors: Sequence, normalize: bool
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(sorted item ids, vectors n × d float32, quarantine rows item_id/reason) of embedding rows: a
    null id, a duplicated id, a null, short, non-finite or zero vector is quarantined with its
    reason; the rest (L2-normalized with `normalize`) are encoded. Rows reconcile exactly."""
    pdf = pd.DataFrame({"item_id": pd.Series(item_ids, dtype=object), "v": pd.Series(vectors, dtype=object)})
    reasons = pd.Series(None, index=pdf.index, dtype=object)
    reasons[pdf["item_id"].isna()] = "null item_id"
    dup = pdf["item_id"].duplicated(keep=False) & pdf["item_id"].notna()
    reasons[dup & reasons.isna()] = "item_id appears more than once (narrow it with --embedding-filter)"
    lens = pdf["v"].map(lambda v: -1 if v is None else len(v))
    reasons[(lens < 0) & reasons.isna()] = "null vector"
    dim = int(lens[reasons.isna()].mode().iloc[0]) if reasons.isna().any() else 0
    reasons[(lens != dim) & reasons.isna()] = f"vector length differs from the table's {dim}"
    ok = reasons.isna()
    X = np.zeros((int(ok.sum()), dim), dtype=np.float32)
    if ok.any():
        X = np.stack(pdf.loc[ok, "v"].to_numpy()).astype(np.float32)
    finite = np.isfinite(X).all(1)
    norms = np.linalg.norm(X, axis=1)
    idx_ok = np.flatnonzero(ok.to_numpy())
    reasons.iloc[idx_ok[~finite]] = "non-finite vector values"
    reasons.iloc[idx_ok[finite & (norms == 0)]] = "zero vector"
    keep = finite & (norms > 0)
    X, ids = X[keep], pdf.loc[ok, "item_id"].to_numpy(dtype=object)[keep]
    q = pd.DataFrame({"item_id": pdf["item_id"][reasons.notna()], "reason": reasons[reasons.notna()]})
    if len(ids) + len(q) != len(pdf):
        raise AssertionError(f"embedding rows do not reconcile: {len(ids)} + {len(q)} != {len(pdf)}")
    order = np.argsort(ids, kind="stable")
    ids, X = ids[order], X[order]
    if normalize:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    return ids, np.ascontiguousarray(X), q


def sample_rows(ids: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The `size` items with the smallest seeded hash of their id (a reservoir sample that does not
    depend on row order or partitioning), in id order: what a new generation is fitted on."""
    if len(ids) <= size:
        return np.arange(len(ids))
    return np.sort(seeded_sample(ids, seed, "sid", size))


class Prior(NamedTuple):
    """The published state a run continues: its rows, its generation, and that generation's
    centroids, spec and removed-token masks per level (read back from sid_codebooks)."""

    state: pd.DataFrame
    generation: str
    centroids: list[np.ndarray]
    spec: dict
    removed: list[np.ndarray]


class MissingPriorDateError(ValueError):
    """The previous date's state is missing while earlier dates have some: run that date first."""


def prior_date(as_of: dt.date, published: pd.DataFrame, new_generation: bool) -> tuple[dt.date | None, str | None]:
    """The date whose published state a run for ``as_of`` continues, and a note saying why.

    ``published``: the (ds, generation) pairs of ``semantic_ids``. A date continues the previous
    date only: never an older one across a gap (that raises, naming the missing date, unless
    ``new_generation`` starts a new chain), never a later one — so rerunning a date after later
    dates ran gives its first run's rows. None: no earlier date has state (a chain of its own), or
    the run reruns a date that started its chain (its generation was fitted on it with no state
    before it; an earlier date backfilled since has a chain of its own)."""
    prev = as_of - dt.timedelta(days=1)
    days = set(published["ds"])
    if prev in days:
        return prev, f"semantic_ids ds={prev}"
    older = [d for d in days if d < prev]
    if not older:
        return None, None
    if new_generation:
        return None, f"none: no state for {prev} (latest {max(older)}); a new chain"
    own = published.loc[published["ds"] == as_of, "generation"]
    if len(own) and all(str(g).startswith(f"{as_of.isoformat()}.") for g in own):
        return None, f"none: {as_of} started its chain (rerun)"
    raise MissingPriorDateError(
        f"build_sids for {as_of} continues the semantic IDs of {prev}, which has none, while "
        f"{max(older)} has: run build_sids for {prev} first (dates after {max(older)} in order), or pass "
        "--new-generation to start a new chain"
    )


@dataclass
class Plan:
    """Who keeps a published SID (`kept`: the previous state's rows, in item order) and who is new
    (`new_rows`: indices into the run's sorted ids); `prior_codes` are the kept items' RQ codes."""

    kept: pd.DataFrame
    new_rows: np.ndarray
    prior_codes: np.ndarray


def plan(ids: np.ndarray, prior: pd.DataFrame | None, fresh: bool, levels: int) -> Plan:
    if fresh or prior is None:
        kept = pd.DataFrame(columns=["item_id", "rq_codes", "codes", "suffix", "assigned_ds"])
    else:
        kept = prior
    kept_ids = set(kept["item_id"])
    new_rows = np.array([i for i, item in enumerate(ids) if item not in kept_ids], dtype=np.int64)
    prior_codes = (
        np.stack(kept["rq_codes"].to_numpy()).astype(np.int64) if len(kept) else np.zeros((0, levels), dtype=np.int64)
    )
    return Plan(kept, new_rows, prior_codes)


@dataclass
class Assignment:
    """The whole state of the generation after a run, kept items first, then the new ones (in id
    order): `tokens` before collision handling, `final` after it, `rq_codes` the codes the items
    occupy, `sid` their strings, `in_catalog` whether the run's vectors still have them."""

    item_of: np.ndarray
    tokens: np.ndarray
    final: np.ndarray
    suffix: np.ndarray
    rq_codes: np.ndarray
    sid: np.ndarray
    fixed: np.ndarray
    in_catalog: np.ndarray
    removed: list[np.ndarray]
    encoding: Encoding
    resolved: S.Resolved


def assign(
    ids: np.ndarray,
    X: np.ndarray,
    p: Plan,
    books: Codebooks,
    spec: RQSpec,
    gspec: dict,
    removed: list[np.ndarray] | None,
    seed: int,
    search: Callable | None = None,
) -> Assignment:
    """Encodes the new items (every capacity counting the kept ones), fixes a new generation's
    hourglass removal (`removed` None) from its first encoding, and resolves collisions without ever
    moving a kept item. SIDs are unique by construction; asserted."""
    enc = encode(X[p.new_rows], books, spec, prior=p.prior_codes, **({"search": search} if search else {}))
    if removed is None:
        removed = S.hourglass_removal(
            enc.codes,
            spec.codebook_sizes,
            [lv - 1 for lv in gspec["drop_levels"]],
            gspec["remove_top_tokens"],
            gspec["top_token_level"] - 1,
        )
    kept, n_new = p.kept, len(p.new_rows)
    all_codes = np.vstack([p.prior_codes, enc.codes])
    tokens = S.omit_tokens(all_codes, removed)
    fixed = np.zeros(len(all_codes), dtype=bool)
    fixed[: len(kept)] = True
    fixed_suffix = np.concatenate([kept["suffix"].to_numpy(dtype=np.int64), np.zeros(n_new, np.int64)])
    item_of = np.concatenate([kept["item_id"].to_numpy(dtype=object), ids[p.new_rows]])
    order = np.concatenate([np.arange(len(kept)), len(kept) + np.arange(n_new)])  # ids are sorted
    cand = np.vstack([np.zeros((len(kept), enc.last_candidates.shape[1]), np.int64), enc.last_candidates])
    res = S.resolve(
        tokens,
        fixed,
        fixed_suffix,
        gspec["collision"],
        order=order,
        last_candidates=cand[:, : gspec["reassign_candidates"]],
        sizes=spec.codebook_sizes,
        max_per_sid=gspec["max_per_sid"],
        seed=seed,
    )
    rq_codes = np.where(res.tokens >= 0, res.tokens, all_codes)  # reassign moved some tokens
    with_suffix = gspec["collision"] == "suffix" or gspec["max_per_sid"] > 1
    sid = np.array(S.sid_strings(res.tokens, res.suffix, with_suffix), dtype=object)
    if len(set(sid)) != len(sid):
        raise AssertionError("semantic IDs are not unique after collision handling")
    in_catalog = pd.Series(item_of).isin(set(ids)).to_numpy()
    return Assignment(item_of, tokens, res.tokens, res.suffix, rq_codes, sid, fixed, in_catalog, removed, enc, res)


def metrics(
    X: np.ndarray,
    a: Assignment,
    books: Codebooks,
    neighbors: list[np.ndarray] | None,
    fit_seconds: float,
    encode_seconds: float,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One row per level plus a totals row (level 0) over the in-catalog items (X: their current
    vectors, in the assignment's order), and the same as flat run metrics (`<name>.level<l>`)."""
    inc = a.in_catalog
    codes, before, after, suffix = a.rq_codes[inc], a.tokens[inc], a.final[inc], a.suffix[inc]
    is_new, res, removed = ~a.fixed[inc], a.resolved, a.removed
    sq = np.maximum((X * X).sum(1), 1e-12)
    cum = np.zeros_like(X)
    rows = []
    for lv in range(books.levels):
        cum += books.centroids[lv][codes[:, lv]]
        err = X - cum
        st = S.token_stats(after[:, lv], books.sizes[lv])
        row = {
            "level": lv + 1,
            "codebook_size": float(books.sizes[lv]),
            "items": st["tokens"],
            **{k: st[k] for k in TOKEN_STATS},
            "removed_tokens": float(removed[lv].sum()),
            "recon_error": float(np.linalg.norm(err, axis=1).mean()),
            "relative_recon_error": float(((err * err).sum(1) / sq).mean()),
        }
        if neighbors is not None:
            row["prefix_recall"], row["prefix_recall_random"], _ = S.prefix_recall(codes, neighbors, lv + 1)
        rows.append(row)
    err = np.linalg.norm(X - cum, axis=1)
    _, n_before = S.row_ids(before)
    _, n_after = S.row_ids(after)
    total = {
        "level": 0,
        "items": float(len(codes)),
        "collision_rate_before": S.collision_rate(before),
        "collision_rate_after": S.collision_rate(after, suffix),
        "max_items_per_sid_before": float(n_before.max(initial=0)),
        "sid_gini_before": S.gini(n_before),
        "sid_gini_after": S.gini(n_after),
        "moved": float(res.moved),
        "fell_back_fraction": res.fell_back / res.moved if res.moved else 0.0,
        "candidates_full_items": float(sum(a.encoding.second_pass)),
        "new_items": float(is_new.sum()),
        "kept_items": float((~is_new).sum()),
        "removed_items": float((~inc).sum()),
        "recon_error": rows[-1]["recon_error"],
        "relative_recon_error": rows[-1]["relative_recon_error"],
        "new_recon_error": float(err[is_new].mean()) if is_new.any() else np.nan,
        "kept_recon_error": float(err[~is_new].mean()) if (~is_new).any() else np.nan,
        "fit_seconds": fit_seconds,
        "encode_seconds": encode_seconds,
    }
    out = pd.DataFrame(rows + [total])
    for c in LEVEL_METRICS + TOTAL_METRICS:
        if c not in out:
            out[c] = np.nan
    flat = {}
    for r in rows + [total]:
        for k, v in r.items():
            if k != "level" and v is not None and np.isfinite(v):
                flat[f"{k}.level{r['level']}" if r["level"] else k] = round(float(v), 6)
    out = out[["level", *LEVEL_METRICS, *TOTAL_METRICS]]
    return out.astype({c: float for c in LEVEL_METRICS + TOTAL_METRICS}).astype({"level": int}), flat


def gate_failures(m: pd.DataFrame, removed: list[np.ndarray], gates: SidGates) -> list[str]:
    """What fails the run's quality gates (`metrics` rows), each named with its value and bound."""
    max_collision_rate, min_utilization = gates.gate_max_collision_rate, gates.gate_min_utilization
    max_relative_recon_error, min_recall_lift = gates.gate_max_relative_recon_error, gates.gate_min_recall_lift
    total = m[m["level"] == 0].iloc[0]
    levels = m[m["level"] > 0]
    failed = []
    if total["collision_rate_before"] > max_collision_rate:
        failed.append(f"collision rate before handling {total['collision_rate_before']:.4f} > {max_collision_rate}")
    for _, r in levels.iterrows():
        if removed[int(r["level"]) - 1].all():
            continue  # a dropped level has no tokens
        if r["utilization"] < min_utilization:
            failed.append(f"level {int(r['level'])} uses {r['utilization']:.3f} of its codes < {min_utilization}")
    if total["relative_recon_error"] > max_relative_recon_error:
        failed.append(f"relative reconstruction error {total['relative_recon_error']:.4f} > {max_relative_recon_error}")
    first = levels.iloc[0]
    if np.isfinite(first["prefix_recall"]) and first["prefix_recall"] < min_recall_lift * first["prefix_recall_random"]:
        failed.append(
            f"level-1 prefix recall {first['prefix_recall']:.4f} < {min_recall_lift} × its "
            f"random baseline {first['prefix_recall_random']:.4f}"
        )
    return failed
