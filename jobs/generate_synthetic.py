"""generate_synthetic: seeded synthetic raw events + items, written as Delta (for scale runs).

    recfactory generate_synthetic --as-of 2026-11-28 --events 10000000
    recfactory ingest --as-of 2026-11-28 --dataset tables \
        --events-path warehouse/synthetic_events --items-path warehouse/synthetic_items

Every row has source = 'synthetic'. Same seed and sizes → the same rows, whatever the cluster.
"""

from __future__ import annotations

from recfactory.features.synthetic import SyntheticSpec, synthetic_events, synthetic_items
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import Field, JobParams


class GenerateSyntheticParams(JobParams):
    events: int = Field(100_000, ge=1, description="Approximate number of raw events.")
    items: int | None = Field(None, ge=1, description="Number of items (default events/20).")
    users: int | None = Field(None, ge=1, description="Number of users (default events/40).")
    days: int = Field(30, ge=1, description="Events span the days before the end of --as-of.")
    categories: int = Field(50, ge=1, description="Number of item categories.")


class GenerateSyntheticJob(Job[GenerateSyntheticParams]):
    name = "generate_synthetic"
    Params = GenerateSyntheticParams
    description = "Write seeded synthetic raw events and items (Zipf items, heavy-tailed users, sessions)."
    outputs = ("synthetic_events", "synthetic_items")

    def run(self, ctx: RunContext[GenerateSyntheticParams]) -> None:
        p = ctx.params
        spec = SyntheticSpec(
            n_events=p.events,
            n_items=p.items,
            n_users=p.users,
            days=p.days,
            n_categories=p.categories,
            seed=p.seed,
            end=ctx.cutoff.date(),
        )
        ev = ctx.write(synthetic_events(ctx.spark, spec), "synthetic_events", mode="overwrite", partition_by=())
        it = ctx.write(synthetic_items(ctx.spark, spec), "synthetic_items", mode="overwrite", partition_by=())
        ctx.row_counts.update({"synthetic_events": ev.rows, "synthetic_items": it.rows})


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("generate_synthetic")
