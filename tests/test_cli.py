"""The job entry points, as users run them: `spark-submit jobs/<job>.py`, `python -m recfactory`,
and the `recfactory` console command (each in a fresh process, so a fresh JVM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.spark


def _run(cmd, tmp_path):
    # as in an activated venv: spark-submit finds SPARK_HOME through the `python3` on PATH
    env = dict(
        os.environ,
        RECFACTORY_TMP=str(tmp_path / "tmp"),
        RECFACTORY_DRIVER_MEMORY="1g",
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_spark_submit_ingests_clothing_reviews(tmp_path):
    from recfactory.jobs.runtime.spark import write_spark_defaults

    write_spark_defaults()  # what `make setup` does: Delta settings for plain spark-submit
    wh = tmp_path / "wh"
    _run(
        [
            str(BIN / "spark-submit"),
            "--master",
            "local[2]",
            str(REPO / "jobs" / "ingest.py"),
            "--warehouse",
            str(wh),
            "--as-of",
            "2020-01-01",
            "--dataset",
            "clothing-reviews",
        ],
        tmp_path,
    )
    clean = DeltaTable(str(wh / "events_clean")).to_pandas(columns=["event_type", "user_id"])
    q = DeltaTable(str(wh / "events_quarantine")).to_pandas(columns=["reason"])
    assert len(clean) + len(q) == 23_486
    items = DeltaTable(str(wh / "items")).to_pandas()
    assert len(items) == 1206 and items.text.notna().mean() > 0.95
    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    assert list(runs.status) == ["succeeded"] and runs.spark_master[0] == "local[2]"


def test_the_console_command_lists_the_jobs_and_their_flags(tmp_path):
    out = _run([str(BIN / "recfactory"), "jobs"], tmp_path).stdout
    assert "ingest" in out and "generate_synthetic" in out
    helptext = _run([str(BIN / "recfactory"), "ingest", "--help"], tmp_path).stdout
    assert "--as-of" in helptext and "--events-columns" in helptext


def test_generate_synthetic_then_ingest_as_tables_with_python_m(tmp_path):
    """`python jobs/<job>.py` and `python -m recfactory <job>`, each in a fresh process."""
    wh = tmp_path / "wh"
    _run(
        [
            sys.executable,
            str(REPO / "jobs" / "generate_synthetic.py"),
            "--warehouse",
            str(wh),
            "--as-of",
            "2026-11-28",
            "--events",
            "3000",
        ],
        tmp_path,
    )
    _run(
        [
            sys.executable,
            "-m",
            "recfactory",
            "ingest",
            "--warehouse",
            str(wh),
            "--as-of",
            "2026-11-28",
            "--dataset",
            "tables",
            "--events-path",
            str(wh / "synthetic_events"),
            "--items-path",
            str(wh / "synthetic_items"),
        ],
        tmp_path,
    )
    raw = len(DeltaTable(str(wh / "synthetic_events")).to_pandas(columns=["user_id"]))
    clean = len(DeltaTable(str(wh / "events_clean")).to_pandas(columns=["event_id"]))
    q = len(DeltaTable(str(wh / "events_quarantine")).to_pandas(columns=["reason"]))
    assert clean + q == raw and clean > 0.99 * raw
    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    ingest = runs[runs.job == "ingest"].iloc[0]
    versions = {i["name"]: i["version"] for i in ingest.inputs}
    assert versions == {"events": 0, "items": 0}
