"""Shared fixtures: one real local Spark + Delta session for the whole run, fresh warehouses."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("RECFACTORY_SHUFFLE_PARTITIONS", "4")
os.environ.setdefault("RECFACTORY_DRIVER_MEMORY", "3g")


@pytest.fixture(scope="session")
def spark():
    from recfactory.jobs.runtime.spark import get_spark

    s = get_spark("recfactory-tests")
    yield s
    s.stop()


@pytest.fixture()
def warehouse(tmp_path):
    return str(tmp_path / "warehouse")


@pytest.fixture(scope="session")
def movielens_run(spark, tmp_path_factory):
    """One MovieLens-100K ingest shared by the tests that only read its outputs."""
    from recfactory.jobs.runtime.job import run_job

    wh = str(tmp_path_factory.mktemp("ml") / "warehouse")
    ctx = run_job("ingest", ["--warehouse", wh, "--as-of", "1998-04-30"], spark=spark)
    return wh, ctx
