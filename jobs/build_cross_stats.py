"""build_cross_stats: events_clean + items → cross_stats (partition ds = as-of).

    spark-submit jobs/build_cross_stats.py --warehouse W --as-of 1998-04-30 \
        --keys user=user_id,item=item_id,item_hour=item_id*hour --windows 1d,7d,30d,all

One row per key type × key × window with at least one event in the window; see
recfactory.features.cross_stats for the spec language, window edges and the smoothing prior.
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F

from recfactory.features.cross_stats import CrossStatsDecl, CrossStatsSpec, build_cross_stats, present_in
from recfactory.features.sequences import visible_events
from recfactory.jobs.runtime.inputs import clean_events, item_snapshot
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import JobParams


class CrossStatsSpecParams(CrossStatsDecl, JobParams):
    """The cross-statistics parameters of build_cross_stats and build_training_samples (``CrossStatsDecl``)."""


def pruned_spec(ctx: RunContext, events) -> CrossStatsSpec:
    """The declared spec, minus what the visible events cannot fill (noted in the manifest)."""
    spec = CrossStatsDecl.of(ctx.params).parsed().prune(*present_in(visible_events(events, ctx.cutoff)))
    ctx.notes.update(spec.notes)
    for k, v in spec.notes.items():
        ctx.metrics[f"{k}.count"] = len(v.split(","))
    return spec


def record_priors(ctx: RunContext, priors: dict, prefix: str = "prior") -> None:
    for key, (a, b) in sorted(priors.items()):
        ctx.metrics[f"{prefix}.{'.'.join(map(str, key))}.alpha"] = round(a, 6)
        ctx.metrics[f"{prefix}.{'.'.join(map(str, key))}.beta"] = round(b, 6)


class BuildCrossStatsJob(Job[CrossStatsSpecParams]):
    name = "build_cross_stats"
    Params = CrossStatsSpecParams
    description = (
        "Windowed counts per event type, distinct users, Bayesian-smoothed rates and recency "
        "for every declared key × window."
    )
    outputs = ("cross_stats",)
    inputs = ("events_clean", "items")

    def run(self, ctx: RunContext[CrossStatsSpecParams]) -> None:
        # read once: the spec's pruning, every key's aggregation (for the priors, then for the
        # write) and the reconciliation scan the same events
        events = clean_events(ctx).persist(StorageLevel.MEMORY_AND_DISK)
        spec = pruned_spec(ctx, events)
        items = item_snapshot(ctx) if any(d in ("category", "brand") for d in spec.dims) else None
        stats, priors = build_cross_stats(events, items, ctx.cutoff, spec)
        record_priors(ctx, priors)
        ref = ctx.write(stats.withColumn("ds", F.lit(ctx.as_of)), "cross_stats")
        ctx.row_counts["cross_stats"] = ref.rows
        # reconciliation (in _runs): per key type, the events counted in the all-time window vs the
        # visible events; the difference is the events lacking one of the key's dimensions
        visible = visible_events(events, ctx.cutoff).where(F.col("event_type").isin(*spec.counted_types)).count()
        ctx.row_counts["visible_events"] = visible
        written = (
            ctx.spark.read.format("delta")
            .option("versionAsOf", ref.version)
            .load(ref.path)
            .where((F.col("ds") == F.lit(ctx.as_of)) & (F.col("window") == "all"))
            .groupBy("key_type")
            .agg(F.sum("n_events").alias("n"))
            .collect()
        )
        for r in written:
            ctx.row_counts[f"events_counted.{r['key_type']}"] = int(r["n"])
        events.unpersist()


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_cross_stats")
