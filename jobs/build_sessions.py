"""build_sessions: events_clean → sessions (partition ds = as-of).

spark-submit jobs/build_sessions.py --warehouse W --as-of 1998-04-30 --gap-minutes 30
"""

from __future__ import annotations

from pyspark.sql import functions as F

from recfactory.features.sessions import SessionSpec, build_sessions
from recfactory.jobs.runtime.inputs import clean_events
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import Field, JobParams


class SessionParams(JobParams):
    gap_minutes: float = Field(
        30.0,
        gt=0,
        description="Inactivity gap that ends a session "
        "(a gap of exactly this long stays in the session; Airbnb, DSIN: 30).",
    )
    end_event_types: list[str] = Field(
        [], description="Event types that end a session after them, e.g. purchase (none by default)."
    )
    item_event_types: list[str] = Field(
        list(SessionSpec().item_event_types), description="Event types that put their item in the session."
    )
    min_dwell_ms: int = Field(
        30_000,
        ge=0,
        description="Interactions with a known dwell below this "
        "are accidental clicks: counted, not kept as items (Airbnb: 30 s).",
    )
    min_valid_clicks: int = Field(
        2, ge=0, description="Sessions with at least this many valid interactions are flagged is_valid."
    )


class BuildSessionsJob(Job):
    name = "build_sessions"
    Params = SessionParams
    description = "Sessionize events by inactivity gap (and end events); every session recorded, valid ones flagged."
    outputs = ("sessions",)
    inputs = ("events_clean",)

    def run(self, ctx: RunContext) -> None:
        p: SessionParams = ctx.params
        spec = SessionSpec(
            gap_minutes=p.gap_minutes,
            end_event_types=tuple(p.end_event_types),
            item_event_types=tuple(p.item_event_types),
            min_dwell_ms=p.min_dwell_ms,
            min_valid_clicks=p.min_valid_clicks,
        )
        sessions = build_sessions(clean_events(ctx), ctx.cutoff, spec)
        ref = ctx.write(sessions.withColumn("ds", F.lit(ctx.as_of)), "sessions")
        ctx.row_counts["sessions"] = ref.rows


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_sessions")
