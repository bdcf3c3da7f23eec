"""Dense transforms against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from recfactory.features.transforms import bucketize, cdf, cdf_powers, fit_quantiles, log1p, logit, power

pytestmark = pytest.mark.spark


def test_elementwise(spark):
    xs = [0.0, 0.5, 3.0, 100.0]
    df = spark.createDataFrame([(x, x / 101) for x in xs], "x double, r double")
    got = df.select(
        log1p(F.col("x")).alias("a"), power(F.col("x"), 0.5).alias("b"), logit(F.col("r")).alias("c")
    ).toPandas()
    np.testing.assert_allclose(got.a, np.log1p(xs))
    np.testing.assert_allclose(got.b, np.sqrt(xs))
    r = np.clip(np.array(xs) / 101, 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(got.c, np.log(r / (1 - r)))


def test_quantiles_buckets_and_cdf(spark):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(300), rng.exponential(5.0, 700)])  # a point mass, then a tail
    df = spark.createDataFrame([(float(v),) for v in x] + [(None,)], "x double")
    q = fit_quantiles(df, ["x"], n=20, relative_error=0.0)["x"]
    exact = np.quantile(x, np.linspace(0, 1, 21), method="lower")  # Spark's exact rank rule
    assert set(q.values) == set(exact)  # exact when relative_error = 0
    assert q.levels[0] == pytest.approx(0.3) and q.levels[-1] == 1.0  # the point mass at 0
    probe = np.array([-1.0, 0.0, 0.7, 3.3, q.values[5], 1e9])
    pdf = (
        spark.createDataFrame([(float(v),) for v in probe] + [(None,)], "x double")
        .select("x", bucketize(F.col("x"), q).alias("b"), *cdf_powers(F.col("x"), q, "x"))
        .toPandas()
    )
    got = pdf[pdf.x.notna()]
    np.testing.assert_array_equal(got.b, np.searchsorted(q.boundaries, probe, side="right"))
    ref = np.interp(probe, q.values, q.levels, left=0.0, right=1.0)
    ref[probe < q.values[0]] = 0.0
    np.testing.assert_allclose(got.x_cdf, ref)
    np.testing.assert_allclose(got.x_cdf_sq, ref**2)
    np.testing.assert_allclose(got.x_cdf_sqrt, np.sqrt(ref))
    assert pdf[pdf.x.isna()][["b", "x_cdf"]].isna().all().all()
    # monotone in x
    grid = spark.range(200).select((F.col("id") / 5.0).alias("x")).select(cdf(F.col("x"), q).alias("c")).toPandas().c
    assert (np.diff(grid) >= 0).all()


def test_quantiles_with_an_order_key_do_not_depend_on_the_input_partitioning(spark):
    """The same rows, arriving in 1, 3 or 7 partitions in different orders: with order_by the
    sketch is fed identically, so the quantiles are equal bitwise (what replay and a run on another
    cluster need); they stay within the sketch's error of the exact ones."""
    rng = np.random.default_rng(1)
    x = rng.lognormal(2.0, 1.5, 20_000)
    base = spark.createDataFrame([(f"k{i}", float(v)) for i, v in enumerate(x)], "k string, x double")
    fits = [
        fit_quantiles(df, ["x"], n=50, relative_error=0.01, order_by="k")["x"]
        for df in (base.coalesce(1), base.repartition(3), base.repartition(7).orderBy(F.rand(5)))
    ]
    assert fits[0] == fits[1] == fits[2]
    ranks = np.searchsorted(np.sort(x), fits[0].values, side="right") / len(x)
    assert np.all(np.abs(ranks - np.array(fits[0].levels)) <= 0.02 + 1e-9)
