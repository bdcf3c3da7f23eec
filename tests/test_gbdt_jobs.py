"""train_gbdt and build_gbdt_leaves on real local Spark + Ray + Delta (samples of the MovieLens slice:
users 1..200, every item)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.ray]

D = "1998-04-30"


@pytest.fixture(scope="module")
def gbdt_warehouse(spark, slice_ingested, tmp_path_factory):
    from recfactory.jobs.runtime.job import run_job

    wh = slice_ingested(tmp_path_factory.mktemp("gbdt") / "wh")  # the MovieLens slice ingested as of D
    base = ["--warehouse", wh, "--as-of", D]
    # lean features (the sample job's own defaults are tested in test_samples): three keys, two windows
    lean = ["--keys", "user=user_id,item=item_id,category=category", "--windows", "7d,all"]
    samples = [*base, *lean, "--negative-rate", "0.5", "--test-days", "30", "--val-days", "0"]
    run_job("build_training_samples", samples, spark=spark)
    ctx = run_job("train_gbdt", [*base, "--num-trees", "40"], spark=spark)
    return wh, base, ctx


def _read(spark, wh, name):
    return spark.read.format("delta").load(f"{wh}/{name}").toPandas()


def _pred_leaf(spark, wh, frame):
    """The reference: LightGBM's own pred_leaf on the frame's feature columns, plus the published
    per-tree offsets."""
    import lightgbm as lgb

    from recfactory.tokenizers.gbdt import encode_leaves, tree_offsets

    model = _read(spark, wh, "gbdt_models").iloc[0]
    X = frame[list(model["feature_names"])].astype(float).to_numpy()
    return encode_leaves(
        lgb.Booster(model_str=model["model_text"]), X, tree_offsets(_read(spark, wh, "gbdt_leaf_vocab"))
    )


def test_train_gbdt_publishes_model_text_a_dense_vocabulary_and_calibrated_metrics(spark, gbdt_warehouse):
    import lightgbm as lgb

    wh, _, ctx = gbdt_warehouse
    rc, m = ctx.row_counts, ctx.metrics
    assert (
        rc["tree_rows"]
        + rc["tree_rows_negative_downsampled"]
        + rc["downstream_rows"]
        + rc["test_rows"]
        + rc["unused_rows"]
        == rc["samples"]
    )
    model = _read(spark, wh, "gbdt_models").iloc[0]
    booster = lgb.Booster(model_str=model["model_text"])  # text, no pickle
    assert booster.num_trees() == 40 and list(model["feature_names"]) == booster.feature_name()
    vocab = _read(spark, wh, "gbdt_leaf_vocab").sort_values("global_id")
    assert vocab["global_id"].tolist() == list(range(len(vocab))) == list(range(rc["leaves"]))
    assert m["auc.gbdt"] > 0.6 and m["ne.gbdt"] < 1 and abs(m["calibration_ratio.gbdt"] - 1) < 0.15
    assert {"ne.lr_leaves", "ne.lr_raw", "lr_leaves_C"} <= set(m)
    met = _read(spark, wh, "gbdt_metrics")
    assert set(met["model"]) == {"gbdt", "lr_leaves", "lr_raw"} and (met["slice_column"] == "category").any()
    from pathlib import Path

    report = Path(ctx.notes["report"])
    text = (report / "report.md").read_text()
    assert "LR on one-hot leaves" in text and "Calibration by slice" in text and "f_" in text
    for png in ("calibration.png", "importance.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"


def test_spark_leaf_encoding_equals_pred_leaf_row_for_row(spark, gbdt_warehouse):
    from recfactory.jobs.runtime.job import run_job

    wh, base, _ = gbdt_warehouse
    ctx = run_job("build_gbdt_leaves", [*base, "--batch-size", "777"], spark=spark)
    samples = _read(spark, wh, "training_samples")
    samples["sample_id"] = samples["sample_id"].astype(str)
    leaves = _read(spark, wh, "gbdt_leaves")
    leaves = leaves[leaves["source"] == "training_samples"].set_index("sample_id")
    assert len(leaves) == len(samples) == ctx.row_counts["input_rows"]
    direct = _pred_leaf(spark, wh, samples)
    got = np.stack(leaves.loc[samples["sample_id"], "leaf_ids"].to_numpy())
    assert (got == direct).all()


def test_a_table_without_the_model_features_is_refused(spark, gbdt_warehouse):
    from pyspark.sql import functions as F

    from recfactory.jobs.runtime.job import run_job

    wh, base, _ = gbdt_warehouse
    model = _read(spark, wh, "gbdt_models").iloc[0]
    gone, text = model["feature_names"][0], model["feature_names"][1]
    spark.read.format("delta").load(f"{wh}/training_samples").drop(gone).withColumn(text, F.lit("x")).write.format(
        "delta"
    ).partitionBy("ds").save(f"{wh}/fresh_rows")
    with pytest.raises(ValueError, match=rf"missing \['{gone}'\]; not numeric \['{text}'\]"):
        run_job("build_gbdt_leaves", [*base, "--input", "fresh_rows"], spark=spark)


# Data-parallel training on Ray Train (LightGBMTrainer, two workers): the weekly refit of test_dags
# (--distributed-rows below the samples' rows), beside this single-process model's quality.


def test_fresh_rows_with_nulls_encode_as_lightgbm_missing_values(spark, gbdt_warehouse):
    """Another table (fresh rows, its own id column) whose features have nulls: null is LightGBM's
    missing value (NaN), row for row."""
    from pyspark.sql import functions as F

    from recfactory.jobs.runtime.job import run_job

    wh, base, _ = gbdt_warehouse
    model = _read(spark, wh, "gbdt_models").iloc[0]
    names = list(model["feature_names"])
    src = (
        spark.read.format("delta")
        .load(f"{wh}/training_samples")
        .limit(3000)
        .withColumn("row_key", F.concat(F.lit("r"), F.col("sample_id").cast("string")))
    )
    for i, c in enumerate(names[:6]):
        src = src.withColumn(c, F.when(F.xxhash64("row_key", F.lit(i)) % 3 == 0, F.lit(None)).otherwise(F.col(c)))
    src.write.format("delta").partitionBy("ds").save(f"{wh}/fresh_nulls")
    run_job("build_gbdt_leaves", base, spark=spark)  # the samples' leaves of the date
    ctx = run_job("build_gbdt_leaves", [*base, "--input", "fresh_nulls", "--id-column", "row_key"], spark=spark)
    rows = _read(spark, wh, "fresh_nulls")
    assert rows[names[:6]].isna().any().all() and ctx.row_counts["gbdt_leaves"] == len(rows) == 3000
    direct = _pred_leaf(spark, wh, rows)
    leaves = _read(spark, wh, "gbdt_leaves")
    fresh = leaves[leaves["source"] == "fresh_nulls"].set_index("sample_id")
    assert np.array_equal(np.stack(fresh.loc[rows["row_key"], "leaf_ids"].to_numpy()), direct)
    # the training samples' leaves of the same date are still there
    assert (leaves["source"] == "training_samples").sum() == spark.read.format("delta").load(
        f"{wh}/training_samples"
    ).count()


def test_recfactory_pipeline_skips_what_depends_on_a_failed_gate(spark, gbdt_warehouse, capsys):
    """`recfactory pipeline` in one process, on the date's samples above: its steps succeed and
    publish, each a new version; then a failed quality gate publishes nothing, skips the steps
    downstream of it, and the exit status says only gates failed."""
    import json

    from deltalake import DeltaTable

    from recfactory.jobs.runtime.pipeline import pipeline_main, run_pipeline

    wh, _, _ = gbdt_warehouse
    tables = ("gbdt_models", "gbdt_leaf_vocab", "gbdt_metrics", "gbdt_leaves")

    def versions():
        return {t: DeltaTable(f"{wh}/{t}").version() for t in tables if (Path(wh) / t / "_delta_log").exists()}

    before = versions()
    conf = {"train_gbdt": {"num_trees": 20}}
    only = ["train_gbdt", "build_gbdt_leaves"]
    res = run_pipeline("daily", wh, D, conf, only=only, spark=spark)
    assert [(r.task_id, r.status) for r in res] == [(t, "succeeded") for t in only]
    after = versions()
    assert (
        res[0].outputs == {t: before[t] + 1 for t in tables[:3]}
        and after["gbdt_leaves"] == res[1].outputs["gbdt_leaves"]
    )
    failing = json.dumps({"train_gbdt": {"num_trees": 20, "gate_min_auc": 0.99}})
    code = pipeline_main(["--warehouse", wh, "--as-of", D, "--params", failing, "--only", ",".join(only)])
    out = capsys.readouterr().out
    assert code == 3 and "gate_failed" in out and "upstream_failed" in out
    assert versions() == after  # nothing published
