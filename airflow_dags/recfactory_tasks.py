"""Airflow side of recfactory: one operator that runs a pipeline step, and the DAG builder used by
``recfactory_daily.py`` and ``recfactory_weekly.py``. The steps, their order and their parameter
values come from ``recfactory.jobs.runtime.pipeline`` (the jobs' own declarations) — nothing about
a job is re-typed here.

Deployment settings (environment of the scheduler and workers, read when the DAG file is parsed):

- ``RECFACTORY_WAREHOUSE``: warehouse root (local path, or ``s3a://...``); default ``./warehouse``.
- ``RECFACTORY_SPARK_CONN``: Airflow connection id of the Spark master (default ``recfactory_spark``;
  when that connection does not exist, ``local[*]``).
- ``RECFACTORY_PY_FILES``: comma-separated files for ``spark-submit --py-files`` (the recfactory
  wheel, on a cluster).
- ``RAY_ADDRESS``: when it is a Ray dashboard URL (``http://head:8265``), steps that train on Ray
  are submitted through the Ray Jobs API; ``RECFACTORY_RAY_PYTHON`` is the Python the cluster runs
  them with (default ``python``). Otherwise they run through spark-submit with a local Ray (or the
  cluster ``RAY_ADDRESS`` names).
- ``RECFACTORY_SHUFFLE_PARTITIONS``: when set, passed to each spark-submit as its shuffle
  partitions and default parallelism (``spark.sql.shuffle.partitions``, ``spark.default.parallelism``).
- ``RECFACTORY_START_DATE`` (default 2026-01-01), ``RECFACTORY_CATCHUP`` (default false).
- ``RECFACTORY_RUN_CONF_ALLOW``: restricted parameters (paths, filters, plug-in class paths) a run
  conf may set, as ``task_id.param`` (default: none; see ``pipeline.check_run_conf``).

Credentials are never part of a DAG, a param or a manifest: object-store keys come from the
workers' environment (or Spark's / Ray's own credential chains).
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from recfactory.jobs.runtime.env import DEFAULT_WAREHOUSE, arrow_uri, redact
from recfactory.jobs.runtime.job import GATE_EXIT_CODE, load_job
from recfactory.jobs.runtime.pipeline import PIPELINES, Step, check_run_conf, step_params, to_argv, upstream
from recfactory.jobs.runtime.shipping import ray_py_modules, spark_py_files
from recfactory.jobs.runtime.spark import submit_conf

DEFAULT_CONN = "recfactory_spark"


def warehouse() -> str:
    return os.environ.get("RECFACTORY_WAREHOUSE", DEFAULT_WAREHOUSE)


def table_uri(table: str, root: str | None = None) -> str:
    """The table's location as an Asset URI (file:// for local paths, s3:// for s3a://)."""
    root = root or warehouse()
    if "://" in root:
        return arrow_uri(root.rstrip("/"), table)
    return f"file://{Path(root).resolve()}/{table}"


def table_asset(table: str) -> Asset:
    return Asset(name=f"recfactory.{table}", uri=table_uri(table), group="recfactory")


def task_params_schema(step: Step) -> Param:
    """The run-conf param of one task: an object of the job's own parameters (its pydantic JSON
    schema, minus what each run sets), validated by Airflow when a run is triggered."""
    job_cls = load_job(step.job)
    schema = job_cls.Params.model_json_schema()
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in ("warehouse", "as_of")}
    extra = {"$defs": schema["$defs"]} if "$defs" in schema else {}
    return Param(
        default={},
        type="object",
        properties=props,
        additionalProperties=False,
        description=f"{step.job}: {job_cls.description} Keys are its parameters.",
        **extra,
    )


def read_run(root: str, run_id: str) -> dict[str, Any] | None:
    """The `_runs` row of a run (delta-rs; no Spark in the Airflow worker), or None."""
    import pyarrow.compute as pc

    from recfactory.jobs.runtime.publication import read_small

    rows = read_small(root, "_runs", filter=pc.field("run_id") == run_id)
    return rows[0] if rows else None


class RecfactoryJobOperator(SparkSubmitOperator):
    """Runs one pipeline step for the DAG run's logical date (``ds``), as ``spark-submit
    jobs/<job>.py`` — or, for Ray steps when ``RAY_ADDRESS`` is a dashboard URL, as a Ray Jobs API
    submission of ``python -m recfactory <job>``. The flags come from the step's parameters plus the
    run conf's ``{task_id: {...}}`` (validated before anything starts). The job's run id is chosen
    here, so the task can read its `_runs` row afterwards: the Delta version of every table
    written goes into the asset events; a failed quality gate (nothing published) fails the task
    without retries."""

    ui_color = "#f0e4d4"

    def __init__(self, *, step: Step, as_of_mode: str = "ds", **kwargs):
        self.step = step
        self.as_of_mode = as_of_mode
        job_cls = load_job(step.job)
        py_files = os.environ.get("RECFACTORY_PY_FILES") or None
        conn_id = os.environ.get("RECFACTORY_SPARK_CONN", DEFAULT_CONN)
        super().__init__(
            task_id=step.task_id,
            application=str(Path(sys.modules[job_cls.__module__].__file__)),
            name=f"recfactory-{step.task_id}",
            conn_id=conn_id,
            py_files=py_files,
            conf={"spark.log.level": "WARN", **submit_conf(), **(kwargs.pop("conf", None) or {})},
            outlets=[table_asset(t) for t in job_cls.outputs],
            execution_timeout=dt.timedelta(minutes=step.timeout_minutes),
            depends_on_past=step.depends_on_past,
            **kwargs,
        )

    # -- the run ------------------------------------------------------------------------------------

    def execute(self, context) -> None:
        root = warehouse()
        conf = context["params"]
        try:
            check_run_conf(self.step, conf.get(self.step.task_id))
            params = step_params(
                self.step, as_of(context, self.as_of_mode), root, conf.get(self.step.task_id) or {}, conf.get("seed")
            )
        except ValueError as e:  # a bad override: a retry cannot fix it
            raise AirflowFailException(str(e)) from None
        run_id = uuid.uuid4().hex
        env = {
            "RECFACTORY_RUN_ID": run_id,
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
            # spark-submit from the same environment as this worker's Python (a venv's bin/)
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        argv = to_argv(params, only_set=True)
        self.log.info("recfactory %s %s (run id %s)", self.step.job, redact(shlex.join(argv)), run_id)
        self._ensure_conn()
        try:
            if self.step.ray and _ray_jobs_address():
                self._submit_ray(argv, env, run_id, context)
            else:
                self.application_args, self.env_vars, self._hook = argv, env, None
                self.py_files = spark_py_files(self.py_files) if self.py_files else None
                super().execute(context)
        except Exception as e:
            row = read_run(root, run_id)
            if row is not None and (row.get("error") or "").split(":")[0].endswith("QualityGateError"):
                raise AirflowFailException(
                    f"{self.step.task_id}: quality gate failed, nothing published "
                    f"(previous versions stay): {redact(row['error'])}"
                ) from e
            raise
        row = read_run(root, run_id)
        if row is None or row["status"] != "succeeded":
            raise AirflowException(f"{self.step.task_id}: run {run_id} left no succeeded _runs row")
        for out in row["outputs"] or []:
            context["outlet_events"][table_asset(out["name"])].extra = {
                "table": out["name"],
                "delta_version": out["version"],
                "rows": out["rows"],
                "ds": out["partition"],
                "run_id": run_id,
                "job": self.step.job,
            }
        self.log.info("published %s", ", ".join(f"{o['name']} v{o['version']}" for o in row["outputs"] or []))

    def _ensure_conn(self) -> None:
        """Without the configured connection, Spark runs local[*] (the embedded default)."""
        from airflow.sdk import BaseHook

        try:
            BaseHook.get_connection(self._conn_id)
        except Exception:  # noqa: BLE001 - any lookup failure: not configured
            os.environ[f"AIRFLOW_CONN_{self._conn_id.upper()}"] = '{"conn_type": "spark", "host": "local[*]"}'

    def _submit_ray(self, argv: list[str], env: dict[str, str], run_id: str, context) -> None:
        from ray.job_submission import JobStatus, JobSubmissionClient

        address = _ray_jobs_address()
        client = JobSubmissionClient(address)
        python = os.environ.get("RECFACTORY_RAY_PYTHON", "python")
        entry = shlex.join([python, "-m", "recfactory", self.step.job, *argv])
        # The job's own Spark session (started in the Ray job's driver) uses the same Spark master and
        # ships the same files as the spark-submit steps do.
        env = {k: v for k, v in env.items() if k != "PATH"}
        env["RECFACTORY_SPARK_MASTER"] = self._get_hook()._connection["master"]
        runtime_env: dict[str, Any] = {"env_vars": env}
        if self.py_files:
            env["RECFACTORY_PY_FILES"] = self.py_files
            runtime_env["py_modules"] = ray_py_modules(self.py_files)
        for attempt in range(12):  # a head whose job agent is still starting: "try again later"
            try:
                self._ray_job = client.submit_job(
                    entrypoint=entry, runtime_env=runtime_env, submission_id=f"recfactory-{self.step.task_id}-{run_id}"
                )
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or attempt == 11:
                    raise
                self.log.warning("Ray Jobs API not ready (%s); retrying in 5 s", e)
                time.sleep(5)
        self.log.info("submitted Ray job %s to %s: %s", self._ray_job, address, redact(entry))
        shown = 0
        while True:
            status = client.get_job_status(self._ray_job)
            logs = client.get_job_logs(self._ray_job)
            for line in logs[shown:].splitlines():
                self.log.info("[ray] %s", redact(line))
            shown = len(logs)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(3)
        if status != JobStatus.SUCCEEDED:
            info = client.get_job_info(self._ray_job)
            raise AirflowException(f"Ray job {self._ray_job} {status}: {info.message}")

    def on_kill(self) -> None:
        if getattr(self, "_ray_job", None):
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(_ray_jobs_address()).stop_job(self._ray_job)
        else:
            super().on_kill()


def as_of(context, mode: str = "ds") -> str:
    """The run's as-of. "ds": its logical date (a daily run, scheduled for [D, D + 1 day) or
    triggered for D by hand); "interval_end": the last day of its data interval (the weekly run:
    the week's last day, whose daily run it follows)."""
    end = context.get("data_interval_end")
    if mode == "interval_end" and end is not None:
        return (end - dt.timedelta(days=1)).date().isoformat()
    return context["ds"]


def _ray_jobs_address() -> str | None:
    address = os.environ.get("RAY_ADDRESS", "")
    return address if address.startswith(("http://", "https://")) else None


def build_dag(dag_id: str, pipeline: str, cron: str, description: str, after: str | None = None) -> DAG:
    """One DAG per pipeline: a task per step, edges from the tables each step reads. ``after``: a
    DAG whose run for this run's as-of must have succeeded first (a sensor; the weekly refits wait
    for the daily run of the week's last day, so they never race it for that date's tables)."""
    steps = PIPELINES[pipeline]
    start = dt.datetime.fromisoformat(os.environ.get("RECFACTORY_START_DATE", "2026-01-01")).replace(tzinfo=dt.UTC)
    params: dict[str, Any] = {
        "seed": Param(None, type=["null", "integer"], description="Seed for every step (default: each job's).")
    }
    params.update({s.task_id: task_params_schema(s) for s in steps})
    dag = DAG(
        dag_id=dag_id,
        description=description,
        # a run covers the interval [D, D + 1 period) and starts after it ends: ds = D is the as-of
        schedule=CronDataIntervalTimetable(cron, timezone="UTC"),
        start_date=start,
        catchup=os.environ.get("RECFACTORY_CATCHUP", "false").lower() == "true",
        max_active_runs=1,  # dates in order: SID generations and models carry over
        params=params,
        tags=["recfactory"],
        doc_md=__doc__,
        default_args={
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=2),
            "retry_exponential_backoff": True,
            "max_retry_delay": dt.timedelta(minutes=30),
        },
    )
    with dag:
        mode = "interval_end" if after else "ds"
        tasks = {s.task_id: RecfactoryJobOperator(step=s, as_of_mode=mode) for s in steps}
        for task_id, ups in upstream(steps).items():
            for u in ups:
                tasks[u] >> tasks[task_id]
        if after:
            from airflow.providers.standard.sensors.external_task import ExternalTaskSensor

            wait = ExternalTaskSensor(
                task_id=f"wait_for_{after}",
                external_dag_id=after,
                external_task_id=None,
                execution_date_fn=lambda dt_, **ctx: ctx["data_interval_end"] - dt.timedelta(days=1),
                mode="reschedule",
                poke_interval=300,
                timeout=12 * 3600,
                retries=0,
            )
            for task_id, ups in upstream(steps).items():
                if not ups:
                    wait >> tasks[task_id]
    return dag


__all__ = ["GATE_EXIT_CODE", "RecfactoryJobOperator", "build_dag", "read_run", "table_asset"]
