"""Shared fixtures: one real local Spark + Delta session for the whole run, fresh warehouses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("RECFACTORY_SHUFFLE_PARTITIONS", "4")
os.environ.setdefault("RECFACTORY_DRIVER_MEMORY", "3g")
# Every JVM of the run (the session's Spark, each spark-submit of the Airflow tests, the standalone
# cluster's master, worker and executors) is short-lived and works on tiny data: the C1 JIT only and
# the serial collector halve its CPU time (measured on `build_sequences` under spark-submit: 78 s →
# 30 s of CPU); interpreted expressions instead of whole-stage code generation (Janino compiles every
# new query shape in every new JVM) and one scan split per few hundred small files take another
# quarter off (`build_cross_stats` in a fresh process: 69 s → 47 s). Spark's SQL settings are read
# from `spark.*` JVM system properties, so they reach spark-submit's drivers too. Test-only: production
# JVMs, and `make bench` (BENCH_RUN set), keep Spark's and the JVM's defaults.
TEST_JVM_OPTIONS = (
    "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dspark.sql.codegen.wholeStage=false "
    "-Dspark.sql.codegen.factoryMode=NO_CODEGEN -Dspark.sql.files.maxPartitionBytes=1073741824"
)
if not os.environ.get("BENCH_RUN"):
    os.environ.setdefault("JAVA_TOOL_OPTIONS", TEST_JVM_OPTIONS)
# Under pytest-xdist each worker is its own Spark driver and local Ray: its own scratch space
# (spark.local.dir, Ray's temp dir), so two workers never share a Ray session folder.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["RECFACTORY_TMP"] = str(
        Path(os.environ.get("RECFACTORY_TMP", Path.cwd() / ".tmp")).absolute() / os.environ["PYTEST_XDIST_WORKER"]
    )


# The longest test files first (as measured in CI), so that `pytest -n 2 --dist loadfile
# --no-loadscope-reorder` starts them at once and the short ones fill in around them (a file runs in
# one worker: module fixtures are shared). The DAG file, the longest, starts on one worker.
LONGEST_FIRST = (
    "test_dags.py",
    "test_faults.py",
    "test_backfill.py",
    "test_alignment.py",
    "test_gbdt_jobs.py",
    "test_samples.py",
    "test_cross_stats.py",
    "test_sids_job.py",
    "test_point_in_time.py",
    "test_hostile_input.py",
    "test_cli.py",
)


# a test that takes one of these fixtures needs what the marker says, whatever its own marks
FIXTURE_MARKS = {
    "spark": "spark",
    "movielens_run": "spark",
    "movielens_ingested": "spark",
    "slice_ingested": "spark",
    "spark_cluster": "spark",
    "ray_two_nodes": "ray",
    "airflow_home": "airflow",
}


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(Path(str(it.fspath)).name, len(rank)))  # stable: order kept within a file
    for it in items:
        for name in sorted(set(getattr(it, "fixturenames", ())) & set(FIXTURE_MARKS)):
            it.add_marker(FIXTURE_MARKS[name])


@pytest.fixture(autouse=os.environ.get("RECFACTORY_TEST_TIER") == "fast")
def _fast_tier_starts_no_ray():
    """`make test-fast`: a test that leaves a Ray runtime behind is missing its `ray` marker."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()  # the next test is not blamed for it
        pytest.fail("this test started Ray: mark it `ray` (make test-fast runs without Spark, Ray and Airflow)")


@pytest.fixture(scope="session")
def spark():
    from recfactory.jobs.runtime.spark import get_spark

    s = get_spark("recfactory-tests")
    yield s
    s.stop()


@pytest.fixture()
def warehouse(tmp_path):
    return str(tmp_path / "warehouse")


@pytest.fixture(scope="session")
def movielens_run(spark, tmp_path_factory):
    """One MovieLens-100K ingest shared by the tests that only read its outputs."""
    from recfactory.jobs.runtime.job import run_job

    wh = str(tmp_path_factory.mktemp("ml") / "warehouse")
    ctx = run_job("ingest", ["--warehouse", wh, "--as-of", "1998-04-30"], spark=spark)
    shutil.copytree(wh, _pristine(wh))
    return wh, ctx


def _pristine(wh: str) -> Path:
    """Where `movielens_run` keeps its warehouse as the ingest left it."""
    return Path(wh).parent / "pristine"


@pytest.fixture(scope="session")
def movielens_slice():
    """`write(dest, users) -> (events_path, items_path)`: MovieLens-100K's events of users
    1..users with every item, as dest/events.parquet and dest/items.parquet (what ingest's
    `--dataset tables` reads): the tests whose subject is not the data run on a slice."""
    from recfactory.features.sources import movielens_100k

    src = movielens_100k()

    def write(dest: Path, users: int) -> tuple[Path, Path]:
        events, items = Path(dest) / "events.parquet", Path(dest) / "items.parquet"
        src.events[src.events["user_id"].astype(int) <= users].to_parquet(events, index=False)
        src.items.to_parquet(items, index=False)
        return events, items

    return write


@pytest.fixture(scope="session")
def movielens_ingested(movielens_run):
    """`copy(dest)`: a warehouse at dest holding only the MovieLens-100K ingest as of 1998-04-30 (as
    `movielens_run`'s was before the tests that read it wrote their own tables into it)."""
    return lambda dest: str(shutil.copytree(_pristine(movielens_run[0]), dest))


@pytest.fixture(scope="session")
def slice_ingested(spark, movielens_slice, tmp_path_factory):
    """`copy(dest)`: a warehouse at dest holding only the ingest, as of 1998-04-30, of the MovieLens
    slice (users 1..200, every item): for the job tests whose subject is not the data's size."""
    from recfactory.jobs.runtime.job import run_job

    base = tmp_path_factory.mktemp("slice")
    events, items = movielens_slice(base, 200)
    wh = base / "warehouse"
    run_job(
        "ingest",
        [
            "--warehouse",
            str(wh),
            "--as-of",
            "1998-04-30",
            "--dataset",
            "tables",
            "--events-path",
            str(events),
            "--items-path",
            str(items),
        ],
        spark=spark,
    )
    return lambda dest: str(shutil.copytree(wh, dest))


# -- real clusters on localhost (the cluster-mode tests) ---------------------------------------------
# A Spark standalone master + worker (pyspark's own `spark-class` launcher, what sbin/start-master.sh
# and start-worker.sh run) and a multi-node Ray cluster (`ray start --head` + `ray start --address`).
# Each process runs in its own process group, so teardown kills it with everything it spawned and
# nothing else (`ray stop` would also kill other Ray sessions of the user).

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + 10
    for p in reversed(procs):
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def _wait(cond, what: str, logs: list[Path], timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with contextlib.suppress(Exception):
            if cond():
                return
        time.sleep(1)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise RuntimeError(f"{what} not up after {timeout:.0f}s\n{tails}")


@dataclass
class SparkStandalone:
    master_url: str
    ui_url: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def alive_workers(self) -> int:
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as r:
            return int(json.load(r).get("aliveworkers", 0))


@contextlib.contextmanager
def spark_standalone(tmp: Path, cores: int = 2, memory: str = "6g"):
    """A standalone master and one worker on 127.0.0.1. Executors run this venv's Python."""
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_WORKER_DIR": str(tmp / "work"),
        "SPARK_LOG_DIR": str(tmp),
    }
    port, ui, wui = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    cluster = SparkStandalone(master_url, f"http://127.0.0.1:{ui}")
    logs = [tmp / "master.log", tmp / "worker.log"]
    try:
        cluster.procs.append(
            _spawn(
                [
                    str(spark_class),
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--webui-port",
                    str(ui),
                ],
                env,
                logs[0],
            )
        )
        cluster.procs.append(
            _spawn(
                [
                    str(spark_class),
                    "org.apache.spark.deploy.worker.Worker",
                    master_url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--webui-port",
                    str(wui),
                    "--work-dir",
                    str(tmp / "work"),
                ],
                env,
                logs[1],
            )
        )
        _wait(lambda: cluster.alive_workers() >= 1, "Spark standalone worker", logs)
        yield cluster
    finally:
        _stop(cluster.procs)


@dataclass
class RayCluster:
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def auth_header(self) -> dict[str, str]:
        """The cluster's token as an HTTP header (Ray reads RAY_AUTH_* once per process, so a test
        process cannot switch to it through the environment)."""
        return {"Authorization": f"Bearer {Path(self.env['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"}

    def runs_a_job(self) -> bool:
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(self.dashboard_url, headers=self.auth_header())
        job = client.submit_job(entrypoint="true")
        t0 = time.time()
        while time.time() - t0 < 60:
            status = client.get_job_status(job)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                return status == JobStatus.SUCCEEDED
            time.sleep(0.5)
        return False

    def alive_nodes(self) -> int:
        req = urllib.request.Request(f"{self.dashboard_url}/api/v0/nodes", headers=self.auth_header())
        with urllib.request.urlopen(req, timeout=5) as r:
            nodes = json.load(r)["data"]["result"]["result"]
        return sum(1 for n in nodes if n.get("state") == "ALIVE")


@contextlib.contextmanager
def ray_cluster(tmp: Path, nodes: int = 2, cpus_per_node: int = 1, object_store_mb: int = 400):
    """A head node (with the dashboard, for the Jobs API) and nodes-1 worker nodes, each a separate
    raylet with its own CPUs. Auth: Ray 2.60's token mode, with a token file of the test's own;
    ``env`` is what a client (or a job) needs to talk to the cluster."""
    tmp.mkdir(parents=True, exist_ok=True)
    token = tmp / "auth_token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_TMPDIR": str(tmp),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    cluster = RayCluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", env)
    common = [
        "--block",
        "--num-cpus",
        str(cpus_per_node),
        "--object-store-memory",
        str(object_store_mb << 20),
        "--node-ip-address",
        "127.0.0.1",
        "--disable-usage-stats",
    ]
    logs = [tmp / f"ray-node{i}.log" for i in range(nodes)]

    def own_ports() -> list[str]:
        # every node's agent defaults to HTTP port 52365: on one host the nodes would race for it,
        # and a head whose agent lost takes no job ("No available agent to submit job")
        return ["--dashboard-agent-listen-port", str(free_port())]

    try:
        cluster.procs.append(
            _spawn(
                [
                    str(BIN / "ray"),
                    "start",
                    "--head",
                    "--port",
                    str(gcs),
                    "--dashboard-host",
                    "127.0.0.1",
                    "--dashboard-port",
                    str(dash),
                    "--temp-dir",
                    str(tmp),
                    *common,
                    *own_ports(),
                ],
                env,
                logs[0],
            )
        )
        _wait(lambda: cluster.alive_nodes() >= 1, "Ray head", logs)
        for i in range(1, nodes):
            cluster.procs.append(
                _spawn(
                    [str(BIN / "ray"), "start", "--address", cluster.gcs_address, *common, *own_ports()], env, logs[i]
                )
            )
        _wait(lambda: cluster.alive_nodes() >= nodes, f"{nodes} Ray nodes", logs)
        # nodes are alive before the head's job agent takes submissions ("No available agent")
        _wait(cluster.runs_a_job, "the Ray Jobs API", logs)
        yield cluster
    finally:
        _stop(cluster.procs)


# Class-scoped: the clusters live as long as the tests that use them (an idle two-node Ray takes a
# tenth of this machine's CPU from every test that runs beside it).
@pytest.fixture(scope="class")
def spark_cluster(tmp_path_factory):
    with spark_standalone(tmp_path_factory.mktemp("spark")) as c:
        yield c


@pytest.fixture(scope="class")
def ray_two_nodes():
    # short path: Ray's socket names must fit in 107 characters. Two logical CPUs per node, as a
    # local Ray on this machine has: tasks that take a whole node's threads run with the same count.
    with tempfile.TemporaryDirectory(prefix="rf-raycl-") as d, ray_cluster(Path(d), nodes=2, cpus_per_node=2) as c:
        yield c


# -- Airflow -------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def make_airflow_home(home: Path) -> dict[str, str]:
    """A fresh Airflow deployment: its own home and SQLite metadata DB, warehouse <home>/wh. (One
    warehouse per deployment: an asset's name, recfactory.<table>, is bound to its first URI.)
    Returns the environment its commands run with."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "RECFACTORY_WAREHOUSE": str(home / "wh"),
        "RECFACTORY_START_DATE": "1998-04-01",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SPARK_LOCAL_IP": "127.0.0.1",
        # the tests' run confs point ingest at their slice (a deployment allows it explicitly)
        "RECFACTORY_RUN_CONF_ALLOW": "ingest.events_path,ingest.items_path",
    }
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return env


@pytest.fixture(scope="session")
def airflow_home():
    """`make_airflow_home(home)` → the environment of a fresh Airflow deployment under home."""
    return make_airflow_home


# -- the report in a real browser ---------------------------------------------------------------------


def open_in_chromium(page: Path, screenshot: Path) -> dict:
    """Open a local HTML page in headless Chromium (Debian's package, driven by Playwright, which
    downloads no browser) and report what a reader would hit: console errors and warnings, uncaught
    page errors, failed requests (a missing PNG is one), images that did not decode, the section
    headings. Saves a full-page screenshot."""
    import shutil

    from playwright.sync_api import sync_playwright

    exe = os.environ.get("RECFACTORY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Chromium not found: `make test` installs Debian's chromium package (or set RECFACTORY_CHROMIUM)"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1300, "height": 900})
        tab.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
        response = tab.goto(page.resolve().as_uri(), wait_until="load")
        info = tab.evaluate("""() => ({
            images: document.images.length,
            broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
            sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
            headings: Array.from(document.querySelectorAll('section > h2')).map(h => h.textContent),
            missing: Array.from(document.querySelectorAll('.missing')).map(e => e.textContent),
            title: document.title})""")
        tab.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return {**info, "problems": problems, "ok": response is not None and response.ok}


@pytest.fixture()
def chromium():
    """`open_in_chromium(page, screenshot)`."""
    return open_in_chromium
