"""Labels and point-in-time training samples. Pure Spark, no I/O.

Samples are impressions when the data has them (``mode='impressions'``), else interaction rows
(``mode='interactions'``, e.g. MovieLens). Labels:

- ``label_click``: impressions — 1 when the same user has a positive interaction (click, like,
  cart, purchase, share) with the same item after the impression, within ``attribution_minutes``
  and before that pair's next impression; interactions — 1 when the row's type is positive.
- ``label_dwell = label_click × sigmoid((dwell_ms − τ) / s)`` (dwell of the attributed clicks,
  summed); where dwell is unknown the sigmoid factor is 1 and ``dwell_known`` is false.
- ``hard_negative``: a click whose known dwell is below ``bounce_ms`` (a quick bounce).

Features are computed **as of just before each sample's timestamp**: for every key declaration of
the cross-stats spec and every window, counts of each event type over ``[ts − window, ts)`` and the
smoothed rates, plus the days since the key's previous event — running sums over the microsecond
timestamp that end one microsecond before the sample (see ``point_in_time_features``), so no event
at or after the sample's timestamp (its own click included) can reach its features. The Beta priors of
the smoothed rates are fit on the warm-up period (events before the first sample), never on the
samples' own period. Sequence features: the last ``history_len`` interactions before the sample.

Split: deterministic by time — test = the last ``test_days`` before the cutoff, validation = the
``val_days`` before that, train = the rest of ``[sample_start, …)``. Optional uniform subsampling
(rate r, every split) and negative downsampling of the train split (rate w); both rates are stored
on every row so consumers can recalibrate q = p / (p + (1 − p) / w).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from pydantic import model_validator
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recfactory.features.cross_stats import (
    CrossStatsSpec,
    all_present,
    dim_column_name,
    rate_parts,
    with_dims,
)
from recfactory.features.draws import uniform
from recfactory.features.instants import ts_lit, utc_dow_col, utc_hour_col
from recfactory.features.schema import EVENT_TYPES, POSITIVE_EVENT_TYPES
from recfactory.features.sequences import visible_events
from recfactory.features.spec import Field, Seeded

SPLITS = ("train", "validation", "test")


class SampleSpec(Seeded):
    mode: Literal["auto", "impressions", "interactions"] = Field(
        "auto", description="Sample rows: impressions, interaction rows, or auto (impressions when any exist)."
    )
    positive_types: tuple[str, ...] = Field(POSITIVE_EVENT_TYPES, description="Event types that make label_click = 1.")
    attribution_minutes: float = Field(
        30.0,
        gt=0,
        description="Impressions mode: a positive within this long "
        "after the impression (and before the pair's next impression) is its click.",
    )
    dwell_tau_ms: float = Field(30_000.0, description="τ of label_dwell = click × sigmoid((dwell − τ)/s).")
    dwell_scale_ms: float = Field(10_000.0, gt=0, description="s of label_dwell.")
    bounce_ms: int = Field(5_000, ge=0, description="A click with known dwell below this is a hard negative.")
    history_len: int = Field(20, ge=0, description="Last k interactions before each sample (hist_items).")
    history_types: tuple[str, ...] = Field(
        tuple(t for t in EVENT_TYPES if t != "impression"), description="Event types that enter hist_items."
    )
    warmup_days: float = Field(
        7.0, gt=0, description="The first days of data are history only; the smoothing priors are fit on them."
    )
    val_days: float = Field(1.0, ge=0, description="Validation split: the days before the test split.")
    test_days: float = Field(1.0, ge=0, description="Test split: the last days before the cutoff.")
    sample_rate: float = Field(1.0, gt=0, le=1, description="Uniform subsampling rate r (every split).")
    negative_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Negative downsampling rate w (train split "
        "only); stored per row for recalibration q = p/(p+(1−p)/w).",
    )

    @model_validator(mode="after")
    def _splits(self):
        if self.warmup_days <= 0 or self.val_days < 0 or self.test_days < 0:
            raise ValueError("warmup_days must be > 0 (the smoothing priors are fit on them); val_days, test_days >= 0")
        return self


@dataclass(frozen=True)
class SplitBounds:
    sample_start: dt.datetime
    val_start: dt.datetime
    test_start: dt.datetime
    cutoff: dt.datetime

    @classmethod
    def of(cls, first_ts: dt.datetime, cutoff: dt.datetime, spec: SampleSpec) -> SplitBounds:
        b = cls(
            first_ts + dt.timedelta(days=spec.warmup_days),
            cutoff - dt.timedelta(days=spec.val_days + spec.test_days),
            cutoff - dt.timedelta(days=spec.test_days),
            cutoff,
        )
        if b.val_start <= b.sample_start:
            raise ValueError(
                f"no training period: the data starts {first_ts}, warm-up ends {b.sample_start}, validation "
                f"starts {b.val_start}; lower --warmup-days/--val-days/--test-days or use a later as-of"
            )
        return b


def feature_name(key: str, window: str, what: str) -> str:
    return f"f_{key}_{window}_{what}"


def label_samples(ev: DataFrame, spec: SampleSpec, mode: str) -> DataFrame:
    """sample_id, user_id, item_id, ts, context, label_click, dwell_ms (of the sample), event_type."""
    base = ("user_id", "item_id", "ts", "context", "event_id")
    if mode == "interactions":
        s = ev.where(F.col("event_type") != "impression")
        return s.select(
            *base,
            "event_type",
            F.col("event_type").isin(*spec.positive_types).cast("int").alias("label_click"),
            "dwell_ms",
        )
    imps = ev.where(F.col("event_type") == "impression")
    pos = ev.where(F.col("event_type").isin(*spec.positive_types))
    both = imps.select(
        "user_id",
        "item_id",
        "ts",
        "event_id",
        F.lit(0).alias("_kind"),
        F.col("event_id").alias("_imp"),
        F.col("ts").alias("_imp_ts"),
        F.lit(None).cast("long").alias("dwell_ms"),
    ).unionByName(
        pos.select(
            "user_id",
            "item_id",
            "ts",
            "event_id",
            F.lit(1).alias("_kind"),
            F.lit(None).cast("long").alias("_imp"),
            F.lit(None).cast("timestamp").alias("_imp_ts"),
            "dwell_ms",
        )
    )
    w = (
        Window.partitionBy("user_id", "item_id")
        .orderBy("ts", "_kind", "event_id")
        .rowsBetween(Window.unboundedPreceding, 0)
    )
    both = both.withColumn("_imp", F.last("_imp", ignorenulls=True).over(w)).withColumn(
        "_imp_ts", F.last("_imp_ts", ignorenulls=True).over(w)
    )
    attributed = both.where(
        (F.col("_kind") == 1)
        & F.col("_imp").isNotNull()
        & (F.col("ts").cast("double") - F.col("_imp_ts").cast("double") <= spec.attribution_minutes * 60)
    )
    clicks = attributed.groupBy(F.col("_imp").alias("event_id")).agg(
        F.lit(1).alias("label_click"), F.sum("dwell_ms").alias("dwell_ms")
    )
    return imps.select(*base, "event_type").join(clicks, "event_id", "left").fillna({"label_click": 0})


def _masked(key_cols: tuple[str, ...], value: Column) -> Column:
    return F.when(all_present(key_cols), value)


def point_in_time_features(
    events: DataFrame,
    samples: DataFrame,
    stats: CrossStatsSpec,
    priors: dict[tuple, tuple[float, float]],
) -> tuple[DataFrame, list[str]]:
    """Add the cross-statistics features as of just before each sample's ts. Both inputs carry the
    spec's dimension columns. Returns (samples + feature columns, feature names).

    Linear time, whatever the window length: Spark's bounded sliding frames re-aggregate their whole
    buffer at every row (quadratic for a 30-day window over a popular item), so instead each event
    enters once with +1 at its ts and leaves once per finite window w with −1 at ts + w (an
    "expiry" row). The count over [t − w, t) is then a running sum over all rows before t — an
    unbounded-preceding frame, which Spark evaluates incrementally. An event at exactly t − w
    expires at t, which the frame (ending 1 µs before t) excludes: it is counted, as it should be."""
    dim_cols = [dim_column_name(d) for d in stats.dims]
    finite = [w for w in stats.windows if w.seconds is not None]
    spans = [int(w.seconds or 0) for w in finite]
    us = F.unix_micros("ts")
    enter = F.struct(
        us.alias("_at"),
        F.lit(1).alias("_kind"),
        *[F.lit(1).alias(f"_d{i}") for i in range(len(finite))],
        F.lit(1).alias("_ev"),
    )
    leave = [
        F.struct(
            (us + F.lit(spans[i] * 1_000_000)).alias("_at"),
            F.lit(2).alias("_kind"),
            *[F.lit(-1 if j == i else 0).alias(f"_d{j}") for j in range(len(finite))],
            F.lit(0).alias("_ev"),
        )
        for i in range(len(finite))
    ]
    ev = (
        events.where(F.col("event_type").isin(*stats.counted_types))
        .select(F.col("event_type").alias("_type"), *dim_cols, F.explode(F.array(enter, *leave)).alias("_r"))
        .select("_type", *dim_cols, "_r.*")
    )
    # the samples' own columns ride along (null on event rows), so no join back is needed
    rows = samples.select("*", us.alias("_at"), F.lit(0).alias("_kind")).unionByName(ev, allowMissingColumns=True)
    names: list[str] = []
    for key in stats.keys:  # one projection per key type (one sort by its dimensions)
        cols = key.columns
        before = Window.partitionBy(*cols).orderBy("_at").rangeBetween(Window.unboundedPreceding, -1)
        exprs = []
        for win in stats.windows:
            d = F.col("_ev") if win.seconds is None else F.col(f"_d{finite.index(win)}")
            counts = {
                t: F.coalesce(F.sum(F.when(F.col("_type") == t, d)).over(before), F.lit(0)).cast("long")
                for t in stats.counted_types
            }
            exprs += [(feature_name(key.name, win.name, t), counts[t]) for t in stats.event_types]
            for r in stats.rates:
                num, den = rate_parts(r, counts.__getitem__)
                a, b = priors.get((key.name, win.name, r.name), (1.0, 1.0))
                exprs.append((feature_name(key.name, win.name, r.name), (num + F.lit(a)) / (den + F.lit(a + b))))
        last = F.max(F.when(F.col("_kind") == 1, F.col("_at"))).over(before)
        exprs.append((f"f_{key.name}_days_since_last", (F.col("_at") - last) / F.lit(86_400_000_000.0)))
        rows = rows.select("*", *[_masked(cols, e).alias(n) for n, e in exprs])
        names += [n for n, _ in exprs]
    helpers = ["_type", "_at", "_kind", "_ev", *[f"_d{i}" for i in range(len(finite))]]
    return rows.where(F.col("_kind") == 0).drop(*helpers), names


def history_features(events: DataFrame, samples: DataFrame, spec: SampleSpec) -> DataFrame:
    """hist_items: the user's last `history_len` interactions (oldest first) strictly before the
    sample's ts; hist_len: how many interactions the user had before it in total."""
    inter = events.where(F.col("event_type").isin(*spec.history_types)).select(
        "user_id", "ts", "event_id", "item_id", F.lit(1).alias("_kind")
    )
    w = Window.partitionBy("user_id").orderBy("ts", "event_id")
    inter = inter.withColumn("_hist", F.collect_list("item_id").over(w.rowsBetween(-(max(spec.history_len, 1) - 1), 0)))
    inter = inter.withColumn("_n", F.row_number().over(w).cast("long"))
    rows = samples.withColumn("_kind", F.lit(0)).unionByName(
        inter.withColumnRenamed("event_id", "_eid").drop("item_id"), allowMissingColumns=True
    )
    rows = rows.withColumn("_eid", F.coalesce("_eid", "sample_id"))
    before = Window.partitionBy("user_id").orderBy("ts", "_kind", "_eid").rowsBetween(Window.unboundedPreceding, -1)
    hist = F.coalesce(F.last("_hist", ignorenulls=True).over(before), F.array().cast("array<string>"))
    if spec.history_len == 0:
        hist = F.array().cast("array<string>")
    rows = rows.select(
        "*",
        hist.alias("hist_items"),
        F.coalesce(F.last("_n", ignorenulls=True).over(before), F.lit(0)).alias("hist_len"),
    )
    return rows.where(F.col("_kind") == 0).drop("_kind", "_eid", "_hist", "_n")


def build_training_samples(
    events: DataFrame,
    items: DataFrame | None,
    cutoff: dt.datetime,
    spec: SampleSpec,
    stats: CrossStatsSpec,
    bounds: SplitBounds,
    priors: dict[tuple, tuple[float, float]],
    mode: str,
) -> tuple[DataFrame, list[str]]:
    """Every labeled sample in [sample_start, cutoff) with its split and features (before
    subsampling: see `subsample`). Returns (frame, feature column names)."""
    visible = visible_events(events, cutoff)
    ev = with_dims(visible, items, tuple(dict.fromkeys(stats.dims + (("category",) if items is not None else ()))))
    labeled = label_samples(ev, spec, mode).where(F.col("ts") >= ts_lit(bounds.sample_start))
    added = [c for c in ev.columns if c not in visible.columns]  # the dimension columns with_dims added
    samples = labeled.join(ev.select("event_id", *added), "event_id").withColumnRenamed("event_id", "sample_id")
    sig = F.lit(1.0) / (
        F.lit(1.0) + F.exp(-(F.col("dwell_ms").cast("double") - spec.dwell_tau_ms) / spec.dwell_scale_ms)
    )
    samples = samples.select(
        "*",
        (F.col("label_click") * F.coalesce(sig, F.lit(1.0))).alias("label_dwell"),
        F.col("dwell_ms").isNotNull().alias("dwell_known"),
        F.coalesce((F.col("label_click") == 1) & (F.col("dwell_ms") < spec.bounce_ms), F.lit(False)).alias(
            "hard_negative"
        ),
        utc_hour_col("ts").alias("ctx_hour_of_day"),
        utc_dow_col("ts").alias("ctx_day_of_week"),
        F.expr("try_cast(context['position'] AS INT)").alias("ctx_position"),
        F.when(F.col("ts") >= ts_lit(bounds.test_start), "test")
        .when(F.col("ts") >= ts_lit(bounds.val_start), "validation")
        .otherwise("train")
        .alias("split"),
    )
    samples, names = point_in_time_features(ev, samples, stats, priors)
    samples = history_features(ev, samples, spec)
    return samples, names


def subsample(samples: DataFrame, spec: SampleSpec) -> DataFrame:
    """Keep a row when its hash draws pass: uniform rate r (every split) and, for train negatives,
    rate w. Adds sample_rate, negative_rate (w on train rows, 1.0 elsewhere) and weight (the
    inverse-probability weight 1/(r·w) of a kept row) and `_drop` (null = kept, else the reason)."""
    keep_u = uniform(spec.seed, F.col("sample_id"), salt="subsample") < spec.sample_rate
    train = F.col("split") == "train"
    w = F.when(train, F.lit(spec.negative_rate)).otherwise(F.lit(1.0))
    keep_n = (F.col("label_click") == 1) | (uniform(spec.seed, F.col("sample_id"), salt="negative") < w)
    return samples.select(
        "*",
        F.lit(spec.sample_rate).alias("sample_rate"),
        w.alias("negative_rate"),
        (F.lit(1.0) / (F.lit(spec.sample_rate) * F.when(F.col("label_click") == 1, F.lit(1.0)).otherwise(w))).alias(
            "weight"
        ),
        F.when(~keep_u, F.lit("subsampled")).when(~keep_n, F.lit("negative_downsampled")).alias("_drop"),
    )


def recalibrate(p, w):
    """q = p / (p + (1 − p) / w): a probability predicted by a model trained on negatives kept at
    rate w, mapped back to the original distribution (He et al., 2014). Works on floats or arrays."""
    return p / (p + (1 - p) / w)
