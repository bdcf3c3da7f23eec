"""Attempts on record: every run says it started before it writes anything.

``_runs`` holds one row per *finished* attempt (succeeded or failed, with its manifest). An attempt
that never finished — killed, out of memory, its node lost — left no such row, but it did leave a
row in ``_attempts``, written (with delta-rs: no Spark, a few milliseconds) before the job's first
read. :func:`history` joins the two:

- ``succeeded`` / ``failed``: the attempt's ``_runs`` row;
- ``abandoned``: no ``_runs`` row, and a later attempt of the same job and date started, or the
  attempt started more than ``ABANDONED_AFTER`` ago; its *partial* versions — commits it made to
  its output tables before it stopped — are found by the run id every commit carries, and named;
- ``running``: no ``_runs`` row yet, and neither of the above.

The next run of the same job and date warns about an abandoned attempt (``previous_abandoned``);
``recfactory runs --warehouse W [--as-of D] [--job J]`` prints the history.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from typing import TYPE_CHECKING

from recfactory.jobs.runtime.env import DEFAULT_WAREHOUSE, RUNS_TABLE, arrow_uri

if TYPE_CHECKING:
    import pandas as pd

ATTEMPTS_TABLE = "_attempts"
ABANDONED_AFTER = dt.timedelta(hours=24)


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("job", pa.string()),
            ("as_of", pa.string()),
            ("started_at", pa.timestamp("us", tz="UTC")),
            ("host", pa.string()),
            ("pid", pa.int64()),
            ("params_hash", pa.string()),
            ("code_version", pa.string()),
            ("outputs", pa.list_(pa.string())),
        ]
    )


def record_start(
    root: str,
    run_id: str,
    job: str,
    as_of: dt.date,
    params_hash: str,
    code_version: str,
    outputs: tuple[str, ...],
    started: float,
) -> None:
    """Append the attempt's start (one small delta-rs commit; concurrent appends do not conflict)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    row = {
        "run_id": [run_id],
        "job": [job],
        "as_of": [as_of.isoformat()],
        "started_at": [dt.datetime.fromtimestamp(started, dt.UTC)],
        "host": [socket.gethostname()],
        "pid": [os.getpid()],
        "params_hash": [params_hash],
        "code_version": [code_version],
        "outputs": [list(outputs)],
    }
    write_deltalake(arrow_uri(root, ATTEMPTS_TABLE), pa.table(row, schema=_schema()), mode="append")


def _read(root: str, table: str) -> pd.DataFrame | None:
    from recfactory.jobs.runtime.publication import read_small

    rows = read_small(root, table, arrow=True)
    return None if rows is None else rows.to_pandas()


def partial_versions(root: str, run_id: str, outputs) -> list[str]:
    """'table vN' for every commit the run made to its output tables (from the run id in each
    commit's metadata)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    found = []
    for name in outputs:
        try:
            hist = DeltaTable(arrow_uri(root, name)).history()
        except (TableNotFoundError, FileNotFoundError, OSError):
            continue
        for h in hist:
            meta = h.get("userMetadata")
            try:
                rid = json.loads(meta).get("run_id") if meta else None
            except (ValueError, AttributeError):
                rid = None
            if rid == run_id:
                found.append(f"{name} v{h['version']}")
    return sorted(found)


def history(
    root: str, as_of: dt.date | str | None = None, job: str | None = None, now: dt.datetime | None = None
) -> pd.DataFrame:
    """Every attempt, newest first: run_id, job, as_of, status, started_at, duration_s, outputs
    (the versions a finished run published, or an unfinished one's partial versions), error."""
    import pandas as pd

    def utc(t) -> pd.Timestamp:
        t = pd.Timestamp(t)
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")

    def narrow(df: pd.DataFrame) -> pd.DataFrame:
        # before any per-attempt work (a run's start asks only about its own job and date)
        if as_of is not None:
            df = df[df["as_of"].astype(str) == str(as_of)]
        return df[df["job"] == job] if job is not None else df

    cols = ["run_id", "job", "as_of", "status", "started_at", "duration_s", "outputs", "error"]
    attempts, runs = _read(root, ATTEMPTS_TABLE), _read(root, RUNS_TABLE)
    if attempts is None:
        attempts = pd.DataFrame(columns=["run_id", "job", "as_of", "started_at", "outputs"])
    attempts = narrow(attempts)
    finished = {}
    if runs is not None:
        for r in narrow(runs).itertuples():
            outs = [f"{o['name']} v{o['version']}" for o in (r.outputs if r.outputs is not None else [])]
            finished[r.run_id] = {
                "run_id": r.run_id,
                "job": r.job,
                "as_of": str(r.as_of),
                "status": r.status,
                "started_at": utc(r.started_at),
                "duration_s": r.duration_s,
                "outputs": outs,
                "error": r.error,
            }
    now = utc(now or dt.datetime.now(dt.UTC))
    rows = list(finished.values())
    for a in attempts.itertuples():
        if a.run_id in finished:
            continue
        started = utc(a.started_at)
        later = attempts[
            (attempts["job"] == a.job) & (attempts["as_of"] == a.as_of) & (attempts["started_at"] > a.started_at)
        ]
        abandoned = len(later) > 0 or now - started > pd.Timedelta(ABANDONED_AFTER)
        rows.append(
            {
                "run_id": a.run_id,
                "job": a.job,
                "as_of": a.as_of,
                "status": "abandoned" if abandoned else "running",
                "started_at": started,
                "duration_s": None,
                "outputs": partial_versions(root, a.run_id, list(a.outputs)),
                "error": None,
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values("started_at", ascending=False, kind="stable").reset_index(drop=True)


def previous_abandoned(root: str, job: str, as_of: dt.date, run_id: str) -> pd.DataFrame:
    """The unfinished earlier attempts of this job and date (abandoned: this run started after them)."""
    h = history(root, as_of=as_of, job=job)
    return h[(h["run_id"] != run_id) & (h["status"].isin(["abandoned", "running"]))]


def format_history(h: pd.DataFrame) -> str:
    """The history as a terminal table."""
    if h.empty:
        return "no runs recorded"
    lines = [f"{'started (UTC)':19s}  {'job':24s} {'as of':10s}  {'status':9s} {'seconds':>8s}  run id    outputs"]
    for r in h.itertuples():
        secs = "" if r.duration_s is None or r.duration_s != r.duration_s else f"{r.duration_s:.1f}"
        outs = ", ".join(r.outputs) if len(r.outputs) else "-"
        if r.status == "abandoned" and len(r.outputs):
            outs = "partial: " + outs
        line = (
            f"{r.started_at:%Y-%m-%d %H:%M:%S}  {r.job:24s} {r.as_of:10s}  {r.status:9s} {secs:>8s}  "
            f"{r.run_id[:8]}  {outs}"
        )
        if r.error:
            line += f"\n{'':21s}error: {str(r.error).splitlines()[0][:160]}"
        lines.append(line)
    return "\n".join(lines)


def runs_main(argv: list[str]) -> int:
    import argparse

    from recfactory.jobs.runtime.env import normalize_warehouse

    ap = argparse.ArgumentParser(
        prog="recfactory runs",
        description="The history of attempts: status, "
        "duration and the versions each published (abandoned ones: their partial versions).",
    )
    ap.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    ap.add_argument("--as-of", default=None, type=dt.date.fromisoformat)
    ap.add_argument("--job", default=None)
    ns = ap.parse_args(argv)
    print(format_history(history(normalize_warehouse(ns.warehouse), ns.as_of, ns.job)))
    return 0
