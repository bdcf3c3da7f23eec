"""recfactory.tables (delta-rs only): a trainer reads the version the latest succeeded run of the
date published, restricted to the date — not the newest version, not another date's rows."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from recfactory import tables

D = dt.date(2025, 6, 30)


def _run(run_id, status, finished, version, as_of=D):
    return {
        "run_id": run_id,
        "job": "build_sequences",
        "as_of": as_of,
        "status": status,
        "finished_at": dt.datetime(2025, 7, 1, finished, tzinfo=dt.UTC),
        "outputs": [{"name": "user_sequences", "path": "p", "version": version, "rows": 1, "partition": str(as_of)}],
    }


def test_the_published_version_of_the_date_is_read_at_that_version(tmp_path):
    wh = str(tmp_path / "wh")
    seq = f"{wh}/user_sequences"
    write_deltalake(
        seq, pa.table({"user_id": ["a", "z"], "n": [1, 26], "ds": [D, D + dt.timedelta(days=1)]}), partition_by=["ds"]
    )  # v0: run r1
    write_deltalake(
        seq, pa.table({"user_id": ["b"], "n": [2], "ds": [D]}), mode="overwrite", predicate="ds = '2025-06-30'"
    )  # v1: run r2
    write_deltalake(seq, pa.table({"user_id": ["x"], "n": [0], "ds": [D]}), mode="append")  # v2: killed r3
    runs = [_run("r1", "succeeded", 1, 0), _run("r2", "succeeded", 2, 1), _run("r4", "failed", 3, 2)]
    write_deltalake(f"{wh}/_runs", pa.Table.from_pylist(runs))
    t = tables.read(wh, "user_sequences", "2025-06-30")
    assert (t.version, t.run_id, t.job) == (1, "r2", "build_sequences")
    assert t.to_pandas()["user_id"].tolist() == ["b"] and t.to_arrow().num_rows == 1
    (batch,) = list(t.to_torch(batch_size=8))
    assert batch["user_id"] == ["b"] and batch["n"].tolist() == [2]
    with pytest.raises(tables.NotPublishedError, match="run build_sequences for that date"):
        tables.read(wh, "user_sequences", D + dt.timedelta(days=1))
    with pytest.raises(ValueError, match="no recfactory job writes"):
        tables.read(wh, "not_a_table", D)
    with pytest.raises(ValueError, match="invalid table name"):
        tables.read(wh, "../etc", D)
