"""Benchmark (`make bench`, never CI): Swing/ItemCF on Spark vs the single-process SciPy peer.

Same capped user-item pairs into both; times exclude the shared preparation (synthetic generation,
ingest, the caps). Writes docs/bench/similarity-<size>.{json,md}: per side the wall time and peak
RSS, the ratio, and whether the top-K lists agree (same neighbors in the same order, scores to
1e-9). Also times the whole job (with its evaluation) for context. Nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyspark import StorageLevel

from recfactory.graph import similarity_sparse as peer
from recfactory.graph.similarity import SimilaritySpec, apply_caps, block_count, neighbor_lists, user_items
from recfactory.jobs.runtime.bench import SIZES, PeakRSS, bench_size, write_results
from recfactory.jobs.runtime.job import run_job

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def compare(got: pa.Table, ref: pa.Table) -> tuple[int, list]:
    """(lists, mismatched (algo, item_id) keys): same lists, same neighbors in the same order, same
    cooc, scores within 1e-9 (relative above 1) — vectorized, both sides as Arrow."""

    def flat(t):
        t = t.sort_by([("algo", "ascending"), ("item_id", "ascending")])
        nb = pc.list_flatten(t.column("neighbors"))
        return (
            t.column("algo").to_pylist(),
            t.column("item_id").to_pylist(),
            pc.list_value_length(t.column("neighbors")).to_numpy(),
            pc.struct_field(nb, "item_id").to_numpy(zero_copy_only=False),
            pc.struct_field(nb, "score").to_numpy(),
            pc.struct_field(nb, "cooc").to_numpy(),
        )

    ga, gi, gl, gj, gs, gc = flat(got)
    ra, ri, rl, rj, rs, rc = flat(ref)
    if (ga, gi) != (ra, ri):
        keys = set(zip(ga, gi, strict=True)) ^ set(zip(ra, ri, strict=True))
        return len(ra), sorted(keys)
    if not np.array_equal(gl, rl):
        return len(ra), [(a, i) for a, i, x, y in zip(ra, ri, gl, rl, strict=True) if x != y]
    bad = (gj != rj) | (gc != rc) | (np.abs(gs - rs) > 1e-9 * np.maximum(1.0, np.abs(rs)))
    rows = np.repeat(np.arange(len(rl)), rl)[bad]
    return len(ra), [(ra[r], ri[r]) for r in np.unique(rows)]


def test_bench_similarity(spark, tmp_path):
    size = bench_size()
    movielens = size == "movielens"
    wh = str(tmp_path / "wh")
    as_of = ["--warehouse", wh, "--as-of", "1998-04-30" if movielens else "2026-11-28"]
    if movielens:
        run_job("ingest", as_of, spark=spark)
    else:
        run_job("ingest", [*as_of, "--dataset", "synthetic", "--synthetic", f"events={SIZES[size]}"], spark=spark)
    spec = SimilaritySpec()
    events = spark.read.format("delta").load(f"{wh}/events_clean")
    ui = apply_caps(user_items(events, spec), spec).persist(StorageLevel.MEMORY_AND_DISK)
    n_pairs = ui.count()
    res = {
        "size": size,
        "events": events.count(),
        "pairs_after_caps": n_pairs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "spark_master": spark.sparkContext.master,
        },
        "algos": list(spec.algos),
    }
    res["spark_sql_s"] = res["spark_sql_peak_rss_gb"] = None
    if size != "10m":  # the SQL engine, for comparison (timed, not kept); at 10M only the default
        with PeakRSS() as mem:
            t0 = time.time()
            neighbor_lists(ui, spec.replace(engine="sql")).write.format("noop").mode("overwrite").save()
            res["spark_sql_s"] = round(time.time() - t0, 2)
        res["spark_sql_peak_rss_gb"] = round(mem.peak / 2**30, 2)
    # a first full run starts Spark's Python workers and their imports (scipy, pyarrow) and warms
    # the JVM, which a long-lived executor pays once; the peer runs in a process that has them
    t0 = time.time()
    neighbor_lists(ui, spec).write.format("noop").mode("overwrite").save()
    res["spark_first_run_s"] = round(time.time() - t0, 2)
    with PeakRSS() as mem:
        t0 = time.time()
        out = neighbor_lists(ui, spec).persist(StorageLevel.MEMORY_AND_DISK)
        out.count()
        res["spark_s"] = round(time.time() - t0, 2)
    res["spark_peak_rss_gb"] = round(mem.peak / 2**30, 2)
    res["engine"] = spec.resolved_engine
    res["blocks"] = block_count(ui, spec)
    got = out.toArrow()  # columnar: at 10M, 54M neighbors as Python objects would not fit
    pairs = ui.select("user_id", "item_id", "b").toPandas()
    with PeakRSS(children=False) as mem:  # the Python process only: the JVM is idle here
        t0 = time.time()
        items, mats, cooc = peer.scores(pairs, spec)
        table = peer.top_k(items, mats, cooc, spec.top_k)  # the same Arrow rows as a Spark block
        res["scipy_s"] = round(time.time() - t0, 2)
    res["scipy_peak_rss_gb"] = round(mem.peak / 2**30, 2)
    res["ratio_spark_to_scipy"] = round(res["spark_s"] / res["scipy_s"], 2)
    n_lists, mismatched = compare(got, table)
    res["lists"] = n_lists
    res["exact_agreement"] = not mismatched
    res["mismatched_lists"] = len(mismatched)
    res["mismatch_examples"] = mismatched[:3]
    out.unpersist()
    ui.unpersist()
    with PeakRSS() as mem:
        t0 = time.time()
        ctx = run_job("build_similarity", as_of, spark=spark)
        res["job_with_evaluation_s"] = round(time.time() - t0, 2)
    res["job_peak_rss_gb"] = round(mem.peak / 2**30, 2)
    res["hit_rate"] = {k: v for k, v in ctx.metrics.items() if k.startswith(("hr@", "coverage@"))}
    res["caps_removed_mass_fraction"] = ctx.metrics["caps.removed_mass_fraction"]
    hr = res["hit_rate"]
    algos = [*spec.algos, "popularity"]
    md = [
        f"Swing/ItemCF, {res['events']:,} events → {n_pairs:,} user-item pairs after caps, "
        f"{res['machine']['cpus']} cores.",
        "",
        "| implementation | seconds | peak RSS GB |",
        "|---|---|---|",
        f"| Spark, blocks engine ({res['blocks']} item blocks, SciPy per block; all four algos, top-{spec.top_k}) "
        f"| {res['spark_s']} | {res['spark_peak_rss_gb']} |",
        (
            f"| Spark, SQL engine (fixed-point sums, max_by top-K) | {res['spark_sql_s']} | {res['spark_sql_peak_rss_gb']} |"
            if res["spark_sql_s"] is not None
            else "| Spark, SQL engine | not run at this size | |"
        ),
        f"| SciPy single process (`graph.similarity_sparse`; RSS of the Python process) | {res['scipy_s']} | {res['scipy_peak_rss_gb']} |",
        "",
        f"Spark (blocks) / SciPy time: {res['ratio_spark_to_scipy']}×; top-K lists agree exactly: "
        f"{res['exact_agreement']} ({res['lists']:,} lists, {res['mismatched_lists']} differ).",
        "",
        f"Spark times are of a second run: the first ({res['spark_first_run_s']} s) also starts the "
        "Python workers and their imports, which a long-lived executor pays once.",
        "",
        f"Whole job with its leave-last-out evaluation: {res['job_with_evaluation_s']} s.",
        "",
        "| algo | HR@10 | HR@50 | coverage@50 |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {a} | {hr.get(f'hr@10.{a}', 0):.4f} | {hr.get(f'hr@50.{a}', 0):.4f} | {hr.get(f'coverage@50.{a}', 0):.4f} |"
        for a in algos
    ]
    write_results(f"similarity-{size}", res, md)
    print(json.dumps(res, indent=2))
    assert res["exact_agreement"] is not False, f"{res['mismatched_lists']} lists differ"
