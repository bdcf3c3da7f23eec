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

from recfactory.features.instants import epoch_micros, ts_lit
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
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "ts",
    "dwell_ms",
    "context",
    "source",
)


# Which copy of an event (one event_id) is published when copies differ (e.g. in dwell): the
# smallest under this content order — known dwell before unknown, then the smaller dwell, then the
# context and the source. Within a load it picks the clean copy (the others are DUPLICATE); across
# loads it is the MERGE condition of `ingest`, so the winner does not depend on the loads' order.
def _preference_key(prefix: str) -> str:
    return f"struct({prefix}dwell_ms IS NULL, coalesce({prefix}dwell_ms, 0), to_json({prefix}context), {prefix}source)"


EVENT_PREFERENCE = f"{_preference_key('s.')} < {_preference_key('t.')}"

ITEM_COLUMNS = (
    "item_id",
    "title",
    "text",
    "category",
    "brand",
    "price",
    "image_path",
    "created_ts",
    "attributes",
    "source",
)


# Plausible instants, by default: anything before 1990 or from 2100 on is a unit mix-up or a
# placeholder (year 1, the epoch's 1970-01-01, 9999-12-31), not an interaction.
DEFAULT_MIN_TS = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
DEFAULT_MAX_TS = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
DEFAULT_MAX_ID_LENGTH = 256  # characters, after normalization
DEFAULT_MAX_DWELL_MS = 86_400_000  # one day
# what a timestamp can be at all (0001-01-01 .. 9999-12-31T23:59:59.999999 UTC, in epoch seconds);
# a number outside is unparseable (BAD_TIMESTAMP), never an overflow that fails the task
_TS_MIN_S, _TS_MAX_S = -62_135_596_800, 253_402_300_800
TS_UNITS = ("auto", "s", "ms", "us", "ns")


@dataclass(frozen=True)
class Limits:
    """What a value may be: shared by events and items."""

    min_ts: dt.datetime = DEFAULT_MIN_TS  # ts < min_ts or ts >= max_ts: IMPLAUSIBLE_TIMESTAMP
    max_ts: dt.datetime = DEFAULT_MAX_TS
    max_id_length: int = DEFAULT_MAX_ID_LENGTH
    ts_unit: str = "auto"  # numbers: s | ms | us | ns | auto (see parse_ts)

    def __post_init__(self):
        if self.ts_unit not in TS_UNITS:
            raise ValueError(f"ts_unit must be one of {', '.join(TS_UNITS)}, not {self.ts_unit!r}")
        if not epoch_micros(self.min_ts) < epoch_micros(self.max_ts):
            raise ValueError(f"min_ts {self.min_ts} must be before max_ts {self.max_ts}")
        if self.max_id_length < 1:
            raise ValueError("max_id_length must be at least 1")


@dataclass(frozen=True)
class EventRules:
    """How raw events are read and judged."""

    cutoff: dt.datetime  # ts >= cutoff is a FUTURE_TIMESTAMP
    event_types: tuple[str, ...] = EVENT_TYPES
    event_type_map: tuple[tuple[str, str], ...] = ()  # raw value → canonical type
    check_orphans: bool = True
    max_dwell_ms: int = DEFAULT_MAX_DWELL_MS
    limits: Limits = Limits()


# Characters an ID never really holds: format characters (zero-width space / joiners, word joiner,
# BOM, bidi controls, soft hyphen: \p{Cf}) go wherever they are; whitespace of any script
# (\p{Z}: no-break, ideographic, ... spaces), ASCII whitespace and control characters are trimmed
# from both ends. Java regular expressions (Spark's), so no row leaves the JVM for it.
_FORMAT_CHARS = r"\p{Cf}"
_EDGES = r"^[\s\p{Z}\p{Cc}]+|[\s\p{Z}\p{Cc}]+$"


def _nfc(values):
    """Unicode NFC, vectorized in Arrow's C++ kernel (an Arrow UDF: no per-row Python)."""
    import pyarrow.compute as pc

    return pc.utf8_normalize(values, form="NFC")


_NFC_UDF = None


def nfc(c: Column) -> Column:
    global _NFC_UDF
    if _NFC_UDF is None:
        _NFC_UDF = F.arrow_udf(_nfc, T.StringType())
    return _NFC_UDF(c)


def normalize_id(c: Column) -> Column:
    """An ID as text: valid UTF-8, format characters removed, Unicode whitespace trimmed, NFC;
    null when nothing is left."""
    s = F.make_valid_utf8(c.cast("string"))
    s = F.regexp_replace(F.regexp_replace(s, _FORMAT_CHARS, ""), _EDGES, "")
    s = nfc(s)
    return F.when(s != "", s)


def _clean_str(c: Column) -> Column:
    """Free text (titles, categories): trimmed of Unicode whitespace, null when blank."""
    s = F.regexp_replace(F.make_valid_utf8(c.cast("string")), _EDGES, "")
    return F.when(s != "", s)


def _finite(x: Column) -> Column:
    return ~F.isnan(x) & (F.abs(x) < F.lit(float("inf")))


def parse_ts(c: Column, dtype: T.DataType, unit: str = "auto") -> Column:
    """Timestamp from a timestamp, a date, a unix number or a string (ISO-8601 or digits); null
    when it is none of them. Never fails a task (Spark runs with ANSI on): NaN, infinities and
    numbers beyond year 9999 are null, not an overflow.

    The unit of a number (or digit string) is ``unit``; ``auto`` takes it from the magnitude:
    seconds up to 1e11 (until year 5138), milliseconds up to 1e14, microseconds up to 1e17,
    nanoseconds above. So ``auto`` reads 20250630 (a yyyymmdd string) as seconds — 1970-08-23,
    which the plausibility bounds then quarantine; give the unit when your data is ambiguous.
    """
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return c.cast("timestamp")
    if isinstance(dtype, T.NumericType):
        num = c.cast("double")
    else:
        s = F.trim(c.cast("string"))
        num = F.when(s.rlike(r"^-?[0-9]+(\.[0-9]+)?$"), s.try_cast("double"))
    if unit == "auto":
        a = F.abs(num)
        secs = F.when(a > 1e17, num / 1e9).when(a > 1e14, num / 1e6).when(a > 1e11, num / 1e3).otherwise(num)
    else:
        secs = num / {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[unit]
    ok = _finite(secs) & (secs >= F.lit(float(_TS_MIN_S))) & (secs < F.lit(float(_TS_MAX_S)))
    from_num = F.when(ok, F.timestamp_micros(F.round(secs * 1e6).cast("long")))
    if isinstance(dtype, T.NumericType):
        return from_num
    text = F.try_to_timestamp(F.trim(c.cast("string")))
    in_range = F.unix_micros(text).between(_TS_MIN_S * 1_000_000, _TS_MAX_S * 1_000_000 - 1)
    return F.coalesce(from_num, F.when(in_range, text))


def plausible(ts: Column, limits: Limits) -> Column:
    return (ts >= ts_lit(limits.min_ts)) & (ts < ts_lit(limits.max_ts))


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
    schema = {f.name: f.dataType for f in raw.schema.fields}

    lim = rules.limits
    ts_raw = F.col(src["ts"])
    ts = parse_ts(ts_raw, schema[src["ts"]], lim.ts_unit)
    has_dwell = src["dwell_ms"] in cols
    dwell_raw = F.col(src["dwell_ms"]) if has_dwell else F.lit(None)
    if has_dwell and isinstance(schema[src["dwell_ms"]], T.NumericType):
        dwell = dwell_raw.cast("double")
    else:
        text = F.trim(dwell_raw.cast("string"))
        dwell = F.when(text != "", text.try_cast("double"))
    context = (
        F.create_map(*[x for c in context_cols for x in (F.lit(c), F.col(c).cast("string"))])
        if context_cols
        else F.create_map().cast("map<string,string>")
    )

    df = raw.select(
        normalize_id(F.col(src["user_id"])).alias("user_id"),
        normalize_id(F.col(src["item_id"])).alias("item_id"),
        _map_event_type(F.col(src["event_type"]), rules.event_type_map).alias("event_type"),
        ts.alias("_ts"),
        ts_raw.cast("string").alias("ts_raw"),
        dwell.alias("_dwell"),
        dwell_raw.cast("string").alias("dwell_raw"),
        context.alias("context"),
        F.to_json(F.struct(*[F.col(c) for c in cols])).alias("raw"),
    )
    # a dwell is a finite number of milliseconds, at most max_dwell_ms (NaN, ±Infinity, 1e19 are
    # BAD_DWELL: they never reach the cast to a long)
    dwell_ok = _finite(F.col("_dwell")) & (F.col("_dwell") <= F.lit(float(rules.max_dwell_ms)))
    ts_ok = plausible(F.col("_ts"), lim)
    df = df.withColumns(
        {
            "dwell_ms": F.when(dwell_ok & (F.col("_dwell") >= 0), F.round("_dwell").cast("long")),
            # an implausible instant is quarantined, not published: the clean ts is within the bounds
            "ts": F.when(ts_ok, F.col("_ts")),
        }
    )
    df = df.withColumn(
        "event_id",
        F.xxhash64("user_id", "item_id", "event_type", F.col("ts").cast("long"), F.date_format("ts", "SSSSSS")),
    )
    checks: list[tuple[str, Column]] = [
        (
            "NULL_KEY",
            F.col("user_id").isNull()
            | F.col("item_id").isNull()
            | F.col("event_type").isNull()
            | F.col("ts_raw").isNull(),
        ),
        ("ID_TOO_LONG", (F.length("user_id") > lim.max_id_length) | (F.length("item_id") > lim.max_id_length)),
        ("BAD_TIMESTAMP", F.col("ts_raw").isNotNull() & F.col("_ts").isNull()),
        ("IMPLAUSIBLE_TIMESTAMP", F.col("_ts").isNotNull() & ~ts_ok),
        ("UNKNOWN_EVENT_TYPE", F.col("event_type").isNotNull() & ~F.col("event_type").isin(*rules.event_types)),
        ("FUTURE_TIMESTAMP", ts_ok & (F.col("_ts") >= ts_lit(rules.cutoff))),
        ("BAD_DWELL", F.col("dwell_raw").isNotNull() & ~F.coalesce(dwell_ok, F.lit(False))),
        ("NEGATIVE_DWELL", dwell_ok & (F.col("_dwell") < 0)),
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
    df = df.withColumn(
        "reasons", F.when(dup, F.array_append("reasons", F.lit("DUPLICATE"))).otherwise(F.col("reasons"))
    )
    return df.select(
        *(F.lit(source).alias(c) if c == "source" else c for c in CLEAN_EVENT_COLUMNS),
        "ts_raw",
        "dwell_raw",
        "raw",
        "reasons",
        F.get("reasons", 0).alias("reason"),
    )


def split_validated(annotated: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(clean, quarantine) from :func:`validate_events` / :func:`validate_items` output."""
    ok = F.size("reasons") == 0
    clean_cols = [
        c
        for c in annotated.columns
        if c not in ("reasons", "reason", "raw", "ts_raw", "dwell_raw", "price_raw", "created_raw", "detail")
    ]
    clean = annotated.where(ok).select(*clean_cols)
    quarantine = annotated.where(~ok)
    return clean, quarantine


def quarantine_columns(quarantine: DataFrame) -> DataFrame:
    """Quarantine rows keep the raw row (as JSON and canonical strings) plus the reasons."""
    keep = [
        c
        for c in (
            "user_id",
            "item_id",
            "event_type",
            "ts_raw",
            "dwell_raw",
            "context",
            "title",
            "category",
            "price_raw",
            "created_raw",
            "detail",
        )
        if c in quarantine.columns
    ]
    return quarantine.select(*keep, "raw", "reason", "reasons", "source")


# the canonical item columns a conflicting duplicate is compared on (the kept copy vs each other)
_ITEM_CONTENT = ("title", "text", "category", "brand", "price", "image_path", "created_ts", "attributes")


def validate_items(
    raw: DataFrame, mapping: ColumnMapping = ColumnMapping(), source: str = "user", limits: Limits = Limits()
) -> DataFrame:
    """Canonical item rows with reasons (see ``schema.ITEM_REASONS``) and, for a conflicting
    duplicate, ``detail`` naming the columns in which it differs from the copy that was kept.

    Of several valid rows of one item_id the kept one is the smallest raw row (its JSON text): the
    same winner whatever the input's order or partitioning. The others are DUPLICATE when they say
    the same thing, CONFLICTING_DUPLICATE when they do not."""
    cols = raw.columns
    check_columns(cols, ITEM_REQUIRED, mapping, "items")
    src = {c: mapping.source(c) for c in ITEM_REQUIRED + ITEM_OPTIONAL}
    present = {k: v for k, v in src.items() if v in cols}
    attr_cols = [c for c in cols if c not in set(present.values())]
    schema = {f.name: f.dataType for f in raw.schema.fields}

    def opt(name: str) -> Column:
        return F.col(present[name]) if name in present else F.lit(None)

    price_raw = opt("price")
    price = (
        price_raw.cast("double")
        if "price" in present and isinstance(schema[present["price"]], T.NumericType)
        else F.trim(price_raw.cast("string")).try_cast("double")
    )
    created_raw = opt("created_ts")
    created = (
        parse_ts(created_raw, schema[present["created_ts"]], limits.ts_unit)
        if "created_ts" in present
        else F.lit(None).cast("timestamp")
    )
    attributes = (
        F.create_map(*[x for c in attr_cols for x in (F.lit(c), F.col(c).cast("string"))])
        if attr_cols
        else F.create_map().cast("map<string,string>")
    )
    df = raw.select(
        normalize_id(F.col(src["item_id"])).alias("item_id"),
        _clean_str(F.col(src["title"])).alias("title"),
        _clean_str(opt("text")).alias("text"),
        _clean_str(F.col(src["category"])).alias("category"),
        _clean_str(opt("brand")).alias("brand"),
        price.alias("_price"),
        _clean_str(opt("image_path")).alias("image_path"),
        created.alias("_created"),
        attributes.alias("attributes"),
        F.lit(source).alias("source"),
        price_raw.cast("string").alias("price_raw"),
        created_raw.cast("string").alias("created_raw"),
        F.to_json(F.struct(*[F.col(c) for c in cols])).alias("raw"),
    )
    price_ok = _finite(F.col("_price")) & (F.col("_price") >= 0)
    created_ok = plausible(F.col("_created"), limits)
    df = df.withColumns(
        {"price": F.when(price_ok, F.col("_price")), "created_ts": F.when(created_ok, F.col("_created"))}
    )
    checks = [
        ("NULL_KEY", F.col("item_id").isNull()),
        ("ID_TOO_LONG", F.length("item_id") > limits.max_id_length),
        ("NULL_TITLE", F.col("title").isNull()),
        (
            "BAD_PRICE",
            (F.col("price_raw").isNotNull() & (F.trim("price_raw") != "") & ~F.coalesce(price_ok, F.lit(False))),
        ),
        (
            "BAD_TIMESTAMP",
            F.col("created_raw").isNotNull() & (F.trim("created_raw") != "") & F.col("_created").isNull(),
        ),
        ("IMPLAUSIBLE_TIMESTAMP", F.col("_created").isNotNull() & ~created_ok),
    ]
    df = df.withColumn(
        "reasons",
        F.filter(F.array(*[F.when(c, F.lit(n)) for n, c in checks]), lambda x: x.isNotNull()),
    )
    ok = F.size("reasons") == 0
    w = Window.partitionBy("item_id", ok).orderBy(F.col("raw").asc())
    content = {c: (F.to_json(F.col(c)) if c == "attributes" else F.col(c)) for c in _ITEM_CONTENT}
    kept = {c: F.first(v).over(w) for c, v in content.items()}
    differs = F.filter(
        F.array(*[F.when(~content[c].eqNullSafe(kept[c]), F.lit(c)) for c in _ITEM_CONTENT]), lambda x: x.isNotNull()
    )
    df = df.withColumns({"_rank": F.when(ok, F.row_number().over(w)), "_differs": F.when(ok, differs)})
    loser = ok & (F.col("_rank") > 1)
    conflict = loser & (F.size("_differs") > 0)
    df = df.withColumns(
        {
            "reasons": F.when(conflict, F.array(F.lit("CONFLICTING_DUPLICATE")))
            .when(loser, F.array(F.lit("DUPLICATE")))
            .otherwise(F.col("reasons")),
            "detail": F.when(
                conflict, F.concat(F.lit("differs from the kept copy in "), F.array_join("_differs", ", "))
            ),
        }
    )
    return df.drop("_rank", "_differs", "_price", "_created").withColumn("reason", F.get("reasons", 0))


def reason_counts(annotated: DataFrame) -> dict[str, int]:
    """{'clean': n, '<REASON>': n, ...} in one pass (reason = first reason)."""
    rows = annotated.groupBy(F.coalesce(F.col("reason"), F.lit("clean")).alias("r")).count().collect()
    return {r["r"]: int(r["count"]) for r in rows}
