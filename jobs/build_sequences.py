"""build_sequences: events_clean (+ items) → user_sequences (partition ds = as-of).

spark-submit jobs/build_sequences.py --warehouse W --as-of 1998-04-30 --type-caps like=200,view=100
"""

from __future__ import annotations

from pydantic import field_validator
from pyspark.sql import functions as F

from recfactory.features.schema import ColumnMapping
from recfactory.features.sequences import DEFAULT_TYPE_CAPS, SequenceSpec, build_sequences
from recfactory.jobs.runtime.inputs import clean_events, item_snapshot
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import Field, JobParams


class SequenceParams(JobParams):
    max_len: int = Field(200, ge=1, description="Overall cap: the most recent events kept per user.")
    type_caps: str = Field(
        ",".join(f"{k}={v}" for k, v in DEFAULT_TYPE_CAPS.items()),
        description="Event types included and the most recent kept of each, type=cap,... "
        "(impressions are exposures and are left out by default).",
    )
    dedup_consecutive: bool = Field(
        False, description="Drop an event whose item repeats the user's previous event's item."
    )
    category_max_len: int = Field(
        0,
        ge=0,
        description="Also build category-bucketed sequences (SIM hard search) with this cap per category; 0 = off.",
    )

    @field_validator("type_caps")
    @classmethod
    def _caps(cls, v: str) -> str:
        SequenceSpec(type_caps=ColumnMapping.parse(v).values_as(int))
        return v


class BuildSequencesJob(Job):
    name = "build_sequences"
    Params = SequenceParams
    description = (
        "Per-user most recent behavior as a typed, time-ordered array with per-type caps "
        "(optionally bucketed by category)."
    )
    outputs = ("user_sequences",)
    inputs = ("events_clean", "items")

    def run(self, ctx: RunContext) -> None:
        p: SequenceParams = ctx.params
        spec = SequenceSpec(
            max_len=p.max_len,
            type_caps=ColumnMapping.parse(p.type_caps).values_as(int),
            dedup_consecutive=p.dedup_consecutive,
            category_max_len=p.category_max_len,
        )
        items = item_snapshot(ctx) if spec.category_max_len else None
        seqs = build_sequences(clean_events(ctx), ctx.cutoff, spec, items)
        ref = ctx.write(seqs.withColumn("ds", F.lit(ctx.as_of)), "user_sequences")
        ctx.row_counts["user_sequences"] = ref.rows


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_sequences")
