"""recfactory replay on real local Spark + Delta: a run re-run from its manifest reproduces every
output bitwise — ingest (a MERGE into events_clean, tables it created), and a job whose date was
rerun since (its inputs at the recorded versions, not the newest) — while a changed computation or
a changed raw input is reported, table by table, and fails the verdict."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.spark]

D = "1998-03-10"
USERS = 40


@pytest.fixture(scope="module")
def recorded(spark, tmp_path_factory):
    """A slice loaded for two dates, sequences built for the second, then its events rewritten
    for a later ingest (the recorded runs read the old ones)."""
    from recfactory.features.sources import movielens_100k
    from recfactory.jobs.runtime.job import run_job

    d = tmp_path_factory.mktemp("replay")
    src = movielens_100k()
    src.events[src.events["user_id"].astype(int) <= USERS].to_parquet(d / "events.parquet", index=False)
    src.items.to_parquet(d / "items.parquet", index=False)
    wh = str(d / "wh")
    ids = {}
    for ds in ("1998-03-09", D):
        ids[("ingest", ds)] = run_job(
            "ingest",
            [
                "--warehouse",
                wh,
                "--as-of",
                ds,
                "--dataset",
                "tables",
                "--events-path",
                str(d / "events.parquet"),
                "--items-path",
                str(d / "items.parquet"),
            ],
            spark=spark,
        ).run_id
    ids["build_sequences"] = run_job("build_sequences", ["--warehouse", wh, "--as-of", D], spark=spark).run_id
    # a later load and a rerun of the date: the recorded run's inputs are no longer the newest
    run_job(
        "ingest",
        [
            "--warehouse",
            wh,
            "--as-of",
            "1998-03-11",
            "--dataset",
            "tables",
            "--events-path",
            str(d / "events.parquet"),
            "--items-path",
            str(d / "items.parquet"),
        ],
        spark=spark,
    )
    run_job("build_sequences", ["--warehouse", wh, "--as-of", D, "--max-len", "3"], spark=spark)
    return wh, ids, d


def test_replay_reproduces_ingest_and_a_superseded_run_bitwise(spark, recorded):
    from recfactory.jobs.runtime.replay import replay

    wh, ids, _ = recorded
    ok, lines = replay(wh, ids[("ingest", D)], spark=spark)
    assert ok, lines
    assert lines[0].startswith("inputs: the same") and lines[-1].endswith("REPRODUCED")
    assert any(line.startswith("events_clean v1: ") and "match (bitwise)" in line for line in lines), lines
    ok, lines = replay(wh, ids["build_sequences"], spark=spark)
    assert ok, lines
    assert [line.split(":")[0] for line in lines] == ["inputs", "user_sequences v0", lines[-1].split(":")[0]]
    assert os.listdir(os.path.join(wh, "_replay")) == []  # the scratch roots are removed


def test_a_changed_computation_is_reported_and_fails(spark, recorded, monkeypatch):
    import recfactory.jobs.build_sequences as job
    from recfactory.jobs.runtime.replay import replay

    wh, ids, _ = recorded
    real = job.build_sequences
    monkeypatch.setattr(job, "build_sequences", lambda *a, **k: real(*a, **k).limit(5))
    ok, lines = replay(wh, ids["build_sequences"], spark=spark)
    assert not ok and lines[-1].split(": ")[-1].startswith("NOT REPRODUCED"), lines
    (diff,) = [line for line in lines if line.startswith("user_sequences")]
    assert "DIFFERS" in diff and "recorded rows not in the replay" in diff, diff


def test_the_command_line_names_a_changed_raw_input(spark, recorded, capsys):
    import pandas as pd

    from recfactory.jobs.runtime.replay import replay_main

    wh, ids, d = recorded
    ev = pd.read_parquet(d / "events.parquet")
    ev.iloc[1:].to_parquet(d / "events.parquet", index=False)  # the raw file changed since
    assert replay_main(["--warehouse", wh, ids[("ingest", D)]]) == 1  # `recfactory replay` (same session)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("inputs: DIFFER") and out[-1].split(": ")[-1].startswith("NOT REPRODUCED"), out
