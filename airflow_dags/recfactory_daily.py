"""recfactory_daily: every table for one logical date (Airflow 3).

ingest → sequences / sessions / cross stats / training samples → similarity → graph embeddings →
content embeddings → alignment → semantic IDs (daily assignment in the current generation) → GBDT
training and leaf encoding → the run's report (HTML + PNGs); each task waits for the tasks writing the tables it reads. Steps and
parameters: ``recfactory.jobs.runtime.pipeline.DAILY``; settings: ``recfactory_tasks``.
"""

from recfactory_tasks import build_dag

dag = build_dag(
    "recfactory_daily",
    "daily",
    "@daily",
    "Daily recfactory tables: features, similarity, embeddings, semantic IDs, GBDT leaves",
)
