"""Benchmark (`make bench`, never CI): GBDT leaf encoding on Spark (build_gbdt_leaves) against raw
LightGBM ``Booster.predict(pred_leaf=True)`` on the same rows.

A 200-tree, 31-leaf model is trained (train_gbdt) on synthetic rows with 40 numeric features; the
table of BENCH_SIZE rows (small: 100k, 1m: 1M) is then encoded by the job (Spark local[*],
mapInArrow, 2 cores; also the encode stage alone, on cached input with Spark's noop sink) and by
one process calling pred_leaf in batches of the same size on one thread. rows/s/core = rows / (seconds × cores used). Target ≥ 0.7× the raw rate.

Writes docs/bench/gbdt-<size>.{json,md}. Nothing here asserts a time.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import numpy as np
import pandas as pd
import pytest

from recfactory.jobs.runtime.bench import SIZES, bench_size, write_results

pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.ray]

D = "2026-11-28"
FEATURES = 40


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, FEATURES))
    logit = X[:, 0] - 0.5 * X[:, 1] * X[:, 2] + 0.3 * X[:, 3:10].sum(1) - 2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df = pd.DataFrame(X, columns=[f"f_x{i}" for i in range(FEATURES)])
    df.insert(0, "sample_id", np.arange(n).astype(str))
    df["label_click"] = y
    return df


def test_bench_gbdt_leaves(spark, tmp_path):
    import lightgbm as lgb
    from pyspark.sql import functions as F

    from recfactory.jobs.build_gbdt_leaves import encode_frame
    from recfactory.jobs.runtime.job import run_job
    from recfactory.tokenizers.gbdt import encode_leaves, tree_offsets

    size = bench_size()
    n = SIZES.get(size, SIZES["small"])
    wh = str(tmp_path / "wh")
    day = dt.date.fromisoformat(D)
    train = _rows(200_000, seed=1)
    train["ts"] = pd.Timestamp(D) - pd.to_timedelta(np.arange(len(train))[::-1], unit="s")
    train["split"] = np.where(np.arange(len(train)) < 150_000, "train", "test")
    train["negative_rate"] = 1.0
    train["category"] = "c"
    spark.createDataFrame(train).withColumn("ds", F.lit(day)).write.format("delta").partitionBy("ds").save(
        f"{wh}/training_samples"
    )
    base = ["--warehouse", wh, "--as-of", D]
    run_job("train_gbdt", base, spark=spark)
    fresh = _rows(n, seed=2).drop(columns=["label_click"])
    cores = min(spark.sparkContext.defaultParallelism, os.cpu_count() or 1)
    # several files, as a Spark job writes them
    spark.createDataFrame(fresh).repartition(max(cores, n // 250_000)).withColumn("ds", F.lit(day)).write.format(
        "delta"
    ).partitionBy("ds").save(f"{wh}/fresh_rows")
    best_job = np.inf
    for _ in range(3):
        t0 = time.time()
        ctx = run_job("build_gbdt_leaves", [*base, "--input", "fresh_rows"], spark=spark)
        best_job = min(best_job, time.time() - t0)
    model = spark.read.format("delta").load(f"{wh}/gbdt_models").first()
    # the encode stage alone: cached input, no sink (Spark's noop format)
    vocab = spark.read.format("delta").load(f"{wh}/gbdt_leaf_vocab").select("tree", "global_id").toPandas()
    cached = spark.read.format("delta").load(f"{wh}/fresh_rows").cache()
    cached.count()
    best_stage = np.inf
    for _ in range(3):
        t0 = time.time()
        encode_frame(
            cached,
            "sample_id",
            list(model["feature_names"]),
            model["model_version"],
            model["model_text"],
            tree_offsets(vocab),
        ).write.format("noop").mode("overwrite").save()
        best_stage = min(best_stage, time.time() - t0)
    cached.unpersist()
    # the Delta write of the same leaf-id rows alone (cached): Spark's Parquet writer for array<int>
    leaves = spark.read.format("delta").load(f"{wh}/gbdt_leaves").cache()
    leaves.count()
    best_write = np.inf
    for i in range(3):
        t0 = time.time()
        leaves.write.format("delta").save(f"{wh}/_write_probe_{i}")
        best_write = min(best_write, time.time() - t0)
    leaves.unpersist()
    booster = lgb.Booster(model_str=model["model_text"])
    X = fresh[list(model["feature_names"])].to_numpy()
    best_raw = best_raw_all = np.inf
    for _ in range(3):
        t0 = time.time()
        for lo in range(0, len(X), 10_000):
            booster.predict(X[lo : lo + 10_000], pred_leaf=True, num_threads=1)
        best_raw = min(best_raw, time.time() - t0)
        t0 = time.time()
        booster.predict(X, pred_leaf=True, num_threads=cores)
        best_raw_all = min(best_raw_all, time.time() - t0)
    res = {
        "size": size,
        "rows": n,
        "trees": booster.num_trees(),
        "features": FEATURES,
        "spark_cores": cores,
        "job_seconds": round(best_job, 2),
        "job_rows_per_s_per_core": round(n / best_job / cores),
        "encode_seconds": round(best_stage, 2),
        "encode_rows_per_s_per_core": round(n / best_stage / cores),
        "encode_ratio": round((n / best_stage / cores) / (n / best_raw), 3),
        "leaves_delta_write_seconds": round(best_write, 2),
        "raw_seconds_1_thread": round(best_raw, 2),
        "raw_rows_per_s_per_core": round(n / best_raw),
        "raw_seconds_all_cores": round(best_raw_all, 2),
        "raw_all_cores_rows_per_s_per_core": round(n / best_raw_all / cores),
        "ratio": round((n / best_job / cores) / (n / best_raw), 3),
        "job_rows": ctx.row_counts["gbdt_leaves"],
    }
    md = [
        f"# GBDT leaf encoding ({size})",
        "",
        f"{n:,} rows × {FEATURES} features, {res['trees']} trees of 31 leaves. The job (`build_gbdt_leaves`, whole "
        f"run incl. the Delta write, best of 3) on Spark local[{cores}] vs raw `pred_leaf` on one thread "
        "(batches of 10,000). Generated by `tests/test_bench_gbdt.py`.",
        "",
        "| | seconds | rows/s/core |",
        "|---|---|---|",
        f"| build_gbdt_leaves (Spark, {cores} cores) | {res['job_seconds']} | {res['job_rows_per_s_per_core']:,} |",
        f"| encode stage alone (cached input, noop sink, {cores} cores) | {res['encode_seconds']} | "
        f"{res['encode_rows_per_s_per_core']:,} |",
        f"| Delta write of the same leaf rows alone (cached, {cores} cores) | {res['leaves_delta_write_seconds']} | – |",
        f"| Booster.predict(pred_leaf=True), 1 thread | {res['raw_seconds_1_thread']} | "
        f"{res['raw_rows_per_s_per_core']:,} |",
        f"| Booster.predict(pred_leaf=True), {cores} threads, one call | {res['raw_seconds_all_cores']} | "
        f"{res['raw_all_cores_rows_per_s_per_core']:,} |",
        "",
        f"Ratio to raw pred_leaf on one thread (the peer's best rows/s/core): whole job {res['ratio']}, encode "
        f"stage {res['encode_ratio']} (target ≥ 0.7). The job encodes with `LeafEncoder` (pred_leaf compiled, "
        "equal row for row); the whole job adds reading the model and the input partition, counting it and the "
        f"Delta write of {n * res['trees']:,} leaf ids (the row above: Spark's Parquet writer for array<int>).",
        "",
    ]
    write_results(f"gbdt-{size}", res, md)
    # correctness beside the speed figures: one row per input row, and the job's global leaf ids are
    # LightGBM's own pred_leaf plus the per-tree offsets, row for row (a sample of 2,000 rows)
    assert res["job_rows"] == n == leaves.count()
    sample = fresh.sample(n=min(2000, n), random_state=0)
    got = (
        spark.read.format("delta")
        .load(f"{wh}/gbdt_leaves")
        .where(F.col("sample_id").isin(sample["sample_id"].astype(str).tolist()))
        .toPandas()
        .set_index("sample_id")
    )
    direct = encode_leaves(booster, sample[list(model["feature_names"])].to_numpy(), tree_offsets(vocab))
    assert (np.stack(got.loc[sample["sample_id"].astype(str), "leaf_ids"].to_numpy()) == direct).all()
