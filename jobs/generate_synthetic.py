"""generate_synthetic: seeded synthetic raw events + items, written as Delta (for scale runs).

    recfactory generate_synthetic --as-of 2026-11-28 --events 10000000
    recfactory ingest --as-of 2026-11-28 --dataset tables \
        --events-path warehouse/synthetic_events --items-path warehouse/synthetic_items

Every row has source = 'synthetic'. Same seed and sizes → the same rows, whatever the cluster.
"""

from __future__ import annotations

from recfactory.features.synthetic import SyntheticSpec, synthetic_events, synthetic_items
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import JobParams


class GenerateSyntheticParams(SyntheticSpec, JobParams):
    """generate_synthetic's parameters: the job's, and the generator's (``SyntheticSpec``)."""


class GenerateSyntheticJob(Job[GenerateSyntheticParams]):
    name = "generate_synthetic"
    Params = GenerateSyntheticParams
    description = "Write seeded synthetic raw events and items (Zipf items, heavy-tailed users, sessions)."
    outputs = ("synthetic_events", "synthetic_items")

    def run(self, ctx: RunContext[GenerateSyntheticParams]) -> None:
        p = ctx.params
        spec, end = SyntheticSpec.of(p), ctx.cutoff.date()
        ev = ctx.write(synthetic_events(ctx.spark, spec, end), "synthetic_events", mode="overwrite", partition_by=())
        it = ctx.write(synthetic_items(ctx.spark, spec, end), "synthetic_items", mode="overwrite", partition_by=())
        ctx.row_counts.update({"synthetic_events": ev.rows, "synthetic_items": it.rows})


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("generate_synthetic")
