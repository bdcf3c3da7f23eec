"""Sessionization (Airbnb / DSIN style) with window functions — no Python UDF loops.

A user's events (before the cutoff, in (ts, event_id) order) start a new session when the gap to
the previous event is *more than* ``gap`` (a gap of exactly 30 minutes stays in the session), or
when the previous event was an end event (e.g. a purchase, when ``end_event_types`` says so).
Within a session, interactions (every type but impressions by default) with a known dwell below
``min_dwell_ms`` are accidental clicks: counted, but not among the session's items. A session with
at least ``min_valid_clicks`` valid interactions is flagged ``is_valid`` — what the graph and
embedding consumers train on — but every session is recorded.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recfactory.features.schema import EVENT_TYPES
from recfactory.features.sequences import value_counts, visible_events
from recfactory.features.spec import Field, Spec


class SessionSpec(Spec):
    gap_minutes: float = Field(
        30.0,
        gt=0,
        description="Inactivity gap that ends a session "
        "(a gap of exactly this long stays in the session; Airbnb, DSIN: 30).",
    )
    end_event_types: tuple[str, ...] = Field(
        (), description="Event types that end a session after them, e.g. purchase (none by default)."
    )
    # every interaction: the vocabulary without the exposure type
    item_event_types: tuple[str, ...] = Field(
        tuple(t for t in EVENT_TYPES if t != "impression"),
        min_length=1,
        description="Event types that put their item in the session.",
    )
    min_dwell_ms: int = Field(
        30_000,
        ge=0,
        description="Interactions with a known dwell below this "
        "are accidental clicks: counted, not kept as items (Airbnb: 30 s).",
    )
    min_valid_clicks: int = Field(
        2, ge=0, description="Sessions with at least this many valid interactions are flagged is_valid."
    )


def build_sessions(events: DataFrame, cutoff: dt.datetime, spec: SessionSpec | None = None) -> DataFrame:
    spec = spec or SessionSpec()
    ev = visible_events(events, cutoff).select("user_id", "item_id", "event_type", "ts", "dwell_ms", "event_id")
    w = Window.partitionBy("user_id").orderBy("ts", "event_id")
    prev_ts = F.lag("ts").over(w)
    prev_type = F.lag("event_type").over(w)
    gap_s = F.col("ts").cast("double") - prev_ts.cast("double")
    new = prev_ts.isNull() | (gap_s > spec.gap_minutes * 60)
    if spec.end_event_types:
        new = new | prev_type.isin(*spec.end_event_types)
    ev = ev.withColumn("_new", new.cast("int"))
    ev = ev.withColumn("_sess", F.sum("_new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    is_item = F.col("event_type").isin(*spec.item_event_types)
    accidental = is_item & F.col("dwell_ms").isNotNull() & (F.col("dwell_ms") < spec.min_dwell_ms)
    valid = is_item & ~accidental
    out = ev.groupBy("user_id", "_sess").agg(
        F.min("ts").alias("start_ts"),
        F.min(F.struct("ts", "event_id"))["event_id"].alias("_first_event"),
        F.max("ts").alias("end_ts"),
        F.transform(
            F.sort_array(F.collect_list(F.when(valid, F.struct("ts", "event_id", "item_id")))), lambda x: x["item_id"]
        ).alias("items"),
        F.count(F.lit(1)).alias("n_events"),
        F.sum(valid.cast("int")).alias("n_valid_clicks"),
        F.sum(accidental.cast("int")).alias("n_accidental_clicks"),
        F.coalesce(F.sum("dwell_ms"), F.lit(0)).alias("total_dwell_ms"),
        F.collect_list("event_type").alias("_types"),
    )
    return out.select(
        # deterministic: the user and the session's first event (ts alone can tie after an end event)
        F.xxhash64("user_id", "_first_event").alias("session_id"),
        "user_id",
        "start_ts",
        "end_ts",
        (F.col("end_ts").cast("long") - F.col("start_ts").cast("long")).alias("duration_s"),
        "items",
        "n_events",
        value_counts(F.sort_array("_types")).alias("event_counts"),
        "n_valid_clicks",
        "n_accidental_clicks",
        "total_dwell_ms",
        (F.col("n_valid_clicks") >= spec.min_valid_clicks).alias("is_valid"),
    )
