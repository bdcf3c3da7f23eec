"""user_sequences: the Spark transform against a brute-force reference, leakage, and the job."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from pyspark.sql import functions as F

from recfactory.features.sequences import SequenceSpec, build_sequences
from recfactory.jobs.runtime.job import run_job

pytestmark = pytest.mark.spark

CUTOFF = dt.datetime(2026, 11, 29)
SCHEMA = "event_id long, user_id string, item_id string, event_type string, ts timestamp, dwell_ms long"


def make_events(n=400, seed=3):
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        # coarse timestamps → many ties, so the tie-break matters; some at/after the cutoff
        ts = CUTOFF - dt.timedelta(minutes=rnd.randint(-30, 600) // 10 * 10)
        rows.append(
            (
                i * 7919 % 100_003,
                f"u{rnd.randint(0, 4)}",
                f"i{rnd.randint(0, 5)}",
                rnd.choice(["click", "click", "purchase", "view", "impression"]),
                ts,
                rnd.choice([None, rnd.randint(0, 90_000)]),
            )
        )
    return rows


def reference(rows, spec: SequenceSpec):
    out = {}
    for user in sorted({r[1] for r in rows}):
        evs = sorted(
            (r for r in rows if r[1] == user and r[4] < CUTOFF and r[3] in spec.caps), key=lambda r: (r[4], r[0])
        )
        if spec.dedup_consecutive:
            evs = [e for k, e in enumerate(evs) if k == 0 or evs[k - 1][2] != e[2]]
        kept = []
        for t, cap in spec.caps.items():
            kept += [e for e in evs if e[3] == t][-cap:]
        kept = sorted(kept, key=lambda r: (r[4], r[0]))[-spec.max_len :]
        if kept:
            out[user] = [(e[2], e[4], e[3], e[5]) for e in kept]
    return out


@pytest.mark.parametrize(
    "spec",
    [
        SequenceSpec(),
        SequenceSpec(max_len=7, type_caps={"click": 4, "purchase": 2}),
        SequenceSpec(max_len=30, type_caps={"click": 10, "view": 3}, dedup_consecutive=True),
    ],
)
def test_matches_brute_force(spark, spec):
    rows = make_events()
    got = build_sequences(spark.createDataFrame(rows, SCHEMA), CUTOFF, spec).collect()
    want = reference(rows, spec)
    assert {r.user_id: [tuple(x) for x in r.sequence] for r in got} == want
    for r in got:
        assert r.seq_len == len(want[r.user_id])
        assert r.last_ts == want[r.user_id][-1][1]
        assert r.secs_since_last == int((CUTOFF - r.last_ts).total_seconds())
        counts = {}
        for x in want[r.user_id]:
            counts[x[2]] = counts.get(x[2], 0) + 1
        assert r.type_counts == counts


def test_no_event_at_or_after_the_cutoff_leaks(spark):
    rows = make_events()
    leak = [(10**9 + k, "u0", "LEAK", "click", CUTOFF + dt.timedelta(seconds=k), 1) for k in range(3)]
    got = build_sequences(spark.createDataFrame(rows + leak, SCHEMA), CUTOFF).collect()
    for r in got:
        assert all(x.item_id != "LEAK" and x.ts < CUTOFF for x in r.sequence)
        assert r.last_ts < CUTOFF


def test_category_buckets(spark):
    rows = make_events()
    items = spark.createDataFrame([(f"i{k}", f"c{k % 2}") for k in range(5)], "item_id string, category string")
    spec = SequenceSpec(category_max_len=3)
    got = build_sequences(spark.createDataFrame(rows, SCHEMA), CUTOFF, spec, items).collect()
    for r in got:
        flat = reference(rows, SequenceSpec(max_len=10**6, type_caps=spec.caps))[r.user_id]
        for cat, seq in r.category_sequences.items():
            members = [
                x
                for x in flat
                if {"c0": ("i0", "i2", "i4"), "c1": ("i1", "i3"), "__unknown__": ("i5",)}[cat].__contains__(x[0])
            ]
            assert [tuple(x) for x in seq] == members[-3:]


def test_job_on_movielens_is_idempotent(spark, movielens_run):
    wh, _ = movielens_run
    args = ["--warehouse", wh, "--as-of", "1998-04-30", "--type-caps", "like=50,view=20", "--category-max-len", "5"]
    ctx = run_job("build_sequences", args, spark=spark)
    assert ctx.row_counts["user_sequences"] == 943
    run_job("build_sequences", args, spark=spark)
    seqs = spark.read.format("delta").load(f"{wh}/user_sequences")
    assert seqs.count() == 943  # the rerun replaced the partition
    row = seqs.agg(F.max("seq_len"), F.max(F.col("type_counts")["like"]), F.max(F.col("type_counts")["view"])).first()
    assert row[0] <= 70 and row[1] == 50 and row[2] == 20
    # earlier as-of: only what was visible then
    early = run_job("build_sequences", ["--warehouse", wh, "--as-of", "1997-10-01"], spark=spark)
    snap = seqs.sparkSession.read.format("delta").load(f"{wh}/user_sequences").where("ds = '1997-10-01'")
    assert snap.count() == early.row_counts["user_sequences"] < 943
    assert snap.where(F.col("last_ts") >= F.lit("1997-10-02").cast("timestamp")).count() == 0
