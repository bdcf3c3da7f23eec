"""The canonical inputs of the feature jobs, read pinned through the run context."""

from __future__ import annotations

from pyspark.sql import functions as F


def clean_events(ctx):
    """events_clean loads up to the as-of (transforms then keep ts < the as-of's end)."""
    return ctx.read("events_clean").where(F.col("ds") <= F.lit(ctx.as_of)).drop("ds")


def item_snapshot(ctx):
    """The latest item-catalog snapshot at or before the as-of."""
    items = ctx.read("items").where(F.col("ds") <= F.lit(ctx.as_of))
    latest = items.agg(F.max("ds")).first()[0]
    if latest is None:
        raise ValueError(f"items has no snapshot at or before {ctx.as_of}: run ingest first")
    return items.where(F.col("ds") == F.lit(latest)).drop("ds")
