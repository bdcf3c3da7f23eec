"""sessions: the Spark transform against a brute-force reference (30-minute edge), and the job."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from pyspark.sql import functions as F

from recfactory.features.sessions import SessionSpec, build_sessions
from recfactory.jobs.runtime.job import run_job

pytestmark = pytest.mark.spark

CUTOFF = dt.datetime(2026, 11, 29)
T0 = dt.datetime(2026, 11, 28)
SCHEMA = "event_id long, user_id string, item_id string, event_type string, ts timestamp, dwell_ms long"


def make_events(seed=5, n=300):
    rnd = random.Random(seed)
    rows, clock = [], {}
    for i in range(n):
        u = f"u{rnd.randint(0, 3)}"
        # gaps of exactly 30 min, just over, and short ones; some ties
        step = rnd.choice([0, 60, 600, 1800, 1800, 1801, 3600 * 3])
        clock[u] = clock.get(u, T0 - dt.timedelta(hours=20)) + dt.timedelta(seconds=step)
        rows.append(
            (
                i,
                u,
                f"i{rnd.randint(0, 9)}",
                rnd.choice(["click", "click", "purchase", "impression"]),
                clock[u],
                rnd.choice([None, 1000, 29_999, 30_000, 120_000]),
            )
        )
    rows.append((10**6, "u0", "LEAK", "click", CUTOFF, 50_000))  # at the cutoff: must not appear
    return rows


def reference(rows, spec: SessionSpec):
    out = []
    for u in sorted({r[1] for r in rows}):
        evs = sorted((r for r in rows if r[1] == u and r[4] < CUTOFF), key=lambda r: (r[4], r[0]))
        sessions = []
        for k, e in enumerate(evs):
            prev = evs[k - 1] if k else None
            if (
                prev is None
                or (e[4] - prev[4]).total_seconds() > spec.gap_minutes * 60
                or prev[3] in spec.end_event_types
            ):
                sessions.append([])
            sessions[-1].append(e)
        for s in sessions:
            item = [e for e in s if e[3] in spec.item_event_types]
            acc = [e for e in item if e[5] is not None and e[5] < spec.min_dwell_ms]
            valid = [e for e in item if e not in acc]
            out.append(
                (u, s[0][4], s[-1][4], [e[2] for e in valid], len(s), len(acc), len(valid) >= spec.min_valid_clicks)
            )
    return sorted(out)


@pytest.mark.parametrize("spec", [SessionSpec(), SessionSpec(end_event_types=("purchase",), min_valid_clicks=1)])
def test_matches_brute_force(spark, spec):
    rows = make_events()
    got = build_sessions(spark.createDataFrame(rows, SCHEMA), CUTOFF, spec).collect()
    got_t = sorted(
        (r.user_id, r.start_ts, r.end_ts, list(r.items), r.n_events, r.n_accidental_clicks, r.is_valid) for r in got
    )
    assert got_t == reference(rows, spec)
    assert len({r.session_id for r in got}) == len(got)
    assert all("LEAK" not in r.items for r in got)


def test_exactly_thirty_minutes_stays_in_session(spark):
    rows = [
        (1, "u", "a", "click", T0, None),
        (2, "u", "b", "click", T0 + dt.timedelta(minutes=30), None),
        (3, "u", "c", "click", T0 + dt.timedelta(minutes=60, seconds=1), None),
    ]
    got = sorted(build_sessions(spark.createDataFrame(rows, SCHEMA), CUTOFF).collect(), key=lambda r: r.start_ts)
    assert [list(r.items) for r in got] == [["a", "b"], ["c"]]
    assert [r.is_valid for r in got] == [True, False]


def test_job_on_movielens(spark, movielens_run):
    wh, _ = movielens_run
    args = ["--warehouse", wh, "--as-of", "1998-04-30"]
    ctx = run_job("build_sessions", args, spark=spark)
    run_job("build_sessions", args, spark=spark)
    s = spark.read.format("delta").load(f"{wh}/sessions")
    assert s.count() == ctx.row_counts["sessions"] > 943
    assert s.agg(F.sum("n_events")).first()[0] == 100_000  # every event is in exactly one session
