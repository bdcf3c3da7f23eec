"""Run part of a test under other Spark SQL settings on the suite's shared session, and give the
session back as it was (a later test of the same process must not inherit them)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def shuffle_partitions(spark, n: int):
    """``spark.sql.shuffle.partitions`` = n inside the block (collect inside it: a lazy frame runs
    under whatever setting holds when it is collected)."""
    key = "spark.sql.shuffle.partitions"
    before = spark.conf.get(key)
    spark.conf.set(key, str(n))
    try:
        yield
    finally:
        spark.conf.set(key, before)
