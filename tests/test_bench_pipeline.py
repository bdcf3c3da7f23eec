"""Benchmark (`make bench`, never CI): synthetic generation, ingest and the feature jobs at BENCH_SIZE.

BENCH_SIZE = small (100k events, default) | 1m | 10m, or movielens (MovieLens-100K as of
1998-04-30, training samples with 14-day validation and test splits). Per stage: wall time, output rows, rows/s
and the peak RSS of the driver process tree (the Spark JVM included). Results go to
docs/bench/pipeline-<size>.json and .md; nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import time

import pytest

from recfactory.jobs.runtime.bench import SIZES, PeakRSS, bench_size, write_results
from recfactory.jobs.runtime.job import run_job

pytestmark = [pytest.mark.slow, pytest.mark.spark]

FEATURE_JOBS = (
    ("build_sequences", "user_sequences", ["--category-max-len", "50"]),
    ("build_sessions", "sessions", []),
    ("build_cross_stats", "cross_stats", []),
    ("build_training_samples", "training_samples", ["--negative-rate", "0.25"]),
)


def test_bench_pipeline(spark, tmp_path):
    size = bench_size()
    movielens = size == "movielens"
    n = 100_000 if movielens else SIZES[size]
    wh = str(tmp_path / "wh")
    as_of = ["--warehouse", wh, "--as-of", "1998-04-30" if movielens else "2026-11-28"]
    results = {
        "size": size,
        "target_events": n,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "spark_master": spark.sparkContext.master,
            "driver_memory": spark.conf.get("spark.driver.memory", "default"),
            "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
        },
        "stages": [],
    }

    def stage(job, out_table, args):
        with PeakRSS() as mem:
            t0 = time.time()
            ctx = run_job(job, [*as_of, *args], spark=spark)
            secs = time.time() - t0
        rows = ctx.row_counts[out_table]
        results["stages"].append(
            {
                "job": job,
                "output": out_table,
                "rows": rows,
                "seconds": round(secs, 2),
                "rows_per_s": round(rows / secs),
                "peak_rss_gb": round(mem.peak / 2**30, 2),
            }
        )
        print(results["stages"][-1], flush=True)
        return ctx

    if movielens:
        ing = stage("ingest", "events_clean", [])
    else:
        gen = stage("generate_synthetic", "synthetic_events", ["--events", str(n)])
        ing = stage(
            "ingest",
            "events_clean",
            ["--dataset", "tables", "--events-path", f"{wh}/synthetic_events", "--items-path", f"{wh}/synthetic_items"],
        )
        assert ing.row_counts["events_input"] == gen.row_counts["synthetic_events"]
    rows = ing.row_counts["events_input"]
    assert rows == ing.row_counts["events_clean"] + ing.row_counts["events_quarantine"]
    results.update({"events": rows, "quarantined": ing.row_counts["events_quarantine"]})
    for job, table, args in FEATURE_JOBS:
        if movielens and job == "build_training_samples":
            args = ["--val-days", "14", "--test-days", "14"]
        ctx = stage(job, table, args)
        if job == "build_training_samples":
            results["training_samples"] = {
                k: ctx.row_counts[k]
                for k in (
                    "candidates",
                    "kept",
                    "dropped_negative_downsampled",
                    "train_rows",
                    "validation_rows",
                    "test_rows",
                )
            }
    md = [
        f"{'MovieLens-100K' if movielens else 'Synthetic'} pipeline, {rows:,} raw events, {results['machine']['cpus']} cores, "
        f"Spark {results['machine']['spark_master']}.",
        "",
        "| stage | output | rows | seconds | rows/s | peak RSS GB |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {s['job']} | {s['output']} | {s['rows']:,} | {s['seconds']} | {s['rows_per_s']:,} | {s['peak_rss_gb']} |"
        for s in results["stages"]
    ]
    write_results(f"pipeline-{size}", results, md)
    print(json.dumps(results, indent=2))
