"""Publication (jobs/runtime/publication.py) against a brute-force reference: random histories of
runs — succeeded, failed, killed between their two tables' commits, two of the same date at once
with their commits interleaved — written as real Delta commits (delta-rs, the manifest in each
commit as the jobs write it). For every date the published rows must be exactly what the date's
latest finished succeeded run wrote, the same run for both tables (never a mix), and nothing of a
date no run succeeded for."""

from __future__ import annotations

import datetime as dt
import json
import random

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from recfactory.jobs.runtime.publication import NotPublishedError, read_arrow, resolve

DATES = [dt.date(2026, 11, d) for d in (28, 29, 30)]
TABLES = ("t1", "t2")


def _write(root, table, run_id, day, value, mode="partition"):
    rows = pa.table({"ds": [day, day], "run_id": [run_id] * 2, "value": [value, value + 1]})
    meta = CommitProperties(custom_metadata={"userMetadata": json.dumps({"run_id": run_id, "as_of": day.isoformat()})})
    uri = f"{root}/{table}"
    exists = DeltaTable.is_deltatable(uri)
    if not exists or mode == "append":
        write_deltalake(uri, rows, partition_by=["ds"], mode="append", commit_properties=meta)
    else:
        write_deltalake(
            uri,
            rows,
            partition_by=["ds"],
            mode="overwrite",
            predicate=f"ds = '{day.isoformat()}'",
            commit_properties=meta,
        )
    return DeltaTable(uri).version()


def _history(rng: random.Random, root: str):
    """A random history; returns (runs as `_runs` rows, what each run wrote: {(run, table): value})."""
    runs, wrote, clock = [], {}, 0
    for i in range(rng.randint(3, 9)):
        day = rng.choice(DATES)
        concurrent = rng.random() < 0.35
        group = [f"r{i}a", f"r{i}b"] if concurrent else [f"r{i}"]
        fates = {r: rng.choice(["succeeded", "succeeded", "failed", "killed", "killed_at_start"]) for r in group}
        # each run's commits (t1 then t2, stopping where its fate says), interleaved at random
        todo = {r: [t for t in TABLES][: {"killed": 1, "killed_at_start": 0}.get(fates[r], 2)] for r in group}
        outputs = {r: [] for r in group}
        while any(todo.values()):
            r = rng.choice([r for r in group if todo[r]])
            t = todo[r].pop(0)
            value = rng.randint(0, 10**6)
            wrote[(r, t)] = value
            outputs[r].append({"name": t, "version": _write(root, t, r, day, value)})
        for r in rng.sample(group, len(group)):  # they finish in a random order
            clock += 1
            if fates[r] in ("succeeded", "failed"):  # a killed run leaves no _runs row
                runs.append(
                    {
                        "run_id": r,
                        "job": "j",
                        "as_of": day,
                        "status": fates[r],
                        "finished_at": dt.datetime(2026, 12, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=clock),
                        "outputs": outputs[r],
                    }
                )
    return runs, wrote


def _expected(runs, wrote, table):
    """Brute force: per date, the rows the latest finished succeeded run of that date wrote."""
    out = []
    for day in DATES:
        done = [
            r
            for r in runs
            if r["status"] == "succeeded" and r["as_of"] == day and any(o["name"] == table for o in r["outputs"])
        ]
        if done:
            r = max(done, key=lambda r: r["finished_at"])["run_id"]
            v = wrote[(r, table)]
            out += [(day, r, v), (day, r, v + 1)]
    return sorted(out)


@pytest.mark.parametrize("seed", range(40))
def test_published_rows_are_the_latest_succeeded_run_of_each_date(tmp_path, seed):
    rng = random.Random(seed)
    runs, wrote = _history(rng, str(tmp_path))
    got = {}
    for table in TABLES:
        if not DeltaTable.is_deltatable(str(tmp_path / table)):
            continue
        try:
            rows = read_arrow(str(tmp_path), table, runs).to_pylist()
        except NotPublishedError:
            assert _expected(runs, wrote, table) == []
            continue
        got[table] = sorted((r["ds"], r["run_id"], r["value"]) for r in rows)
        assert got[table] == _expected(runs, wrote, table), (table, runs)
    # never a mix: a date's rows in both tables come from one run
    if len(got) == 2:
        for day in DATES:
            assert {r for d, r, _ in got["t1"] if d == day} == {r for d, r, _ in got["t2"] if d == day}


def test_a_killed_rerun_makes_its_date_dirty_and_the_published_version_is_read(tmp_path):
    root, day = str(tmp_path), DATES[0]
    v0 = _write(root, "t1", "good", day, 1)
    runs = [
        {
            "run_id": "good",
            "job": "j",
            "as_of": day,
            "status": "succeeded",
            "finished_at": dt.datetime(2026, 12, 1),
            "outputs": [{"name": "t1", "version": v0}],
        }
    ]
    _write(root, "t1", "killed", day, 100)  # v1: a partial rerun, no _runs row
    v2 = _write(root, "t1", "other", DATES[1], 7)  # v2: a later date, succeeded
    runs.append(
        {
            "run_id": "other",
            "job": "j",
            "as_of": DATES[1],
            "status": "succeeded",
            "finished_at": dt.datetime(2026, 12, 2),
            "outputs": [{"name": "t1", "version": v2}],
        }
    )
    pub = resolve(root, "t1", runs)
    assert pub.version == v2 and pub.dirty == {day.isoformat(): v0}
    assert pub.plan() == [(v2, False, [day]), (v0, True, [day])]
    assert sorted(r["value"] for r in read_arrow(root, "t1", runs).to_pylist()) == [1, 2, 7, 8]


def test_tables_outside_the_factory_read_newest_and_unpublished_factory_tables_are_refused(tmp_path):
    root = str(tmp_path)
    write_deltalake(f"{root}/external", pa.table({"ds": [DATES[0]], "x": [1]}))
    assert resolve(root, "external", []) is None
    assert read_arrow(root, "external", []).num_rows == 1
    _write(root, "t1", "failed-run", DATES[0], 1)
    runs = [
        {
            "run_id": "failed-run",
            "job": "j",
            "as_of": DATES[0],
            "status": "failed",
            "finished_at": dt.datetime(2026, 12, 1),
            "outputs": [{"name": "t1", "version": 0}],
        }
    ]
    with pytest.raises(NotPublishedError, match="none of which succeeded"):
        resolve(root, "t1", runs)
    assert resolve(root, "_runs", runs) is None  # the runtime's own records: appends


def test_a_merge_commit_never_makes_a_date_dirty(tmp_path):
    """events_clean: a load merges its clean events, of many dates, in one atomic commit of correct
    rows; a load that merged and then failed leaves events read with the rest, no date dirty."""
    root, day = str(tmp_path), DATES[0]
    v0 = _write(root, "ev", "load1", day, 1)
    meta = CommitProperties(custom_metadata={"userMetadata": json.dumps({"run_id": "load2", "as_of": day.isoformat()})})
    (
        DeltaTable(f"{root}/ev")
        .merge(
            pa.table({"ds": [day], "run_id": ["load2"], "value": [9]}),
            "t.value = s.value",
            source_alias="s",
            target_alias="t",
            commit_properties=meta,
        )
        .when_not_matched_insert_all()
        .execute()
    )
    runs = [
        {
            "run_id": "load1",
            "job": "ingest",
            "as_of": day,
            "status": "succeeded",
            "finished_at": dt.datetime(2026, 12, 1),
            "outputs": [{"name": "ev", "version": v0}],
        },
        {
            "run_id": "load2",
            "job": "ingest",
            "as_of": day,
            "status": "failed",
            "finished_at": dt.datetime(2026, 12, 2),
            "outputs": [{"name": "ev", "version": 1}],
        },
    ]
    assert DeltaTable(f"{root}/ev").history(1)[0]["operation"] == "MERGE"
    pub = resolve(root, "ev", runs)
    assert (pub.version, pub.dirty) == (v0, {})
