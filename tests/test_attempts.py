"""Attempts on record (delta-rs only, no Spark): an attempt that never finished is `running` until a
later attempt of its job and date starts (or a day passes), then `abandoned`, with the versions it
committed before it stopped named from the run id in their commit metadata."""

from __future__ import annotations

import datetime as dt
import json
import time

import pyarrow as pa
from deltalake import CommitProperties, write_deltalake

from recfactory.jobs.runtime.attempts import format_history, history, previous_abandoned, record_start

D = dt.date(2025, 6, 30)


def test_an_unfinished_attempt_is_running_then_abandoned_with_its_partial_versions(tmp_path):
    wh = str(tmp_path / "wh")
    t0 = time.time() - 60
    record_start(wh, "a" * 32, "build_similarity", D, "h", "v", ("item_similarity", "similarity_metrics"), t0)
    # it committed its first table, then died
    write_deltalake(
        f"{wh}/item_similarity",
        pa.table({"x": [1]}),
        commit_properties=CommitProperties(custom_metadata={"userMetadata": json.dumps({"run_id": "a" * 32})}),
    )
    write_deltalake(
        f"{wh}/item_similarity",
        pa.table({"x": [2]}),
        mode="append",
        commit_properties=CommitProperties(custom_metadata={"userMetadata": json.dumps({"run_id": "c" * 32})}),
    )
    h = history(wh)
    assert list(h["status"]) == ["running"] and list(h["outputs"][0]) == ["item_similarity v0"]
    assert list(history(wh, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))["status"]) == ["abandoned"]
    # the next attempt of the same job and date finds it
    record_start(wh, "b" * 32, "build_similarity", D, "h", "v", ("item_similarity",), t0 + 30)
    prev = previous_abandoned(wh, "build_similarity", D, "b" * 32)
    assert list(prev["run_id"]) == ["a" * 32] and list(prev["status"]) == ["abandoned"]
    assert list(history(wh, job="build_similarity")["status"]) == ["running", "abandoned"]
    assert history(wh, as_of="2025-07-01").empty and "partial: item_similarity v0" in format_history(history(wh))
