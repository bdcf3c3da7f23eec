"""build_sessions: events_clean → sessions (partition ds = as-of).

spark-submit jobs/build_sessions.py --warehouse W --as-of 1998-04-30 --gap-minutes 30
"""

from __future__ import annotations

from pyspark.sql import functions as F

from recfactory.features.sessions import SessionSpec, build_sessions
from recfactory.jobs.runtime.inputs import clean_events
from recfactory.jobs.runtime.job import Job, RunContext
from recfactory.jobs.runtime.params import JobParams


class SessionParams(SessionSpec, JobParams):
    """build_sessions' parameters: the job's, and the transform's (``SessionSpec``)."""


class BuildSessionsJob(Job[SessionParams]):
    name = "build_sessions"
    Params = SessionParams
    description = "Sessionize events by inactivity gap (and end events); every session recorded, valid ones flagged."
    outputs = ("sessions",)
    inputs = ("events_clean",)

    def run(self, ctx: RunContext[SessionParams]) -> None:
        p = ctx.params
        sessions = build_sessions(clean_events(ctx), ctx.cutoff, SessionSpec.of(p))
        ref = ctx.write(sessions.withColumn("ds", F.lit(ctx.as_of)), "sessions")
        ctx.row_counts["sessions"] = ref.rows


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_sessions")
