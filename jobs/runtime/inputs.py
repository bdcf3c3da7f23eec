"""The canonical inputs of the feature jobs, read pinned through the run context."""

from __future__ import annotations

from pyspark.sql import functions as F


def clean_events(ctx):
    """events_clean loads up to the as-of (transforms then keep ts < the as-of's end)."""
    return ctx.read("events_clean").where(F.col("ds") <= F.lit(ctx.as_of)).drop("ds")


def latest_snapshot(ctx, name: str):
    """The table's latest ds partition at or before the as-of (ds dropped), or None."""
    df = ctx.read(name).where(F.col("ds") <= F.lit(ctx.as_of))
    latest = df.agg(F.max("ds")).first()[0]
    return None if latest is None else df.where(F.col("ds") == F.lit(latest)).drop("ds")


def item_snapshot(ctx):
    """The latest item-catalog snapshot at or before the as-of."""
    items = latest_snapshot(ctx, "items")
    if items is None:
        raise ValueError(f"items has no snapshot at or before {ctx.as_of}: run ingest first")
    return items


def date_partition(ctx, name: str, job: str):
    """The table's partition ds = as-of (ds dropped); an error naming the job to run when it has none."""
    df = ctx.read(name).where(F.col("ds") == F.lit(ctx.as_of)).drop("ds")
    if df.limit(1).count() == 0:
        raise ValueError(f"{name} has no partition ds={ctx.as_of}: run {job} for that date first")
    return df
