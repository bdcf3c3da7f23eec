"""``recfactory vacuum --warehouse W --retain-days N``: remove data files no version still needs.

Delta's VACUUM deletes the files that no longer belong to the newest version and were removed
more than the retention period ago — which takes away time travel to older versions, and with it
the replay of any run that read them. This command vacuums every table of the warehouse (delta-rs,
no Spark) with ``keep_versions``: the files of every version that

- a *kept* run names (a run that finished in the last N days: each input version it read, each
  output version it published, and the version before each output, which its replay starts from);
- the current publication reads (``runtime.publication``: the newest published version and the
  versions dirty dates are read at — which may be older than the newest version);

are kept, whatever their age. Everything else removed more than N days ago goes. So
``recfactory replay`` keeps working for every run of the window, and every reader keeps reading
what is published. (Time travel also needs the commit log: Delta drops log entries older than the
table's ``delta.logRetentionDuration``, 30 days by default; a kept version the log no longer has
is reported.)

A retention under a day could delete the uncommitted files of a job writing right now: it is
refused while an attempt is running.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict

from recfactory.jobs.runtime.env import DEFAULT_WAREHOUSE, RUNS_TABLE, arrow_fs, arrow_uri, normalize_warehouse


def warehouse_tables(root: str) -> list[str]:
    """The Delta tables directly under the warehouse root (a replay's scratch folder excluded)."""
    import pyarrow.fs as pafs

    fs, base = arrow_fs(root)
    out = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=False)):
        if info.type == pafs.FileType.Directory and info.base_name != "_replay":
            if fs.get_file_info(f"{info.path}/_delta_log").type == pafs.FileType.Directory:
                out.append(info.base_name)
    return sorted(out)


def kept_versions(root: str, runs: list[dict], tables: list[str], since: dt.datetime) -> dict[str, set[int]]:
    """{table: versions to keep} (see the module docstring)."""
    from recfactory.jobs.runtime.publication import NotPublishedError, resolve

    keep: dict[str, set[int]] = defaultdict(set)
    for r in runs:
        finished = r.get("finished_at")
        if finished is None or finished.replace(tzinfo=finished.tzinfo or dt.UTC) < since:
            continue
        for i in r.get("inputs") or []:
            # a table of this warehouse (a raw input elsewhere is not ours to vacuum)
            ours = i["name"] in tables and str(i.get("path") or "").rstrip("/").rsplit("/", 1)[-1] == i["name"]
            if i.get("format") == "delta" and i.get("version") is not None and ours:
                keep[i["name"]].add(int(i["version"]))
        for o in r.get("outputs") or []:
            keep[o["name"]].update(v for v in (int(o["version"]), int(o["version"]) - 1) if v >= 0)
    for t in tables:
        try:
            pub = resolve(root, t, runs)
        except NotPublishedError:
            continue
        if pub is not None:
            keep[t].add(pub.version)
            keep[t].update(v for v in pub.dirty.values() if v is not None)
    return keep


def vacuum(warehouse: str, retain_days: float, dry_run: bool = False, now: dt.datetime | None = None) -> list[str]:
    """Vacuum every table; one line per table."""
    from deltalake import DeltaTable

    from recfactory.jobs.runtime.attempts import history
    from recfactory.jobs.runtime.publication import read_small

    if retain_days < 0:
        raise ValueError("--retain-days must be >= 0")
    root = normalize_warehouse(warehouse)
    now = now or dt.datetime.now(dt.UTC)
    hours = math.ceil(retain_days * 24)
    if hours < 24:
        h = history(root, now=now)
        running = h[h["status"] == "running"]
        if len(running):
            raise RuntimeError(
                f"{len(running)} attempt(s) are running ({', '.join(running['job'])}): a retention "
                "under a day could delete the files they are writing; vacuum later"
            )
    runs = read_small(root, RUNS_TABLE) or []
    tables = warehouse_tables(root)
    keep = kept_versions(root, runs, tables, now - dt.timedelta(days=retain_days))
    lines = []
    for t in tables:
        dtab = DeltaTable(arrow_uri(root, t))
        versions = sorted(v for v in keep.get(t, ()) if v <= dtab.version())
        missing = []
        for v in versions:
            try:
                DeltaTable(arrow_uri(root, t), version=v)
            except Exception:  # noqa: BLE001 - the log entry is gone
                missing.append(v)
        files = dtab.vacuum(
            retention_hours=hours,
            dry_run=dry_run,
            enforce_retention_duration=False,
            keep_versions=[v for v in versions if v not in missing],
        )
        line = (
            f"{t}: {'would remove' if dry_run else 'removed'} {len(files)} files; kept versions "
            f"{_ranges(versions) or 'none'} besides the newest"
        )
        if missing:
            line += f"; versions {_ranges(missing)} are no longer in the log (delta.logRetentionDuration)"
        lines.append(line)
    return lines


def _ranges(vs) -> str:
    vs = sorted(set(vs))
    out, start = [], None
    for i, v in enumerate(vs):
        if start is None:
            start = v
        if i == len(vs) - 1 or vs[i + 1] != v + 1:
            out.append(f"v{start}" if start == v else f"v{start}-v{v}")
            start = None
    return ", ".join(out)


def vacuum_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="recfactory vacuum",
        description="Remove data files older than the retention "
        "that no kept run (finished within it) and no current publication reads.",
    )
    ap.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    ap.add_argument(
        "--retain-days",
        type=float,
        required=True,
        help="keep what runs of the last N days read and wrote (their replay keeps working)",
    )
    ap.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    ns = ap.parse_args(argv)
    for line in vacuum(ns.warehouse, ns.retain_days, ns.dry_run):
        print(line)
    return 0
