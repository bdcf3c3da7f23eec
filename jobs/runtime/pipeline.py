"""The scheduled pipelines as data: which jobs run for one logical date, with which fixed parameter
values, and what depends on what — shared by the Airflow DAGs (``airflow_dags/``) and
``recfactory pipeline`` (the same graph run in one process, no Airflow needed).

Dependencies are not typed here: a step runs after the steps that write a table it reads (each
job declares its ``outputs`` and ``input_tables(params)``). Parameter values come from the jobs'
own declarations: overrides are ``{task_id: {param: value}}`` (the Airflow DAG's params / run
conf), validated by the job's pydantic model before anything runs, and turned into the job's CLI
flags by `to_argv`, which parses back to the same parameters (tested for every job).
"""

from __future__ import annotations

import datetime as dt
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from recfactory.jobs.runtime.env import DEFAULT_WAREHOUSE
from recfactory.jobs.runtime.job import load_job
from recfactory.jobs.runtime.params import JobParams, flag, unwrap_optional


@dataclass(frozen=True)
class Step:
    """One task: a job, its fixed parameter values, and how it is scheduled."""

    job: str
    task_id: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    ray: bool = False  # trains on Ray: a Ray Jobs API submission when RAY_ADDRESS is http(s)
    depends_on_past: bool = False  # needs the previous date's run (e.g. SID generations carry over)
    last: bool = False  # runs after every earlier step (the run's report), not only its writers
    timeout_minutes: int = 120

    def __post_init__(self):
        if not self.task_id:
            object.__setattr__(self, "task_id", self.job)


DAILY: tuple[Step, ...] = (
    Step("ingest"),
    Step("build_sequences"),
    Step("build_sessions"),
    Step("build_cross_stats"),
    Step("build_training_samples"),
    Step("build_similarity"),
    Step("build_graph_embeddings", ray=True),
    Step("build_content_embeddings"),
    Step("align_embeddings", ray=True, depends_on_past=True),  # SimTier from the previous date's model
    Step("build_sids", ray=True, depends_on_past=True),  # daily assignment in the current generation
    Step("train_gbdt", ray=True),
    Step("build_gbdt_leaves"),
    Step("report", last=True),  # the run's report: after every step above
)

WEEKLY: tuple[Step, ...] = (
    Step("build_sids", task_id="refit_sids", params={"new_generation": True}, ray=True, depends_on_past=True),
    Step("train_gbdt", task_id="refit_gbdt", ray=True),
)

PIPELINES = {"daily": DAILY, "weekly": WEEKLY}


RUN_CONF_ALLOW = "RECFACTORY_RUN_CONF_ALLOW"


def check_run_conf(step: Step, overrides: dict[str, Any] | None, allow: str | None = None) -> None:
    """Refuse run-conf overrides of the step's restricted parameters (paths, filters, plug-in class
    paths) that the deployment does not allow. An Airflow run conf comes from whoever may trigger
    the DAG; the deployment (its workers' environment) allows a parameter with
    ``RECFACTORY_RUN_CONF_ALLOW`` = comma-separated ``task_id.param`` (or ``param`` for every task,
    ``*`` for all). The error names every refused override."""
    import os

    from recfactory.jobs.runtime.params import RESTRICTED_KINDS, restricted_fields

    allow = os.environ.get(RUN_CONF_ALLOW, "") if allow is None else allow
    allowed = {a.strip() for a in allow.split(",") if a.strip()}
    kinds = restricted_fields(load_job(step.job).Params)
    refused = []
    for name, value in (overrides or {}).items():
        kind = kinds.get(name)
        if kind is None or {"*", name, f"{step.task_id}.{name}"} & allowed:
            continue
        if kind == "class":  # registered names are fine; module:Class paths are not
            values = value if isinstance(value, (list, tuple)) else [value]
            if not any(isinstance(v, str) and ":" in v for v in values):
                continue
        refused.append(f"{step.task_id}.{name} ({RESTRICTED_KINDS[kind]})")
    if refused:
        raise ValueError(
            f"the run conf may not set {'; '.join(refused)}. A deployment that wants it allows it in "
            f"the workers' environment: {RUN_CONF_ALLOW}=" + ",".join(r.split(" ")[0] for r in refused)
        )


def step_params(
    step: Step, as_of: dt.date | str, warehouse: str, overrides: dict[str, Any] | None = None, seed: int | None = None
) -> JobParams:
    """The step's validated parameters: the job's defaults, the step's fixed values, then overrides."""
    job_cls = load_job(step.job)
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) & {"warehouse", "as_of"})
    if bad:
        raise ValueError(f"{step.task_id}: {bad} are set per run, not per task")
    values = {**step.params, **overrides, "warehouse": warehouse, "as_of": as_of}
    if seed is not None and "seed" not in overrides:
        values["seed"] = seed
    unknown = sorted(set(values) - set(job_cls.Params.model_fields))
    if unknown:
        raise ValueError(
            f"{step.task_id} ({step.job}) has no parameter(s) {unknown}; it has {sorted(job_cls.Params.model_fields)}"
        )
    try:
        return job_cls.Params(**values)
    except ValidationError as e:
        msgs = [f"{flag('.'.join(map(str, err['loc'])))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{step.task_id} ({step.job}): " + "; ".join(msgs)) from None


def to_argv(params: JobParams, only_set: bool = False) -> list[str]:
    """CLI flags that parse back to ``params`` (every field, or with only_set the non-default ones
    plus the warehouse and as-of)."""
    argv: list[str] = []
    for name, f in type(params).model_fields.items():
        value = getattr(params, name)
        if only_set and name not in ("warehouse", "as_of") and not f.is_required() and value == f.default:
            continue
        tp, _ = unwrap_optional(f.annotation)
        origin = typing.get_origin(tp)
        if tp is bool:
            argv.append(flag(name) if value else "--no-" + flag(name)[2:])
            continue
        if value is None:
            text = "none"
        elif origin in (list, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, dt.date):
            text = value.isoformat()
        else:
            text = str(value)
        argv.append(f"{flag(name)}={text}")
    return argv


def upstream(steps: tuple[Step, ...], params: dict[str, JobParams] | None = None) -> dict[str, list[str]]:
    """task_id → the task_ids it waits for: the earlier steps writing a table it reads. ``params``
    (task_id → parameters) chooses inputs where a job's inputs depend on them; default values
    otherwise."""
    writers: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for s in steps:
        job_cls = load_job(s.job)
        p = (params or {}).get(s.task_id) or step_params(s, "2000-01-01", DEFAULT_WAREHOUSE)
        reads = [t for t in job_cls.input_tables(p) if t not in job_cls.outputs]
        deps[s.task_id] = sorted({writers[t] for t in reads if t in writers})
        if s.last:  # after every earlier step: the earlier steps no other earlier step waits for
            earlier = [t for t in deps if t != s.task_id]
            waited = {d for t in earlier for d in deps[t]}
            deps[s.task_id] = sorted(t for t in earlier if t not in waited)
        for t in job_cls.outputs:
            writers[t] = s.task_id
    return deps


def parse_overrides(text: str | None) -> dict[str, dict[str, Any]]:
    """``{"task_id": {"param": value}}`` from JSON (the CLI's --params, the DAG's run conf), or from the
    JSON file named after an ``@`` (``@jobs/conf/movielens-100k.json``)."""
    if not text:
        return {}
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError('overrides must be a JSON object {"task_id": {"param": value, ...}, ...}')
    return data


@dataclass
class StepResult:
    task_id: str
    job: str
    status: str  # succeeded | gate_failed | failed | upstream_failed
    seconds: float = 0.0
    run_id: str | None = None
    error: str | None = None
    outputs: dict[str, int] = field(default_factory=dict)  # table → Delta version written
    report: str | None = None  # a report the step wrote (its path)


def run_pipeline(
    name: str,
    warehouse: str,
    as_of: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    only: list[str] | None = None,
    seed: int | None = None,
    spark=None,
) -> list[StepResult]:
    """Run a pipeline's steps for one date in this process, in order, on one Spark session — the
    DAG without Airflow. A failed step (or failed quality gate) skips the steps downstream of it,
    as Airflow's default trigger rule does; independent steps still run."""
    import logging
    import time

    from recfactory.jobs.runtime.job import QualityGateError, execute

    log = logging.getLogger("recfactory")
    steps = PIPELINES[name]
    overrides = overrides or {}
    unknown = sorted((set(overrides) | set(only or ())) - {s.task_id for s in steps})
    if unknown:
        raise ValueError(f"the {name} pipeline has no task(s) {unknown}")
    params = {s.task_id: step_params(s, as_of, warehouse, overrides.get(s.task_id), seed) for s in steps}
    deps = upstream(steps, params)
    results: dict[str, StepResult] = {}
    for s in steps:
        if only and s.task_id not in only:
            continue
        blocked = [d for d in deps[s.task_id] if d in results and results[d].status != "succeeded"]
        if blocked:
            results[s.task_id] = StepResult(s.task_id, s.job, "upstream_failed", error=f"upstream {blocked} failed")
            log.warning("pipeline %s: %s skipped (upstream %s failed)", name, s.task_id, blocked)
            continue
        log.info("pipeline %s: %s (%s)", name, s.task_id, " ".join(to_argv(params[s.task_id], only_set=True)))
        t0 = time.time()
        try:
            ctx = execute(load_job(s.job), params[s.task_id], spark=spark)
            spark = ctx.spark
            results[s.task_id] = StepResult(
                s.task_id,
                s.job,
                "succeeded",
                time.time() - t0,
                ctx.run_id,
                outputs={o.name: o.version for o in ctx.outputs},
                report=ctx.notes.get("report"),
            )
        except QualityGateError as e:
            results[s.task_id] = StepResult(s.task_id, s.job, "gate_failed", time.time() - t0, error=str(e))
        except Exception as e:  # noqa: BLE001 - recorded in _runs by execute; reported in the summary
            results[s.task_id] = StepResult(
                s.task_id, s.job, "failed", time.time() - t0, error=f"{type(e).__name__}: {e}"
            )
            log.exception("pipeline %s: %s failed", name, s.task_id)
    return list(results.values())


def pipeline_main(argv: list[str]) -> int:
    """`recfactory pipeline`: the daily (or weekly) DAG's steps in one process."""
    import argparse

    from recfactory.jobs.runtime.job import GATE_EXIT_CODE

    ap = argparse.ArgumentParser(prog="recfactory pipeline", description=run_pipeline.__doc__)
    ap.add_argument("--pipeline", choices=sorted(PIPELINES), default="daily")
    ap.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    ap.add_argument("--as-of", required=True)
    ap.add_argument("--seed", type=int, default=None, help="Seed for every step (default: each job's).")
    ap.add_argument(
        "--params",
        default=None,
        help='Per-task overrides as JSON, {"build_sids": {"codebook_sizes": [16, 16, 16]}}, '
        "or @file.json (jobs/conf/ has one per embedded dataset).",
    )
    ap.add_argument("--only", default=None, help="Comma-separated task ids to run (default: all).")
    a = ap.parse_args(argv)
    only = [t.strip() for t in a.only.split(",") if t.strip()] if a.only else None
    results = run_pipeline(a.pipeline, a.warehouse, a.as_of, parse_overrides(a.params), only, a.seed)
    width = max(len(r.task_id) for r in results)
    print(f"\n{a.pipeline} pipeline, as of {a.as_of}:")
    for r in results:
        tail = ", ".join(f"{k} v{v}" for k, v in r.outputs.items()) if r.status == "succeeded" else (r.error or "")
        print(f"  {r.task_id:{width}s}  {r.status:15s} {r.seconds:7.1f}s  {tail[:200]}")
    print(f"  total {sum(r.seconds for r in results):.1f}s")
    for r in results:
        if r.report:
            print(f"  {r.task_id} wrote a report: {r.report}")
    statuses = {r.status for r in results}
    if statuses <= {"succeeded"}:
        return 0
    return GATE_EXIT_CODE if statuses <= {"succeeded", "gate_failed", "upstream_failed"} else 1
