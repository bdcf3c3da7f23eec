"""Backfill conformance: the same three dates run in order into one warehouse and out of order
into another — the last date first, then the two earlier ones at once (as an Airflow backfill with
max_active_runs 2 runs them) — on a MovieLens slice. Every stateless table holds the same rows per
ds in the two warehouses, and no event is clean twice. (The stateful stage, build_sids, continues the previous date or refuses naming the
missing one: tests/test_sids_job.py.)"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.spark

DATES = ("1998-03-10", "1998-03-11", "1998-03-12")
USERS = 60  # MovieLens users 1..60: every date below has events of its own
# which run wrote a row: the only columns allowed to differ
RUN_COLUMNS = {"run_id", "model_version"}
STEPS = (
    ("ingest", []),
    ("build_sequences", []),
    ("build_sessions", []),
    ("build_cross_stats", ["--keys", "user=user_id,item=item_id,category=category", "--windows", "1d,7d,all"]),
    (
        "build_training_samples",
        [
            "--keys",
            "user=user_id,item=item_id",
            "--windows",
            "7d,all",
            "--negative-rate",
            "0.5",
            "--test-days",
            "7",
            "--val-days",
            "0",
        ],
    ),
    # its positives (also LightGCN's: jobs.runtime.inputs.positive_pairs) and draws; no Swing
    # filter or hard negatives here (they read build_similarity's and the embeddings' tables)
    ("build_retrieval_pairs", ["--swing-filter", "0", "--hard-negatives", "0"]),
)


@pytest.fixture(scope="module")
def source(movielens_slice, tmp_path_factory):
    d = tmp_path_factory.mktemp("backfill")
    movielens_slice(d, USERS)
    return d


def _run_date(spark, wh: Path, src: Path, ds: str) -> None:
    from recfactory.jobs.runtime.job import run_job

    for job, extra in STEPS:
        args = ["--warehouse", str(wh), "--as-of", ds, *extra]
        if job == "ingest":
            args += [
                "--dataset",
                "tables",
                "--events-path",
                str(src / "events.parquet"),
                "--items-path",
                str(src / "items.parquet"),
            ]
        run_job(job, args, spark=spark)


def _tables(wh: Path) -> dict[str, pd.DataFrame]:
    """Every table but _runs as comparable text, rows sorted."""
    from deltalake import DeltaTable

    out = {}
    for p in sorted(wh.iterdir()):
        if p.name.startswith("_") or not (p / "_delta_log").exists():
            continue
        df = DeltaTable(str(p)).to_pandas()
        cols = sorted(c for c in df.columns if c not in RUN_COLUMNS)
        out[p.name] = df[cols].map(str).sort_values(cols).reset_index(drop=True)
    return out


def test_dates_in_order_and_in_reverse_two_at_once_give_the_same_tables(spark, source, tmp_path):
    in_order, out_of_order = tmp_path / "in_order", tmp_path / "out_of_order"
    errors: list[BaseException] = []

    def chain(wh, dates):
        try:
            for ds in dates:
                _run_date(spark, wh, source, ds)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    def the_last_then_two_earlier_at_once():
        chain(out_of_order, [DATES[-1]])
        both = [threading.Thread(target=chain, args=(out_of_order, [ds])) for ds in DATES[:-1]]
        for t in both:
            t.start()
        for t in both:
            t.join()

    # the two warehouses side by side (one Spark session; each its own thread)
    threads = [
        threading.Thread(target=chain, args=(in_order, DATES)),
        threading.Thread(target=the_last_then_two_earlier_at_once),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    a, b = _tables(in_order), _tables(out_of_order)
    assert set(a) == set(b) and {
        "events_clean",
        "user_sequences",
        "cross_stats",
        "training_samples",
        "retrieval_pairs",
    } <= set(a)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=f"{name}: in order vs the last first, then two at once")
    ev = a["events_clean"]
    assert ev["event_id"].is_unique and len(ev) > 0
    # event-date partitions: every event dated up to the last date, each in its own day
    assert (ev["ds"] == ev["ts"].str[:10]).all() and ev["ds"].max() == DATES[-1]
    for name in ("user_sequences", "cross_stats", "training_samples", "sessions", "retrieval_pairs"):
        assert sorted(set(a[name]["ds"])) == list(DATES), name
