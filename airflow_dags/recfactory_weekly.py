"""recfactory_weekly: refit the semantic-ID codebooks into a new generation (with its remap
table) and the GBDT model, each published only when its quality gates pass (Airflow 3).

Its as-of is the week's last date; a sensor waits for that date's daily run to succeed, so the
refits never race it for that date's tables. Steps: ``recfactory.jobs.runtime.pipeline.WEEKLY``.
"""

from recfactory_tasks import build_dag

dag = build_dag(
    "recfactory_weekly",
    "weekly",
    "@weekly",
    "Weekly refits: a new semantic-ID generation and a new GBDT model, gated",
    after="recfactory_daily",
)
