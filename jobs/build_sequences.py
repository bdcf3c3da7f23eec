"""build_sequences: events_clean (+ items) → user_sequences (partition ds = as-of).

spark-submit jobs/build_sequences.py --warehouse W --as-of 1998-04-30 --type-caps like=200,view=100
"""

from __future__ import annotations

from pyspark.sql import functions as F

from recfactory.features.sequences import SequenceSpec, build_sequences
from recfactory.jobs.runtime.inputs import clean_events, item_snapshot
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import JobParams


class SequenceParams(SequenceSpec, JobParams):
    """build_sequences' parameters: the job's, and the transform's (``SequenceSpec``)."""


class BuildSequencesJob(Job[SequenceParams]):
    name = "build_sequences"
    Params = SequenceParams
    description = (
        "Per-user most recent behavior as a typed, time-ordered array with per-type caps "
        "(optionally bucketed by category)."
    )
    outputs = ("user_sequences",)
    inputs = ("events_clean", "items")

    def run(self, ctx: RunContext[SequenceParams]) -> None:
        p = ctx.params
        spec = SequenceSpec.of(p)
        items = item_snapshot(ctx) if spec.category_max_len else None
        seqs = build_sequences(clean_events(ctx), ctx.cutoff, spec, items)
        ref = ctx.write(seqs.withColumn("ds", F.lit(ctx.as_of)), "user_sequences")
        ctx.row_counts["user_sequences"] = ref.rows


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_sequences")
