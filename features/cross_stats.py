"""Windowed cross statistics from a declarative spec: keys × windows × event types. Pure Spark.

The spec is data — a list of key declarations, a list of windows, the event types counted and the
rates — so adding "item × device" or a 90-day window is one more declaration, not more code::

    CrossStatsSpec.parse(keys="user=user_id,item=item_id,user_category=user_id*category",
                         windows="1d,7d,30d,all", rates="ctr=click/impression")

Key dimensions: ``user_id``, ``item_id``, ``category`` and ``brand`` (from the item snapshot),
``hour`` (hour of day, UTC) and ``dow`` (day of week, 1 = Sunday) of the event, and ``ctx:NAME``
(``context['NAME']``, e.g. ``ctx:device``; output column ``ctx_NAME``). An event whose value for one
of a key's dimensions is missing does not contribute to that key type (a key over ``ctx:device``
only counts events that carry a device).

Windows are half-open and end at the cutoff: window ``7d`` holds events with
``cutoff − 7 days ≤ ts < cutoff``; ``all`` holds every event before the cutoff. The training-sample
job evaluates the same declarations at each sample's own timestamp instead of the cutoff.

Rates ``name=num/den`` (den may be a sum, ``like/like+view``) are Bayesian-smoothed with a Beta
prior fit per (key type, window, rate) from the keys' raw rates by the method of moments
(mean m, variance v over keys with den ≥ 1): α + β = m(1 − m)/v − 1, clipped to
[``min_prior_strength``, ``max_prior_strength``]; smoothed = (num + α) / (den + α + β).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import model_validator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recfactory.features.frames import one_row
from recfactory.features.instants import ts_lit, utc_dow_col, utc_hour_col
from recfactory.features.schema import EVENT_TYPES
from recfactory.features.sequences import visible_events
from recfactory.features.spec import Field, Spec

ITEM_DIMS = ("category", "brand")
EVENT_DIMS = ("user_id", "item_id", "hour", "dow")


def dim_column_name(dim: str) -> str:
    return "ctx_" + dim[4:] if dim.startswith("ctx:") else dim


def _check_dim(dim: str) -> None:
    if dim in ITEM_DIMS or dim in EVENT_DIMS:
        return
    if dim.startswith("ctx:") and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", dim[4:]):
        return
    raise ValueError(
        f"unknown key dimension {dim!r}; use one of {', '.join(EVENT_DIMS + ITEM_DIMS)} or ctx:NAME for a context field"
    )


@dataclass(frozen=True)
class KeyDecl:
    name: str
    dims: tuple[str, ...]

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"key name {self.name!r} must be lower_snake_case")
        if not self.dims or len(set(self.dims)) != len(self.dims):
            raise ValueError(f"key {self.name!r} needs distinct dimensions")
        for d in self.dims:
            _check_dim(d)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dim_column_name(d) for d in self.dims)


@dataclass(frozen=True)
class WindowDecl:
    name: str
    seconds: int | None  # None = all time

    @classmethod
    def parse(cls, s: str) -> WindowDecl:
        s = s.strip()
        if s == "all":
            return cls("all", None)
        m = re.fullmatch(r"(\d+)([hd])", s)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"window {s!r}: use Nd, Nh (N >= 1) or all")
        return cls(s, int(m.group(1)) * (86400 if m.group(2) == "d" else 3600))


@dataclass(frozen=True)
class RateDecl:
    name: str
    num: str
    den: tuple[str, ...]

    @classmethod
    def parse(cls, s: str) -> RateDecl:
        m = re.fullmatch(r"\s*([a-z][a-z0-9_]*)\s*=\s*([a-z_]+)\s*/\s*([a-z_+ ]+)\s*", s)
        if not m:
            raise ValueError(f"rate {s!r}: use name=numerator_type/denominator_type[+type...]")
        return cls(m.group(1), m.group(2), tuple(t.strip() for t in m.group(3).split("+")))


DEFAULT_KEYS = (
    "user=user_id,item=item_id,category=category,user_category=user_id*category,"
    "item_hour=item_id*hour,item_device=item_id*ctx:device"
)
DEFAULT_WINDOWS = "1d,7d,30d,all"
DEFAULT_RATES = "ctr=click/impression,cvr=purchase/click,cart_rate=cart/click,like_rate=like/like+view"


@dataclass(frozen=True)
class CrossStatsSpec:
    keys: tuple[KeyDecl, ...]
    windows: tuple[WindowDecl, ...]
    event_types: tuple[str, ...]
    rates: tuple[RateDecl, ...]
    min_prior_strength: float
    max_prior_strength: float
    # dimension → the key types whose events lacked it (set by prune(), for the manifest)
    notes: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for what, names in (
            ("key", [k.name for k in self.keys]),
            ("window", [w.name for w in self.windows]),
            ("rate", [r.name for r in self.rates]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {what} names: {names}")
        if not self.keys or not self.windows or not self.event_types:
            raise ValueError("the spec needs at least one key, one window and one event type")
        unknown = [t for t in self.event_types if t not in EVENT_TYPES]
        for r in self.rates:
            unknown += [t for t in (r.num, *r.den) if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {sorted(set(unknown))}; vocabulary: {', '.join(EVENT_TYPES)}")
        if not 0 < self.min_prior_strength <= self.max_prior_strength:
            raise ValueError("need 0 < min_prior_strength <= max_prior_strength")

    @classmethod
    def parse(cls, **declared) -> CrossStatsSpec:
        """The spec of ``CrossStatsDecl(**declared)`` (its text declarations parsed)."""
        return CrossStatsDecl(**declared).parsed()

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for k in self.keys for d in k.dims))

    @property
    def counted_types(self) -> tuple[str, ...]:
        """Types counted: the declared ones plus any a rate needs."""
        need = {t for r in self.rates for t in (r.num, *r.den)}
        return tuple(t for t in EVENT_TYPES if t in self.event_types or t in need)

    def prune(self, present_types: set[str], present_ctx: set[str]) -> CrossStatsSpec:
        """Drop what the data cannot fill: event types that never occur, rates whose denominator
        never occurs, keys over a context field no event carries. What was dropped goes in notes."""
        notes = {}
        types = tuple(t for t in self.event_types if t in present_types)
        rates = tuple(r for r in self.rates if any(t in present_types for t in r.den))
        keys = tuple(k for k in self.keys if all(not d.startswith("ctx:") or d[4:] in present_ctx for d in k.dims))
        if len(types) < len(self.event_types):
            notes["dropped_event_types"] = ",".join(t for t in self.event_types if t not in types)
        if len(rates) < len(self.rates):
            notes["dropped_rates"] = ",".join(r.name for r in self.rates if r not in rates)
        if len(keys) < len(self.keys):
            notes["dropped_keys"] = ",".join(k.name for k in self.keys if k not in keys)
        if not types or not keys:
            raise ValueError(f"nothing left to count after pruning against the data: {notes}")
        return CrossStatsSpec(
            keys=keys,
            windows=self.windows,
            event_types=types,
            rates=rates,
            min_prior_strength=self.min_prior_strength,
            max_prior_strength=self.max_prior_strength,
            notes=notes,
        )


class CrossStatsDecl(Spec):
    """The cross statistics as declared (text, as on the command line): what ``CrossStatsSpec``
    is parsed from. Declared once for build_cross_stats and build_training_samples."""

    keys: str = Field(
        DEFAULT_KEYS,
        description="Key declarations name=dim[*dim...]; dims: user_id, item_id, "
        "category, brand, hour, dow, ctx:NAME (a context field). Keys over a context field "
        "no event carries are skipped (recorded in the manifest).",
    )
    windows: str = Field(DEFAULT_WINDOWS, description="Windows ending at the cutoff: Nd, Nh or all.")
    rates: str = Field(
        DEFAULT_RATES,
        description="Smoothed rates name=num_type/den_type[+type...]; rates "
        "whose denominator types never occur are skipped.",
    )
    event_types: tuple[str, ...] = Field(
        EVENT_TYPES, description="Event types counted (n_<type>); types that never occur are skipped."
    )
    min_prior_strength: float = Field(2.0, gt=0, description="Lower clip of the Beta prior's α+β.")
    max_prior_strength: float = Field(1e4, gt=0, description="Upper clip of the Beta prior's α+β.")

    @model_validator(mode="after")
    def _parses(self):
        self.parsed()
        return self

    def parsed(self) -> CrossStatsSpec:
        key_decls = []
        for part in filter(None, (p.strip() for p in self.keys.split(","))):
            name, _, dims = part.partition("=")
            if not dims:
                raise ValueError(f"key {part!r}: use name=dim[*dim...]")
            key_decls.append(KeyDecl(name.strip(), tuple(d.strip() for d in dims.split("*"))))
        return CrossStatsSpec(
            keys=tuple(key_decls),
            windows=tuple(WindowDecl.parse(w) for w in self.windows.split(",") if w.strip()),
            event_types=self.event_types,
            rates=tuple(RateDecl.parse(r) for r in self.rates.split(",") if r.strip()),
            min_prior_strength=self.min_prior_strength,
            max_prior_strength=self.max_prior_strength,
        )


def present_in(events: DataFrame) -> tuple[set[str], set[str]]:
    """The event types and context field names that occur in `events` (one small aggregation)."""
    row = one_row(
        events,
        F.collect_set("event_type").alias("t"),
        F.array_distinct(F.flatten(F.collect_set(F.map_keys("context")))).alias("c"),
    )
    return set(row["t"] or []), set(row["c"] or [])


def with_dims(events: DataFrame, items: DataFrame | None, dims: tuple[str, ...]) -> DataFrame:
    """Add one column per key dimension (item dims come from the item snapshot)."""
    out = events
    item_dims = [d for d in dims if d in ITEM_DIMS]
    if item_dims:
        if items is None:
            raise ValueError(f"key dimensions {item_dims} need the item snapshot")
        out = out.join(items.select("item_id", *item_dims), "item_id", "left")
    for d in dims:
        if d == "hour":
            out = out.withColumn("hour", utc_hour_col("ts"))
        elif d == "dow":
            out = out.withColumn("dow", utc_dow_col("ts"))
        elif d.startswith("ctx:"):
            out = out.withColumn(dim_column_name(d), F.col("context")[d[4:]])
    return out


def all_present(cols) -> Column:
    """True when none of the columns is null."""
    out = F.lit(True)
    for c in cols:
        out = out & F.col(c).isNotNull()
    return out


def type_count(t: str) -> str:
    return f"n_{t}"


def beta_prior(mean: float | None, var: float | None, n_keys: int, spec: CrossStatsSpec) -> tuple[float, float]:
    """Method-of-moments Beta(α, β) from the mean and population variance of keys' raw rates."""
    if mean is None or n_keys == 0:
        return 1.0, 1.0  # nothing to fit: uniform
    m = min(max(mean, 1e-6), 1 - 1e-6)
    if var is None or var <= 0:
        strength = spec.max_prior_strength
    else:
        strength = m * (1 - m) / var - 1
    strength = min(max(strength, spec.min_prior_strength), spec.max_prior_strength)
    return m * strength, (1 - m) * strength


def rate_parts(r: RateDecl, count: Callable[[str], Column]) -> tuple[Column, Column]:
    num = count(r.num)
    den = count(r.den[0])
    for t in r.den[1:]:
        den = den + count(t)
    return num, den


def fit_priors(
    stats: DataFrame, spec: CrossStatsSpec, group: tuple[str, ...] = ("key_type", "window")
) -> dict[tuple, tuple[float, float]]:
    """{(key_type, window, rate): (α, β)} from a cross-stats frame with n_<type> columns."""
    if not spec.rates:
        return {}
    # Exact sums: each raw rate rounded to 1e-15 as a decimal, then summed as decimals (associative),
    # so the prior is bit-for-bit the same whatever the partitioning or file layout of the input.
    dec = "decimal(20,15)"
    aggs = []
    for r in spec.rates:
        num, den = rate_parts(r, lambda t: F.col(type_count(t)))
        raw = F.when(den >= 1, num / den)
        aggs += [
            F.sum(F.round(raw, 15).cast(dec)).alias(f"{r.name}__s"),
            F.sum(F.round(raw * raw, 15).cast(dec)).alias(f"{r.name}__s2"),
            F.count(raw).alias(f"{r.name}__n"),
        ]
    out = {}
    for row in stats.groupBy(*group).agg(*aggs).collect():
        for r in spec.rates:
            n = row[f"{r.name}__n"]
            mean = var = None
            if n:
                m = row[f"{r.name}__s"] / n
                mean, var = float(m), float(row[f"{r.name}__s2"] / n - m * m)
            out[(*[row[g] for g in group], r.name)] = beta_prior(mean, var, n, spec)
    return out


def prior_lookup(priors: dict[tuple, tuple[float, float]], rate: str, idx: int, keys: tuple[Column, ...]) -> Column:
    """α (idx 0) or β (idx 1) of `rate` for the row's (key_type, window), as a map lookup."""
    entries = [(k[:-1], v[idx]) for k, v in priors.items() if k[-1] == rate]
    if not entries:
        return F.lit(1.0)
    m = F.create_map(*[x for k, v in entries for x in (F.lit("\u0001".join(map(str, k))), F.lit(float(v)))])
    return m[F.concat_ws("\u0001", *keys)]


def build_cross_stats(
    events: DataFrame,
    items: DataFrame | None,
    cutoff: dt.datetime,
    spec: CrossStatsSpec,
) -> tuple[DataFrame, dict[tuple, tuple[float, float]]]:
    """(cross_stats frame, fitted priors). One row per key type × key × window with ≥ 1 event.

    Columns: key_type, window, one nullable column per key dimension of the spec, n_events,
    n_<type> per counted type, n_users (distinct users; null for keys over user_id), last_ts,
    days_since_last (from the last event to the cutoff), and per rate <rate>_raw (num/den, null
    when den = 0) and <rate> (smoothed)."""
    cutoff_ts = ts_lit(cutoff)
    ev = with_dims(
        visible_events(events, cutoff).where(F.col("event_type").isin(*spec.counted_types)), items, spec.dims
    )
    windows = [
        F.when(
            F.lit(True) if w.seconds is None else F.col("ts") >= ts_lit(cutoff - dt.timedelta(seconds=w.seconds)),
            F.lit(w.name),
        )
        for w in spec.windows
    ]
    ev = ev.withColumn("window", F.explode(F.filter(F.array(*windows), lambda x: x.isNotNull())))
    all_dim_cols = [dim_column_name(d) for d in spec.dims]
    parts = []
    for key in spec.keys:
        cols = key.columns
        aggs = [F.count(F.lit(1)).alias("n_events")]
        aggs += [F.count_if(F.col("event_type") == t).cast("long").alias(type_count(t)) for t in spec.counted_types]
        aggs.append((F.lit(None).cast("long") if "user_id" in cols else F.countDistinct("user_id")).alias("n_users"))
        aggs.append(F.max("ts").alias("last_ts"))
        g = ev.where(all_present(cols)).groupBy("window", *cols).agg(*aggs)
        parts.append(
            g.select(
                F.lit(key.name).alias("key_type"),
                "window",
                *[(F.col(c) if c in cols else F.lit(None)).cast("string").alias(c) for c in all_dim_cols],
                "n_events",
                *[type_count(t) for t in spec.counted_types],
                "n_users",
                "last_ts",
            )
        )
    stats = parts[0]
    for p in parts[1:]:
        stats = stats.unionByName(p)
    stats = stats.withColumn("days_since_last", (cutoff_ts.cast("double") - F.col("last_ts").cast("double")) / 86400.0)
    priors = fit_priors(stats, spec)
    for r in spec.rates:
        num, den = rate_parts(r, lambda t: F.col(type_count(t)))
        a = prior_lookup(priors, r.name, 0, (F.col("key_type"), F.col("window")))
        b = prior_lookup(priors, r.name, 1, (F.col("key_type"), F.col("window")))
        stats = stats.withColumn(f"{r.name}_raw", F.when(den > 0, num / den)).withColumn(
            r.name, (num + a) / (den + a + b)
        )
    return stats, priors
