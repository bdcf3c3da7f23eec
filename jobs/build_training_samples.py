"""build_training_samples: events_clean + items → training_samples (+ feature_quantiles), ds = as-of.

    spark-submit jobs/build_training_samples.py --warehouse W --as-of 2026-11-28 \
        --val-days 1 --test-days 1 --negative-rate 0.25

Labeled impressions (or interaction rows when the data has no impressions) with the cross-stats
features as they were just before each sample's timestamp, last-k history, a time split, and
optional subsampling; see recfactory.features.samples. ``feature_quantiles`` stores the quantiles
of every numeric feature over the train split, for quantile buckets / CDF normalization
(recfactory.features.transforms) of these rows or fresh ones.
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.cross_stats import build_cross_stats
from recfactory.features.instants import collect_instant, ts_lit
from recfactory.features.samples import SPLITS, SampleSpec, SplitBounds, build_training_samples, subsample
from recfactory.features.sequences import visible_events
from recfactory.features.transforms import fit_quantiles
from recfactory.jobs.build_cross_stats import CrossStatsSpecParams, pruned_spec, record_priors
from recfactory.jobs.runtime.inputs import clean_events, item_snapshot
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field


class TrainingSampleParams(SampleSpec, CrossStatsSpecParams):
    quantiles: int = Field(100, ge=2, description="Quantile levels stored per numeric feature in feature_quantiles.")


QUANTILE_SCHEMA = T.StructType(
    [
        T.StructField("feature", T.StringType(), False),
        T.StructField("values", T.ArrayType(T.DoubleType())),
        T.StructField("levels", T.ArrayType(T.DoubleType())),
        T.StructField("ds", T.DateType()),
    ]
)


class BuildTrainingSamplesJob(Job[TrainingSampleParams]):
    name = "build_training_samples"
    Params = TrainingSampleParams
    description = (
        "Labeled samples (click, dwell-weighted click, hard negatives) with point-in-time cross "
        "statistics, last-k history, a time split and optional negative downsampling."
    )
    outputs = ("training_samples", "feature_quantiles")
    inputs = ("events_clean", "items")

    def run(self, ctx: RunContext[TrainingSampleParams]) -> None:
        p = ctx.params
        spec = SampleSpec.of(p)
        events = clean_events(ctx)
        stats = pruned_spec(ctx, events)
        items = item_snapshot(ctx)
        visible = visible_events(events, ctx.cutoff)
        mode = spec.mode
        if mode == "auto":
            mode = "impressions" if "impression" in stats.event_types else "interactions"
        ctx.notes["mode"] = mode
        first = collect_instant(visible, F.min("ts"))
        if first is None:
            raise ValueError(f"events_clean has no events before {ctx.cutoff}: run ingest first")
        bounds = SplitBounds.of(first, ctx.cutoff, spec)
        for k in ("sample_start", "val_start", "test_start"):
            ctx.notes[k] = getattr(bounds, k).isoformat()
        # the smoothing priors: fit on the warm-up period only (before any sample)
        _, priors = build_cross_stats(events, items, bounds.sample_start, stats)
        record_priors(ctx, priors, "warmup_prior")

        samples, names = build_training_samples(events, items, ctx.cutoff, spec, stats, bounds, priors, mode)
        marked = subsample(samples, spec).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = {
                (r["split"], r["_drop"], r["label_click"]): r["n"]
                for r in marked.groupBy("split", "_drop", "label_click").agg(F.count(F.lit(1)).alias("n")).collect()
            }
            self._check_counts(ctx, counts, visible, bounds, mode)
            out = marked.where(F.col("_drop").isNull()).drop("_drop", "context")
            out = out.select(*[c for c in out.columns if not c.startswith("f_")], *names)
            ref = ctx.write(out.withColumn("ds", F.lit(ctx.as_of)), "training_samples")
            ctx.row_counts["training_samples"] = ref.rows
            if ref.rows != ctx.row_counts["kept"]:
                raise QualityGateError(f"wrote {ref.rows} rows, expected {ctx.row_counts['kept']}")
            numeric = [*names, "ctx_hour_of_day", "ctx_day_of_week", "ctx_position", "hist_len", "dwell_ms"]
            qs = fit_quantiles(out.where(F.col("split") == "train"), numeric, n=p.quantiles, order_by="sample_id")
        finally:
            marked.unpersist()
        rows = [(q.feature, list(q.values), list(q.levels), ctx.as_of) for q in qs.values()]
        qref = ctx.write(ctx.spark.createDataFrame(rows, QUANTILE_SCHEMA), "feature_quantiles")
        ctx.row_counts["feature_quantiles"] = qref.rows

    @staticmethod
    def _check_counts(ctx: RunContext, counts: dict, visible, bounds: SplitBounds, mode: str) -> None:
        total = sum(counts.values())
        kept = sum(n for (_, d, _), n in counts.items() if d is None)
        ctx.row_counts.update({"candidates": total, "kept": kept})
        for reason in ("subsampled", "negative_downsampled"):
            ctx.row_counts[f"dropped_{reason}"] = sum(n for (_, d, _), n in counts.items() if d == reason)
        for split in SPLITS:
            ctx.row_counts[f"{split}_rows"] = sum(n for (s, d, _), n in counts.items() if s == split and d is None)
            pos = sum(n for (s, d, y), n in counts.items() if s == split and d is None and y == 1)
            if ctx.row_counts[f"{split}_rows"]:
                ctx.metrics[f"{split}_label_rate"] = pos / ctx.row_counts[f"{split}_rows"]
        # one pass over the visible events: the warm-up history, and the sample events in range
        is_sample = (
            (F.col("event_type") == "impression") if mode == "impressions" else (F.col("event_type") != "impression")
        )
        in_range = F.col("ts") >= ts_lit(bounds.sample_start)
        row = visible.agg(
            F.count_if(~in_range).alias("history"), F.count_if(is_sample & in_range).alias("expected")
        ).first()
        ctx.row_counts["history_only_events"] = row["history"]
        expected = row["expected"]
        if (
            total != expected
            or total != kept + ctx.row_counts["dropped_subsampled"] + ctx.row_counts["dropped_negative_downsampled"]
        ):
            raise QualityGateError(
                f"sample counts do not reconcile: {expected} sample events in range, {ctx.row_counts}"
            )
        train = [y for (s, d, y) in counts if s == "train" and d is None]
        if set(train) != {0, 1}:
            raise QualityGateError(
                f"the train split needs both labels, has {sorted(set(train))}: check "
                "--positive-types and the split days"
            )


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_training_samples")
