"""``recfactory replay --warehouse W RUN_ID``: re-run a recorded run and check it reproduces.

The run's ``_runs`` row is its manifest: the job, the params (the seed among them), the code
version, every input at the exact version it read, every output version it published. A replay

1. builds a *replay warehouse*: reads come from W, every input at its recorded version (the
   ``_runs`` version its publications were resolved against, so each published table resolves to
   the same version; tables without a publication and raw inputs at their pinned version); writes,
   checkpoints, ``_runs`` and ``_attempts`` go to a scratch root, where each output table starts as
   a copy of its state just before the run's commit (what a MERGE was applied to);
2. runs the job there (``execute``: the same code path as every run, Ray stages included);
3. compares every output with the recorded version: rows as a multiset (order-insensitive),
   integers and strings exactly, floats bitwise (their IEEE bytes), unless the job declares a
   ``replay_tolerance``; a column that names its run (``run_id``; the run id inside model
   versions; timings) is not data. It also checks the replay read the same input versions.

One line per table, a last line with the verdict; exit status 0 only when everything matches. A
code version that differs from the recorded one is warned about (the comparison still runs: a
refactoring that changes no output passes).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import uuid
from typing import Any

from recfactory.jobs.runtime.delta_io import Warehouse
from recfactory.jobs.runtime.env import (
    DEFAULT_WAREHOUSE,
    MASK,
    RUNS_TABLE,
    arrow_fs,
    arrow_uri,
    normalize_warehouse,
    table_path,
)

log = logging.getLogger("recfactory")

# columns that say which run wrote a row or how long it took, not what the data is
VOLATILE = {"run_id", "trained_at", "html_bytes"}


def volatile(column: str) -> bool:
    return column in VOLATILE or column.endswith("_seconds")


class ReplayWarehouse(Warehouse):
    """Reads from the recorded warehouse, writes to the scratch root; a table this run has written
    is read back from the scratch root (as the original run read back its own write)."""

    def __init__(self, spark, source: str, scratch: str, created: frozenset[str] | set[str] = frozenset()):
        super().__init__(spark, scratch)
        self.source = normalize_warehouse(source)
        self.created = set(created)  # the run created these: they did not exist before it
        self.written: set[str] = set()

    @property
    def read_root(self) -> str:
        return self.source

    def exists(self, name: str) -> bool:
        if name in self.created and name not in self.written:
            return False
        return super().exists(name)

    def path(self, name: str) -> str:
        return table_path(self.root if name in self.written else self.source, name)

    def write_path(self, name: str) -> str:
        self.written.add(name)
        return table_path(self.root, name)


def recorded_run(root: str, run_id: str) -> dict[str, Any]:
    import pyarrow.compute as pc

    from recfactory.jobs.runtime.publication import read_small

    rows = read_small(root, RUNS_TABLE, filter=pc.field("run_id") == run_id)
    if not rows:
        raise LookupError(f"no run {run_id} in {root}/{RUNS_TABLE} (see `recfactory runs --warehouse {root}`)")
    return rows[0]


def _seed_outputs(spark, source: str, scratch: str, outputs: list[dict]) -> None:
    """Each output table in the scratch root as it was just before the run's commit to it."""
    from deltalake import DeltaTable

    for o in outputs:
        v = int(o["version"])
        if v == 0:
            continue  # the run created the table
        meta = DeltaTable(arrow_uri(source, o["name"]), version=v - 1).metadata()
        df = spark.read.format("delta").option("versionAsOf", v - 1).load(table_path(source, o["name"]))
        w = df.write.format("delta").mode("overwrite")
        if meta.partition_columns:
            w = w.partitionBy(*meta.partition_columns)
        w.save(table_path(scratch, o["name"]))


def _canon(value, tolerance: float | None, subs: list[tuple[str, str]]):
    """A value as comparable text: floats by their IEEE bytes (or rounded to the tolerance), strings
    with the replay's own run id and scratch root read as the recorded ones."""
    import numpy as np

    if value is None:
        return "∅"
    if isinstance(value, (bytes, bytearray)):
        return "b:" + bytes(value).hex()
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if tolerance is not None and math.isfinite(f):
            return f"f:{round(f / tolerance)}"
        return "f:" + struct.pack("<d", f).hex()
    if isinstance(value, (np.ndarray, list, tuple)):
        return "[" + ",".join(_canon(v, tolerance, subs) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_canon(v, tolerance, subs)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, str):
        for a, b in subs:
            value = value.replace(a, b)
        return "s:" + value
    return f"{type(value).__name__}:{value}"


def _rows(root: str, table: str, version: int, tolerance, subs) -> tuple[list[str], list[tuple]]:
    from deltalake import DeltaTable

    t = DeltaTable(arrow_uri(root, table), version=version).to_pyarrow_dataset().to_table()
    cols = sorted(c for c in t.column_names if not volatile(c))
    data = t.select(cols).to_pylist()
    return cols, sorted(tuple(_canon(r[c], tolerance, subs) for c in cols) for r in data)


def compare_table(
    table: str,
    source: str,
    version: int,
    scratch: str,
    replay_version: int,
    tolerance: float | None,
    subs: list[tuple[str, str]],
) -> tuple[bool, str]:
    from collections import Counter

    cols_a, a = _rows(source, table, version, tolerance, [])
    cols_b, b = _rows(scratch, table, replay_version, tolerance, subs)
    if cols_a != cols_b:
        return False, f"{table}: columns differ: recorded {cols_a}, replay {cols_b}"
    if a == b:
        how = "bitwise" if tolerance is None else f"within {tolerance:g}"
        return True, f"{table} v{version}: {len(a):,} rows match ({how})"
    ca, cb = Counter(a), Counter(b)
    only_a, only_b = sum((ca - cb).values()), sum((cb - ca).values())
    first = next(iter(ca - cb), None) or next(iter(cb - ca))
    diff = [f"{c}={v}" if len(str(v)) <= 80 else f"{c}={str(v)[:77]}..." for c, v in zip(cols_a, first, strict=False)][
        :8
    ]
    return False, (
        f"{table} v{version}: DIFFERS: {only_a:,} of {len(a):,} recorded rows not in the replay, "
        f"{only_b:,} of {len(b):,} replayed rows not recorded (e.g. {', '.join(diff)})"
    )


def replay(
    warehouse: str, run_id: str, scratch: str | None = None, spark=None, keep: bool = False
) -> tuple[bool, list[str]]:
    """Replay the run; (all matched, the report's lines)."""
    from recfactory.jobs.runtime.job import code_version, execute, load_job
    from recfactory.jobs.runtime.spark import get_spark

    source = normalize_warehouse(warehouse)
    rec = recorded_run(source, run_id)
    if rec["status"] != "succeeded":
        raise ValueError(f"run {run_id} {rec['status']}: only a succeeded run published outputs to compare")
    job_cls = load_job(rec["job"])
    params = json.loads(rec["params"])
    masked = sorted(k for k, v in params.items() if MASK in json.dumps(v))
    if masked:
        raise ValueError(
            f"run {run_id}'s recorded params {', '.join(masked)} hold a redacted value: it cannot "
            "be replayed from its manifest"
        )
    lines = []
    if rec["code_version"] != code_version():
        msg = f"warning: recorded with code {rec['code_version']}, replayed with {code_version()}"
        log.warning(msg)
        lines.append(msg)
    scratch = normalize_warehouse(scratch or table_path(source, "_replay") + f"/{run_id}-{uuid.uuid4().hex[:8]}")
    params.update(warehouse=scratch)
    if params.get("output_dir"):
        params["output_dir"] = None  # a report's page goes under the scratch root
    p = job_cls.Params.model_validate(params)
    pins: dict[str, list[int]] = {}
    for i in rec["inputs"] or []:
        if i["format"] == "delta" and i["version"] is not None:
            pins.setdefault(i["path"], []).append(int(i["version"]))
    spark = spark or get_spark(f"recfactory-replay-{rec['job']}")
    outputs = rec["outputs"] or []
    _seed_outputs(spark, source, scratch, outputs)
    wh = ReplayWarehouse(spark, source, scratch, created={o["name"] for o in outputs if int(o["version"]) == 0})
    ctx = execute(job_cls, p, spark=spark, warehouse=wh, pins=pins)
    ok = True
    want = [(i["name"], i["version"], i["fingerprint"]) for i in rec["inputs"] or []]
    got = [(i.name, i.version, i.fingerprint) for i in ctx.inputs]
    if not any(name == RUNS_TABLE for name, _, _ in want):  # recorded before publications were pinned
        got = [g for g in got if g[0] != RUNS_TABLE]
    if want != got:
        ok = False
        lines.append(f"inputs: DIFFER: recorded {want}, replay read {got}")
    else:
        lines.append(f"inputs: the same {len(want)} inputs at the same versions")
    replayed = {o.name: o.version for o in ctx.outputs}
    tolerance = getattr(job_cls, "replay_tolerance", None)
    # the run id, and the 12-character prefix model versions carry (``<as-of>-<run_id[:12]>``)
    subs = [(ctx.run_id, run_id), (ctx.run_id[:12], run_id[:12]), (scratch, source)]
    for o in sorted(outputs, key=lambda o: o["name"]):
        if o["name"] not in replayed:
            ok = False
            lines.append(f"{o['name']}: DIFFERS: the replay did not write it")
            continue
        same, line = compare_table(o["name"], source, int(o["version"]), scratch, replayed[o["name"]], tolerance, subs)
        ok &= same
        lines.append(line)
    extra = sorted(set(replayed) - {o["name"] for o in outputs})
    if extra:
        ok = False
        lines.append(f"DIFFERS: the replay also wrote {', '.join(extra)}")
    lines.append(
        f"replay of {rec['job']} for {rec['as_of']} (run {run_id}): "
        + ("REPRODUCED" if ok else "NOT REPRODUCED")
        + (f"; scratch kept at {scratch}" if keep else "")
    )
    if not keep:
        _remove(scratch)
    return ok, lines


def _remove(root: str) -> None:
    import shutil

    import pyarrow.fs as pafs

    fs, path = arrow_fs(root)
    if isinstance(fs, pafs.LocalFileSystem):
        shutil.rmtree(path, ignore_errors=True)
    else:
        fs.delete_dir(path)


def replay_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="recfactory replay",
        description="Re-run a recorded run from its manifest "
        "(inputs at their pinned versions, into a scratch location) and compare every "
        "output with the recorded version. Exit 0 only when all match.",
    )
    ap.add_argument("run_id")
    ap.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    ap.add_argument(
        "--scratch",
        default=None,
        help="where the replay writes (default <warehouse>/_replay/<run id>-…; removed afterwards unless --keep)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch tables")
    ns = ap.parse_args(argv)
    ok, lines = replay(ns.warehouse, ns.run_id, ns.scratch, keep=ns.keep)
    for line in lines:
        print(line)
    return 0 if ok else 1


__all__ = ["ReplayWarehouse", "compare_table", "replay", "replay_main"]
