"""A run SIGKILLed inside the append of its `_runs` row (its outputs committed, the row's data file
on disk, the row's commit never made): nothing is published and the attempt is on record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark]

D = "1998-04-30"


KILLED_IN_RUNS_WRITE = """
import os, signal, sys, uuid
from pathlib import Path
from recfactory.jobs.runtime import delta_io
from recfactory.jobs.runtime.job import run_job

def append_small(self, rows, name, commit):
    # what a writer killed inside the _runs append leaves: its data file, no commit
    import pyarrow.parquet as pq
    target = Path(self.write_path(name))
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, target / f"part-00000-{uuid.uuid4()}-c000.snappy.parquet")
    os.kill(os.getpid(), signal.SIGKILL)

delta_io.Warehouse.append_small = append_small
run_job("build_sequences", sys.argv[1:])
"""


def test_sigkill_inside_the_runs_write_publishes_nothing_and_the_attempt_is_on_record(slice_ingested, tmp_path, spark):
    """The run's outputs are committed, its `_runs` row is not (its data file is on disk, its commit
    never made): `_runs` reads as before, the date is not published (a trainer is told so), the
    attempt shows as abandoned with the version it left, and the next run publishes."""
    from deltalake import DeltaTable

    from recfactory import tables
    from recfactory.jobs.runtime.attempts import history
    from recfactory.jobs.runtime.job import run_job

    wh = Path(slice_ingested(tmp_path / "runs-write-killed"))  # the MovieLens slice ingested as of D
    before = DeltaTable(str(wh / "_runs")).to_pandas()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("RECFACTORY_RUN_ID", None)
    res = subprocess.run(
        [sys.executable, "-c", KILLED_IN_RUNS_WRITE, "--warehouse", str(wh), "--as-of", D],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert DeltaTable(str(wh / "user_sequences")).version() == 0  # its output was committed
    assert len(list((wh / "_runs").glob("*.parquet"))) > len(DeltaTable(str(wh / "_runs")).file_uris())  # the orphan
    after = DeltaTable(str(wh / "_runs")).to_pandas()
    assert sorted(after["run_id"]) == sorted(before["run_id"])  # no half row
    with pytest.raises(tables.NotPublishedError):
        tables.read(str(wh), "user_sequences", D)
    h = history(str(wh), job="build_sequences")
    assert list(h["status"]) == ["running"] and [list(o) for o in h["outputs"]] == [["user_sequences v0"]]
    ctx = run_job("build_sequences", ["--warehouse", str(wh), "--as-of", D], spark=spark)
    h = history(str(wh), job="build_sequences")
    assert list(h["status"]) == ["succeeded", "abandoned"] and h["run_id"].iloc[0] == ctx.run_id
    pub = tables.read(str(wh), "user_sequences", D)
    assert (pub.run_id, pub.version) == (ctx.run_id, 1)
