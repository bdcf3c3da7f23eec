"""build_cross_stats: events_clean + items → cross_stats (partition ds = as-of).

    spark-submit jobs/build_cross_stats.py --warehouse W --as-of 1998-04-30 \
        --keys user=user_id,item=item_id,item_hour=item_id*hour --windows 1d,7d,30d,all

One row per key type × key × window with at least one event in the window; see
recfactory.features.cross_stats for the spec language, window edges and the smoothing prior.
"""

from __future__ import annotations

from pydantic import model_validator
from pyspark.sql import functions as F

from recfactory.features.cross_stats import (
    DEFAULT_KEYS,
    DEFAULT_RATES,
    DEFAULT_WINDOWS,
    CrossStatsSpec,
    build_cross_stats,
    present_in,
)
from recfactory.features.schema import EVENT_TYPES
from recfactory.features.sequences import visible_events
from recfactory.jobs.runtime.inputs import clean_events, item_snapshot
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import Field, JobParams


class CrossStatsSpecParams(JobParams):
    """The cross-statistics spec, declared once for build_cross_stats and build_training_samples."""

    keys: str = Field(
        DEFAULT_KEYS,
        description="Key declarations name=dim[*dim...]; dims: user_id, item_id, "
        "category, brand, hour, dow, ctx:NAME (a context field). Keys over a context field "
        "no event carries are skipped (recorded in the manifest).",
    )
    windows: str = Field(DEFAULT_WINDOWS, description="Windows ending at the cutoff: Nd, Nh or all.")
    rates: str = Field(
        DEFAULT_RATES,
        description="Smoothed rates name=num_type/den_type[+type...]; rates "
        "whose denominator types never occur are skipped.",
    )
    event_types: list[str] = Field(
        list(EVENT_TYPES), description="Event types counted (n_<type>); types that never occur are skipped."
    )
    min_prior_strength: float = Field(2.0, gt=0, description="Lower clip of the Beta prior's α+β.")
    max_prior_strength: float = Field(1e4, gt=0, description="Upper clip of the Beta prior's α+β.")

    @model_validator(mode="after")
    def _spec_parses(self):
        self.stats_spec()
        return self

    def stats_spec(self) -> CrossStatsSpec:
        return CrossStatsSpec.parse(
            keys=self.keys,
            windows=self.windows,
            rates=self.rates,
            event_types=self.event_types,
            min_prior_strength=self.min_prior_strength,
            max_prior_strength=self.max_prior_strength,
        )


def pruned_spec(ctx: RunContext, events) -> CrossStatsSpec:
    """The declared spec, minus what the visible events cannot fill (noted in the manifest)."""
    spec = ctx.params.stats_spec().prune(*present_in(visible_events(events, ctx.cutoff)))
    ctx.notes.update(spec.notes)
    for k, v in spec.notes.items():
        ctx.metrics[f"{k}.count"] = len(v.split(","))
    return spec


def record_priors(ctx: RunContext, priors: dict, prefix: str = "prior") -> None:
    for key, (a, b) in sorted(priors.items()):
        ctx.metrics[f"{prefix}.{'.'.join(map(str, key))}.alpha"] = round(a, 6)
        ctx.metrics[f"{prefix}.{'.'.join(map(str, key))}.beta"] = round(b, 6)


class BuildCrossStatsJob(Job):
    name = "build_cross_stats"
    Params = CrossStatsSpecParams
    description = (
        "Windowed counts per event type, distinct users, Bayesian-smoothed rates and recency "
        "for every declared key × window."
    )
    outputs = ("cross_stats",)
    inputs = ("events_clean", "items")

    def run(self, ctx: RunContext) -> None:
        events = clean_events(ctx)
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


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_cross_stats")
