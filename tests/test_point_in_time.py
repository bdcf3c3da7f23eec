"""Point in time on any host: the cutoff of --as-of D is D + 1 day, 00:00 UTC, whatever TZ says.

`test_boundaries_here` runs, by `test_boundaries_under_time_zone`, in a subprocess per time zone (`TZ=America/Los_Angeles`,
`TZ=Asia/Shanghai`), where the JVM, py4j and Python all default to that zone. It ingests events at
the last microsecond of the day and the first of the next, then builds sequences, cross statistics,
the item graph's time decay and the runs log, and checks every instant against UTC.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from recfactory.features.instants import UTC, collect_instant, epoch_micros, from_micros, ts_lit
from recfactory.features.sequences import visible_events
from recfactory.jobs.runtime.job import as_of_end, run_job

pytestmark = pytest.mark.spark

AS_OF = "2025-06-30"
# (user, item, type, ts as the raw string, clean for --as-of 2025-06-30?)
EVENTS = [
    ("u1", "i1", "click", "2025-06-30 00:00:00", True),  # the first microsecond of the day
    ("u1", "i2", "click", "2025-06-30 23:30:00", True),  # Shanghai's 07:30 next day
    ("u1", "i1", "click", "2025-06-30 23:59:59.999999", True),  # the last microsecond of the day
    ("u1", "i2", "click", "2025-07-01 00:00:00", False),  # the first of the next: future
    ("u2", "i1", "click", "2025-07-01 03:00:00", False),  # Los Angeles' 20:00 of the 30th
    ("u2", "i2", "click", "1751327999", True),  # unix seconds: 2025-06-30 23:59:59
    ("u2", "i1", "click", "1751328000000", False),  # unix ms: 2025-07-01 00:00:00
]
ITEMS = [
    ("i1", "one", "c", "2025-01-01 00:00:00"),
    ("i2", "two", "c", "2025-06-30 23:59:59"),
    ("i3", "three", "c", "2025-07-01 00:00:00"),
]  # created at the cutoff: not yet


def _utc(s: str) -> dt.datetime:
    if s.isdigit():
        v = int(s)
        return dt.datetime.fromtimestamp(v / 1000 if v > 1e11 else v, UTC)
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


def test_boundaries_here(spark, tmp_path):
    expected_zone = os.environ.get("RECFACTORY_EXPECT_TZ")
    if not expected_zone and not os.environ.get("RECFACTORY_PIT_HERE"):
        pytest.skip("run per time zone by test_boundaries_under_time_zone (RECFACTORY_PIT_HERE=1: here too)")
    if expected_zone:  # the subprocess really runs in the foreign zone (Python and the JVM)
        assert time.localtime(1751328000).tm_gmtoff != 0
        assert spark.sparkContext._jvm.java.util.TimeZone.getDefault().getID() == expected_zone
    wh = str(tmp_path / "wh")
    ev_path, it_path = str(tmp_path / "raw_events"), str(tmp_path / "raw_items")
    spark.createDataFrame([e[:4] for e in EVENTS], "uid string, iid string, action string, time string").coalesce(
        1
    ).write.parquet(ev_path)
    spark.createDataFrame(ITEMS, "sku string, name string, cat string, created string").coalesce(1).write.parquet(
        it_path
    )
    args = [
        "--warehouse",
        wh,
        "--dataset",
        "tables",
        "--events-path",
        ev_path,
        "--items-path",
        it_path,
        "--events-columns",
        "user_id=uid,item_id=iid,event_type=action,ts=time",
        "--items-columns",
        "item_id=sku,title=name,category=cat,created_ts=created",
        "--max-quarantine-fraction",
        "1.0",
    ]
    ctx = run_job("ingest", ["--as-of", AS_OF, *args], spark=spark)

    cutoff = as_of_end(dt.date.fromisoformat(AS_OF))
    assert cutoff == dt.datetime(2025, 7, 1, tzinfo=UTC) and epoch_micros(cutoff) == 1751328000 * 10**6
    clean = spark.read.format("delta").load(f"{wh}/events_clean")
    got = sorted(
        (r.user_id, from_micros(r.us), str(r.ds))
        for r in clean.select("user_id", F.unix_micros("ts").alias("us"), "ds").collect()
    )
    want = sorted((u, _utc(t), "2025-06-30") for u, _, _, t, ok in EVENTS if ok)
    assert got == want
    q = spark.read.format("delta").load(f"{wh}/events_quarantine")
    assert sorted(r.ts_raw for r in q.collect()) == sorted(t for *_, t, ok in EVENTS if not ok)
    assert {r.reason for r in q.collect()} == {"FUTURE_TIMESTAMP"}
    assert ctx.row_counts["items"] == 2 and ctx.row_counts["items_not_yet_created"] == 1
    assert collect_instant(clean, F.max("ts")) == dt.datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)

    # the next date's load publishes the rest into its own event-date partition
    run_job("ingest", ["--as-of", "2025-07-01", *args], spark=spark)
    clean = spark.read.format("delta").load(f"{wh}/events_clean")
    assert {(str(r.ds), r.n) for r in clean.groupBy("ds").agg(F.count(F.lit(1)).alias("n")).collect()} == {
        ("2025-06-30", 4),
        ("2025-07-01", 3),
    }

    # sequences and cross statistics for the 30th see the 30th's events and nothing later
    run_job("build_sequences", ["--warehouse", wh, "--as-of", AS_OF], spark=spark)
    seq = {r.user_id: r for r in spark.read.format("delta").load(f"{wh}/user_sequences").collect()}
    assert [e.item_id for e in seq["u1"].sequence] == ["i1", "i2", "i1"] and seq["u2"].seq_len == 1
    assert seq["u1"].secs_since_last == 1  # from 23:59:59(.999999) to the cutoff, whole seconds
    run_job(
        "build_cross_stats",
        [
            "--warehouse",
            wh,
            "--as-of",
            AS_OF,
            "--keys",
            "user=user_id,item_hour=item_id*hour",
            "--windows",
            "1d,all",
            "--rates",
            "ctr=click/view",
        ],
        spark=spark,
    )
    cs = spark.read.format("delta").load(f"{wh}/cross_stats")
    users = {(r.user_id, r.window): r.n_click for r in cs.where("key_type = 'user'").collect()}
    assert users == {("u1", "1d"): 3, ("u1", "all"): 3, ("u2", "1d"): 1, ("u2", "all"): 1}
    hours = sorted((r.item_id, int(r.hour)) for r in cs.where("key_type = 'item_hour' AND window = 'all'").collect())
    assert hours == [("i1", 0), ("i1", 23), ("i2", 23)]  # UTC hours, not the host's

    # the positives LightGCN and retrieval_pairs read (jobs.runtime.inputs.positive_pairs): the pairs
    # of the 30th with their latest instant, none from the 1st (loaded, and in events_clean by now)
    import pandas as pd

    from recfactory.jobs.runtime.inputs import clean_events, positive_pairs

    class Ctx:
        as_of, row_counts, notes = AS_OF, {}, {}

        @staticmethod
        def read(name):
            return spark.read.format("delta").load(f"{wh}/{name}")

    events = visible_events(clean_events(Ctx), cutoff)
    index = pd.Series([0, 1, 2], index=["i1", "i2", "i3"])
    pos = positive_pairs(Ctx, events, ["click"], index, "positives")
    got = sorted(zip(pos.user_id, pos.item_id, map(from_micros, pos.ts.tolist()), strict=True))
    want: dict = {}
    for u, i, _, t, ok in EVENTS:
        if ok:
            want[(u, i)] = max(want.get((u, i), _utc(t)), _utc(t))
    assert got == sorted((u, i, t) for (u, i), t in want.items())
    assert Ctx.row_counts == {"positives": 3, "positives_unknown_item": 0}

    # the item graph's time decay: a session ending exactly one day before the cutoff weighs e^-1
    from recfactory.graph.item_graph import GraphSpec, transitions

    sess = spark.createDataFrame([(True, ["i1", "i2"])], "is_valid boolean, items array<string>").withColumn(
        "end_ts", ts_lit(cutoff - dt.timedelta(days=1))
    )
    w = transitions(sess, cutoff, GraphSpec(time_decay_days=1.0)).first()
    assert abs(w["w"] - 0.36787944) < 1e-6

    # the runs log holds UTC instants: started_at is now, not now shifted by the host's offset
    runs = spark.read.format("delta").load(f"{wh}/_runs")
    started = collect_instant(runs, F.max("started_at"))
    assert abs((dt.datetime.now(UTC) - started).total_seconds()) < 900


ZONES = ("America/Los_Angeles", "Asia/Shanghai")


def test_boundaries_under_time_zone(tmp_path):
    """`test_boundaries_here` in one subprocess per zone, the two side by side."""
    if os.environ.get("RECFACTORY_EXPECT_TZ"):
        pytest.skip("already the subprocess")
    root = Path(__file__).resolve().parents[1]
    procs = {}
    for i, zone in enumerate(ZONES):
        env = {**os.environ, "TZ": zone, "RECFACTORY_EXPECT_TZ": zone, "RECFACTORY_SHUFFLE_PARTITIONS": "2"}
        procs[zone] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--basetemp",
                str(tmp_path / f"t{i}"),
                f"{root}/tests/test_point_in_time.py::test_boundaries_here",
            ],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for zone, proc in procs.items():
        out, _ = proc.communicate(timeout=840)
        assert proc.returncode == 0 and "1 passed" in out, f"TZ={zone}:\n{out[-6000:]}"
