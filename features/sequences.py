"""User behavior sequences (DIN/SIM-style inputs) from clean events. Pure Spark, no I/O.

Per user, the most recent interactions before the cutoff, as a typed
``array<struct<item_id, ts, event_type, dwell_ms>>`` in time order (ties broken by ``event_id``),
with per-event-type caps (e.g. the last 200 clicks and the last 50 purchases), an overall cap,
optional removal of consecutive repeats of the same item, the sequence length, the time since the
last event and, for SIM's hard search, the same history bucketed by item category.
"""

from __future__ import annotations

import datetime as dt

from pydantic import field_validator
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recfactory.features.instants import ts_lit
from recfactory.features.spec import Field, Spec, mapping_text

SEQ_FIELDS = ("item_id", "ts", "event_type", "dwell_ms")

DEFAULT_TYPE_CAPS = {
    "click": 200,
    "view": 200,
    "like": 200,
    "review": 50,
    "share": 50,
    "cart": 50,
    "purchase": 50,
}


class SequenceSpec(Spec):
    max_len: int = Field(200, ge=1, description="Overall cap: the most recent events kept per user.")
    type_caps: str = Field(
        ",".join(f"{k}={v}" for k, v in DEFAULT_TYPE_CAPS.items()),
        description="Event types included and the most recent kept of each, type=cap,... "
        "(impressions are exposures and are left out by default).",
    )
    dedup_consecutive: bool = Field(
        False, description="Drop an event whose item repeats the user's previous event's item."
    )
    category_max_len: int = Field(
        0,
        ge=0,
        description="Also build category-bucketed sequences (SIM hard search) with this cap per category; 0 = off.",
    )

    @field_validator("type_caps", mode="before")
    @classmethod
    def _as_text(cls, v):
        return mapping_text(v)

    @field_validator("type_caps")
    @classmethod
    def _caps_parse(cls, v: str) -> str:
        caps = _parse_caps(v)
        bad = {k: c for k, c in caps.items() if c < 1}
        if not caps or bad:
            raise ValueError(f"type_caps need at least one event type, each cap >= 1 (got {bad or 'none'})")
        return v

    @property
    def caps(self) -> dict[str, int]:
        """type → cap, in declaration order."""
        return _parse_caps(self.type_caps)


def _parse_caps(text: str) -> dict[str, int]:
    from recfactory.features.schema import ColumnMapping

    return ColumnMapping.parse(text).values_as(int)


def value_counts(values) -> Column:
    """map<string,int>: how often each value occurs in an array<string> column."""
    return F.aggregate(
        values,
        F.create_map().cast("map<string,int>"),
        lambda acc, v: F.map_concat(
            F.map_filter(acc, lambda k, _: k != v), F.create_map(v, F.coalesce(acc[v], F.lit(0)) + 1)
        ),
    )


def visible_events(events: DataFrame, cutoff: dt.datetime) -> DataFrame:
    """Point in time: only events strictly before the cutoff (the end of the as-of date)."""
    return events.where(F.col("ts") < ts_lit(cutoff))


def _ordered_entries() -> Column:
    """Collect (ts, event_id, fields...) structs, sort them by (ts, event_id), drop the tie-breaker."""
    entry = F.struct("ts", "event_id", *[c for c in SEQ_FIELDS if c != "ts"])
    return F.transform(
        F.sort_array(F.collect_list(entry)),
        lambda x: F.struct(*[x[f].alias(f) for f in SEQ_FIELDS]),
    )


def build_sequences(
    events: DataFrame,
    cutoff: dt.datetime,
    spec: SequenceSpec | None = None,
    items: DataFrame | None = None,
) -> DataFrame:
    """user_id, sequence, seq_len, last_ts, secs_since_last, type_counts[, category_sequences]."""
    spec = spec or SequenceSpec()
    visible = (
        visible_events(events, cutoff)
        .where(F.col("event_type").isin(*spec.caps))
        .select("user_id", "item_id", "event_type", "ts", "dwell_ms", "event_id")
    )
    ev = visible
    if spec.dedup_consecutive:
        w = Window.partitionBy("user_id").orderBy("ts", "event_id")
        ev = ev.withColumn("_prev", F.lag("item_id").over(w))
        ev = ev.where(F.col("_prev").isNull() | (F.col("_prev") != F.col("item_id"))).drop("_prev")
    recent = lambda *keys: Window.partitionBy(*keys).orderBy(F.desc("ts"), F.desc("event_id"))  # noqa: E731
    caps = F.create_map(*[x for k, v in spec.caps.items() for x in (F.lit(k), F.lit(v))])
    ev = ev.withColumn("_r", F.row_number().over(recent("user_id", "event_type")))
    ev = ev.where(F.col("_r") <= caps[F.col("event_type")])
    ev = ev.withColumn("_r", F.row_number().over(recent("user_id"))).where(F.col("_r") <= spec.max_len)
    out = ev.groupBy("user_id").agg(
        _ordered_entries().alias("sequence"),
        F.max("ts").alias("last_ts"),
    )
    cutoff_ts = ts_lit(cutoff)
    out = out.select(
        "user_id",
        "sequence",
        F.size("sequence").alias("seq_len"),
        "last_ts",
        (cutoff_ts.cast("long") - F.col("last_ts").cast("long")).alias("secs_since_last"),
        value_counts(F.transform("sequence", lambda x: x["event_type"])).alias("type_counts"),
    )
    if spec.category_max_len and items is not None:
        out = out.join(_category_sequences(visible, spec, items), "user_id", "left")
    return out


def _category_sequences(visible: DataFrame, spec: SequenceSpec, items: DataFrame) -> DataFrame:
    """SIM hard search: user → category → most recent items of that category (capped).
    `visible`: the events before the cutoff of the included types, as build_sequences selects them."""
    ev = visible.join(
        items.select("item_id", F.coalesce("category", F.lit("__none__")).alias("category")), "item_id", "left"
    ).fillna({"category": "__unknown__"})
    w = Window.partitionBy("user_id", "category").orderBy(F.desc("ts"), F.desc("event_id"))
    ev = ev.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= spec.category_max_len)
    per_cat = ev.groupBy("user_id", "category").agg(_ordered_entries().alias("items"))
    return per_cat.groupBy("user_id").agg(
        F.map_from_entries(F.sort_array(F.collect_list(F.struct("category", "items")))).alias("category_sequences")
    )
