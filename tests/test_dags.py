"""The Airflow DAGs run (their import and structure: test_dag_structure.py): a real `airflow dags
test` of the daily DAG on a slice of MovieLens (SQLite metadata DB) on real clusters — a Spark
standalone master + worker and a two-node Ray cluster on localhost, the package shipped as a wheel. Then every one of its runs is replayed
from its manifest in local mode (local Spark, local Ray, this checkout): each job, given the inputs
the cluster run read, must write bitwise the tables the cluster run wrote (`recfactory replay`) —
both "cluster mode equals local mode", job by job, and "replay of every job of the daily DAG
test's warehouse reproduces it". Then, on the same deployment in local mode (spark-submit
local[*], local Ray): its report, a rerun, the weekly refit, a failed quality
gate, the backfill of an earlier date."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas.testing
import pytest
from airflow_cli import airflow

from recfactory.jobs.runtime.job import load_job
from recfactory.jobs.runtime.pipeline import DAILY

pytestmark = [pytest.mark.airflow]

ROOT = Path(__file__).resolve().parents[1]
D = "1998-05-02"  # a Saturday: the weekly run of [1998-04-26, 1998-05-03) has this as-of
DAY = dt.date.fromisoformat(D)
BIN = Path(sys.executable).parent
USERS = 200  # the slice: MovieLens users 1..200 (19,747 of the 100,000 ratings), every item
# small but real: every step runs, with the heavy ones scaled down (ingest's paths: the slice's)
CONF = {
    "build_similarity": {"algos": ["swing"]},
    "build_graph_embeddings": {
        "walks_per_node": 4,
        "walk_length": 20,
        "epochs": 1,
        "methods": ["deepwalk"],
        "evaluate": False,
    },
    "build_sids": {"codebook_sizes": [16, 16, 16], "embeddings": "aligned_embeddings"},
    "train_gbdt": {"num_trees": 30},
    "build_cross_stats": {"keys": "user=user_id,item=item_id,category=category", "windows": "7d,all"},
    "build_training_samples": {
        "negative_rate": 0.5,
        "test_days": 30,
        "val_days": 0,
        "windows": "7d,all",
        "keys": "user=user_id,item=item_id,category=category",
    },
    "align_embeddings": {"epochs": 2, "workers": 1},
    "report": {"map_sample": 500},  # t-SNE of 2,000 items per map is half the report's time
}


def _build_wheel(dest: Path) -> Path:
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = dest.glob("recfactory-*.whl")
    return wheel


PROBE = """
import json, sys
import ray, recfactory
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
spark_files = sorted(set(spark.sparkContext.parallelize(range(8), 8)
                         .map(lambda _: __import__("recfactory").__file__).collect()))
print("PROBE " + json.dumps({"driver": recfactory.__file__, "executors": spark_files}))
"""

RAY_PROBE = """
import json, ray, recfactory
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
@ray.remote(num_cpus=1)
def where():
    import recfactory
    return recfactory.__file__, ray.get_runtime_context().get_node_id()
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
tasks = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
print("PROBE " + json.dumps({"driver": recfactory.__file__, "tasks": ray.get(tasks)}))
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, airflow_home):
    home = tmp_path_factory.mktemp("airflow")
    return airflow_home(home), home


@pytest.fixture(scope="module")
def conf(airflow_env, movielens_slice):
    """CONF plus ingest from the slice, written under the Airflow home (ingest's --dataset tables)."""
    events, items = movielens_slice(airflow_env[1], USERS)
    return {**CONF, "ingest": {"dataset": "tables", "events_path": str(events), "items_path": str(items)}}


def _print_task_times(home: Path, dag_id: str, capsys) -> None:
    """Each task's state and seconds in the DAG's latest run (from the metadata DB), in the test
    output even when the test passes: where a DAG test's time goes."""
    db = sqlite3.connect(str(home / "airflow.db"))
    rows = db.execute(
        "select ti.task_id, ti.state, (julianday(ti.end_date) - julianday(ti.start_date)) * 86400 "
        "from task_instance ti where ti.dag_id = ? and ti.run_id = "
        "(select run_id from dag_run where dag_id = ? order by id desc limit 1) order by ti.start_date",
        (dag_id, dag_id),
    ).fetchall()
    with capsys.disabled():
        print(f"\n{dag_id}: " + ", ".join(f"{t} {st} {sec or 0:.0f}s" for t, st, sec in rows))


def _delta_versions(wh: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    return {p.name: DeltaTable(str(p)).version() for p in sorted(wh.iterdir()) if (p / "_delta_log").exists()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return _build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="class")
def cluster_env(airflow_env, wheel, spark_cluster, ray_two_nodes):
    """The deployment's environment pointed at the clusters: spark-submit --master spark://… with
    --py-files recfactory.whl for the Spark steps, the Ray Jobs API (RAY_ADDRESS=http://…) for the
    Ray steps."""
    env, _ = airflow_env
    rc = ray_two_nodes
    return {
        **env,
        **{k: rc.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")},
        "RECFACTORY_PY_FILES": str(wheel),
        "AIRFLOW_CONN_RECFACTORY_SPARK": json.dumps({"conn_type": "spark", "host": spark_cluster.master_url}),
        "RAY_ADDRESS": rc.dashboard_url,
        "RECFACTORY_RAY_PYTHON": sys.executable,
    }


class TestOnTheClusters:
    """The tests that need the Spark standalone and two-node Ray clusters: the clusters (class-scoped
    fixtures) are stopped once these have run, before the local-mode tests below."""

    @pytest.mark.spark
    @pytest.mark.ray
    def test_the_shipped_wheel_is_what_spark_executors_and_ray_workers_import(
        self, tmp_path, wheel, cluster_env, spark_cluster, ray_two_nodes
    ):
        from ray.job_submission import JobStatus, JobSubmissionClient

        from recfactory.jobs.runtime.shipping import ray_py_modules, spark_py_files

        sc, rc = spark_cluster, ray_two_nodes
        probe = tmp_path / "probe.py"
        probe.write_text(PROBE)
        res = subprocess.run(
            [
                str(BIN / "spark-submit"),
                "--master",
                sc.master_url,
                "--py-files",
                spark_py_files(str(wheel)),
                str(probe),
            ],
            env=cluster_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-4000:]
        out = json.loads([x for x in res.stdout.splitlines() if x.startswith("PROBE ")][-1][6:])
        assert all(wheel.stem in f and not f.startswith(str(ROOT)) for f in [out["driver"], *out["executors"]]), out
        client = JobSubmissionClient(rc.dashboard_url, headers=rc.auth_header())
        job = client.submit_job(
            entrypoint=shlex.join([sys.executable, "-c", RAY_PROBE]),
            runtime_env={"py_modules": ray_py_modules(str(wheel))},
        )
        t0 = time.time()
        while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert time.time() - t0 < 300
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-4000:]
        out = json.loads([x for x in logs.splitlines() if x.startswith("PROBE ")][-1][6:])
        assert not str(out["driver"]).startswith(str(ROOT)) and len({n for _, n in out["tasks"]}) == 2, out
        assert not any(f.startswith(str(ROOT)) for f, _ in out["tasks"]), out

    @pytest.mark.spark
    @pytest.mark.ray
    @pytest.mark.timeout(3000)  # thirteen spark-submits and Ray jobs in a row
    def test_airflow_dags_test_runs_the_daily_dag_on_the_clusters(
        self, airflow_env, cluster_env, conf, spark_cluster, capsys
    ):
        from deltalake import DeltaTable

        _, home = airflow_env
        wh = home / "wh"
        res = airflow(cluster_env, "dags", "test", "recfactory_daily", D, "-c", json.dumps(conf))
        _print_task_times(home, "recfactory_daily", capsys)
        text = res.stdout + res.stderr
        assert res.returncode == 0, text[-6000:]
        assert spark_cluster.master_url in text and "submitted Ray job" in text
        runs = DeltaTable(str(wh / "_runs")).to_pandas()
        assert sorted(runs["job"]) == sorted(s.job for s in DAILY) and set(runs["status"]) == {"succeeded"}
        assert spark_cluster.master_url in set(runs["spark_master"])  # the Spark steps ran on the cluster
        versions = _delta_versions(wh)
        # one asset event per output table, carrying the Delta version written
        db = sqlite3.connect(str(home / "airflow.db"))
        events = {
            name: json.loads(extra)
            for name, extra in db.execute("select a.name, e.extra from asset_event e join asset a on a.id = e.asset_id")
        }
        for s in DAILY:
            for table in load_job(s.job).outputs:
                if table in versions:
                    ev = events[f"recfactory.{table}"]
                    assert ev["delta_version"] == versions[table] and ev["ds"] == D and ev["job"] == s.job


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_every_run_of_the_daily_dag_replays_bitwise_in_local_mode(airflow_env, spark):
    from deltalake import DeltaTable

    from recfactory.jobs.runtime.replay import replay

    _, home = airflow_env
    wh = home / "wh"
    if not (wh / "report_index").exists():
        pytest.skip("needs the daily DAG run above")
    runs = DeltaTable(str(wh / "_runs")).to_pandas().sort_values("started_at")
    assert sorted(runs["job"]) == sorted(s.job for s in DAILY)
    failures = []
    for r in runs.itertuples():
        ok, lines = replay(str(wh), r.run_id, spark=spark)
        print(f"\nreplay of {r.job} (run on {r.spark_master}):\n  " + "\n  ".join(lines))
        if not ok:
            failures.append(f"{r.job}: " + "; ".join(x for x in lines if "DIFFER" in x or "REPRODUCED" in x))
    assert not failures, failures


@pytest.mark.spark
def test_the_daily_runs_report_has_every_section_and_opens_in_chromium(airflow_env, tmp_path, chromium, capsys):
    """The DAG's last task, `report`: every section built from the run's tables, the page opens in
    headless Chromium with no console error, no failed request and every image decoded."""
    from deltalake import DeltaTable

    from recfactory.jobs.report import SECTIONS

    _, home = airflow_env
    wh = home / "wh"
    if not (wh / "report_index").exists():
        pytest.skip("needs the daily DAG run above")
    index = DeltaTable(str(wh / "report_index")).to_pandas()
    row = index[index["ds"].astype(str) == D].iloc[-1]
    assert list(row["missing_sections"]) == [] and list(row["sections"]) == list(SECTIONS)
    page_path = wh / "_reports" / "report" / D / "index.html"
    assert row["path"] == str(page_path)
    shot = tmp_path / "report.png"
    page = chromium(page_path, shot)
    with capsys.disabled():  # in the test output even when it passes
        print(f"\nscreenshot of the daily run's report: {shot} ({shot.stat().st_size:,} bytes)")
    assert page["ok"] and page["problems"] == [] and page["broken"] == []
    # CONF runs the graph embeddings without their evaluation: the one note, naming the table
    assert page["missing"] == ["graph_embedding_metrics does not exist (run build_graph_embeddings)"]
    assert page["headings"] == list(SECTIONS) and page["images"] == row["images"] >= 7
    html = page_path.read_text()
    for text in (
        "Star Wars",
        "HR@10 / popularity",
        "Generation 1",
        "collision_rate_before",
        "auc",
        "events: input = clean + quarantined: <b>yes</b>",
        "build_gbdt_leaves",
    ):
        assert text in html, text


@pytest.mark.spark
@pytest.mark.ray
def test_a_rerun_of_a_task_for_its_date_leaves_one_copy(airflow_env, conf):
    """Retrying / rerunning tasks of a date (`airflow tasks test`, the operator as a retry runs it)
    replaces that date's partitions: same rows, one copy, new versions."""
    from deltalake import DeltaTable

    env, home = airflow_env
    wh = home / "wh"
    if not (wh / "user_sequences").exists():
        pytest.skip("needs the daily DAG run of the test above")
    # a Spark step (build_sids' rerun: test_faults and test_sids_job; ingest's: test_ingest)
    tables = {"build_sequences": "user_sequences"}
    before = {t: DeltaTable(str(wh / t)).to_pandas(filters=[("ds", "=", DAY)]) for t in tables.values()}
    versions = _delta_versions(wh)
    for task in tables:
        res = airflow(env, "tasks", "test", "recfactory_daily", task, D, "-t", json.dumps(conf))
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    for t in tables.values():
        after = DeltaTable(str(wh / t)).to_pandas(filters=[("ds", "=", DAY)])
        assert len(after) == len(before[t]) and DeltaTable(str(wh / t)).version() == versions[t] + 1
    key = ["user_id", "sequence", "seq_len"]
    rows = lambda df: sorted(map(str, df[key].itertuples(index=False)))  # noqa: E731
    assert rows(before["user_sequences"]) == rows(
        DeltaTable(str(wh / "user_sequences")).to_pandas(filters=[("ds", "=", DAY)])
    )


@pytest.mark.spark
@pytest.mark.ray
def test_the_weekly_dag_refits_after_the_daily_run_of_the_weeks_last_day(airflow_env, capsys):
    """The weekly run of [1998-04-26, 1998-05-03): its sensor sees the daily run of 1998-05-02, then
    build_sids --new-generation and train_gbdt run for that as-of and publish new versions. (That
    a new generation over an older one remaps every SID is tested in test_sids_job.) The refit
    trains data-parallel on Ray Train (LightGBMTrainer, two workers: --distributed-rows below the
    samples' rows) and matches the quality of the daily run's single-process model."""
    from deltalake import DeltaTable

    env, home = airflow_env
    wh = home / "wh"
    if not (wh / "semantic_ids").exists():
        pytest.skip("needs the daily DAG run of the test above")
    before = _delta_versions(wh)
    conf = {"refit_sids": CONF["build_sids"], "refit_gbdt": {**CONF["train_gbdt"], "distributed_rows": 1000}}
    res = airflow(env, "dags", "test", "recfactory_weekly", "1998-05-03", "-c", json.dumps(conf))
    _print_task_times(home, "recfactory_weekly", capsys)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    after = _delta_versions(wh)
    for table in ("semantic_ids", "sid_codebooks", "gbdt_models"):
        assert after[table] == before[table] + 1, table
    runs = DeltaTable(str(wh / "_runs")).to_pandas().sort_values("started_at")
    refit = runs[runs["job"] == "build_sids"].iloc[-1]
    assert refit["status"] == "succeeded" and json.loads(refit["params"])["new_generation"] is True
    assert str(refit["as_of"]) == D
    gbdt = runs[runs["job"] == "train_gbdt"]
    daily, weekly = (dict(gbdt.iloc[i]["metrics"]) for i in (0, -1))
    notes = json.loads(DeltaTable(str(wh / "gbdt_models")).history(1)[0]["userMetadata"])["notes"]
    assert notes["training"].startswith("Ray Train LightGBMTrainer, 2 workers"), notes
    assert abs(weekly["auc.gbdt"] - daily["auc.gbdt"]) < 0.03, (daily["auc.gbdt"], weekly["auc.gbdt"])


@pytest.mark.spark
@pytest.mark.ray
def test_a_failed_quality_gate_fails_the_task_skips_downstream_and_publishes_nothing(airflow_env, conf, capsys):
    """The date again, with an impossible GBDT gate (every other task marked successful): the
    task fails at once, the leaf encoding does not run, the tables keep their versions."""
    env, home = airflow_env
    wh = home / "wh"
    if not (wh / "gbdt_models").exists():
        pytest.skip("needs the daily DAG run of the test above")
    before = _delta_versions(wh)
    conf = {**conf, "train_gbdt": {"num_trees": 30, "gate_min_auc": 0.99}}
    res = airflow(
        env,
        "dags",
        "test",
        "recfactory_daily",
        D,
        "-c",
        json.dumps(conf),
        "--mark-success-pattern",
        "^(?!(train_gbdt|build_gbdt_leaves)$).*",
    )
    _print_task_times(home, "recfactory_daily", capsys)
    text = res.stdout + res.stderr
    assert "quality gate failed, nothing published" in text, text[-4000:]
    after = _delta_versions(wh)
    for table in ("gbdt_models", "gbdt_leaf_vocab", "gbdt_metrics", "gbdt_leaves"):
        assert after[table] == before[table]
    assert after["_runs"] == before["_runs"] + 1  # the failed run is recorded
    db = sqlite3.connect(str(home / "airflow.db"))
    states = dict(
        db.execute(
            "select ti.task_id, ti.state from task_instance ti join dag_run r "
            "on r.run_id = ti.run_id and r.dag_id = ti.dag_id "
            "where r.dag_id = 'recfactory_daily' order by r.id"
        )
    )
    assert states["train_gbdt"] == "failed" and states["build_gbdt_leaves"] == "upstream_failed"


@pytest.mark.spark
def test_a_backfill_of_an_earlier_date_leaves_the_later_tables_as_they_were(airflow_env, conf, capsys):
    """Through Airflow, after the daily run of 05-02 (which loaded every event up to 05-02): a
    backfill of a date never run (04-20), ingest + sequences. Every event is still published
    once, events_clean and 05-02's partitions hold exactly the rows they held, and 04-20 gets its
    own. (Dates in order, in reverse and two at once, and reruns: test_backfill,
    in one process; the operator's date handling is what this adds.)"""
    from deltalake import DeltaTable

    env, home = airflow_env
    wh = home / "wh"
    if not (wh / "user_sequences").exists():
        pytest.skip("needs the daily DAG run above")
    tasks = ("ingest", "build_sequences")
    only = "^(?!(" + "|".join(tasks) + ")$).*"  # every other task marked successful

    def rows(table, ds=None):
        df = DeltaTable(str(wh / table)).to_pandas(filters=[("ds", "=", dt.date.fromisoformat(ds))] if ds else None)
        cols = sorted(df.columns)
        return df[cols].map(str).sort_values(cols).reset_index(drop=True)

    before = {"events": rows("events_clean"), "05-02": rows("user_sequences", D)}
    res = airflow(
        env, "dags", "test", "recfactory_daily", "1998-04-20", "-c", json.dumps(conf), "--mark-success-pattern", only
    )
    _print_task_times(home, "recfactory_daily", capsys)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    after = {"events": rows("events_clean"), "05-02": rows("user_sequences", D)}
    assert after["events"]["event_id"].is_unique
    for k in before:
        pandas.testing.assert_frame_equal(before[k], after[k], obj=k)
    assert len(rows("user_sequences", "1998-04-20")) > 0
