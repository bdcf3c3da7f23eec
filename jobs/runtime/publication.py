"""Publication: which version of a table a reader inside (or outside) the factory reads.

A run's outputs are published together by its succeeded ``_runs`` row, which names every version
it wrote. Commits that no succeeded row names — a killed attempt's partial writes, a failed run's
tables written before the failure, a rerun still in progress — are never read:

- ``version``: the newest version any succeeded run of the table's producer published. Reading it
  gives every date's rows *as of that commit*;
- a date whose rows in that version were last written by a run that is not the date's publisher
  (the latest succeeded run for that date: a killed or failed attempt, or a concurrent run of the
  same date that finished first) is *dirty*: its rows are read instead at the version its
  publisher named (or not at all, when no run for that date succeeded).

So two runs of the same job and date at once never mix: the date's rows are those of the run that
finished last, for every table it wrote. Tables no factory run ever wrote (an external embedding
table, say) have no publication: they are read at their newest version.

Merges (``events_clean``: every load merges its clean events into the event dates' partitions,
in one atomic commit of correct rows) are not per-date writes and never make a date dirty.

No Spark here: delta-rs and pyarrow, so the reader for trainers (``recfactory.tables``), the
Airflow operator and ``recfactory runs`` share it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from recfactory.jobs.runtime.env import RUNS_TABLE, arrow_uri


class NotPublishedError(LookupError):
    """Factory runs wrote the table, but no succeeded run published it (for the date asked)."""


def _open(root: str, table: str, version: int | None = None):
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(arrow_uri(root, table), version=version)
    except (TableNotFoundError, FileNotFoundError, OSError):
        return None


def read_small(root: str, table: str, columns: list[str] | None = None, filter=None, arrow: bool = False):
    """Rows (dicts; or a pyarrow Table with ``arrow``) of one of the runtime's own small tables
    (``_runs``, ``_attempts``) via delta-rs, or None when the table does not exist."""
    dtab = _open(root, table)
    if dtab is None:
        return None
    out = dtab.to_pyarrow_dataset().to_table(columns=columns, filter=filter)
    return out if arrow else out.to_pylist()


RUN_COLUMNS = ["run_id", "job", "as_of", "status", "finished_at", "outputs"]


def read_runs(root: str) -> list[dict]:
    """The finished runs (succeeded and failed): run_id, job, as_of, status, finished_at, outputs."""
    return runs_at(root)[0]


def runs_at(root: str, version: int | None = None) -> tuple[list[dict], int | None]:
    """``read_runs`` at a version of ``_runs`` (the newest by default), with the version read (None:
    no ``_runs`` yet). A run pins the version its publications were resolved against, so a replay
    resolves the same ones."""
    dtab = _open(root, RUNS_TABLE, version)
    if dtab is None:
        if version is not None:
            raise FileNotFoundError(f"{RUNS_TABLE} has no version {version} under {root}")
        return [], None
    return dtab.to_pyarrow_dataset().to_table(columns=RUN_COLUMNS).to_pylist(), dtab.version()


def commit_writers(root: str, table: str, up_to: int | None = None) -> list[tuple[int, str, str | None, str | None]]:
    """(version, operation, run_id, as_of) of the table's commits, oldest first, from the manifest
    every factory commit carries (run_id None: a commit made outside the factory)."""
    from deltalake import DeltaTable

    out = []
    for h in DeltaTable(arrow_uri(root, table)).history():
        v = int(h["version"])
        if up_to is not None and v > up_to:
            continue
        meta: Any = h.get("userMetadata")
        try:
            meta = json.loads(meta) if meta else {}
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        out.append((v, str(h.get("operation", "")), meta.get("run_id"), meta.get("as_of")))
    return sorted(out)


@dataclass(frozen=True)
class Publication:
    """One table's publication (see the module docstring)."""

    table: str
    version: int
    run_id: str
    by_date: dict[str, tuple[int, str]] = field(default_factory=dict)  # as_of → (version, run id) of its publisher
    dirty: dict[str, int | None] = field(default_factory=dict)  # as_of → the version to read it at (None: none)

    def for_date(self, as_of: dt.date | str) -> tuple[int, str] | None:
        return self.by_date.get(str(as_of))

    def plan(self) -> list[tuple[int, bool, list[dt.date]]]:
        """How to read it: (version, keep, dates) steps whose rows are unioned — the newest version
        without the dirty dates (keep False), then each dirty date at its publisher's version (keep
        True). A table without a ``ds`` column is read at ``version`` whole."""
        dirty = sorted(self.dirty)
        steps = [(self.version, False, [dt.date.fromisoformat(d) for d in dirty])]
        return steps + [(v, True, [dt.date.fromisoformat(d)]) for d, v in sorted(self.dirty.items()) if v is not None]


def _when(r: dict):
    t = r.get("finished_at")
    return (t.replace(tzinfo=None) if isinstance(t, dt.datetime) else dt.datetime.min), r["run_id"]


def resolve(root: str, table: str, runs: list[dict] | None = None) -> Publication | None:
    """The table's publication, None when no factory run ever wrote it (read it at its newest
    version), NotPublishedError when factory runs wrote it but none succeeded."""
    if table.startswith("_"):
        return None  # the runtime's own records (_runs, _attempts): appends only
    runs = read_runs(root) if runs is None else runs
    by_date: dict[str, tuple[int, str]] = {}
    newest: tuple[int, str] | None = None
    for r in sorted((r for r in runs if r["status"] == "succeeded"), key=_when):
        for o in r.get("outputs") or []:
            if o["name"] == table:
                by_date[str(r["as_of"])] = (int(o["version"]), r["run_id"])
                if newest is None or int(o["version"]) > newest[0]:
                    newest = (int(o["version"]), r["run_id"])
    try:
        writers = commit_writers(root, table, None if newest is None else newest[0])
    except Exception:  # noqa: BLE001 - no such table
        writers = []
    if newest is None:
        if any(rid for _, _, rid, _ in writers):
            raise NotPublishedError(
                f"{table} was written by factory runs, none of which succeeded: nothing "
                "is published (see `recfactory runs`)"
            )
        return None
    last: dict[str, str] = {}
    for _, op, rid, as_of in writers:
        if rid and as_of and op != "MERGE":
            last[str(as_of)] = rid
    dirty = {
        d: (by_date[d][0] if d in by_date else None)
        for d, rid in last.items()
        if d not in by_date or by_date[d][1] != rid
    }
    return Publication(table, newest[0], newest[1], by_date, dirty)


def resolve_for_date(
    root: str, table: str, as_of: dt.date | str, runs: list[dict] | None = None
) -> tuple[int, str, str]:
    """(version, run id, job) published for the table's date: the latest succeeded run for that date
    of the job that writes it. NotPublishedError when there is none."""
    runs = read_runs(root) if runs is None else runs
    best = None
    for r in sorted((r for r in runs if r["status"] == "succeeded" and str(r["as_of"]) == str(as_of)), key=_when):
        for o in r.get("outputs") or []:
            if o["name"] == table:
                best = (int(o["version"]), r["run_id"], r["job"])
    if best is None:
        raise NotPublishedError(f"{table} has no publication for {as_of}")
    return best


def read_arrow(root: str, table: str, runs: list[dict] | None = None, columns: list[str] | None = None):
    """The whole table as published (every date), as a pyarrow Table: ``resolve`` + ``plan``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    pub = resolve(root, table, runs)
    if pub is None:
        return DeltaTable(arrow_uri(root, table)).to_pyarrow_dataset().to_table(columns=columns)
    parts = []
    for version, keep, dates in pub.plan():
        ds = DeltaTable(arrow_uri(root, table), version=version).to_pyarrow_dataset()
        if "ds" not in ds.schema.names:
            return ds.to_table(columns=columns)
        f = pc.field("ds").isin(dates) if dates else None
        if f is not None and not keep:
            f = ~f
        parts.append(ds.to_table(columns=columns, filter=f))
    return pa.concat_tables(parts, promote_options="default")
