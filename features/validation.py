"""Validation of raw events and items into clean rows + quarantine rows with reasons.

Pure Spark transforms: DataFrames in, DataFrames out, no I/O. Every input row ends up in exactly
one of the two outputs (``clean + quarantined = input``), and a row's reasons are all the checks it
failed, the first of them in ``reason``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.instants import ts_lit

from recfactory.features.schema import (
    EVENT_OPTIONAL,
    EVENT_REQUIRED,
    EVENT_TYPES,
    ITEM_OPTIONAL,
    ITEM_REQUIRED,
    ColumnMapping,
    check_columns,
)

CLEAN_EVENT_COLUMNS = (
    "event_id", "user_id", "item_id", "event_type", "ts", "dwell_ms", "context", "source",
)
# Which copy of an event (one event_id) is published when copies differ (e.g. in dwell): the
# smallest under this content order — known dwell before unknown, then the smaller dwell, then the
# context and the source. Within a load it picks the clean copy (the others are DUPLICATE); across
# loads it is the MERGE condition of `ingest`, so the winner does not depend on the loads' order.
def _preference_key(prefix: str) -> str:
    return (f"struct({prefix}dwell_ms IS NULL, coalesce({prefix}dwell_ms, 0), to_json({prefix}context), "
            f"{prefix}source)")


EVENT_PREFERENCE = f"{_preference_key('s.')} < {_preference_key('t.')}"

ITEM_COLUMNS = (
    "item_id", "title", "text", "category", "brand", "price", "image_path", "created_ts",
    "attributes", "source",
)


@dataclass(frozen=True)
class EventRules:
    """How raw events are read and judged."""

    cutoff: dt.datetime                      # ts >= cutoff is a FUTURE_TIMESTAMP
    event_types: tuple[str, ...] = EVENT_TYPES
    event_type_map: tuple[tuple[str, str], ...] = ()  # raw value → canonical type
    ts_unit: str = "auto"                    # numeric ts: s | ms | us | auto (ms when > 1e11)
    check_orphans: bool = True

    def __post_init__(self):
        if self.ts_unit not in ("auto", "s", "ms", "us"):
            raise ValueError(f"ts_unit must be auto, s, ms or us, not {self.ts_unit!r}")


def _clean_str(c: Column) -> Column:
    s = F.trim(c.cast("string"))
    return F.when(s == "", None).otherwise(s)


def parse_ts(c: Column, dtype: T.DataType, unit: str = "auto") -> Column:
    """Timestamp from a timestamp, a unix number (s/ms/us) or a string (ISO or unix digits)."""
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return c.cast("timestamp")
    if isinstance(dtype, T.DateType):
        return c.cast("timestamp")
    if isinstance(dtype, T.NumericType):
        num = c.cast("double")
    else:
        s = F.trim(c.cast("string"))
        num = F.when(s.rlike(r"^-?[0-9]+(\.[0-9]+)?$"), s.cast("double"))
    if unit == "auto":
        secs = F.when(F.abs(num) > 1e14, num / 1e6).when(F.abs(num) > 1e11, num / 1e3).otherwise(num)
    else:
        secs = num / {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    from_num = F.timestamp_micros((secs * 1e6).cast("long"))
    if isinstance(dtype, T.NumericType):
        return from_num
    return F.coalesce(from_num, F.try_to_timestamp(F.trim(c.cast("string"))))


def _map_event_type(c: Column, pairs: tuple[tuple[str, str], ...]) -> Column:
    et = F.lower(_clean_str(c))
    if not pairs:
        return et
    expr = None
    for raw, canon in pairs:
        cond = et == F.lit(raw.lower())
        expr = F.when(cond, F.lit(canon)) if expr is None else expr.when(cond, F.lit(canon))
    return expr.otherwise(et)


def validate_events(
    raw: DataFrame,
    rules: EventRules,
    mapping: ColumnMapping = ColumnMapping(),
    items: DataFrame | None = None,
    source: str = "user",
) -> DataFrame:
    """Annotate every raw event with its canonical columns and its quarantine reasons.

    Returns one row per input row with the clean columns plus ``reasons array<string>`` (empty for
    a clean row), ``reason`` and the raw values; split it with :func:`split_validated`.

    items: catalog (item_id) for the orphan check. A DUPLICATE is a second copy of an event within
    this input; copies already published by other loads are `ingest`'s concern (it merges by
    event_id), so the result depends on this input only.
    """
    cols = raw.columns
    check_columns(cols, EVENT_REQUIRED, mapping, "events")
    src = {c: mapping.source(c) for c in EVENT_REQUIRED + EVENT_OPTIONAL}
    canonical_sources = {v for k, v in src.items() if v in cols}
    context_cols = [c for c in cols if c not in canonical_sources]
    dtypes = dict(raw.dtypes)
    schema = {f.name: f.dataType for f in raw.schema.fields}

    ts_raw = F.col(src["ts"])
    ts = parse_ts(ts_raw, schema[src["ts"]], rules.ts_unit)
    has_dwell = src["dwell_ms"] in cols
    dwell_raw = F.col(src["dwell_ms"]) if has_dwell else F.lit(None)
    if has_dwell and dtypes[src["dwell_ms"]] not in ("string",):
        dwell = dwell_raw.cast("double")
    else:
        dwell = F.when(F.trim(dwell_raw.cast("string")) != "", F.trim(dwell_raw.cast("string")).try_cast("double"))
    context = (
        F.create_map(*[x for c in context_cols for x in (F.lit(c), F.col(c).cast("string"))])
        if context_cols
        else F.create_map().cast("map<string,string>")
    )

    df = raw.select(
        _clean_str(F.col(src["user_id"])).alias("user_id"),
        _clean_str(F.col(src["item_id"])).alias("item_id"),
        _map_event_type(F.col(src["event_type"]), rules.event_type_map).alias("event_type"),
        ts.alias("ts"),
        ts_raw.cast("string").alias("ts_raw"),
        dwell.alias("_dwell"),
        dwell_raw.cast("string").alias("dwell_raw"),
        context.alias("context"),
        F.to_json(F.struct(*[F.col(c) for c in cols])).alias("raw"),
    )
    df = df.withColumn(
        "dwell_ms", F.when(F.col("_dwell").isNotNull(), F.round("_dwell").cast("long"))
    )
    df = df.withColumn(
        "event_id",
        F.xxhash64("user_id", "item_id", "event_type", F.col("ts").cast("long"),
                   F.date_format("ts", "SSSSSS")),
    )
    checks: list[tuple[str, Column]] = [
        ("NULL_KEY", F.col("user_id").isNull() | F.col("item_id").isNull()
         | F.col("event_type").isNull() | F.col("ts_raw").isNull()),
        ("BAD_TIMESTAMP", F.col("ts_raw").isNotNull() & F.col("ts").isNull()),
        ("UNKNOWN_EVENT_TYPE", F.col("event_type").isNotNull()
         & ~F.col("event_type").isin(*rules.event_types)),
        ("FUTURE_TIMESTAMP", F.col("ts") >= ts_lit(rules.cutoff)),
        ("BAD_DWELL", F.col("dwell_raw").isNotNull() & F.col("_dwell").isNull()),
        ("NEGATIVE_DWELL", F.col("_dwell") < 0),
    ]
    if rules.check_orphans and items is not None:
        known = items.select(F.col("item_id").alias("_known_item")).distinct()
        df = df.join(known, df["item_id"] == known["_known_item"], "left")
        checks.append(("ORPHAN_ITEM", F.col("item_id").isNotNull() & F.col("_known_item").isNull()))
    df = df.withColumn(
        "reasons",
        F.filter(F.array(*[F.when(cond, F.lit(name)) for name, cond in checks]), lambda x: x.isNotNull()),
    )
    # Duplicates among the rows that are otherwise clean: keep one per event_id, chosen by content
    # (EVENT_PREFERENCE, then the raw row; not by arrival order) so the result does not depend on
    # partitioning.
    ok = F.size("reasons") == 0
    w = Window.partitionBy("event_id", ok).orderBy(
        F.col("dwell_ms").isNull(), F.coalesce("dwell_ms", F.lit(0)), F.to_json("context"), F.col("raw")
    )
    df = df.withColumn("_rank", F.when(ok, F.row_number().over(w)))
    dup = ok & (F.col("_rank") > 1)
    df = df.withColumn("reasons", F.when(dup, F.array_append("reasons", F.lit("DUPLICATE")))
                       .otherwise(F.col("reasons")))
    return df.select(
        "event_id", "user_id", "item_id", "event_type", "ts", "dwell_ms", "context",
        F.lit(source).alias("source"), "ts_raw", "dwell_raw", "raw", "reasons",
        F.get("reasons", 0).alias("reason"),
    )


def split_validated(annotated: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(clean, quarantine) from :func:`validate_events` / :func:`validate_items` output."""
    ok = F.size("reasons") == 0
    clean_cols = [c for c in annotated.columns if c not in ("reasons", "reason", "raw", "ts_raw",
                                                             "dwell_raw", "price_raw",
                                                             "created_raw")]
    clean = annotated.where(ok).select(*clean_cols)
    quarantine = annotated.where(~ok)
    return clean, quarantine


def quarantine_columns(quarantine: DataFrame) -> DataFrame:
    """Quarantine rows keep the raw row (as JSON and canonical strings) plus the reasons."""
    keep = [c for c in ("user_id", "item_id", "event_type", "ts_raw", "dwell_raw", "context",
                        "title", "category", "price_raw", "created_raw")
            if c in quarantine.columns]
    return quarantine.select(*keep, "raw", "reason", "reasons", "source")


def validate_items(raw: DataFrame, mapping: ColumnMapping = ColumnMapping(),
                   source: str = "user") -> DataFrame:
    """Canonical item rows with reasons (NULL_KEY, BAD_PRICE, BAD_TIMESTAMP, DUPLICATE)."""
    cols = raw.columns
    check_columns(cols, ITEM_REQUIRED, mapping, "items")
    src = {c: mapping.source(c) for c in ITEM_REQUIRED + ITEM_OPTIONAL}
    present = {k: v for k, v in src.items() if v in cols}
    attr_cols = [c for c in cols if c not in set(present.values())]
    schema = {f.name: f.dataType for f in raw.schema.fields}

    def opt(name: str) -> Column:
        return F.col(present[name]) if name in present else F.lit(None)

    price_raw = opt("price")
    price = (price_raw.cast("double") if "price" in present and isinstance(schema[present["price"]], T.NumericType)
             else F.trim(price_raw.cast("string")).try_cast("double"))
    created_raw = opt("created_ts")
    created = (parse_ts(created_raw, schema[present["created_ts"]]) if "created_ts" in present
               else F.lit(None).cast("timestamp"))
    attributes = (
        F.create_map(*[x for c in attr_cols for x in (F.lit(c), F.col(c).cast("string"))])
        if attr_cols else F.create_map().cast("map<string,string>")
    )
    df = raw.select(
        _clean_str(F.col(src["item_id"])).alias("item_id"),
        _clean_str(F.col(src["title"])).alias("title"),
        _clean_str(opt("text")).alias("text"),
        _clean_str(F.col(src["category"])).alias("category"),
        _clean_str(opt("brand")).alias("brand"),
        price.alias("price"),
        _clean_str(opt("image_path")).alias("image_path"),
        created.alias("created_ts"),
        attributes.alias("attributes"),
        F.lit(source).alias("source"),
        price_raw.cast("string").alias("price_raw"),
        created_raw.cast("string").alias("created_raw"),
        F.to_json(F.struct(*[F.col(c) for c in cols])).alias("raw"),
    )
    checks = [
        ("NULL_KEY", F.col("item_id").isNull()),
        ("BAD_PRICE", (F.col("price_raw").isNotNull() & (F.trim("price_raw") != "")
                       & F.col("price").isNull()) | (F.col("price") < 0)),
        ("BAD_TIMESTAMP", F.col("created_raw").isNotNull() & F.col("created_ts").isNull()),
    ]
    df = df.withColumn(
        "reasons",
        F.filter(F.array(*[F.when(c, F.lit(n)) for n, c in checks]), lambda x: x.isNotNull()),
    )
    ok = F.size("reasons") == 0
    w = Window.partitionBy("item_id", ok).orderBy(F.col("raw").asc())
    df = df.withColumn("_rank", F.when(ok, F.row_number().over(w)))
    df = df.withColumn("reasons", F.when(ok & (F.col("_rank") > 1), F.array(F.lit("DUPLICATE")))
                       .otherwise(F.col("reasons")))
    return df.drop("_rank").withColumn("reason", F.get("reasons", 0))


def reason_counts(annotated: DataFrame) -> dict[str, int]:
    """{'clean': n, '<REASON>': n, ...} in one pass (reason = first reason)."""
    rows = (annotated.groupBy(F.coalesce(F.col("reason"), F.lit("clean")).alias("r"))
            .count().collect())
    return {r["r"]: int(r["count"]) for r in rows}
