"""Seeded synthetic interaction logs for scale tests and benchmarks (Spark, no driver-side data).

Shape of the data (all draws are hash-based — ``xxhash64(seed, key, salt)`` — so the same seed
gives the same rows whatever the number of partitions or executors):

- items: ``items`` with ``categories`` categories and brands nested in categories, log-normal
  prices, creation dates; popularity is Zipf (exponent ``item_zipf``) within and across categories.
- users: heavy-tailed activity — session owners drawn from a bounded power law (``user_zipf``).
- sessions: a start uniform over ``days`` days before the end of the as-of date (with a diurnal bias), a theme
  category; geometric length (mean ``mean_session_steps``); gaps between steps exponential (mean
  ``mean_gap_s``) so that sessionization by 30-minute inactivity recovers them.
- each session has a device (mobile 60 %, desktop 30 %, tablet 10 %), kept in the events'
  context by ingest;
- each step is an ``impression`` at a slate position 1..10; it becomes a ``click`` with a
  position-biased probability, clicks have log-normal dwell (some accidental, < 5 s); a click may
  lead to ``cart`` and ``purchase``.

Every row carries ``source = 'synthetic'``; item titles start with "synthetic".
"""

from __future__ import annotations

import datetime as dt
import math

from pydantic import ValidationError
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recfactory.features.draws import uniform
from recfactory.features.instants import day_start, ts_lit
from recfactory.features.spec import Field, Seeded


class SyntheticSpec(Seeded):
    """The generator's parameters, declared once: generate_synthetic's flags are these fields, and
    ingest's ``--synthetic events=…,items=…`` names them (``SyntheticSpec.parse``). The events end
    at the end of the run's as-of date (an argument of the generators, not a parameter)."""

    events: int = Field(100_000, ge=1, description="Approximate number of raw events.")
    items: int | None = Field(None, ge=1, description="Number of items (default events/20, at least 100).")
    users: int | None = Field(None, ge=1, description="Number of users (default events/40, at least 50).")
    days: int = Field(30, ge=1, description="Events span the days before the end of the as-of date.")
    categories: int = Field(50, ge=1, description="Number of item categories.")
    brands_per_category: int = Field(20, ge=1, description="Brands nested in each category.")
    item_zipf: float = Field(1.1, gt=0, description="Exponent of the items' Zipf popularity.")
    user_zipf: float = Field(0.9, gt=0, description="Exponent of the users' power-law activity.")
    mean_session_steps: float = Field(8.0, ge=1.0, description="Mean steps (impressions) per session.")
    mean_gap_s: float = Field(40.0, gt=0, description="Mean seconds between a session's steps.")
    in_category_share: float = Field(
        0.75, ge=0.0, le=1.0, description="Share of a session's steps inside its theme category."
    )

    @property
    def n_items(self) -> int:
        return self.items or max(100, self.events // 20)

    @property
    def n_users(self) -> int:
        return self.users or max(50, self.events // 40)

    @classmethod
    def parse(cls, text: str, seed: int) -> SyntheticSpec:
        """``key=value,...`` of this spec's fields (the seed is the job's, not a key), validated as
        the flags are: an unknown key, a repeated key or a bad value is an error naming it."""
        kv: dict[str, str] = {}
        for part in filter(None, (x.strip() for x in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ValueError(f"{part!r} is not key=value")
            if key == "seed":
                raise ValueError("the seed is the job's --seed, not a key of the synthetic spec")
            if key not in cls.model_fields:
                raise ValueError(f"unknown synthetic parameter {key!r} (known: {', '.join(sorted(cls.model_fields))})")
            if key in kv:
                raise ValueError(f"synthetic parameter {key!r} given twice")
            kv[key] = value.strip()
        try:
            return cls.model_validate({**kv, "seed": seed})
        except ValidationError as e:
            bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ValueError(f"bad synthetic parameter ({bad})") from None


def zipf_rank(u: Column, n: int, s: float) -> Column:
    """Rank in [0, n) from U[0,1), by the inverse CDF of a power law on [1, n+1) (exponent s)."""
    if abs(s - 1.0) < 1e-9:
        x = F.exp(u * F.lit(math.log(n + 1)))
    else:
        a = 1.0 - s
        x = F.pow(u * F.lit((n + 1) ** a - 1.0) + F.lit(1.0), F.lit(1.0 / a))
    return F.least(F.floor(x).cast("long") - 1, F.lit(n - 1))


_P_CLICK1, _P_ACCIDENTAL, _P_CART, _P_BUY = 0.35, 0.15, 0.12, 0.4


def expected_events_per_session(spec: SyntheticSpec) -> float:
    """E[steps] x E[events per step], so that the generator lands near spec.events."""
    # steps = 1 + floor(Exp(1) * (m - 1)):  E[floor(c X)] = 1 / (e^(1/c) - 1)
    c = spec.mean_session_steps - 1
    steps = 1.0 + (1.0 / math.expm1(1.0 / c) if c > 0 else 0.0)
    p_click = _P_CLICK1 * sum(p**-0.5 for p in range(1, 11)) / 10
    per_step = 1 + p_click * (1 + (1 - _P_ACCIDENTAL) * _P_CART * (1 + _P_BUY))
    return steps * per_step


def synthetic_items(spark: SparkSession, spec: SyntheticSpec, end_date: dt.date) -> DataFrame:
    """spec.n_items catalog rows, created in the year before ``end_date`` 00:00 UTC (the jobs pass
    the day after their as-of date: the end of the as-of date)."""
    s = spec.seed
    i = F.col("id")
    cat = i % spec.categories
    brand = cat * spec.brands_per_category + F.floor(uniform(s, i, salt="brand") * spec.brands_per_category).cast(
        "long"
    )
    price = F.round(
        F.exp(
            F.lit(3.0)
            + F.lit(0.8)
            * F.sqrt(F.lit(-2.0) * F.log(uniform(s, i, salt="p1") + F.lit(1e-12)))
            * F.cos(F.lit(2 * math.pi) * uniform(s, i, salt="p2"))
        ),
        2,
    )
    end = day_start(end_date)  # an aware UTC instant (never the host's local midnight)
    created = ts_lit(end - dt.timedelta(days=365)) + F.make_dt_interval(
        F.floor(uniform(s, i, salt="created") * 365).cast("int")
    )
    return spark.range(spec.n_items).select(
        F.concat(F.lit("i"), i.cast("string")).alias("item_id"),
        F.concat(F.lit("synthetic item "), i.cast("string")).alias("title"),
        F.concat(
            F.lit("synthetic "),
            F.format_string("cat%03d", cat),
            F.lit(" item by "),
            F.format_string("brand%05d", brand),
        ).alias("text"),
        F.format_string("cat%03d", cat).alias("category"),
        F.format_string("brand%05d", brand).alias("brand"),
        price.alias("price"),
        created.alias("created_ts"),
        F.lit("synthetic").alias("source"),
    )


def synthetic_events(spark: SparkSession, spec: SyntheticSpec, end_date: dt.date) -> DataFrame:
    """About spec.events raw events (impressions, clicks, carts, purchases) in the spec's days
    before ``end_date`` 00:00 UTC (the jobs pass the day after their as-of date)."""
    s = spec.seed
    n_sessions = max(1, round(spec.events / expected_events_per_session(spec)))
    n_per_cat = max(1, spec.n_items // spec.categories)
    sid = F.col("id")
    end = day_start(end_date)  # an aware UTC instant (never the host's local midnight)
    start0 = end - dt.timedelta(days=spec.days)
    day = F.floor(uniform(s, sid, salt="day") * spec.days).cast("int")
    # diurnal bias: mass concentrated in the evening (hour ~ 20) via a folded triangle
    hour = (F.lit(20.0) + (uniform(s, sid, salt="h1") - uniform(s, sid, salt="h2")) * 14.0 + 24.0) % 24.0
    start = ts_lit(start0) + F.make_dt_interval(
        day, F.floor(hour).cast("int"), F.floor(uniform(s, sid, salt="min") * 60).cast("int")
    )
    steps = F.least(
        F.lit(200),
        F.lit(1)
        + F.floor(-F.log(uniform(s, sid, salt="len") + F.lit(1e-12)) * (spec.mean_session_steps - 1)).cast("int"),
    )
    sessions = spark.range(n_sessions).select(
        sid.alias("session"),
        F.concat(
            F.lit("u"), zipf_rank(uniform(s, sid, salt="user"), spec.n_users, spec.user_zipf).cast("string")
        ).alias("user_id"),
        (zipf_rank(uniform(s, sid, salt="theme"), spec.categories, 0.8)).alias("theme"),
        start.alias("start"),
        F.when(uniform(s, sid, salt="device") < 0.6, "mobile")
        .when(uniform(s, sid, salt="device") < 0.9, "desktop")
        .otherwise("tablet")
        .alias("device"),
        F.explode(F.sequence(F.lit(1), steps)).alias("step"),
    )
    st = F.col("step")
    key = (F.col("session"), st)
    gap = -F.log(uniform(s, *key, salt="gap") + F.lit(1e-12)) * spec.mean_gap_s
    w = Window.partitionBy("session").orderBy("step").rowsBetween(Window.unboundedPreceding, 0)
    in_cat = uniform(s, *key, salt="incat") < spec.in_category_share
    item_in_cat = zipf_rank(uniform(s, *key, salt="item"), n_per_cat, spec.item_zipf) * spec.categories + F.col("theme")
    item_global = zipf_rank(uniform(s, *key, salt="item"), spec.n_items, spec.item_zipf)
    item = F.least(F.when(in_cat, item_in_cat).otherwise(item_global), F.lit(spec.n_items - 1))
    position = ((st - 1) % 10) + 1
    p_click = F.lit(_P_CLICK1) / F.sqrt(position.cast("double"))
    clicked = uniform(s, *key, salt="click") < p_click
    accidental = uniform(s, *key, salt="acc") < _P_ACCIDENTAL
    dwell = (
        F.when(accidental, F.floor(uniform(s, *key, salt="dw0") * 5000))
        .otherwise(
            F.floor(
                F.exp(
                    F.lit(10.3)
                    + F.lit(0.9)
                    * F.sqrt(F.lit(-2.0) * F.log(uniform(s, *key, salt="dw1") + F.lit(1e-12)))
                    * F.cos(F.lit(2 * math.pi) * uniform(s, *key, salt="dw2"))
                )
            )
        )
        .cast("long")
    )
    carted = clicked & ~accidental & (uniform(s, *key, salt="cart") < _P_CART)
    bought = carted & (uniform(s, *key, salt="buy") < _P_BUY)
    steps_df = sessions.select(
        "session",
        "user_id",
        "step",
        "device",
        (
            F.col("start") + F.make_dt_interval(F.lit(0), F.lit(0), F.lit(0), F.sum(gap).over(w).cast("decimal(18,6)"))
        ).alias("ts0"),
        F.concat(F.lit("i"), item.cast("string")).alias("item_id"),
        position.alias("position"),
        clicked.alias("clicked"),
        dwell.alias("dwell"),
        carted.alias("carted"),
        bought.alias("bought"),
    )
    sec = lambda n: F.make_dt_interval(F.lit(0), F.lit(0), F.lit(0), F.lit(n).cast("decimal(18,6)"))  # noqa: E731
    ev = F.struct  # (event_type, ts, dwell_ms)
    events = F.filter(
        F.array(
            ev(
                F.lit("impression").alias("event_type"),
                F.col("ts0").alias("ts"),
                F.lit(None).cast("long").alias("dwell_ms"),
            ),
            F.when(
                F.col("clicked"),
                ev(
                    F.lit("click").alias("event_type"),
                    (F.col("ts0") + sec(1)).alias("ts"),
                    F.col("dwell").alias("dwell_ms"),
                ),
            ),
            F.when(
                F.col("carted"),
                ev(
                    F.lit("cart").alias("event_type"),
                    (F.col("ts0") + sec(2)).alias("ts"),
                    F.lit(None).cast("long").alias("dwell_ms"),
                ),
            ),
            F.when(
                F.col("bought"),
                ev(
                    F.lit("purchase").alias("event_type"),
                    (F.col("ts0") + sec(3)).alias("ts"),
                    F.lit(None).cast("long").alias("dwell_ms"),
                ),
            ),
        ),
        lambda x: x.isNotNull(),
    )
    out = steps_df.select("user_id", "item_id", "position", "device", F.explode(events).alias("e"))
    return out.select(
        "user_id",
        "item_id",
        F.col("e.event_type").alias("event_type"),
        F.col("e.ts").alias("ts"),
        F.col("e.dwell_ms").alias("dwell_ms"),
        F.col("position").cast("string").alias("position"),
        "device",
        F.lit("synthetic").alias("source"),
    ).where(F.col("ts") < ts_lit(end))
