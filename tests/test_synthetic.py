"""Synthetic generator: seeded and partition-independent, with the skew it promises."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F
from sparkconf import shuffle_partitions

from recfactory.features.instants import day_start, ts_lit
from recfactory.features.synthetic import SyntheticSpec, synthetic_events, synthetic_items

pytestmark = pytest.mark.spark

SPEC = SyntheticSpec(events=20_000, seed=7)
END = dt.date(2026, 11, 28)  # the events fall in the spec's days before this date


def _sorted_rows(df):
    return sorted(tuple(r) for r in df.collect())


def test_same_seed_same_rows_whatever_the_partitioning(spark):
    rows = {}
    for n, parts in ((4, None), (1, 7)):  # each collected under its own shuffle partitions
        with shuffle_partitions(spark, n):
            df = synthetic_events(spark, SPEC, END)
            rows[n] = _sorted_rows(df.repartition(parts) if parts else df)
    assert rows[4] == rows[1]
    c = synthetic_events(spark, SyntheticSpec(events=20_000, seed=8), END)
    assert rows[4] != _sorted_rows(c)


def test_shape_zipf_items_heavy_users_sessions(spark):
    ev = synthetic_events(spark, SPEC, END).cache()
    n = ev.count()
    assert 0.93 * SPEC.events < n < 1.07 * SPEC.events
    types = {r["event_type"]: r["count"] for r in ev.groupBy("event_type").count().collect()}
    assert set(types) == {"impression", "click", "cart", "purchase"}
    assert types["impression"] > types["click"] > types["cart"] > types["purchase"] > 0
    imp = ev.where("event_type = 'impression'")
    # Zipf items: the top 1% of items take a large share of impressions
    counts = sorted((r["count"] for r in imp.groupBy("item_id").count().collect()), reverse=True)
    top = max(1, SPEC.n_items // 100)
    assert sum(counts[:top]) / sum(counts) > 0.10
    # heavy-tailed users: the busiest user has far more events than the median one
    per_user = sorted(r["count"] for r in ev.groupBy("user_id").count().collect())
    assert per_user[-1] > 20 * per_user[len(per_user) // 2]
    # sessions: most gaps between a user's consecutive impressions are short, some are long
    w = Window.partitionBy("user_id").orderBy("ts")
    gaps = imp.select((F.col("ts").cast("double") - F.lag(F.col("ts").cast("double")).over(w)).alias("g")).where(
        "g is not null"
    )
    short = gaps.where("g < 1800").count() / gaps.count()
    assert 0.5 < short < 0.99
    # clicks have dwell, some accidental (< 5 s); every row is labeled synthetic
    clicks = ev.where("event_type = 'click'")
    assert clicks.where("dwell_ms is null").count() == 0
    assert clicks.where("dwell_ms < 5000").count() > 0
    assert ev.where("source != 'synthetic'").count() == 0
    # events stay before the end date (compared as UTC instants in Spark, never a naive datetime)
    assert ev.where(F.col("ts") >= ts_lit(day_start(END))).count() == 0
    ev.unpersist()


def test_items_have_side_information(spark):
    items = synthetic_items(spark, SPEC, END)
    assert items.count() == SPEC.n_items
    row = items.agg(F.countDistinct("category"), F.min("price"), F.countDistinct("item_id")).first()
    assert row[0] == SPEC.categories and row[1] > 0 and row[2] == SPEC.n_items
    assert items.where(~F.col("title").startswith("synthetic")).count() == 0
