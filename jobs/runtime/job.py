"""A job: resolve params → read inputs at pinned versions → transform → check → write + manifest.

``Job`` subclasses declare their name, parameter model, description and output tables, and
implement ``run(ctx)``. The runner (``run_job``) owns everything around it: parsing, the Spark
session, the run id, the manifest carried by every commit and the row in the ``_runs`` table —
written whether the run succeeded or failed, so ``_runs`` is the whole history of attempts.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

from recfactory.features.instants import day_end
from recfactory.jobs.runtime.delta_io import CommitProperties, InputRef, OutputRef, Warehouse
from recfactory.jobs.runtime.env import RUNS_TABLE, install_log_redaction, redact, redact_exception
from recfactory.jobs.runtime.params import JobParams, params_hash, parse_params
from recfactory.jobs.runtime.run_log import write_run_row

log = logging.getLogger("recfactory")


# Job name → "module:Class". Job names are the file names under jobs/.
JOBS: dict[str, str] = {
    "ingest": "recfactory.jobs.ingest:IngestJob",
    "generate_synthetic": "recfactory.jobs.generate_synthetic:GenerateSyntheticJob",
    "build_sequences": "recfactory.jobs.build_sequences:BuildSequencesJob",
    "build_sessions": "recfactory.jobs.build_sessions:BuildSessionsJob",
    "build_cross_stats": "recfactory.jobs.build_cross_stats:BuildCrossStatsJob",
    "build_training_samples": "recfactory.jobs.build_training_samples:BuildTrainingSamplesJob",
    "build_similarity": "recfactory.jobs.build_similarity:BuildSimilarityJob",
    "build_graph_embeddings": "recfactory.jobs.build_graph_embeddings:BuildGraphEmbeddingsJob",
    "build_retrieval_pairs": "recfactory.jobs.build_retrieval_pairs:BuildRetrievalPairsJob",
    "build_content_embeddings": "recfactory.jobs.build_content_embeddings:BuildContentEmbeddingsJob",
    "align_embeddings": "recfactory.jobs.align_embeddings:AlignEmbeddingsJob",
    "train_gbdt": "recfactory.jobs.train_gbdt:TrainGBDTJob",
    "build_gbdt_leaves": "recfactory.jobs.build_gbdt_leaves:BuildGBDTLeavesJob",
    "build_sids": "recfactory.jobs.build_sids:BuildSidsJob",
    "report": "recfactory.jobs.report:ReportJob",
}


class QualityGateError(RuntimeError):
    """A quality check failed: nothing after it is published."""


class ConcurrentRunError(RuntimeError):
    """Another run committed to one of this run's tables first (Delta's optimistic concurrency):
    this run stops and publishes nothing."""


# exit status of a job process whose quality gate failed (nothing published): not worth a retry
GATE_EXIT_CODE = 3


def _new_run_id() -> str:
    """A fresh id, or the one a scheduler chose (RECFACTORY_RUN_ID, consumed by the first run of the
    process, so it can find this run's `_runs` row and output versions)."""
    given = os.environ.pop("RECFACTORY_RUN_ID", "")
    if given:
        if not (len(given) == 32 and all(c in "0123456789abcdef" for c in given)):
            raise ValueError(f"RECFACTORY_RUN_ID must be 32 lowercase hex characters, got {given!r}")
        return given
    return uuid.uuid4().hex


P = TypeVar("P", bound=JobParams)


class Job(Generic[P]):
    """A job whose parameters are a ``P`` (``class BuildSessionsJob(Job[SessionParams])``: its
    ``run`` gets a ``RunContext[SessionParams]``, whose ``params`` are typed)."""

    name: ClassVar[str]
    Params: ClassVar[type[JobParams]] = JobParams
    description: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[tuple[str, ...]] = ()  # warehouse tables read (the DAG's dependencies)

    @classmethod
    def input_tables(cls, params: JobParams) -> tuple[str, ...]:
        """The warehouse tables this run reads (its own outputs excluded); params may choose them."""
        return cls.inputs

    def run(self, ctx: RunContext[P]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def load_job(name: str) -> type[Job]:
    if name not in JOBS:
        raise KeyError(f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}")
    module, cls = JOBS[name].split(":")
    return getattr(importlib.import_module(module), cls)


@lru_cache(maxsize=1)
def code_version() -> str:
    from recfactory import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def as_of_end(as_of: dt.date) -> dt.datetime:
    """Exclusive upper bound of the logical date: as_of + 1 day, 00:00 UTC, as an aware instant
    (hand it to Spark with `features.instants.ts_lit`, never `F.lit`)."""
    return day_end(as_of)


@dataclass
class RunContext(Generic[P]):
    spark: Any
    warehouse: Warehouse
    params: P
    job: str
    run_id: str = field(default_factory=_new_run_id)
    started: float = field(default_factory=time.time)
    inputs: list[InputRef] = field(default_factory=list)
    outputs: list[OutputRef] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    # a replay's recorded Delta input versions, by path, in the order the run read them: tables with
    # no publication, `_runs` (which publications resolve against) and paths are read at exactly these
    pins: dict[str, list[int]] = field(default_factory=dict)
    _runs: list[dict] | None = field(default=None, repr=False)  # `_runs` as the run's first read saw it
    _publications: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def as_of(self) -> dt.date:
        return self.params.as_of

    @property
    def cutoff(self) -> dt.datetime:
        return as_of_end(self.params.as_of)

    # inputs
    def publication(self, name: str):
        """The table's publication (``publication.resolve``), from `_runs` as this run first saw it."""
        from recfactory.jobs.runtime.publication import resolve, runs_at

        if name not in self._publications:
            if self._runs is None:
                # pinned and recorded as an input: a replay resolves the same publications
                self._runs, version = runs_at(self.warehouse.read_root, self._pin(self.warehouse.path(RUNS_TABLE)))
                if version is not None:
                    self.inputs.append(InputRef(RUNS_TABLE, self.warehouse.path(RUNS_TABLE), "delta", version=version))
            self._publications[name] = resolve(self.warehouse.read_root, name, self._runs)
        return self._publications[name]

    def _pin(self, path: str) -> int | None:
        versions = self.pins.get(path)
        return versions.pop(0) if versions else None

    def has(self, name: str) -> bool:
        """The table exists and something of it is readable: published, or written outside the factory."""
        from recfactory.jobs.runtime.publication import NotPublishedError

        if not self.warehouse.exists(name):
            return False
        try:
            self.publication(name)
        except NotPublishedError:
            return False
        return True

    def read(self, name: str, version: int | None = None, timestamp: str | None = None):
        """The table as published (``publication``): at the newest version a succeeded run named, each
        date whose rows there an unpublished write replaced read at its publisher's version instead;
        a table no factory run wrote at its newest version. An explicit version or timestamp pins it."""
        from pyspark.sql import functions as F

        pub = self.publication(name) if version is None and timestamp is None else None
        if pub is None and version is None and timestamp is None:
            version = self._pin(self.warehouse.path(name))
        df, ref = self.warehouse.read(name, version=pub.version if pub else version, timestamp=timestamp)
        self.inputs.append(ref)
        if pub is None or not pub.dirty or "ds" not in df.columns:
            return df
        log.warning(
            "%s: the rows of %s are read at their publishing runs' versions (an unpublished write "
            "replaced them in v%d)",
            name,
            ", ".join(sorted(pub.dirty)),
            pub.version,
        )
        out = None
        for v, keep, dates in pub.plan():
            if v == pub.version:
                part = df
            else:
                part, r = self.warehouse.read(name, version=v)
                self.inputs.append(r)
            part = part.where(F.col("ds").isin(dates) if keep else ~F.col("ds").isin(dates))
            out = part if out is None else out.unionByName(part, allowMissingColumns=True)
        return out

    def read_path(self, path: str, **kw):
        if kw.get("version") is None and kw.get("timestamp") is None:
            kw["version"] = self._pin(path)
        df, ref = self.warehouse.read_path(path, **kw)
        self.inputs.append(ref)
        return df

    def record_input(self, ref: InputRef) -> None:
        self.inputs.append(ref)

    def checkpoint_name(self, suffix: str = "") -> str:
        """A training run's name under ``_checkpoints``: the date, and a key of the params and of
        every input version read so far (data, not the run log) — a rerun of the same inputs resumes
        its checkpoints, a rerun after an upstream change trains afresh."""
        import hashlib
        import json

        key = hashlib.sha256(
            json.dumps(
                [
                    params_hash(self.params),
                    sorted((r.name, r.version, r.fingerprint) for r in self.inputs if r.name != RUNS_TABLE),
                ],
                default=str,
            ).encode()
        ).hexdigest()[:16]
        return f"{self.as_of.isoformat()}-{key}{suffix}"

    # outputs
    def manifest(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job,
            "as_of": self.as_of.isoformat(),
            "params": redact(self.params.to_json_dict()),
            "params_hash": params_hash(self.params),
            "code_version": code_version(),
            "seed": self.params.seed,
            "inputs": [redact(r.to_dict()) for r in self.inputs],
            "row_counts": dict(self.row_counts),
            "metrics": dict(self.metrics),
            "notes": redact(dict(self.notes)),
        }

    def write(
        self, df, name: str, mode: str = "partition", partition_by=("ds",), where: dict[str, str] | None = None
    ) -> OutputRef:
        from recfactory.jobs.runtime.delta_io import is_write_conflict

        commit = CommitProperties(run_id=self.run_id, user_metadata=self.manifest())
        try:
            ref = self.warehouse.write(
                df, name, commit, ds=self.as_of, partition_by=partition_by, mode=mode, where=where
            )
        except Exception as e:
            if not is_write_conflict(e):
                raise
            raise ConcurrentRunError(self._conflict_message(name)) from e
        self.outputs.append(ref)
        log.info("wrote %s v%d (%d rows)", name, ref.version, ref.rows)
        _failpoint(name)
        return ref

    def _conflict_message(self, name: str) -> str:
        from recfactory.jobs.runtime.attempts import history

        try:
            h = history(self.warehouse.root, as_of=self.as_of, job=self.job)
            others = [
                f"run {r.run_id[:8]} ({r.status}, started {r.started_at:%H:%M:%S} UTC)"
                for r in h.itertuples()
                if r.run_id != self.run_id and r.status in ("running", "succeeded")
            ]
        except Exception:  # noqa: BLE001 - the message only
            others = []
        return (
            f"{self.job} for {self.as_of}: another writer committed to {name} while this run wrote it"
            + (f" ({', '.join(others[:3])} of the same job and date)" if others else "")
            + ". This run stops and publishes nothing; the date's publication is the other run's "
            "(rerun once it has finished if this one's parameters are wanted)."
        )

    def upsert(self, df, name: str, key: str, partition: str = "ds", prefer: str | None = None):
        """One MERGE commit of `df` into `name` on (partition, key) (see `Warehouse.upsert`)."""
        commit = CommitProperties(run_id=self.run_id, user_metadata=self.manifest())
        ref = self.warehouse.upsert(df, name, commit, key=key, partition=partition, prefer=prefer)
        self.outputs.append(ref.output(self.as_of.isoformat()))  # the run's date, as its other outputs
        log.info("merged into %s v%d (%d inserted, %d updated)", name, ref.version, ref.inserted, ref.updated)
        _failpoint(name)
        return ref


KILL_AFTER_COMMIT = "RECFACTORY_KILL_AFTER_COMMIT"


def _failpoint(table: str) -> None:
    """The fault tests' kill between two commits of a run: with ``RECFACTORY_KILL_AFTER_COMMIT`` set
    to a table's name, the process SIGKILLs itself (its JVM and other children first, so nothing
    of the run notices and records anything) right after committing that table. Unset, nothing."""
    if os.environ.get(KILL_AFTER_COMMIT) != table:
        return
    import signal

    import psutil

    log.warning("%s=%s: killing this run after that commit", KILL_AFTER_COMMIT, table)
    for child in psutil.Process().children(recursive=True):
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def run_job(name: str, argv: list[str] | None = None, spark=None) -> RunContext:
    """Parse flags, run the job, record the run. Returns the context (outputs, counts, metrics)."""
    job_cls = load_job(name)
    params = parse_params(
        job_cls.Params,
        list(sys.argv[1:] if argv is None else argv),
        prog=f"recfactory {name}",
        description=job_cls.description,
    )
    return execute(job_cls, cast(JobParams, params), spark=spark)


def _record_start(ctx: RunContext, job_cls: type[Job]) -> None:
    """The attempt on record before anything is read or written (``attempts``); an unfinished
    earlier attempt of the same job and date is named, with what it left behind."""
    from recfactory.jobs.runtime.attempts import previous_abandoned, record_start

    root = ctx.warehouse.root
    prev = previous_abandoned(root, job_cls.name, ctx.as_of, ctx.run_id)
    record_start(
        root,
        ctx.run_id,
        job_cls.name,
        ctx.as_of,
        params_hash(ctx.params),
        code_version(),
        tuple(job_cls.outputs),
        ctx.started,
    )
    for r in prev.itertuples():
        log.warning(
            "an earlier attempt of %s for %s never finished (run %s, started %s): abandoned%s",
            job_cls.name,
            ctx.as_of,
            r.run_id,
            r.started_at,
            f"; it left {', '.join(r.outputs)}" if len(r.outputs) else ", nothing written",
        )


def execute(
    job_cls: type[Job],
    params: JobParams,
    spark=None,
    warehouse: Warehouse | None = None,
    pins: dict[str, list[int]] | None = None,
) -> RunContext:
    """Run the job and record the run. ``warehouse`` and ``pins``: a replay's (``runtime.replay``)."""
    from recfactory.jobs.runtime.spark import get_spark

    # libraries log at WARNING (py4j logs every transparently retried pooled connection at INFO, with
    # a traceback); recfactory's own loggers at RECFACTORY_LOG_LEVEL
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recfactory").setLevel(os.environ.get("RECFACTORY_LOG_LEVEL", "INFO"))
    install_log_redaction()
    spark = spark or get_spark(f"recfactory-{job_cls.name}")
    ctx = RunContext(
        spark=spark,
        warehouse=warehouse or Warehouse(spark, params.warehouse),
        params=params,
        job=job_cls.name,
        pins={k: list(v) for k, v in (pins or {}).items()},
    )
    log.info("run %s: %s as of %s (params %s)", ctx.run_id, job_cls.name, params.as_of, params_hash(params))
    _record_start(ctx, job_cls)
    try:
        job_cls().run(ctx)
    except BaseException as e:
        redact_exception(e)  # what is re-raised (and printed) names no credential either
        ctx.notes["error"] = redact("".join(traceback.format_exception_only(type(e), e)).strip())
        try:
            write_run_row(ctx, "failed", ctx.notes["error"])
        except Exception:  # noqa: BLE001 - never hide the original failure
            log.exception("could not record the failed run in %s", RUNS_TABLE)
        raise
    write_run_row(ctx, "succeeded", None)
    log.info(
        "run %s done in %.1fs: %s",
        ctx.run_id,
        time.time() - ctx.started,
        ", ".join(f"{o.name} v{o.version} ({o.rows} rows)" for o in ctx.outputs),
    )
    return ctx
