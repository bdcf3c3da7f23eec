"""``_runs``: one row per finished attempt of a job (succeeded or failed), appended with delta-rs (no
Spark job). Its schema, and the row of a run, built from the run's manifest."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from recfactory.jobs.runtime.delta_io import CommitProperties
from recfactory.jobs.runtime.env import RUNS_TABLE, redact


def _runs_schema():
    """``_runs``'s schema (as Arrow: the row is appended with delta-rs, no Spark job)."""
    import pyarrow as pa

    inp = pa.struct(
        [
            ("name", pa.string()),
            ("path", pa.string()),
            ("format", pa.string()),
            ("version", pa.int64()),
            ("fingerprint", pa.string()),
            ("timestamp", pa.string()),
        ]
    )
    out = pa.struct(
        [
            ("name", pa.string()),
            ("path", pa.string()),
            ("version", pa.int64()),
            ("rows", pa.int64()),
            ("partition", pa.string()),
        ]
    )
    return pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("job", pa.string(), nullable=False),
            ("as_of", pa.date32()),
            ("status", pa.string()),
            ("started_at", pa.timestamp("us", tz="UTC")),
            ("finished_at", pa.timestamp("us", tz="UTC")),
            ("duration_s", pa.float64()),
            ("params", pa.string()),
            ("params_hash", pa.string()),
            ("code_version", pa.string()),
            ("seed", pa.int64()),
            ("spark_master", pa.string()),
            ("inputs", pa.list_(inp)),
            ("outputs", pa.list_(out)),
            ("row_counts", pa.map_(pa.string(), pa.int64())),
            ("metrics", pa.map_(pa.string(), pa.float64())),
            ("error", pa.string()),
        ]
    )


def write_run_row(ctx: Any, status: str, error: str | None) -> None:
    """The run's row of ``_runs`` (``ctx``: its ``job.RunContext``), appended once: a retried append
    of the same run is not made twice."""
    import pyarrow as pa

    finished = time.time()
    m = ctx.manifest()
    row = {
        "run_id": ctx.run_id,
        "job": ctx.job,
        "as_of": ctx.as_of,
        "status": status,
        "started_at": dt.datetime.fromtimestamp(ctx.started, dt.UTC),
        "finished_at": dt.datetime.fromtimestamp(finished, dt.UTC),
        "duration_s": round(finished - ctx.started, 3),
        "params": json.dumps(m["params"], sort_keys=True),
        "params_hash": m["params_hash"],
        "code_version": m["code_version"],
        "seed": ctx.params.seed,
        "spark_master": ctx.spark.sparkContext.master,
        "inputs": [
            {k: r[k] for k in ("name", "path", "format", "version", "fingerprint", "timestamp")} for r in m["inputs"]
        ],
        "outputs": [
            {"name": o.name, "path": o.path, "version": o.version, "rows": o.rows, "partition": o.partition}
            for o in ctx.outputs
        ],
        "row_counts": [(k, int(v)) for k, v in ctx.row_counts.items()],
        "metrics": [(k, float(v)) for k, v in ctx.metrics.items()],
        "error": redact(error),
    }
    commit = CommitProperties(
        run_id=ctx.run_id, user_metadata=m, txn_app_id=f"recfactory-run-{ctx.run_id}", txn_version=0
    )
    ctx.warehouse.append_small(pa.Table.from_pylist([row], schema=_runs_schema()), RUNS_TABLE, commit)
