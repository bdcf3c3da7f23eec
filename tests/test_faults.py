"""Fault tolerance on real processes: a job SIGKILLed while it writes (data files on disk, commit
not yet made; or between two of its tables' commits) leaves every table readable at its last
good version, and a rerun converges to the uninterrupted result; jobs writing different tables
concurrently do not conflict."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark]

D = "1998-04-30"


def _start(
    job: str, wh: str, *args: str, as_of: str = D, env: dict[str, str] | None = None, own_group: bool = False
) -> subprocess.Popen:
    """The job for ``as_of`` as a subprocess (``env`` added to this process's; ``own_group``: in a process
    group of its own, so that what it leaves behind can be killed as a group)."""
    full = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **(env or {})}
    full.pop("RECFACTORY_RUN_ID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "recfactory", job, "--warehouse", wh, "--as-of", as_of, *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_group,
    )


def _files(table: Path) -> set[str]:
    return {str(p) for p in table.rglob("*.parquet")} if table.exists() else set()


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 600) -> bool:
    """SIGKILL the job (its whole process group: the JVM too) as soon as cond() holds."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if cond():
            _kill_tree(proc)
            return True
        time.sleep(0.02)
    _kill_tree(proc)
    raise AssertionError("the kill condition never held")


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    # the Python process first: were its JVM to die first, the job would see Spark fail and record
    # the attempt as failed (a `_runs` row needs no JVM) — a clean failure, not the kill under test
    try:
        parent = psutil.Process(proc.pid)
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in [parent, *children]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def _committed(table: Path) -> bool:
    return any((table / "_delta_log").glob("*.json"))


def _snapshot(wh: Path, tables) -> dict[str, tuple[int, list]]:
    from deltalake import DeltaTable

    out = {}
    for t in tables:
        if _committed(wh / t):
            dt_ = DeltaTable(str(wh / t))
            df = dt_.to_pandas()
            run_specific = [c for c in df if c == "run_id" or c.endswith("_seconds")]  # ids, timings
            out[t] = (
                dt_.version(),
                sorted(map(str, df.drop(columns=run_specific).astype(str).itertuples(index=False))),
            )
    return out


USERS = 200  # a MovieLens slice (users 1..200, every item): the faults, not the data, are under test


def _slice_args(base: Path) -> list[str]:
    """ingest's arguments for the slice (written under base by `ingested`)."""
    return [
        "--dataset",
        "tables",
        "--events-path",
        str(base / "events.parquet"),
        "--items-path",
        str(base / "items.parquet"),
    ]


@pytest.fixture(scope="module")
def ingested(slice_ingested, movielens_slice, tmp_path_factory):
    """A warehouse holding only the slice's ingest as of D (each test copies it), and the slice's
    raw files under base (what a rerun of ingest reads: `_slice_args`)."""
    base = tmp_path_factory.mktemp("faults")
    movielens_slice(base, USERS)
    return Path(slice_ingested(base / "src")), base


def test_sigkill_mid_write_keeps_tables_readable_and_a_rerun_converges(ingested, spark):
    src, base = ingested
    from recfactory.jobs.runtime.job import run_job

    tables = ("item_similarity", "similarity_cap_report")  # two commits, in this order
    args = ("--algos", "swing", "--no-evaluate")
    # the uninterrupted result (in this process: the same job, the same rows)
    ref = base / "ref"
    shutil.copytree(src, ref)
    run_job("build_similarity", ["--warehouse", str(ref), "--as-of", D, *args], spark=spark)
    expected = _snapshot(ref, tables)

    wh = base / "killed"
    shutil.copytree(src, wh)
    # 1) killed while the first table's data files are being written (before its commit)
    proc = _start("build_similarity", str(wh), *args)
    first = wh / "item_similarity"
    assert _kill_when(proc, lambda: len(_files(first)) > 0 and not _committed(first))
    assert _snapshot(wh, tables) == {}  # nothing committed, nothing readable half-done
    # 2) killed between two of the job's commits: item_similarity committed, the others not yet
    proc = _start("build_similarity", str(wh), *args)
    assert _kill_when(proc, lambda: (first / "_delta_log" / "00000000000000000000.json").exists())
    mid = _snapshot(wh, tables)
    assert mid["item_similarity"] == expected["item_similarity"]  # the commit is whole
    # 3) the rerun of the date converges to the uninterrupted result, one copy of each partition
    proc = _start("build_similarity", str(wh), *args)
    assert proc.wait(timeout=900) == 0, proc.stdout.read()[-3000:]
    log = proc.stdout.read()
    assert "never finished" in log and "it left item_similarity v0" in log, log[-3000:]  # found by the next run
    got = _snapshot(wh, tables)
    for t in tables:
        assert got[t][1] == expected[t][1], t
    from deltalake import DeltaTable

    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    sim = runs[runs["job"] == "build_similarity"]
    assert list(sim["status"]) == ["succeeded"]  # killed runs leave no row, never a duplicate
    # ... but both killed attempts are on record, with what each left behind
    from recfactory.jobs.runtime.attempts import format_history, history

    h = history(str(wh), job="build_similarity")
    assert list(h["status"]) == ["succeeded", "abandoned", "abandoned"]
    assert [list(o) for o in h["outputs"][1:]] == [["item_similarity v0"], []]
    assert h["run_id"].iloc[0] == sim["run_id"].iloc[0]
    assert "partial: item_similarity v0" in format_history(h)
    # 4) a later rerun killed after its first commit: the newest version is its partial write, but a
    #    trainer reading the date (recfactory.tables) gets the published one, at its exact version
    from recfactory import tables

    published = tables.read(str(wh), "item_similarity", D)
    assert (published.version, published.run_id) == (1, sim["run_id"].iloc[0])
    proc = _start("build_similarity", str(wh), *args)
    assert _kill_when(proc, lambda: (first / "_delta_log" / "00000000000000000002.json").exists())
    again = tables.read(str(wh), "item_similarity", D)
    assert again == published and DeltaTable(str(first)).version() == 2
    df = again.to_pandas()
    run_specific = [c for c in df if c == "run_id" or c.endswith("_seconds")]
    assert (
        sorted(map(str, df.drop(columns=run_specific).astype(str).itertuples(index=False)))
        == expected["item_similarity"][1]
    )
    with pytest.raises(tables.NotPublishedError, match="run build_similarity"):
        tables.read(str(wh), "item_similarity", "1998-01-01")
    # ... and so does every reader inside the factory (the next job, the report): the killed
    # attempt's v2 is the newest version of item_similarity, the factory reads v1
    from recfactory.jobs.runtime.delta_io import Warehouse
    from recfactory.jobs.runtime.job import RunContext
    from recfactory.jobs.runtime.params import JobParams

    ctx = RunContext(spark, Warehouse(spark, str(wh)), JobParams(warehouse=str(wh), as_of=D), job="downstream")
    read = ctx.read("item_similarity")
    assert [(i.name, i.version) for i in ctx.inputs if i.name != "_runs"] == [("item_similarity", 1)]
    assert (
        sorted(map(str, read.toPandas().drop(columns=run_specific).astype(str).itertuples(index=False)))
        == expected["item_similarity"][1]
    )


def test_jobs_writing_different_tables_run_concurrently(ingested):
    from deltalake import DeltaTable

    src, base = ingested
    wh = base / "concurrent"
    shutil.copytree(src, wh)
    procs = [_start("build_sessions", str(wh)), _start("build_sequences", str(wh))]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stdout.read()[-3000:]
    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    assert set(runs.loc[runs["status"] == "succeeded", "job"]) >= {"build_sessions", "build_sequences"}
    assert DeltaTable(str(wh / "sessions")).version() == 0 and DeltaTable(str(wh / "user_sequences")).version() == 0


def test_sigkill_of_ingest_between_its_commits_then_the_rerun_quarantines_nothing_as_duplicate(ingested):
    """Ingest dedups against earlier loads. Killed after events_clean is committed but before the
    catalog is, its rerun of the same date must not see that partial load as history: the same
    clean events, one copy, no DUPLICATE quarantine rows, one `_runs` row."""
    from deltalake import DeltaTable

    src, base = ingested
    wh = base / "ingest-killed"
    proc = _start("ingest", str(wh), *_slice_args(base))
    assert _kill_when(proc, lambda: _committed(wh / "events_clean") and not _committed(wh / "items"))
    mid = _snapshot(wh, ("events_clean", "events_quarantine", "items"))
    assert set(mid) <= {"events_clean", "events_quarantine"} and mid["events_clean"][0] == 0
    proc = _start("ingest", str(wh), *_slice_args(base))
    assert proc.wait(timeout=900) == 0, proc.stdout.read()[-3000:]
    tables = ("events_clean", "events_quarantine", "items", "items_quarantine")
    got, expected = _snapshot(wh, tables), _snapshot(src, tables)
    for t in tables:
        assert got[t][1] == expected[t][1], t
    assert DeltaTable(str(wh / "events_quarantine")).to_pandas().empty
    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    assert list(runs["job"]) == ["ingest"] and list(runs["status"]) == ["succeeded"]


LEAN = ("--keys", "user=user_id,item=item_id,category=category", "--windows", "7d,all")
SAMPLES = ("--negative-rate", "0.5", "--test-days", "30", "--val-days", "0", *LEAN)
GRAPH = ("--methods", "deepwalk", "--walks-per-node", "2", "--walk-length", "10", "--epochs", "1", "--no-evaluate")


@pytest.fixture(scope="module")
def prepared(ingested, spark):
    """The slice's ingest plus the tables the later jobs read: Swing similarity, content
    embeddings, lean training samples (each test copies it)."""
    from recfactory.jobs.runtime.job import run_job

    src, base = ingested
    prep = base / "prepared"
    shutil.copytree(src, prep)
    common = ["--warehouse", str(prep), "--as-of", D]
    run_job("build_similarity", [*common, "--algos", "swing", "--no-evaluate"], spark=spark)
    run_job("build_content_embeddings", common, spark=spark)
    run_job("build_sessions", common, spark=spark)
    run_job("build_graph_embeddings", [*common, *GRAPH], spark=spark)
    run_job("build_training_samples", [*common, *SAMPLES], spark=spark)
    return prep


# Every multi-table job not killed by the tests above, killed right after one of its commits (the
# runtime's failpoint) with another of its tables still to write, in one warehouse in this order:
# train_gbdt and align_embeddings then run after killed runs of the jobs whose tables they read, and
# must read the published versions.
KILLED_BETWEEN_COMMITS = (
    ("build_training_samples", "training_samples", SAMPLES),
    ("build_content_embeddings", "content_embeddings", ()),
    ("train_gbdt", "gbdt_models", ("--num-trees", "10")),
    ("build_graph_embeddings", "item_graph", GRAPH),
    ("align_embeddings", "aligned_embeddings", ("--epochs", "1", "--workers", "1")),
)


@pytest.mark.ray
def test_sigkill_of_every_multi_table_job_between_its_commits_publishes_none_of_its_tables(prepared, tmp_path):
    """Killed between two commits, a run leaves a new version of some of its tables next to old
    versions of others: the published versions of the date stay those of the last succeeded run
    (or none), the attempt is on record with the version it left, and a job reading a table whose
    newest version is such an orphan reads the published one."""
    from deltalake import DeltaTable

    from recfactory import tables
    from recfactory.jobs.runtime.attempts import history
    from recfactory.jobs.runtime.job import KILL_AFTER_COMMIT, load_job

    wh = tmp_path / "wh"
    shutil.copytree(prepared, wh)
    published = {}
    for job, table, args in KILLED_BETWEEN_COMMITS:
        outputs = load_job(job).outputs
        before = {t: tables.read(str(wh), t, D) for t in outputs if _published(wh, t)}
        published.update(before)
        proc = _start(job, str(wh), *args, env={KILL_AFTER_COMMIT: table}, own_group=True)
        out = proc.communicate(timeout=900)[0]
        if _group_alive(proc.pid):  # a straggler of its local Ray
            os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL, f"{job}: {out[-3000:]}"
        left = DeltaTable(str(wh / table)).version()
        unwritten = [
            t for t in outputs if t != table and _version(wh, t) == (before[t].version if t in before else None)
        ]
        assert unwritten, f"{job}: the kill after {table} came after its last commit"
        for t in outputs:  # as before the run: the orphan version is never what a reader gets
            if t in before:
                got = tables.read(str(wh), t, D)
                assert (got.version, got.run_id) == (before[t].version, before[t].run_id), (job, t)
            else:
                with pytest.raises(tables.NotPublishedError):
                    tables.read(str(wh), t, D)
        h = history(str(wh), job=job)
        named = list(h["outputs"].iloc[0])  # the versions the attempt left
        assert h["status"].iloc[0] == "running" and f"{table} v{left}" in named, (job, named)
        assert {x.split(" v")[0] for x in named} <= set(outputs) - set(unwritten), (job, named)
    # the (orphan) commits of the readers pinned the published versions of their inputs, not the newest
    for reader, table in (("gbdt_models", "training_samples"), ("aligned_embeddings", "content_embeddings")):
        meta = json.loads(DeltaTable(str(wh / reader)).history(1)[0]["userMetadata"])
        pinned = {i["name"]: i["version"] for i in meta["inputs"]}
        assert pinned[table] == published[table].version < DeltaTable(str(wh / table)).version(), (reader, table)


def _published(wh: Path, table: str) -> bool:
    from recfactory import tables

    try:
        tables.read(str(wh), table, D)
    except (tables.NotPublishedError, FileNotFoundError):
        return False
    return True


def _version(wh: Path, table: str) -> int | None:
    from deltalake import DeltaTable

    return DeltaTable(str(wh / table)).version() if _committed(wh / table) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.ray
def test_sigkill_of_build_sids_after_its_new_codebooks_keeps_the_ids_a_rerun_assigns(ingested, prepared, spark):
    """build_sids publishes a new generation's codebooks first, then the IDs. Killed between the two,
    the rerun must not mistake the orphan codebooks for a generation in use: it refits and assigns
    exactly the uninterrupted run's IDs, with one copy of the codebooks."""
    from recfactory.jobs.runtime.job import run_job

    _, base = ingested
    prep = prepared
    args = (
        "--embeddings",
        "content_embeddings",
        "--codebook-sizes",
        "16,16,16",
        "--sample-size",
        "1000",
        "--gate-min-recall-lift",
        "0",
    )
    tables = ("sid_codebooks", "semantic_ids", "sid_lookup", "sid_features", "sid_quarantine", "sid_metrics")
    ref, wh = base / "sids-ref", base / "sids-killed"
    shutil.copytree(prep, ref)
    shutil.copytree(prep, wh)
    run_job("build_sids", ["--warehouse", str(ref), "--as-of", D, *args], spark=spark)  # uninterrupted
    expected = _snapshot(ref, tables)
    proc = _start("build_sids", str(wh), *args)
    assert _kill_when(proc, lambda: _committed(wh / "sid_codebooks"))
    mid = _snapshot(wh, tables)
    assert set(mid) == {"sid_codebooks"} and mid["sid_codebooks"] == expected["sid_codebooks"]
    proc = _start("build_sids", str(wh), *args)
    assert proc.wait(timeout=900) == 0, proc.stdout.read()[-3000:]
    got = _snapshot(wh, tables)
    for t in tables:
        assert got[t][1] == expected[t][1], t
    assert got["sid_codebooks"][0] == 1  # the orphan version replaced, not added to


def test_two_runs_of_the_same_date_at_once_publish_one_consistent_set_and_other_dates_run_alongside(ingested):
    """An impatient manual rerun next to a retry: two build_similarity runs of the same date, with
    different --top-k, at once — beside a run of the previous date. The other date succeeds. A write
    that loses Delta's optimistic concurrency on a partition is redone against the new snapshot, so
    both usually succeed; the date's publication is the run that finished last, and every table of
    the date, as a trainer and as the next job read it, comes from that one run: never a mix. (A
    run whose retries run out fails naming the concurrent writer and publishes nothing.)"""
    from deltalake import DeltaTable

    from recfactory import tables
    from recfactory.jobs.runtime.publication import read_arrow

    src, base = ingested
    wh = base / "same-date"
    shutil.copytree(src, wh)
    outs = ("item_similarity", "similarity_cap_report")
    args = ("--algos", "swing", "--no-evaluate")
    procs = {k: _start("build_similarity", str(wh), *args, "--top-k", k) for k in ("5", "9")}
    other = _start("build_similarity", str(wh), *args, as_of="1998-04-29")
    assert other.wait(timeout=900) == 0, other.stdout.read()[-3000:]
    codes = {k: p.wait(timeout=900) for k, p in procs.items()}
    logs = {k: p.stdout.read() for k, p in procs.items()}
    assert 0 in codes.values(), logs
    for k, c in codes.items():
        if c != 0:
            assert "another writer committed to" in logs[k] and "publishes nothing" in logs[k], logs[k][-3000:]
    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    pair = runs[(runs["as_of"].astype(str) == D) & (runs["job"] == "build_similarity")]
    assert len(pair) == 2 and pair["started_at"].max() < pair["finished_at"].min()  # they did overlap
    ok = pair[pair["status"] == "succeeded"].sort_values("finished_at")
    winner = ok.iloc[-1]
    top_k = json.loads(winner["params"])["top_k"]
    pubs = {t: tables.read(str(wh), t, D) for t in outs}
    assert {p.run_id for p in pubs.values()} == {winner["run_id"]}
    named = {o["name"]: int(o["version"]) for o in winner["outputs"]}
    assert {t: p.version for t, p in pubs.items()} == {t: named[t] for t in outs}
    sims = pubs["item_similarity"].to_pandas()
    assert sims["n_neighbors"].max() == top_k  # the winner's rows, not the loser's
    inside = read_arrow(str(wh), "item_similarity").to_pandas()
    assert inside.loc[inside["ds"].astype(str) == D, "n_neighbors"].max() == top_k
    assert len(inside[inside["ds"].astype(str) == "1998-04-29"]) > 0  # the other date, published beside it
