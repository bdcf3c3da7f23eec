"""Ingest on real local Spark + Delta: reconciliation, quarantine reasons, idempotent reruns,
manifests with pinned input versions, time travel, and readability by the `deltalake` package."""

from __future__ import annotations

import json

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from recfactory.features.schema import SchemaDriftError
from recfactory.jobs.runtime.delta_io import Warehouse
from recfactory.jobs.runtime.job import QualityGateError, run_job

pytestmark = pytest.mark.spark


def runs(spark, wh):
    return spark.read.format("delta").load(f"{wh}/_runs")


# ---------------------------------------------------------------- MovieLens-100K --------------
def test_movielens_reconciles_100k_rows(spark, movielens_run):
    wh, ctx = movielens_run
    rc = ctx.row_counts
    assert rc["events_input"] == 100_000
    assert rc["events_clean"] + rc["events_quarantine"] == 100_000
    assert rc["events_clean"] == 100_000  # the dataset is clean: nothing to quarantine
    assert rc["items"] == 1682
    clean = spark.read.format("delta").load(f"{wh}/events_clean")
    assert clean.count() == 100_000
    assert clean.select("user_id").distinct().count() == 943
    # rating >= 4 → like (positive), else view; the rating is kept in context
    by_type = {r["event_type"]: r["count"] for r in clean.groupBy("event_type").count().collect()}
    assert by_type == {"like": 55_375, "view": 44_625}
    assert clean.where(F.col("context")["rating"].isNull()).count() == 0
    # unique, deterministic event ids
    assert clean.select("event_id").distinct().count() == 100_000


def test_movielens_tables_readable_by_deltalake(movielens_run):
    wh, _ = movielens_run
    items = DeltaTable(f"{wh}/items").to_pandas()
    assert len(items) == 1682
    toy = items[items.item_id == "1"].iloc[0]
    assert toy.title == "Toy Story" and toy.category == "Animation"
    ev = DeltaTable(f"{wh}/events_clean").to_pandas(columns=["user_id", "ts"])
    assert len(ev) == 100_000
    assert str(ev.ts.min())[:10] == "1997-09-20" and str(ev.ts.max())[:10] == "1998-04-22"


def test_manifest_in_runs_table_and_commit_metadata(spark, movielens_run):
    wh, ctx = movielens_run
    row = runs(spark, wh).where(F.col("run_id") == ctx.run_id).first()
    assert row.status == "succeeded" and row.job == "ingest" and row.seed == 42
    assert json.loads(row.params)["as_of"] == "1998-04-30"
    names = {i.name for i in row.inputs}
    assert names == {"movielens-100k:ml-100k.inter", "movielens-100k:ml-100k.item"}
    assert all(i.fingerprint.startswith("recbole==1.2.1 sha256:") for i in row.inputs)
    outs = {o.name: (o.version, o.rows) for o in row.outputs}
    assert outs["events_clean"][1] == 100_000 and outs["items"][1] == 1682
    assert row.row_counts["events_input"] == 100_000
    # the commit itself carries the manifest
    hist = spark.sql(f"DESCRIBE HISTORY delta.`{wh}/events_clean`").orderBy(F.desc("version")).first()
    meta = json.loads(hist.userMetadata)
    assert meta["run_id"] == ctx.run_id and meta["params_hash"] == row.params_hash


def test_rerun_same_as_of_leaves_no_duplicates(spark, warehouse):
    args = ["--warehouse", warehouse, "--as-of", "2026-11-28", "--dataset", "synthetic", "--synthetic", "events=3000"]
    first = run_job("ingest", args, spark=spark)
    second = run_job("ingest", args, spark=spark)
    clean = spark.read.format("delta").load(f"{warehouse}/events_clean")
    assert clean.count() == first.row_counts["events_clean"] == second.row_counts["events_clean"]
    assert clean.select("event_id").distinct().count() == clean.count()
    wh = Warehouse(spark, warehouse)
    assert wh.latest_version("events_clean") == 1  # two commits, one copy of the data
    r = runs(spark, warehouse)
    assert r.where("status = 'succeeded'").count() == 2
    # the same seed gives the same data: the rerun replaced the partition with identical rows
    v0 = wh.read("events_clean", version=0)[0].drop("context")
    now = clean.drop("context")
    assert v0.exceptAll(now).count() == 0 and now.exceptAll(v0).count() == 0
    # every synthetic row says so
    assert clean.where(F.col("source") != "synthetic").count() == 0


# ---------------------------------------------------------------- bad rows -------------------
GOOD_TS = "2026-11-27 10:00:00"
EVENTS = [
    # uid,  iid,   action,      time,                    dwell,  expected reason
    ("u1", "i1", "click", GOOD_TS, "5000", None),
    ("u1", "i2", "Purchase ", "1764237600", None, None),  # unix seconds, case/space
    ("u2", "i3", "2", "1764237600000", "10", None),  # mapped type, unix ms
    ("u2", "i1", "view", "2026-11-28 23:59:59", None, None),  # last second of the day
    (None, "i1", "click", GOOD_TS, "1", "NULL_KEY"),
    ("u3", "", "click", GOOD_TS, "1", "NULL_KEY"),
    ("u3", "i1", "click", None, "1", "NULL_KEY"),
    ("u3", "i1", "click", "yesterday-ish", "1", "BAD_TIMESTAMP"),
    ("u3", "i1", "teleport", GOOD_TS, "1", "UNKNOWN_EVENT_TYPE"),
    ("u3", "i1", "click", "2026-11-29 00:00:00", "1", "FUTURE_TIMESTAMP"),
    ("u3", "i1", "click", GOOD_TS, "abc", "BAD_DWELL"),
    ("u3", "i2", "click", GOOD_TS, "-5", "NEGATIVE_DWELL"),
    ("u3", "i999", "click", GOOD_TS, "1", "ORPHAN_ITEM"),
    ("u1", "i1", "click", GOOD_TS, "5000", "DUPLICATE"),  # exact copy of row 0
    (None, "i1", "click", "garbage", "-1", "NULL_KEY"),  # several problems
]
ITEMS = [
    ("i1", "Item one", "shoes", "10.5"),
    ("i2", "Item two", "shoes", None),
    ("i3", "Item three", "hats", "3"),
    ("i3", "Item three-b", "hats", "4"),  # CONFLICTING_DUPLICATE (the smaller raw row is kept)
    (None, "No id", "hats", "1"),  # NULL_KEY
    ("i4", "Bad price", "hats", "-1"),  # BAD_PRICE
]


@pytest.fixture()
def bad_input(spark, tmp_path):
    ev = spark.createDataFrame(
        [e[:5] for e in EVENTS], "uid string, iid string, action string, time string, dwell string"
    )
    ev_path = str(tmp_path / "raw_events.parquet")
    ev.coalesce(1).write.parquet(ev_path)
    it = spark.createDataFrame(ITEMS, "sku string, name string, cat string, price string")
    it_path = str(tmp_path / "raw_items")
    it.write.format("delta").save(it_path)
    return ev_path, it_path


def bad_args(wh, ev_path, it_path, as_of="2026-11-28", *extra):
    return [
        "--warehouse",
        wh,
        "--as-of",
        as_of,
        "--dataset",
        "tables",
        "--events-path",
        ev_path,
        "--items-path",
        it_path,
        "--events-columns",
        "user_id=uid,item_id=iid,event_type=action,ts=time,dwell_ms=dwell",
        "--items-columns",
        "item_id=sku,title=name,category=cat",
        "--event-type-map",
        "2=click",
        "--max-quarantine-fraction",
        "1.0",
        *extra,
    ]


def test_each_kind_of_bad_row_is_quarantined_with_its_reason(spark, warehouse, bad_input):
    ctx = run_job("ingest", bad_args(warehouse, *bad_input), spark=spark)
    rc = ctx.row_counts
    assert rc["events_input"] == len(EVENTS)
    assert rc["events_clean"] + rc["events_quarantine"] == len(EVENTS)
    expected_clean = [e for e in EVENTS if e[5] is None]
    assert rc["events_clean"] == len(expected_clean)
    q = spark.read.format("delta").load(f"{warehouse}/events_quarantine")
    got = sorted((r.reason, r.raw) for r in q.collect())
    want = []
    for *_, reason in EVENTS:
        if reason:
            want.append(reason)
    assert sorted(r for r, _ in got) == sorted(want)
    multi = q.where(F.col("raw").contains("garbage")).first()
    assert multi.reasons == ["NULL_KEY", "BAD_TIMESTAMP", "NEGATIVE_DWELL"]
    assert json.loads(multi.raw)["time"] == "garbage"
    clean = spark.read.format("delta").load(f"{warehouse}/events_clean")
    types = sorted(r.event_type for r in clean.collect())
    assert types == ["click", "click", "purchase", "view"]
    # items: conflicting duplicates, null keys and bad prices are quarantined, not dropped
    assert rc["items"] == 3 and rc["items_quarantine"] == 3
    iq = {r.reason: r.detail for r in spark.read.format("delta").load(f"{warehouse}/items_quarantine").collect()}
    assert iq == {
        "CONFLICTING_DUPLICATE": "differs from the kept copy in title, price",
        "NULL_KEY": None,
        "BAD_PRICE": None,
    }
    kept_i3 = spark.read.format("delta").load(f"{warehouse}/items").where("item_id = 'i3'").first()
    assert kept_i3.title == "Item three"


def test_second_load_pins_inputs_dedups_history_and_time_travels(spark, warehouse, bad_input):
    ev_path, it_path = bad_input
    first = run_job("ingest", bad_args(warehouse, ev_path, it_path), spark=spark)
    # next day: the same delivery again. Already-published events are not published twice (nor
    # quarantined: the load's own quarantine depends on its input only); yesterday's future row is
    # now in range and clean.
    second = run_job("ingest", bad_args(warehouse, ev_path, it_path, "2026-11-29"), spark=spark)
    rc = second.row_counts
    assert rc["events_clean"] == first.row_counts["events_clean"] + 1
    assert rc["events_published"] == 1 and rc["events_republished"] == 0  # only the formerly-future event
    assert rc["events_already_published"] == first.row_counts["events_clean"]
    assert rc["events_quarantine.DUPLICATE"] == first.row_counts["events_quarantine.DUPLICATE"] == 1
    assert "events_quarantine.FUTURE_TIMESTAMP" not in rc
    clean = spark.read.format("delta").load(f"{warehouse}/events_clean")
    assert clean.count() == first.row_counts["events_clean"] + 1
    assert clean.select("event_id").distinct().count() == clean.count()
    # partitioned by event date (UTC), not by load
    assert {str(r.ds) for r in clean.select("ds").distinct().collect()} == {
        "2025-11-27",
        "2026-11-27",
        "2026-11-28",
        "2026-11-29",
    }
    # manifest: every input with the exact version read
    row = runs(spark, warehouse).where(F.col("run_id") == second.run_id).first()
    inputs = {i.name: i for i in row.inputs}
    assert inputs["items"].format == "delta" and inputs["items"].version == 0
    assert inputs["events_clean"].version == 0  # the version the history check read
    assert inputs["events"].format == "parquet" and inputs["events"].fingerprint
    # time travel: version 0 holds only the first day, by version and by timestamp
    wh = Warehouse(spark, warehouse)
    v0, ref = wh.read("events_clean", version=0)
    assert v0.count() == first.row_counts["events_clean"] and ref.version == 0
    ts0 = spark.sql(f"DESCRIBE HISTORY delta.`{warehouse}/events_clean`").where("version = 0").first().timestamp
    v0b, ref_b = wh.read("events_clean", timestamp=str(ts0))
    assert ref_b.version == 0 and v0b.count() == v0.count()
    # deltalake reads the pinned version too
    assert len(DeltaTable(f"{warehouse}/events_clean", version=0).to_pandas()) == v0.count()


def test_schema_drift_fails_fast_naming_columns(spark, warehouse, bad_input):
    ev_path, it_path = bad_input
    args = bad_args(warehouse, ev_path, it_path)
    args[args.index("--events-columns") + 1] = "user_id=uid,item_id=iid,ts=time"
    with pytest.raises(SchemaDriftError, match="'event_type'.*not mapped: action, dwell"):
        run_job("ingest", args, spark=spark)
    assert not Warehouse(spark, warehouse).exists("events_clean")
    failed = runs(spark, warehouse).first()
    assert failed.status == "failed" and "event_type" in failed.error


def test_quality_gate_publishes_nothing(spark, warehouse, bad_input):
    args = bad_args(warehouse, *bad_input)
    args[args.index("--max-quarantine-fraction") + 1] = "0.1"
    with pytest.raises(QualityGateError, match="quarantined"):
        run_job("ingest", args, spark=spark)
    wh = Warehouse(spark, warehouse)
    assert not wh.exists("events_clean") and not wh.exists("items")
    assert runs(spark, warehouse).first().status == "failed"
