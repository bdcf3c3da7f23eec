"""Benchmark (`make bench`, never CI): synthetic generation + ingest at BENCH_SIZE.

BENCH_SIZE = small (100k events, default) | 1m | 10m. Results (wall time, rows/s, peak RSS of the
driver process tree) go to docs/bench/ingest-<size>.json and .md; nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil
import pytest

from recfactory.jobs.runtime.job import run_job

pytestmark = [pytest.mark.slow, pytest.mark.spark]

SIZES = {"small": 100_000, "1m": 1_000_000, "10m": 10_000_000}
OUT = Path(__file__).resolve().parents[1] / "docs" / "bench"


class PeakRSS:
    """Peak resident memory of this process and its children (the Spark JVM), sampled at 5 Hz."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me, *me.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def test_bench_generate_and_ingest(spark, tmp_path):
    size = os.environ.get("BENCH_SIZE", "small")
    n = SIZES[size]
    wh = str(tmp_path / "wh")
    results = {"size": size, "target_events": n, "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "spark_master": spark.sparkContext.master}}
    with PeakRSS() as mem:
        t0 = time.time()
        gen = run_job("generate_synthetic", ["--warehouse", wh, "--as-of", "2026-11-28",
                                             "--events", str(n)], spark=spark)
        t1 = time.time()
        ing = run_job("ingest", ["--warehouse", wh, "--as-of", "2026-11-28", "--dataset", "tables",
                                 "--events-path", f"{wh}/synthetic_events",
                                 "--items-path", f"{wh}/synthetic_items"], spark=spark)
        t2 = time.time()
    rows = ing.row_counts["events_input"]
    assert rows == ing.row_counts["events_clean"] + ing.row_counts["events_quarantine"]
    assert rows == gen.row_counts["synthetic_events"]
    results.update({
        "events": rows, "generate_s": round(t1 - t0, 2), "ingest_s": round(t2 - t1, 2),
        "ingest_rows_per_s": round(rows / (t2 - t1)),
        "ingest_rows_per_s_per_core": round(rows / (t2 - t1) / (os.cpu_count() or 1)),
        "peak_rss_gb": round(mem.peak / 2**30, 2),
        "quarantined": ing.row_counts["events_quarantine"],
    })
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"ingest-{size}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["| size | events | generate s | ingest s | ingest rows/s | peak RSS GB |",
          "|---|---|---|---|---|---|",
          f"| {size} | {rows:,} | {results['generate_s']} | {results['ingest_s']} | "
          f"{results['ingest_rows_per_s']:,} | {results['peak_rss_gb']} |"]
    (OUT / f"ingest-{size}.md").write_text("\n".join(md) + "\n")
    print(json.dumps(results, indent=2))
