"""The Airflow DAGs: import, structure, and a real `airflow dags test` of the daily DAG on MovieLens
(SQLite metadata DB, spark-submit local[*], local Ray), its rerun, and a failed quality gate."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from recfactory.jobs.runtime.job import load_job
from recfactory.jobs.runtime.pipeline import DAILY, WEEKLY, upstream

pytestmark = [pytest.mark.airflow]

ROOT = Path(__file__).resolve().parents[1]
D = "1998-05-02"            # a Saturday: the weekly run of [1998-04-26, 1998-05-03) has this as-of
DAY = dt.date.fromisoformat(D)
BIN = Path(sys.executable).parent
# small but real: every step runs, with the heavy ones scaled down
CONF = {
    "build_similarity": {"algos": ["swing"], "evaluate": False},
    "build_graph_embeddings": {"walks_per_node": 4, "walk_length": 20, "epochs": 1, "methods": ["deepwalk"],
                               "evaluate": False},
    "build_sids": {"codebook_sizes": [16, 16, 16], "embeddings": "aligned_embeddings"},
    "train_gbdt": {"num_trees": 30},
    "build_cross_stats": {"keys": "user=user_id,item=item_id,category=category", "windows": "7d,all"},
    "build_training_samples": {"negative_rate": 0.5, "test_days": 30, "val_days": 0, "windows": "7d,all",
                               "keys": "user=user_id,item=item_id,category=category"},
    "align_embeddings": {"epochs": 2, "workers": 1},
}


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "RECFACTORY_WAREHOUSE": str(home / "wh"), "RECFACTORY_START_DATE": "1998-04-01",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return env, home


def _airflow(env, *args, timeout=3600):
    return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)


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
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                         cwd=str(ROOT / "airflow_dags"))
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


def _delta_versions(wh: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    return {p.name: DeltaTable(str(p)).version() for p in sorted(wh.iterdir()) if (p / "_delta_log").exists()}


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.timeout(2400)          # twelve spark-submits in a row
def test_airflow_dags_test_runs_the_daily_dag(airflow_env):
    from deltalake import DeltaTable

    env, home = airflow_env
    wh = home / "wh"
    res = _airflow(env, "dags", "test", "recfactory_daily", D, "-c", json.dumps(CONF))
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    assert sorted(runs["job"]) == sorted(s.job for s in DAILY) and set(runs["status"]) == {"succeeded"}
    versions = _delta_versions(wh)
    # one asset event per output table, carrying the Delta version written
    db = sqlite3.connect(str(home / "airflow.db"))
    events = {name: json.loads(extra) for name, extra in db.execute(
        "select a.name, e.extra from asset_event e join asset a on a.id = e.asset_id")}
    for s in DAILY:
        for table in load_job(s.job).outputs:
            if table in versions:
                ev = events[f"recfactory.{table}"]
                assert ev["delta_version"] == versions[table] and ev["ds"] == D and ev["job"] == s.job


@pytest.mark.spark
@pytest.mark.ray
def test_a_rerun_of_a_task_for_its_date_leaves_one_copy(airflow_env):
    """Retrying / rerunning tasks of a date (`airflow tasks test`, the operator as a retry runs it)
    replaces that date's partitions: same rows, one copy, new versions."""
    from deltalake import DeltaTable

    env, home = airflow_env
    wh = home / "wh"
    if not (wh / "semantic_ids").exists():
        pytest.skip("needs the daily DAG run of the test above")
    tables = {"ingest": "events_clean", "build_sids": "semantic_ids"}
    before = {t: DeltaTable(str(wh / t)).to_pandas(filters=[("ds", "=", DAY)]) for t in tables.values()}
    versions = _delta_versions(wh)
    for task in tables:
        res = _airflow(env, "tasks", "test", "recfactory_daily", task, D, "-t", json.dumps(CONF))
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    for t in tables.values():
        after = DeltaTable(str(wh / t)).to_pandas(filters=[("ds", "=", DAY)])
        assert len(after) == len(before[t]) and DeltaTable(str(wh / t)).version() == versions[t] + 1
    key = ["item_id", "sid"]
    assert before["semantic_ids"][key].sort_values(key).values.tolist() == \
        DeltaTable(str(wh / "semantic_ids")).to_pandas(filters=[("ds", "=", DAY)])[key].sort_values(key).values.tolist()


@pytest.mark.spark
@pytest.mark.ray
def test_the_weekly_dag_refits_after_the_daily_run_of_the_weeks_last_day(airflow_env):
    """The weekly run of [1998-04-26, 1998-05-03): its sensor sees the daily run of 1998-05-02, then
    build_sids --new-generation and train_gbdt run for that as-of and publish new versions. (That
    a new generation over an older one remaps every SID is tested in test_sids_job.)"""
    from deltalake import DeltaTable

    env, home = airflow_env
    wh = home / "wh"
    if not (wh / "semantic_ids").exists():
        pytest.skip("needs the daily DAG run of the test above")
    before = _delta_versions(wh)
    conf = {"refit_sids": CONF["build_sids"], "refit_gbdt": CONF["train_gbdt"]}
    res = _airflow(env, "dags", "test", "recfactory_weekly", "1998-05-03", "-c", json.dumps(conf))
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    after = _delta_versions(wh)
    for table in ("semantic_ids", "sid_codebooks", "gbdt_models"):
        assert after[table] == before[table] + 1, table
    runs = DeltaTable(str(wh / "_runs")).to_pandas().sort_values("started_at")
    refit = runs[runs["job"] == "build_sids"].iloc[-1]
    assert refit["status"] == "succeeded" and json.loads(refit["params"])["new_generation"] is True
    assert str(refit["as_of"]) == D


@pytest.mark.spark
@pytest.mark.ray
def test_a_failed_quality_gate_fails_the_task_skips_downstream_and_publishes_nothing(airflow_env):
    """The date again, with an impossible GBDT gate (every other task marked successful): the
    task fails at once, the leaf encoding does not run, the tables keep their versions."""
    env, home = airflow_env
    wh = home / "wh"
    if not (wh / "gbdt_models").exists():
        pytest.skip("needs the daily DAG run of the test above")
    before = _delta_versions(wh)
    conf = {**CONF, "train_gbdt": {"num_trees": 30, "gate_min_auc": 0.99}}
    res = _airflow(env, "dags", "test", "recfactory_daily", D, "-c", json.dumps(conf),
                   "--mark-success-pattern", "^(?!(train_gbdt|build_gbdt_leaves)$).*")
    text = res.stdout + res.stderr
    assert "quality gate failed, nothing published" in text, text[-4000:]
    after = _delta_versions(wh)
    for table in ("gbdt_models", "gbdt_leaf_vocab", "gbdt_metrics", "gbdt_leaves"):
        assert after[table] == before[table]
    assert after["_runs"] == before["_runs"] + 1          # the failed run is recorded
    db = sqlite3.connect(str(home / "airflow.db"))
    states = dict(db.execute("select ti.task_id, ti.state from task_instance ti join dag_run r "
                             "on r.run_id = ti.run_id and r.dag_id = ti.dag_id "
                             "where r.dag_id = 'recfactory_daily' order by r.id"))
    assert states["train_gbdt"] == "failed" and states["build_gbdt_leaves"] == "upstream_failed"
