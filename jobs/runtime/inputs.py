"""The canonical inputs of the jobs and the report, read pinned through the run context.

``read`` (default ``ctx.read``) is how a table is read: the report passes its per-run cache, so
its sections share one pinned version of each table."""

from __future__ import annotations

from pyspark.sql import functions as F


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
