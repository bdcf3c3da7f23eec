"""The tables of a semantic-ID run as pandas frames (no Spark, no I/O): what ``build_sids`` writes,
built from an assignment (``sid_generation.assign``), with their schemas (Spark DDL, every table
partitioned by ``ds`` on top), and what it reads back of an earlier generation (its codebooks, the
behaviour neighbours of the prefix-recall evaluation)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd

from recfactory.tokenizers import sids as S
from recfactory.tokenizers.rq import Codebooks, RQSpec
from recfactory.tokenizers.sid_generation import LEVEL_METRICS, TOTAL_METRICS, Assignment, Plan, generation_seed

# The columns of each table build_sids writes, in the order it publishes them (codebooks first: the
# state names them); ``ds`` is added on write.
SCHEMAS = {
    "sid_codebooks": "generation STRING NOT NULL, level INT NOT NULL, code INT NOT NULL, "
    "centroid ARRAY<FLOAT> NOT NULL, removed BOOLEAN NOT NULL, fit_items BIGINT NOT NULL, spec STRING NOT NULL",
    "semantic_ids": "item_id STRING NOT NULL, codes ARRAY<INT> NOT NULL, suffix INT NOT NULL, sid STRING NOT NULL, "
    "generation STRING NOT NULL, rq_codes ARRAY<INT> NOT NULL, in_catalog BOOLEAN NOT NULL, assigned_ds DATE NOT NULL",
    "sid_lookup": "sid STRING NOT NULL, item_id STRING NOT NULL, generation STRING NOT NULL, in_catalog BOOLEAN NOT NULL",
    "sid_features": "item_id STRING NOT NULL, generation STRING NOT NULL, sid STRING NOT NULL, "
    "prefix_ngram_ids ARRAY<BIGINT> NOT NULL, bigram_ids ARRAY<BIGINT> NOT NULL, vocab_size BIGINT NOT NULL",
    "sid_remap": "item_id STRING NOT NULL, old_generation STRING NOT NULL, old_sid STRING NOT NULL, "
    "new_generation STRING NOT NULL, new_sid STRING",
    "sid_quarantine": "item_id STRING, reason STRING NOT NULL",
    "sid_metrics": "generation STRING NOT NULL, level INT NOT NULL, "
    + ", ".join(f"{m} DOUBLE" for m in LEVEL_METRICS + TOTAL_METRICS),
}


def outputs(
    fresh: bool,
    a: Assignment,
    plan: Plan,
    generation: str,
    as_of: dt.date,
    books: Codebooks,
    spec: RQSpec,
    gspec: dict,
    prior: tuple[pd.DataFrame, str] | None,
    quarantine: pd.DataFrame,
    metrics: pd.DataFrame,
    vocab: int,
) -> dict[str, pd.DataFrame]:
    """Every table of the run, in the order of ``SCHEMAS``: the codebooks of a generation fitted by
    the run (``fresh``), its state, lookup, token features, the remap from the previous state
    ``prior`` = (state, its generation) to a fresh generation, the quarantined vectors and the
    metrics."""
    state = state_frame(a, plan, generation, as_of)
    frames = {
        "sid_codebooks": codebook_frame(generation, books, a, spec, gspec) if fresh else None,
        "semantic_ids": state,
        "sid_lookup": state[["sid", "item_id", "generation", "in_catalog"]],
        "sid_features": feature_frame(a, generation, vocab),
        "sid_remap": remap_frame(prior[0], prior[1], a, generation) if fresh and prior is not None else None,
        "sid_quarantine": quarantine,
        "sid_metrics": metrics.assign(generation=generation)[["generation", *metrics.columns]],
    }
    return {t: f for t, f in frames.items() if f is not None}


def codebook_frame(generation: str, books: Codebooks, a: Assignment, spec: RQSpec, gspec: dict) -> pd.DataFrame:
    """sid_codebooks: one row per (level, code) of a new generation, with how many fit items it took."""
    rows = []
    for lv, k in enumerate(spec.codebook_sizes):
        fit_items = np.bincount(a.encoding.codes[:, lv], minlength=k)
        rows += [
            (
                generation,
                lv + 1,
                code,
                books.centroids[lv][code].tolist(),
                bool(a.removed[lv][code]),
                int(fit_items[code]),
            )
            for code in range(k)
        ]
    frame = pd.DataFrame(rows, columns=["generation", "level", "code", "centroid", "removed", "fit_items"])
    return frame.assign(spec=json.dumps(gspec, sort_keys=True))


def codebooks_from_frame(rows: pd.DataFrame, generation: str) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """(centroids per level, removed-token masks per level, the generation's spec) from its
    sid_codebooks rows."""
    if not len(rows):
        raise ValueError(f"sid_codebooks has no rows for generation {generation}")
    if rows.duplicated(["level", "code"]).any():
        raise AssertionError(f"generation {generation} has more than one centroid for a (level, code)")
    rows = rows.sort_values(["level", "code"])
    cents, removed = [], []
    for lv in sorted(rows["level"].unique()):
        part = rows[rows["level"] == lv]
        cents.append(np.stack(part["centroid"].to_numpy()).astype(np.float32))
        removed.append(part["removed"].to_numpy(dtype=bool))
    return cents, removed, json.loads(rows["spec"].iloc[0])


def state_frame(a: Assignment, plan: Plan, generation: str, as_of: dt.date) -> pd.DataFrame:
    """semantic_ids: every item's SID of the generation (kept items keep their assignment date)."""
    kept = plan.kept
    assigned = np.concatenate(
        [
            kept["assigned_ds"].to_numpy(dtype=object) if len(kept) else np.zeros(0, object),
            np.array([as_of] * len(plan.new_rows), dtype=object),
        ]
    )
    state = pd.DataFrame(
        {
            "item_id": a.item_of,
            "codes": [[int(c) for c in r if c >= 0] for r in a.final],
            "suffix": a.suffix.astype(int),
            "sid": a.sid,
            "generation": generation,
            "rq_codes": [r.tolist() for r in a.rq_codes],
            "in_catalog": a.in_catalog,
            "assigned_ds": assigned,
        }
    )
    return state.sort_values("item_id", kind="stable")


def feature_frame(a: Assignment, generation: str, vocab: int) -> pd.DataFrame:
    """sid_features: the hashed prefix n-gram and bigram token ids of the items in the catalog."""
    pre, bi = S.token_features(a.final, vocab, seed=generation_seed(generation))
    feats = pd.DataFrame(
        {
            "item_id": a.item_of,
            "generation": generation,
            "sid": a.sid,
            "prefix_ngram_ids": [r[r >= 0].tolist() for r in pre],
            "bigram_ids": [r[r >= 0].tolist() for r in bi],
            "vocab_size": vocab,
        }
    )
    return feats[a.in_catalog]


def remap_frame(prior: pd.DataFrame, old_generation: str, a: Assignment, generation: str) -> pd.DataFrame:
    """sid_remap: each item of the previous generation's state, its old SID and its new one (None
    when it has none in the new generation)."""
    new_sid = pd.Series(a.sid, index=a.item_of).reindex(prior["item_id"]).to_numpy()
    remap = pd.DataFrame(
        {
            "item_id": prior["item_id"],
            "old_generation": old_generation,
            "old_sid": prior["sid"],
            "new_generation": generation,
            "new_sid": new_sid,
        }
    )
    remap["new_sid"] = remap["new_sid"].astype(object).where(remap["new_sid"].notna(), None)
    return remap


def neighbor_rows(pairs: pd.DataFrame, items: np.ndarray) -> list[np.ndarray]:
    """Each item's behaviour neighbours as row indices into ``items``, from (a, b) id pairs (pairs
    with an item outside ``items`` are left out)."""
    index = pd.Series(np.arange(len(items)), index=items)
    pairs = pairs[pairs["a"].isin(index.index) & pairs["b"].isin(index.index)]
    out = [np.zeros(0, dtype=np.int64)] * len(items)
    for a, g in pairs.groupby("a", sort=False)["b"]:
        out[index[a]] = index[g.to_numpy()].to_numpy()
    return out
