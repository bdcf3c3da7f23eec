"""Dense feature transforms usable by any job: Spark Column expressions, no Python UDFs.

- ``log1p``, ``power`` (x^a on x ≥ 0), ``logit`` (of a rate, clipped to [eps, 1 − eps]);
- quantile bucketization with stored boundaries (``fit_quantiles`` → ``Quantiles`` →
  ``bucketize``): bucket = the number of boundaries ≤ x, i.e. ``numpy.searchsorted(b, x, 'right')``;
- CDF normalization (YouTube ranking, Covington et al. 2016): x̃ = the empirical CDF of x,
  interpolated linearly between the stored quantiles (0 below the minimum, 1 above the maximum),
  plus x̃² and √x̃ (``cdf_powers``).

Quantiles are fit with Spark's ``approxQuantile`` (Greenwald–Khanna, one pass for all columns) on
the rows the caller chooses (the train split), and serialize to plain lists so a table can store
them and another job can apply the very same transform to fresh rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def log1p(c: Column) -> Column:
    return F.log1p(c.cast("double"))


def power(c: Column, a: float) -> Column:
    return F.pow(F.greatest(c.cast("double"), F.lit(0.0)), F.lit(float(a)))


def logit(rate: Column, eps: float = 1e-6) -> Column:
    p = F.least(F.greatest(rate.cast("double"), F.lit(eps)), F.lit(1 - eps))
    return F.log(p / (F.lit(1.0) - p))


@dataclass(frozen=True)
class Quantiles:
    """The empirical distribution of one feature: distinct values and their CDF levels."""

    feature: str
    values: tuple[float, ...]  # strictly increasing
    levels: tuple[float, ...]  # P(X <= value), non-decreasing, last = 1

    @property
    def boundaries(self) -> tuple[float, ...]:
        """Bucket boundaries: the inner distinct quantile values (the minimum opens bucket 1)."""
        return self.values[1:] if len(self.values) > 1 else self.values


# the sketch's partitions when the rows are put in a fixed order (``fit_quantiles(order_by=...)``):
# a constant, so that the result does not depend on a cluster's cores or shuffle settings
SKETCH_PARTITIONS = 16


def fit_quantiles(
    df: DataFrame, cols: list[str], n: int = 100, relative_error: float = 1e-3, order_by: str | None = None
) -> dict[str, Quantiles]:
    """Quantiles at levels 0, 1/n, ..., 1 of each column (nulls ignored; all-null columns skipped).

    A Greenwald–Khanna sketch depends on the order it sees the rows in and on how partitions'
    sketches are merged. With ``order_by`` (a unique key), the rows are hash-partitioned on it into
    ``SKETCH_PARTITIONS`` partitions and sorted within each: the same rows reach the same sketch in
    the same order on any cluster, so the quantiles are reproducible bitwise (a replay, a run on
    another cluster). Without it they are within ``relative_error`` of each other only."""
    if n < 2:
        raise ValueError("n must be >= 2")
    levels = [i / n for i in range(n + 1)]
    if order_by is not None:
        df = df.repartition(SKETCH_PARTITIONS, order_by).sortWithinPartitions(order_by)
    casted = df.select(*[F.col(c).cast("double").alias(c) for c in cols])
    out = {}
    for c, qs in zip(cols, casted.approxQuantile(cols, levels, relative_error), strict=True):
        if not qs:
            continue
        values: list[float] = []
        lv: list[float] = []
        for v, q in zip(qs, levels, strict=True):
            if values and v == values[-1]:
                lv[-1] = q  # a tie: the CDF at that value is the highest level reaching it
            else:
                values.append(float(v))
                lv.append(q)
        out[c] = Quantiles(c, tuple(values), tuple(lv))
    return out


def _lits(xs) -> Column:
    return F.array(*[F.lit(float(x)) for x in xs])


def bucketize(c: Column, q: Quantiles) -> Column:
    """Bucket index 0..len(boundaries): how many boundaries are ≤ x (null stays null)."""
    x = c.cast("double")
    return F.when(x.isNotNull(), F.size(F.filter(_lits(q.boundaries), lambda b: b <= x)))


def cdf(c: Column, q: Quantiles) -> Column:
    """Empirical CDF of x in [0, 1], linear between the stored quantiles."""
    x = c.cast("double")
    vs, ls = _lits(q.values), _lits(q.levels)
    k = F.size(F.filter(vs, lambda v: v <= x))  # 1-based index of the last value <= x
    lo, hi = F.element_at(vs, F.greatest(k, F.lit(1))), F.element_at(vs, F.least(k + 1, F.lit(len(q.values))))
    llo, lhi = F.element_at(ls, F.greatest(k, F.lit(1))), F.element_at(ls, F.least(k + 1, F.lit(len(q.values))))
    inner = llo + (x - lo) / (hi - lo) * (lhi - llo)
    return F.when(x.isNull(), None).when(k == 0, 0.0).when(k >= len(q.values), 1.0).otherwise(inner)


def cdf_powers(c: Column, q: Quantiles, name: str) -> list[Column]:
    """x̃, x̃² and √x̃ (the YouTube ranking model's normalized continuous feature inputs)."""
    x = cdf(c, q)
    return [x.alias(f"{name}_cdf"), (x * x).alias(f"{name}_cdf_sq"), F.sqrt(x).alias(f"{name}_cdf_sqrt")]
