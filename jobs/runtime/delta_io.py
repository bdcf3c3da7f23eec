"""Delta I/O: pinned reads (time travel) and idempotent, manifest-carrying writes.

Reads always resolve to an exact Delta version before reading, so the version recorded in the
manifest is the version read, even if another writer commits in between. Writes are one Delta
commit per output table:

- daily snapshot tables: ``overwrite`` + ``replaceWhere ds = 'D'`` — a rerun or a retry of the same
  logical date replaces that partition, never duplicates it;
- the ``_runs`` log: an append guarded by Delta's ``txnAppId``/``txnVersion`` (the run id), so a
  retried append of the same run is skipped by Delta itself.

Every commit carries the run's manifest as its ``userMetadata``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from recfactory.jobs.runtime.env import arrow_fs, arrow_uri, normalize_warehouse, table_path, validate_table_name


@dataclass(frozen=True)
class InputRef:
    """One input exactly as read: a Delta table at a version, or files with a fingerprint."""

    name: str
    path: str
    format: str  # delta | parquet | package
    version: int | None = None
    fingerprint: str | None = None
    timestamp: str | None = None  # set when the version was resolved from a timestamp

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CommitProperties:
    """What a commit carries besides data (as delta-rs' CommitProperties)."""

    run_id: str
    user_metadata: dict[str, Any] = field(default_factory=dict)
    txn_app_id: str | None = None
    txn_version: int | None = None


@dataclass(frozen=True)
class OutputRef:
    name: str
    path: str
    version: int
    rows: int
    partition: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpsertRef:
    """The commit of an upsert: rows inserted (new keys) and updated (a preferred version)."""

    name: str
    path: str
    version: int
    inserted: int
    updated: int

    def output(self, partition: str | None = None) -> OutputRef:
        return OutputRef(self.name, self.path, self.version, self.inserted + self.updated, partition)


_USER_METADATA_LOCK = threading.Lock()


@contextlib.contextmanager
def _commit_user_metadata(spark, meta: str):
    """A MERGE has no userMetadata option: Delta takes it from this session setting (held under a
    lock so concurrent writers in one process never swap manifests)."""
    key = "spark.databricks.delta.commitInfo.userMetadata"
    with _USER_METADATA_LOCK:
        spark.conf.set(key, meta)
        try:
            yield
        finally:
            spark.conf.unset(key)


def is_write_conflict(e: BaseException) -> bool:
    """A Delta optimistic-concurrency conflict: another writer committed first (Delta's
    ConcurrentAppend/ConcurrentDelete*/MetadataChanged... exceptions, as pyspark converts them, or
    their error classes in a JVM error's text)."""
    try:
        from delta.exceptions import DeltaConcurrentModificationException

        if isinstance(e, DeltaConcurrentModificationException):
            return True
    except ImportError:
        pass
    text = f"{type(e).__name__} {str(e)[:600]}"
    return any(
        s in text
        for s in (
            "ConcurrentAppend",
            "ConcurrentDelete",
            "ConcurrentWrite",
            "ConcurrentTransaction",
            "ProtocolChanged",
            "MetadataChanged",
            "DELTA_CONCURRENT",
            "FileAlreadyExists",
        )
    )


def is_delta(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    try:
        return DeltaTable.isDeltaTable(spark, path)
    except Exception:  # noqa: BLE001 - missing path, unsupported FS: not a Delta table
        return False


class Warehouse:
    """Tables under one root: ``<root>/<table_name>``; names are validated identifiers."""

    def __init__(self, spark, root: str):
        self.spark = spark
        self.root = normalize_warehouse(root)

    @property
    def read_root(self) -> str:
        """The root tables are read from (and publications resolved in)."""
        return self.root

    def path(self, name: str) -> str:
        """Where table `name` is read from."""
        return table_path(self.root, name)

    def write_path(self, name: str) -> str:
        """Where table `name` is written (the same place, except for a replay's scratch copy)."""
        return table_path(self.root, name)

    def arrow_path(self, *parts: str) -> str:
        """A location under the root as pyarrow's filesystems and Ray Train see it (`arrow_uri`)."""
        return arrow_uri(self.root, *parts)

    def exists(self, name: str) -> bool:
        return is_delta(self.spark, self.path(name))

    # ---- versions -------------------------------------------------------------------------
    def _history(self, path: str, limit: int | None = None):
        from delta.tables import DeltaTable

        table = DeltaTable.forPath(self.spark, path)
        return table.history(limit) if limit else table.history()

    def latest_version(self, name_or_path: str) -> int | None:
        path = name_or_path if "/" in name_or_path else self.path(name_or_path)
        if not is_delta(self.spark, path):
            return None
        from deltalake import DeltaTable

        return int(DeltaTable(arrow_uri(path)).version())

    def _existing_version(self, path: str) -> int:
        version = self.latest_version(path)
        if version is None:
            raise FileNotFoundError(f"no Delta table at {path}")
        return version

    def version_at(self, path: str, timestamp: str) -> int:
        from pyspark.sql import functions as F

        row = (
            self._history(path)
            .where(F.col("timestamp") <= F.to_timestamp(F.lit(timestamp)))
            .agg(F.max("version"))
            .first()
        )
        if row is None or row[0] is None:
            raise ValueError(f"{path} has no version at or before {timestamp}")
        return int(row[0])

    # ---- reads ----------------------------------------------------------------------------
    def read(self, name: str, version: int | None = None, timestamp: str | None = None):
        """Read table `name` pinned to a version (latest by default). Returns (df, InputRef)."""
        validate_table_name(name)
        return self.read_path(self.path(name), name=name, version=version, timestamp=timestamp)

    def read_path(
        self,
        path: str,
        name: str | None = None,
        version: int | None = None,
        timestamp: str | None = None,
        fmt: str | None = None,
    ):
        """Read any Delta or parquet location. Delta reads are pinned to an exact version;
        parquet inputs are fingerprinted by their file list."""
        name = name or path.rstrip("/").rsplit("/", 1)[-1]
        fmt = fmt or ("delta" if is_delta(self.spark, path) else "parquet")
        if fmt == "delta":
            if not is_delta(self.spark, path):
                raise FileNotFoundError(f"no Delta table at {path}")
            if version is None:
                version = self.version_at(path, timestamp) if timestamp else self.latest_version(path)
            if version is None:  # is_delta above: a table has a latest version
                raise FileNotFoundError(f"no Delta table at {path}")
            df = self.spark.read.format("delta").option("versionAsOf", int(version)).load(path)
            return df, InputRef(name, path, "delta", version=int(version), timestamp=timestamp)
        if fmt == "parquet":
            if version is not None or timestamp is not None:
                raise ValueError(f"{path} is parquet, not Delta: it has no versions to pin")
            df = self.spark.read.parquet(path)
            return df, InputRef(name, path, "parquet", fingerprint=files_fingerprint(df))
        raise ValueError(f"unsupported input format {fmt!r} (use delta or parquet)")

    # ---- writes ---------------------------------------------------------------------------
    def write(
        self,
        df,
        name: str,
        commit: CommitProperties,
        ds: dt.date | None = None,
        partition_by: tuple[str, ...] = ("ds",),
        mode: str = "partition",
        where: dict[str, str] | None = None,
        attempts: int = 8,
    ) -> OutputRef:
        """One atomic Delta commit.

        mode="partition": replace partition ds (the df must have ds == `ds` on every row), narrowed
        by `where` (column → value, further partition columns: e.g. one source's rows of that ds);
        mode="append": append (idempotent when commit.txn_app_id/txn_version are set);
        mode="overwrite": replace the whole table.
        """
        path = self.write_path(name)
        w = df.write.format("delta").option(
            "userMetadata", json.dumps(commit.user_metadata, sort_keys=True, default=str)
        )
        if commit.txn_app_id is not None:
            w = w.option("txnAppId", commit.txn_app_id).option("txnVersion", commit.txn_version or 0)
        if mode == "partition":
            if ds is None:
                raise ValueError("mode='partition' needs ds")
            # mergeSchema: a feature table may gain columns when its spec grows
            cond = " AND ".join(
                [f"ds = '{ds.isoformat()}'"]
                + [f"{k} = '{str(v).replace(chr(39), chr(39) * 2)}'" for k, v in (where or {}).items()]
            )
            w = w.mode("overwrite").option("replaceWhere", cond).option("mergeSchema", "true")
        elif mode == "append":
            w = w.mode("append")
        elif mode == "overwrite":
            w = w.mode("overwrite").option("overwriteSchema", "true")
        else:
            raise ValueError(f"unknown write mode {mode!r}")
        if partition_by:
            w = w.partitionBy(*partition_by)
        for attempt in range(attempts):
            try:
                w.save(path)
                break
            except Exception as e:  # noqa: BLE001 - only Delta's write conflicts are retried
                # another writer committed first (a concurrent run of the same date replacing the same
                # partition): the replacement is idempotent, so it is redone against the new snapshot;
                # which run's rows a reader gets is then publication's choice (runtime.publication)
                if not is_write_conflict(e) or attempt == attempts - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        version, rows = self._commit_of(path, commit.run_id)
        return OutputRef(name, path, version, rows, ds.isoformat() if ds else None)

    def append_small(self, rows, name: str, commit: CommitProperties) -> int:
        """Append a few rows (a pyarrow Table) to one of the runtime's own unpartitioned tables
        (``_runs``) in one delta-rs commit carrying the same metadata a Spark write does: no Spark
        job for one row. Idempotent on (txn_app_id, txn_version) as Spark's txnAppId is: an
        append already committed is not made twice. Returns the version."""
        from deltalake import CommitProperties as RsCommit
        from deltalake import DeltaTable, Transaction, write_deltalake
        from deltalake.exceptions import TableNotFoundError

        uri = arrow_uri(self.write_path(name))
        txns = []
        if commit.txn_app_id is not None:
            version = int(commit.txn_version or 0)
            try:
                done = DeltaTable(uri).transaction_version(commit.txn_app_id)
            except (TableNotFoundError, FileNotFoundError, OSError):
                done = None
            if done is not None and done >= version:
                return int(DeltaTable(uri).version())
            txns = [Transaction(commit.txn_app_id, version)]
        meta = json.dumps(commit.user_metadata, sort_keys=True, default=str)
        write_deltalake(
            uri,
            rows,
            mode="append",
            commit_properties=RsCommit(custom_metadata={"userMetadata": meta}, app_transactions=txns),
        )
        return int(DeltaTable(uri).version())

    def upsert(
        self,
        df,
        name: str,
        commit: CommitProperties,
        key: str,
        partition: str,
        prefer: str | None = None,
        attempts: int = 8,
    ) -> UpsertRef:
        """One atomic MERGE of `df` into table `name` on (`partition`, `key`): rows whose key is new
        are inserted; a row whose key is already published replaces it only when `prefer` (a SQL
        condition over ``s.`` the new and ``t.`` the published row; our own constant, never user
        input) holds, so the published row is the same whichever loads ran and in which order.

        Concurrent upserts touching the same partitions conflict in Delta (it tracks the files a
        MERGE read); the loser re-runs the MERGE against the new snapshot, which is idempotent.
        The table is created (partitioned by `partition`) when it does not exist.
        """
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        path = self.write_path(name)
        meta = json.dumps(commit.user_metadata, sort_keys=True, default=str)
        span = df.agg(F.min(partition), F.max(partition)).first()
        for attempt in range(attempts):
            try:
                if not is_delta(self.spark, path):
                    (
                        df.write.format("delta")
                        .mode("append")
                        .option("userMetadata", meta)
                        .partitionBy(partition)
                        .save(path)
                    )
                    version, rows = self._commit_of(path, commit.run_id)
                    return UpsertRef(name, path, version, inserted=rows, updated=0)
                if span[0] is None:  # nothing to merge: the table as it is
                    return UpsertRef(name, path, self._existing_version(path), inserted=0, updated=0)
                # the partition range as literals, so Delta reads (and conflicts on) only those partitions
                cond = (
                    f"t.{partition} >= '{span[0]}' AND t.{partition} <= '{span[1]}' AND "
                    f"t.{partition} = s.{partition} AND t.{key} = s.{key}"
                )
                merge = DeltaTable.forPath(self.spark, path).alias("t").merge(df.alias("s"), cond)
                if prefer:
                    merge = merge.whenMatchedUpdateAll(condition=prefer)
                merge = merge.whenNotMatchedInsertAll()
                with _commit_user_metadata(self.spark, meta):
                    merge.execute()
                version, metrics = self._commit_metrics(path, commit.run_id)
                return UpsertRef(
                    name,
                    path,
                    version,
                    inserted=int(metrics.get("numTargetRowsInserted", 0)),
                    updated=int(metrics.get("numTargetRowsUpdated", 0)),
                )
            except Exception as e:  # noqa: BLE001 - only Delta's write conflicts are retried
                if not is_write_conflict(e) or attempt == attempts - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _commit_metrics(self, path: str, run_id: str) -> tuple[int, dict]:
        """(version, operationMetrics) of this run's commit, or (latest, {}) when it made none.
        Read from the commit log with delta-rs: no Spark job for a few lines of JSON."""
        from deltalake import DeltaTable

        hist = DeltaTable(arrow_uri(path)).history(20)
        for h in hist:  # newest first
            if run_id in (h.get("userMetadata") or ""):
                return int(h["version"]), dict(h.get("operationMetrics") or {})
        return int(hist[0]["version"]), {}

    def _commit_of(self, path: str, run_id: str) -> tuple[int, int]:
        """The version and row count of this run's commit (found by run id, not 'latest'). A
        txn-guarded append that Delta skipped as already committed wrote nothing: latest, 0 rows."""
        version, metrics = self._commit_metrics(path, run_id)
        return version, int(metrics.get("numOutputRows", 0))

    def set_table_properties(self, name: str, props: dict[str, str]) -> None:
        items = ", ".join(f"'{k}' = '{v}'" for k, v in props.items())
        self.spark.sql(f"ALTER TABLE delta.`{self.write_path(name)}` SET TBLPROPERTIES ({items})")


def files_fingerprint(df) -> str:
    """Identity of a file-based input: hash of its sorted file URIs with each file's size and
    modification time (a file rewritten in place under the same name changes it too)."""
    files = sorted(df.inputFiles())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}\t{_stat(f)}\n".encode())
    return h.hexdigest()[:16] + f":{len(files)}files"


def _stat(uri: str) -> str:
    try:
        fs, path = arrow_fs(uri)
        info = fs.get_file_info(path)
        return f"{info.size}:{info.mtime_ns}"
    except Exception:  # noqa: BLE001 - a filesystem pyarrow cannot stat: the name alone
        return "?"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
