"""recfactory vacuum (delta-rs, no Spark): files only versions outside the window read are removed;
every version a kept run names (and the one before each of its outputs, where its replay starts)
and the current publication stay readable."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from recfactory.jobs.runtime.vacuum import vacuum

DAY = dt.date(2026, 11, 30)


def _write(uri: str, run_id: str, value: int) -> int:
    meta = CommitProperties(custom_metadata={"userMetadata": json.dumps({"run_id": run_id, "as_of": DAY.isoformat()})})
    rows = pa.table({"ds": [DAY], "value": [value]})
    if DeltaTable.is_deltatable(uri):
        write_deltalake(uri, rows, mode="overwrite", predicate=f"ds = '{DAY}'", commit_properties=meta)
    else:
        write_deltalake(uri, rows, mode="append", partition_by=["ds"], commit_properties=meta)
    return DeltaTable(uri).version()


def _runs(root, rows):
    schema = pa.schema(
        [
            ("run_id", pa.string()),
            ("job", pa.string()),
            ("as_of", pa.date32()),
            ("status", pa.string()),
            ("started_at", pa.timestamp("us", tz="UTC")),
            ("finished_at", pa.timestamp("us", tz="UTC")),
            ("duration_s", pa.float64()),
            ("error", pa.string()),
            (
                "inputs",
                pa.list_(
                    pa.struct(
                        [("name", pa.string()), ("path", pa.string()), ("format", pa.string()), ("version", pa.int64())]
                    )
                ),
            ),
            ("outputs", pa.list_(pa.struct([("name", pa.string()), ("version", pa.int64())]))),
        ]
    )
    write_deltalake(f"{root}/_runs", pa.Table.from_pylist(rows, schema=schema), mode="append")


def _run(rid, finished, outputs, inputs=()):
    return {
        "run_id": rid,
        "job": "j",
        "as_of": DAY,
        "status": "succeeded",
        "started_at": finished,
        "finished_at": finished,
        "duration_s": 1.0,
        "error": None,
        "inputs": list(inputs),
        "outputs": [{"name": n, "version": v} for n, v in outputs],
    }


def test_vacuum_keeps_what_kept_runs_and_the_publication_read(tmp_path):
    """--retain-days 0: the files removed so far are all old enough to go, and the runs kept are
    those that finished at the moment of the vacuum."""
    root = str(tmp_path)
    t = f"{root}/t"
    versions = [_write(t, f"r{i}", i) for i in range(5)]  # v0..v4, each replacing the partition
    _write(t, "killed", 99)  # v5: an unpublished partial write
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(days=30)
    _runs(
        root,
        [
            _run("r0", old, [("t", 0)]),
            _run("r1", old, [("t", 1)]),
            _run("r2", now, [("t", 2)]),  # kept: v2 and v1
            _run("r3", old, [("t", 3)]),
            _run("r4", old, [("t", 4)]),  # the publication: v4
            _run("reader", now, [], [{"name": "t", "path": t, "format": "delta", "version": 3}]),
        ],
    )  # v3
    assert versions == [0, 1, 2, 3, 4]
    dry = vacuum(root, retain_days=0, dry_run=True, now=now)
    assert any(line.startswith("t: would remove 1 files; kept versions v1-v4") for line in dry), dry
    assert DeltaTable(t, version=0).to_pandas()["value"].tolist() == [0]  # nothing removed yet
    vacuum(root, retain_days=0, now=now)
    for v in (1, 2, 3, 4, 5):
        assert DeltaTable(t, version=v).to_pandas()["value"].tolist() == [v if v < 5 else 99]
    with pytest.raises(OSError):
        DeltaTable(t, version=0).to_pandas()  # only v0 read its file: gone


def test_a_running_attempt_refuses_a_retention_under_a_day(tmp_path):
    from recfactory.jobs.runtime.attempts import record_start

    root = str(tmp_path)
    _write(f"{root}/t", "r0", 0)
    now = dt.datetime.now(dt.UTC)
    record_start(root, "a" * 32, "j", DAY, "h", "c", ("t",), now.timestamp())
    with pytest.raises(RuntimeError, match="running"):
        vacuum(root, retain_days=0, now=now)
    assert vacuum(root, retain_days=1, dry_run=True, now=now)
