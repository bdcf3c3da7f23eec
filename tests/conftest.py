"""Shared fixtures: one real local Spark + Delta session for the whole run, fresh warehouses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# the suite's helper modules (pytest runs with --import-mode=importlib: tests/ is not on sys.path)
sys.path.insert(0, str(Path(__file__).parent))
from localclusters import BIN, ray_cluster, spark_standalone  # noqa: E402

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# One shuffle partition (and default parallelism): the suite's data is tiny and its two processes
# already fill both cores, so more tasks per stage are only overhead: measured in one process,
# the cross statistics', sequences' and sessions' tests 241 -> 207 CPU s, the samples' and
# similarity's 465 -> 401. Partition independence is tested where it is the subject, with the
# partition counts set explicitly (similarity, samples, retrieval pairs, synthetic, SIDs).
os.environ.setdefault("RECFACTORY_SHUFFLE_PARTITIONS", "1")
os.environ.setdefault("RECFACTORY_DRIVER_MEMORY", "3g")
# Every JVM of the run (the session's Spark, each spark-submit of the Airflow tests, the standalone
# cluster's master, worker and executors) is short-lived and works on tiny data: the C1 JIT only and
# the serial collector halve its CPU time (measured on `build_sequences` under spark-submit: 78 s →
# 30 s of CPU); interpreted expressions instead of whole-stage code generation (Janino compiles every
# new query shape in every new JVM) and one scan split per few hundred small files take another
# quarter off (`build_cross_stats` in a fresh process: 69 s → 47 s). Spark's SQL settings are read
# from `spark.*` JVM system properties, so they reach spark-submit's drivers too. Test-only: production
# JVMs, and `make bench` (BENCH_RUN set), keep Spark's and the JVM's defaults. Not verifying the
# bytecode of the classes a JVM loads from its jars (Spark's, Delta's, from PyPI and Maven Central;
# the JDK's own are never verified) takes a fifth off each short JVM's start: a Delta write and
# read under spark-submit, 22.7 s → 18.4 s of CPU, measured (the suite starts about a hundred JVMs).
TEST_JVM_OPTIONS = (
    "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dspark.sql.codegen.wholeStage=false "
    "-Dspark.sql.codegen.factoryMode=NO_CODEGEN -Dspark.sql.files.maxPartitionBytes=1073741824 "
    "-XX:+UnlockDiagnosticVMOptions -XX:-BytecodeVerificationRemote"
)
if not os.environ.get("BENCH_RUN"):
    os.environ.setdefault("JAVA_TOOL_OPTIONS", TEST_JVM_OPTIONS)
    # Two test processes share two cores: a native thread pool per process (LightGBM, faiss, torch,
    # OpenBLAS — in the test process, Spark's Python workers, Ray's workers, every subprocess) larger
    # than the one core it gets spins at every barrier: LightGBM's 30 trees on 20,000 rows take 0.8 s
    # on one thread and 5.5 s on two beside another busy process. One thread each (results do not
    # depend on it; the tests that compare thread counts pass them explicitly). `make bench` keeps
    # every core.
    for var in ("RECFACTORY_TASK_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
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
    "test_alignment.py",
    "test_samples.py",
    "test_backfill.py",
    "test_sids_job.py",
    "test_gbdt_jobs.py",
    "test_graph_embeddings.py",
    "test_lightgcn.py",
    "test_cli.py",
    "test_point_in_time.py",
    "test_replay.py",
    "test_cross_stats.py",
    "test_hostile_input.py",
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
    from recfactory.jobs.runtime.spark import driver_java_options, get_spark

    # The test process's own JVM runs every in-process job of its files for the whole suite: unlike
    # the short-lived JVMs above it gains from C2 (the default tiered JIT); measured on the cross
    # statistics' and sequences' tests in one process, 113-117 s with C1 only, 96-97 s with C2.
    extra = {"spark.driver.extraJavaOptions": f"{driver_java_options()} -XX:TieredStopAtLevel=4"}
    s = get_spark("recfactory-tests", extra)
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


# -- real clusters on localhost (the cluster-mode tests: localclusters.py) ---------------------------
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
