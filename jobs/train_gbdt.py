"""train_gbdt: training_samples → gbdt_models, gbdt_leaf_vocab, gbdt_metrics (+ a report), ds = as-of.

    spark-submit jobs/train_gbdt.py --warehouse W --as-of 1998-04-30

A LightGBM binary model on the point-in-time features of ``training_samples`` (cross statistics,
context, history length), trained in a Ray task, stored as LightGBM's text format (no pickle)
with its global leaf vocabulary (``recfactory.tokenizers.gbdt``).

Splits (time-based, from build_training_samples): the train split is cut by time at
``--tree-fraction``; the trees learn on the earlier part, the downstream models of the Facebook
comparison (LR on one-hot leaves, LR on raw features) on the later part — disjoint, so leaf
features never carry the labels they were fitted on into the downstream model (scikit-learn's
GBDT+LR recipe). Everything is evaluated on the test split.

Negatives of the train split were kept at rate w by build_training_samples (``negative_rate``),
and ``--negative-rate`` can thin the tree rows further; predictions are recalibrated with
q = p / (p + (1 − p)/w) before any metric.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field, JobParams
from recfactory.tokenizers.gbdt_spec import GBDTSpec

CONTEXT_FEATURES = ("ctx_hour_of_day", "ctx_day_of_week", "ctx_position", "hist_len")
MODEL_SCHEMA = T.StructType(
    [
        T.StructField("model_version", T.StringType(), False),
        T.StructField("model_text", T.StringType(), False),
        T.StructField("params", T.StringType(), False),
        T.StructField("feature_names", T.ArrayType(T.StringType()), False),
        T.StructField("negative_rate", T.DoubleType(), False),
        T.StructField("metrics", T.StringType(), False),
        T.StructField("trained_at", T.TimestampType()),
    ]
)
VOCAB_SCHEMA = T.StructType(
    [
        T.StructField("model_version", T.StringType(), False),
        T.StructField("tree", T.IntegerType(), False),
        T.StructField("leaf", T.IntegerType(), False),
        T.StructField("global_id", T.IntegerType(), False),
        T.StructField("leaf_value", T.DoubleType(), False),
        T.StructField("count", T.LongType(), False),
    ]
)
METRICS_SCHEMA = T.StructType(
    [
        T.StructField("model_version", T.StringType(), False),
        T.StructField("model", T.StringType(), False),
        T.StructField("split", T.StringType(), False),
        T.StructField("slice_column", T.StringType()),
        T.StructField("slice_value", T.StringType()),
        T.StructField("rows", T.LongType(), False),
        T.StructField("positives", T.LongType(), False),
        T.StructField("auc", T.DoubleType()),
        T.StructField("ne", T.DoubleType()),
        T.StructField("rig", T.DoubleType()),
        T.StructField("calibration_ratio", T.DoubleType()),
    ]
)


class TrainGBDTParams(GBDTSpec, JobParams):
    label: str = Field("label_click", description="The binary label column of training_samples.")
    features: list[str] = Field(
        [],
        description="Feature columns; empty: every f_* column plus "
        + ", ".join(CONTEXT_FEATURES)
        + " (those present).",
    )
    tree_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Earliest share (by ts) of the train split the "
        "trees learn on; the rest trains the downstream models.",
    )
    negative_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Further negative downsampling of the tree rows "
        "(seeded hash), on top of the samples' own rate; recalibrated.",
    )
    distributed_rows: int = Field(
        5_000_000,
        ge=1,
        description="Tree rows from which training runs data-parallel "
        "on Ray Train (LightGBMTrainer) instead of one Ray task.",
    )
    workers: int = Field(2, ge=1, description="Ray Train workers of the data-parallel training.")
    slices: list[str] = Field(["category"], description="Columns the calibration is also reported by.")
    max_slice_values: int = Field(10, ge=1, description="Most frequent values reported per slice column.")
    gate_min_auc: float = Field(0.55, ge=0, le=1, description="The GBDT's test AUC must reach this.")
    gate_max_ne: float = Field(1.0, gt=0, description="The GBDT's test NE must stay below this (1: the base rate).")


def _train_task(X: np.ndarray, y: np.ndarray, spec_dict: dict, names: list[str], cpus: int) -> str:
    """Ray task: the booster as LightGBM model text."""
    from recfactory.tokenizers.gbdt import train

    return train(X, y, GBDTSpec(**spec_dict), names, threads=cpus).model_to_string()


class TrainGBDTJob(Job[TrainGBDTParams]):
    name = "train_gbdt"
    Params = TrainGBDTParams
    description = "LightGBM on training_samples in a Ray task; model text, global leaf vocabulary, calibrated metrics."
    outputs = ("gbdt_models", "gbdt_leaf_vocab", "gbdt_metrics")
    inputs = ("training_samples",)

    def run(self, ctx: RunContext[TrainGBDTParams]) -> None:
        import lightgbm as lgb

        from recfactory.tokenizers import gbdt

        p = ctx.params
        pdf, names, slices = self._samples(ctx, p)
        sp = gbdt.split_rows(pdf, p.tree_fraction, p.negative_rate, p.seed, f"training_samples of {ctx.as_of}")
        ctx.row_counts.update(
            {
                "tree_rows": len(sp.tree),
                "downstream_rows": len(sp.down),
                "test_rows": len(sp.test),
                "tree_rows_negative_downsampled": sp.downsampled,
                "unused_rows": sp.unused,
            }
        )
        version = f"{ctx.as_of.isoformat()}-{ctx.run_id[:12]}"
        spec = GBDTSpec.of(p)
        text = self._fit(ctx, p, spec, sp.tree, names, version)
        booster = lgb.Booster(model_str=text)
        vocab = gbdt.leaf_vocab(booster)

        met, scores = self._evaluate(ctx, p, booster, vocab, sp, names, slices, version)
        importance = gbdt.importance_by_gain(booster, names)
        g = met[(met["model"] == "gbdt") & met["slice_column"].isna()].iloc[0]
        failed = gbdt.gate_failures(g["auc"], g["ne"], p.gate_min_auc, p.gate_max_ne)
        if failed:
            raise QualityGateError("GBDT not published: " + "; ".join(failed))

        summary = {
            "test": {
                r.model: {"auc": r.auc, "ne": r.ne, "calibration_ratio": r.calibration_ratio}
                for r in met[met["slice_column"].isna()].itertuples()
            },
            "importance_gain": importance,
            "negative_rate": sp.w_tree,
        }
        ctx.notes["model_version"] = version
        model = (
            version,
            text,
            json.dumps(spec.to_dict()),
            names,
            sp.w_tree,
            json.dumps(summary),
            dt.datetime.now(dt.UTC),
        )
        self._publish(ctx, version, model, vocab, met)
        y = sp.test["_y"].to_numpy()
        ctx.notes["report"] = self._report(ctx, version, met, importance, y, scores, ctx.metrics.get("lr_leaves_C"))

    @staticmethod
    def _samples(ctx: RunContext, p: TrainGBDTParams) -> tuple[pd.DataFrame, list[str], list[str]]:
        """The date's samples as a frame (label as _y, features as doubles), the feature names, the
        slice columns present."""
        from recfactory.jobs.runtime.inputs import date_partition

        df = date_partition(ctx, "training_samples", "build_training_samples")
        names = TrainGBDTJob._feature_names(df, p)
        slices = [s for s in p.slices if s in df.columns]
        pdf = df.select(
            F.col("sample_id").cast("string").alias("sample_id"),
            "ts",
            "split",
            F.col(p.label).cast("double").alias("_y"),
            "negative_rate",
            *[F.col(c).cast("double").alias(c) for c in names],
            *slices,
        ).toPandas()
        ctx.row_counts["samples"] = len(pdf)
        bad = pdf["_y"].isna() | ~pdf["_y"].isin([0.0, 1.0])
        if bad.any():
            raise ValueError(f"{p.label} must be 0/1 on every row; {int(bad.sum())} rows are not")
        return pdf, names, slices

    @staticmethod
    def _fit(
        ctx: RunContext, p: TrainGBDTParams, spec: GBDTSpec, tree: pd.DataFrame, names: list[str], version: str
    ) -> str:
        """The booster's text: one Ray task on a node's threads, or Ray Train past --distributed-rows."""
        from recfactory.jobs.runtime.ray_runtime import init_ray, node_cpus
        from recfactory.tokenizers import gbdt

        ray = init_ray()
        X, y = tree[names].to_numpy(), tree["_y"].to_numpy()
        if len(tree) >= p.distributed_rows:
            storage = ctx.warehouse.arrow_path("_checkpoints", "train_gbdt")
            booster = gbdt.train_distributed(X, y, spec, names, p.workers, storage, version)
            ctx.notes["training"] = f"Ray Train LightGBMTrainer, {p.workers} workers"
            return booster.model_to_string()
        cpus = node_cpus()[0]
        ctx.notes["training"] = f"one Ray task, {cpus} threads"
        return ray.get(ray.remote(num_cpus=cpus)(_train_task).remote(X, y, spec.to_dict(), names, cpus))

    @staticmethod
    def _evaluate(ctx: RunContext, p: TrainGBDTParams, booster, vocab, sp, names, slices, version):
        """(gbdt_metrics rows, recalibrated test scores per model): GBDT, LR on one-hot leaves and LR
        on raw features (when the downstream rows have both labels), overall and by slice."""
        from recfactory.features.samples import recalibrate
        from recfactory.tokenizers import gbdt

        Xt = sp.test[names].to_numpy()
        scores = {"gbdt": recalibrate(booster.predict(Xt), sp.w_tree)}
        down = sp.down
        if len(down) and len(np.unique(down["_y"])) == 2:
            offsets = gbdt.tree_offsets(vocab)
            Xd, yd = down[names].to_numpy(), down["_y"].to_numpy()
            lr, c = gbdt.lr_comparison(booster, offsets, len(vocab), Xd, yd, Xt, sp.w_down)
            scores.update(lr)
            ctx.metrics["lr_leaves_C"] = c
        else:
            ctx.notes["downstream"] = "skipped: the downstream rows have a single label"
        met = pd.DataFrame(
            gbdt.evaluate(version, scores, sp.test, slices, p.max_slice_values),
            columns=[f.name for f in METRICS_SCHEMA.fields],
        )
        for r in met[met["slice_column"].isna()].itertuples():
            for k in ("auc", "ne", "rig", "calibration_ratio"):
                if getattr(r, k) is not None and np.isfinite(getattr(r, k)):
                    ctx.metrics[f"{k}.{r.model}"] = round(float(getattr(r, k)), 6)
        return met, scores

    @staticmethod
    def _publish(ctx: RunContext, version: str, model: tuple, vocab: pd.DataFrame, met: pd.DataFrame) -> None:
        """Each model version is an identity of its own (date + run id): its rows are written beside
        the date's other versions (the daily model and a weekly refit of the same date), never over
        them, so the gbdt_leaves rows that name a version always find its model and vocabulary."""
        own = {"model_version": version}
        spark, ds = ctx.spark, F.lit(ctx.as_of)
        ctx.write(spark.createDataFrame([model], MODEL_SCHEMA).withColumn("ds", ds), "gbdt_models", where=own)
        vocab = vocab.assign(model_version=version)[[f.name for f in VOCAB_SCHEMA.fields]]
        ref = ctx.write(spark.createDataFrame(vocab, VOCAB_SCHEMA).withColumn("ds", ds), "gbdt_leaf_vocab", where=own)
        ctx.row_counts["leaves"] = ref.rows
        ctx.write(spark.createDataFrame(met, METRICS_SCHEMA).withColumn("ds", ds), "gbdt_metrics", where=own)

    @staticmethod
    def _report(
        ctx: RunContext,
        version: str,
        met: pd.DataFrame,
        importance: dict,
        y: np.ndarray,
        scores: dict[str, np.ndarray],
        c_leaves,
    ) -> str:
        """report.md + calibration.png + importance.png under <warehouse>/_reports/train_gbdt/<as-of>/
        (any filesystem pyarrow knows). Returns the folder."""
        from recfactory.jobs.runtime.reports import ReportFolder, calibration_figure, importance_figure

        folder = ctx.warehouse.arrow_path("_reports", "train_gbdt", ctx.as_of.isoformat())
        out = ReportFolder(folder)
        out.put_figure("calibration.png", calibration_figure(y, scores))
        out.put_figure("importance.png", importance_figure(importance))

        overall = met[met["slice_column"].isna()]
        sliced = met[met["slice_column"].notna()]
        md = [
            f"# GBDT {version}",
            "",
            f"Test split: {int(overall['rows'].iloc[0]):,} rows, "
            f"{int(overall['positives'].iloc[0]):,} positives. Predictions recalibrated q = p/(p + (1−p)/w).",
            "",
            "## Facebook comparison (test NE; lower is better)",
            "",
            "| model | AUC | NE | RIG | calibration |",
            "|---|---|---|---|---|",
        ]
        labels = {
            "gbdt": "GBDT alone",
            "lr_leaves": f"LR on one-hot leaves (C = {c_leaves})",
            "lr_raw": "LR on raw features",
        }
        for r in overall.itertuples():
            md.append(
                f"| {labels.get(r.model, r.model)} | {r.auc:.4f} | {r.ne:.4f} | {r.rig:.4f} | "
                f"{r.calibration_ratio:.3f} |"
            )
        if len(sliced):
            md += [
                "",
                "## Calibration by slice (GBDT)",
                "",
                "| slice | rows | AUC | NE | calibration |",
                "|---|---|---|---|---|",
            ]
            for r in sliced.itertuples():
                fmt = lambda v, d: "–" if v is None or not np.isfinite(v) else f"{v:.{d}f}"
                md.append(
                    f"| {r.slice_column} = {r.slice_value} | {r.rows:,} | {fmt(r.auc, 4)} | {fmt(r.ne, 4)} | "
                    f"{fmt(r.calibration_ratio, 3)} |"
                )
        md += [
            "",
            "![calibration](calibration.png)",
            "",
            "## Feature importance (total gain)",
            "",
            "| feature | share |",
            "|---|---|",
        ] + [f"| {k} | {v:.4f} |" for k, v in list(importance.items())[:20]]
        md += ["", "![importance](importance.png)", ""]
        out.put("report.md", "\n".join(md).encode())
        return folder

    @staticmethod
    def _feature_names(df, p: TrainGBDTParams) -> list[str]:
        numeric = {f.name for f in df.schema.fields if isinstance(f.dataType, T.NumericType)}
        if p.features:
            missing = [c for c in p.features if c not in df.columns]
            if missing:
                raise ValueError(f"training_samples has no column(s) {missing}")
            wrong = [c for c in p.features if c not in numeric]
            if wrong:
                raise ValueError(f"feature column(s) {wrong} are not numeric")
            return list(p.features)
        names = sorted(c for c in df.columns if c.startswith("f_") and c in numeric)
        names += [c for c in CONTEXT_FEATURES if c in numeric]
        if not names:
            raise ValueError("training_samples has no numeric f_* or context columns to train on")
        return names


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("train_gbdt")
