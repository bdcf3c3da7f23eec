"""The canonical inputs of the jobs and the report, read pinned through the run context.

``read`` (default ``ctx.read``) is how a table is read: the report passes its per-run cache, so
its sections share one pinned version of each table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from recfactory.jobs.runtime.job import QualityGateError


class MissingInput(ValueError):
    """A table has no partition the job needs; the message names the job to run."""


def clean_events(ctx):
    """Every published event dated up to the as-of, whichever load published it: events_clean is
    partitioned by the UTC date of ts, so ds <= as-of is exactly ts < the as-of's end (transforms
    filter ts again)."""
    return ctx.read("events_clean").where(F.col("ds") <= F.lit(ctx.as_of)).drop("ds")


def latest_snapshot(ctx, name: str, read=None):
    """The table's latest ds partition at or before the as-of (ds dropped), or None."""
    df = (read or ctx.read)(name).where(F.col("ds") <= F.lit(ctx.as_of))
    latest = df.agg(F.max("ds")).first()[0]
    return None if latest is None else df.where(F.col("ds") == F.lit(latest)).drop("ds")


def latest_partition(ctx, name: str, job: str, read=None):
    """`latest_snapshot`, or MissingInput naming the job when the table has none."""
    df = latest_snapshot(ctx, name, read)
    if df is None:
        raise MissingInput(f"{name} has no partition at or before {ctx.as_of}: run {job} first")
    return df


def item_snapshot(ctx):
    """The item catalog as of the date: the latest snapshot at or before the as-of, without items
    created after the date's end (ingest leaves them out already; a catalog written by another
    tool may not)."""
    from recfactory.features.instants import ts_lit

    items = latest_partition(ctx, "items", "ingest")
    if "created_ts" in items.columns:
        items = items.where(F.col("created_ts").isNull() | (F.col("created_ts") < ts_lit(ctx.cutoff)))
    return items


def date_partition(ctx, name: str, job: str, read=None):
    """The table's partition ds = as-of (ds dropped); MissingInput naming the job to run when it has none."""
    df = (read or ctx.read)(name).where(F.col("ds") == F.lit(ctx.as_of)).drop("ds")
    if df.limit(1).count() == 0:
        raise MissingInput(f"{name} has no partition ds={ctx.as_of}: run {job} for that date first")
    return df


@dataclass(frozen=True)
class PositivePairs:
    """The distinct (user, catalog item) pairs of the positive events visible as of D, each with its
    latest ts, in one canonical order (user, item): what LightGCN trains on and what
    retrieval_pairs holds a row for."""

    user_id: np.ndarray  # per pair (object: the table's strings)
    item_id: np.ndarray
    users: np.ndarray  # int64 user index (users sorted by user_id) per pair
    items: np.ndarray  # int64 item index (the caller's catalog index) per pair
    ts: np.ndarray  # int64 epoch micros: the pair's latest positive
    user_ids: np.ndarray  # user index → user_id

    def __len__(self) -> int:
        return len(self.users)


def positive_pairs(ctx, events, types: Sequence[str], index: pd.Series, count_as: str) -> PositivePairs:
    """``events`` (visible as of D) of the ``types``, one row per distinct (user, item) on an item of
    ``index`` (item_id → index). Row counts ``<count_as>`` and ``<count_as>_unknown_item`` (pairs on
    items missing from the catalog snapshot, left out and noted); no pair at all fails the run."""
    pdf = pd.DataFrame(  # (pyspark types toPandas' result as a protocol)
        events.where(F.col("event_type").isin(*types))
        .groupBy("user_id", "item_id")
        .agg(F.unix_micros(F.max("ts")).alias("ts"))
        .toPandas()
    )
    known = pdf["item_id"].isin(index.index).to_numpy()
    unknown = int((~known).sum())
    ctx.row_counts.update({count_as: len(pdf), f"{count_as}_unknown_item": unknown})
    if unknown:
        ctx.notes[f"{count_as}_unknown_items"] = (
            f"{unknown} (user, item) positives are on items missing from the catalog snapshot: left out"
        )
    pdf = pdf[known]
    if not len(pdf):
        raise QualityGateError(f"no positive event ({', '.join(types)}) on a catalog item")
    codes, user_ids = pd.factorize(pdf["user_id"], sort=True)
    items = index[pdf["item_id"]].to_numpy()
    order = np.lexsort((items, codes))
    return PositivePairs(
        user_id=pdf["user_id"].to_numpy(dtype=object)[order],
        item_id=pdf["item_id"].to_numpy(dtype=object)[order],
        users=codes[order].astype(np.int64),
        items=items[order].astype(np.int64),
        ts=pdf["ts"].to_numpy()[order].astype(np.int64),
        user_ids=np.asarray(user_ids, dtype=object),
    )
