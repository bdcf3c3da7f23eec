"""The Airflow DAGs' structure and scheduling, without running a job: both DAGs import without
errors and follow the pipelines (tasks, dependencies, retries, timeouts, asset outlets, params), a
backfill covers its dates oldest first (backwards is refused), and a run conf that sets a path the
deployment does not allow fails its task before anything runs. The DAG runs: test_dags.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from airflow_cli import airflow

from recfactory.jobs.runtime.job import load_job
from recfactory.jobs.runtime.pipeline import DAILY, WEEKLY, upstream

pytestmark = [pytest.mark.airflow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, airflow_home):
    home = tmp_path_factory.mktemp("airflow")
    return airflow_home(home), home


def test_dags_import_without_errors_and_follow_the_pipeline(airflow_env):
    env, _ = airflow_env
    code = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag()
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "retries": t.retries,
                              "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                              "outlets": sorted(a.name for a in getattr(t, "outlets", []) or [])}
                  for t in dag.tasks},
        "params": sorted(dag.params.keys()), "max_active_runs": dag.max_active_runs}
print("RESULT " + json.dumps(out))
"""
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(ROOT / "airflow_dags"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads([x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
    assert out["errors"] == {}
    daily, weekly = out["dags"]["recfactory_daily"], out["dags"]["recfactory_weekly"]
    deps = upstream(DAILY)
    assert set(daily["tasks"]) == set(deps)
    for s in DAILY:
        t = daily["tasks"][s.task_id]
        assert t["upstream"] == deps[s.task_id] and t["retries"] == 2 and t["timeout"] > 0
        assert t["outlets"] == sorted(f"recfactory.{x}" for x in load_job(s.job).outputs)
    assert set(daily["params"]) == {"seed", *deps} and daily["max_active_runs"] == 1
    assert set(weekly["tasks"]) == {"wait_for_recfactory_daily", *(s.task_id for s in WEEKLY)}
    for s in WEEKLY:
        assert weekly["tasks"][s.task_id]["upstream"] == ["wait_for_recfactory_daily"]


def test_a_backfill_covers_each_date_of_the_range_in_order(airflow_env):
    """`airflow backfill create` over a range: one run per date, oldest first; running it
    backwards is refused (build_sids depends on its previous date)."""
    env, _ = airflow_env
    res = airflow(env, "dags", "reserialize", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    dry_run = ("backfill", "create", "--dag-id", "recfactory_daily", "--from-date", "1998-04-27")
    dry_run += ("--to-date", "1998-04-30", "--dry-run")
    res = airflow(env, *dry_run, "--reprocess-behavior", "completed", timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    dates = re.findall(r"^\| (\d{4}-\d{2}-\d{2}) ", res.stdout + res.stderr, re.M)  # "Runs to be attempted" table
    assert dates == ["1998-04-27", "1998-04-28", "1998-04-29", "1998-04-30"], res.stdout[-3000:]
    res = airflow(env, *dry_run, "--run-backwards", timeout=600)
    assert res.returncode != 0 and "depends_on_past" in (res.stdout + res.stderr), (res.stdout + res.stderr)[-3000:]


def test_a_run_conf_that_sets_a_path_the_deployment_does_not_allow_fails_naming_it(airflow_env):
    """The deployment allows ingest's input paths (RECFACTORY_RUN_CONF_ALLOW), not the report's
    output folder: the task fails before anything runs, naming the refused override. (On a
    deployment of its own, for a date no DAG run exists for: a run's own conf would override the
    task params given here.)"""
    env, home = airflow_env
    res = airflow(
        env,
        "tasks",
        "test",
        "recfactory_daily",
        "report",
        "1998-04-25",
        "-t",
        json.dumps({"report": {"output_dir": str(home / "elsewhere")}}),
        timeout=600,
    )
    text = res.stdout + res.stderr
    assert "the run conf may not set report.output_dir" in text, text[-3000:]
    assert "RECFACTORY_RUN_CONF_ALLOW=report.output_dir" in text and not (home / "elsewhere").exists()
