"""Small typed helpers over Spark frames."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Row


def one_row(df: DataFrame, *aggs: Column) -> Row:
    """The one row of a global aggregation ``df.agg(*aggs)`` (it always has one; ``first()`` is
    typed ``Row | None``)."""
    row = df.agg(*aggs).first()
    if row is None:  # pragma: no cover - an ungrouped aggregation returns exactly one row
        raise AssertionError("a global aggregation returned no row")
    return row
