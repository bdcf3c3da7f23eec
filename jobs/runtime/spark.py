"""Spark session factory with Delta Lake enabled.

Two ways in:

- ``python -m recfactory <job>`` / the ``recfactory`` command / tests: no JVM exists yet, so we start
  one: ``local[*]`` unless ``RECFACTORY_SPARK_MASTER`` says otherwise (``RECFACTORY_PY_FILES``: files
  shipped to its executors, as ``--py-files`` would), the Delta jars resolved by
  ``delta.configure_spark_with_delta_pip`` (``spark.jars.packages``) into an Ivy cache under
  ``RECFACTORY_CACHE``. The first run downloads them from Maven Central; every later run resolves
  from the cache, offline.
- ``spark-submit jobs/<job>.py`` (any ``--master``): spark-submit already started the JVM with the
  user's configuration. We take the session we are given and never force a master; we only check
  Delta is on it and say how to add it if not. ``recfactory setup`` writes the Delta settings into
  the pyspark installation's ``conf/spark-defaults.conf`` so a plain local ``spark-submit`` has them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from recfactory.jobs.runtime.env import cache_dir, project_tmp

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

# Settings every recfactory session gets, whoever started it. UTC so that `ts < as_of end` and the
# `ds` partitions mean the same thing on every machine. Delta's optimized write (a shuffle by the
# table's partition values before the files are written, big partitions split into 512 MiB bins):
# without it each write task writes a file for every date it holds — events_clean of MovieLens-100K
# was 3,568 files for 100,000 rows (213 dates x 16 tasks), and every job reading it paid for them
# (ingest 39 s -> 26 s, build_sequences 16 s -> 12 s).
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.databricks.delta.optimizeWrite.enabled": "true",
}

_LOCAL_DEFAULTS = {
    "spark.sql.extensions": DELTA_EXTENSION,
    "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
    "spark.sql.shuffle.partitions": os.environ.get("RECFACTORY_SHUFFLE_PARTITIONS", "16"),
    "spark.default.parallelism": os.environ.get("RECFACTORY_SHUFFLE_PARTITIONS", "16"),
    "spark.driver.memory": os.environ.get("RECFACTORY_DRIVER_MEMORY", "6g"),
    "spark.sql.adaptive.enabled": "true",
    # Small local tables: Delta's default of 50 snapshot partitions costs seconds per read.
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.ui.showConsoleProgress": "true",
    "spark.ui.enabled": os.environ.get("RECFACTORY_SPARK_UI", "false"),
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def submit_conf() -> dict[str, str]:
    """The ``--conf`` a deployment's environment adds to each spark-submit it launches (the Airflow
    operator's): ``RECFACTORY_SHUFFLE_PARTITIONS``, when set, as the shuffle partitions and default
    parallelism — what an in-process session takes from it; otherwise spark-defaults.conf or the
    cluster's own settings apply."""
    n = os.environ.get("RECFACTORY_SHUFFLE_PARTITIONS")
    if not n:
        return {}
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"RECFACTORY_SHUFFLE_PARTITIONS must be a positive integer, not {n!r}")
    return {"spark.sql.shuffle.partitions": n, "spark.default.parallelism": n}


# The driver's log4j2 configuration: Spark's defaults (org/apache/spark/log4j2-defaults.properties)
# with every message and stack trace passed through a redaction of credentials — user:password@ in
# URIs, signed query strings, connection-string keys, bearer tokens: the JVM side of
# ``env.redact``, so a path handed to Spark is never logged with its secret.
LOG4J_REDACTING = r"""rootLogger.level = info
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.alwaysWriteExceptions = false
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %replace{%m%n%ex}{(?<=://)[^/@\\s]+(?=@)|(?i)(?<=[^A-Za-z0-9_](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|sig|signature|token|access_token|api_key|apikey|key|password|secret|accountkey|sharedaccesssignature)=)[^&;\\s'"]+|(?<=[Bb]earer )[A-Za-z0-9._~+/=-]+}{***}
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.jetty2.name = org.sparkproject.jetty.util.component.AbstractLifeCycle
logger.jetty2.level = error
logger.parquet.name = org.apache.parquet.CorruptStatistics
logger.parquet.level = error
logger.parquet2.name = parquet.CorruptStatistics
logger.parquet2.level = error
"""


def log4j_config() -> Path:
    """The redacting log4j2 configuration as a file (written once per content)."""
    path = cache_dir() / "log4j2-redacting.properties"
    if not path.exists() or path.read_text() != LOG4J_REDACTING:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LOG4J_REDACTING)
    return path


def driver_java_options() -> str:
    return f"-Dlog4j2.configurationFile=file:{log4j_config()}"


def delta_maven_coordinate() -> str:
    """The Delta artifact that matches the installed delta-spark and pyspark (as Delta's pip_utils)."""
    from importlib.metadata import version

    import pyspark

    spark_mm = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_mm}_2.13:{version('delta-spark')}"


def ivy_dir() -> Path:
    return cache_dir() / "ivy"


def submitted() -> bool:
    """True when spark-submit (or a notebook/cluster runtime) already started the JVM for us."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _prepare_local_env() -> None:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Workers must run the interpreter that has our dependencies, not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def get_spark(app_name: str = "recfactory", extra_conf: dict[str, str] | None = None):
    """Return the active session (spark-submit) or start a local Delta-enabled one."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        _apply_session_conf(active)
        return active
    if submitted():
        spark = SparkSession.builder.appName(app_name).getOrCreate()
        ensure_delta(spark)
        _apply_session_conf(spark)
        return spark

    from delta import configure_spark_with_delta_pip

    _prepare_local_env()
    master = os.environ.get("RECFACTORY_SPARK_MASTER", "local[*]")
    builder = SparkSession.builder.appName(app_name).master(master)
    conf = dict(_LOCAL_DEFAULTS)
    conf["spark.jars.ivy"] = str(ivy_dir())
    conf["spark.local.dir"] = str(project_tmp() / "spark")
    conf["spark.driver.extraJavaOptions"] = driver_java_options()
    conf.update(SESSION_CONF)
    if os.environ.get("RECFACTORY_PY_FILES"):  # the package shipped to executors, as spark-submit --py-files
        from recfactory.jobs.runtime.shipping import spark_py_files

        conf["spark.submit.pyFiles"] = spark_py_files(os.environ["RECFACTORY_PY_FILES"])
    conf.update(extra_conf or {})
    for k, v in conf.items():
        builder = builder.config(k, v)
    builder = configure_spark_with_delta_pip(builder)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("RECFACTORY_SPARK_LOG_LEVEL", "WARN"))
    ensure_delta(spark)
    return spark


def _apply_session_conf(spark) -> None:
    for k, v in SESSION_CONF.items():
        spark.conf.set(k, v)


def ensure_delta(spark) -> None:
    exts = spark.conf.get("spark.sql.extensions", "") or ""
    if DELTA_EXTENSION not in exts:
        raise RuntimeError(
            "this Spark session has no Delta Lake: pass "
            f"--packages {delta_maven_coordinate()} "
            f"--conf spark.sql.extensions={DELTA_EXTENSION} "
            f"--conf spark.sql.catalog.spark_catalog={DELTA_CATALOG} "
            "to spark-submit (or run `recfactory setup` once for the local pyspark install)"
        )


def write_spark_defaults() -> Path:
    """Put the Delta settings and the local defaults into the installed pyspark's
    spark-defaults.conf (idempotent).

    Only keys we own are replaced; anything else a user put there is kept.
    """
    import pyspark

    conf_dir = Path(os.environ.get("SPARK_CONF_DIR", Path(pyspark.__file__).parent / "conf"))
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "spark-defaults.conf"
    # The local defaults an in-process session gets (shuffle partitions, driver memory, Arrow, ...),
    # so `spark-submit jobs/<job>.py` on this install — by hand or from the Airflow DAG — runs as
    # `recfactory <job>` does; --conf / --driver-memory on the command line still win.
    ours = {
        "spark.jars.packages": delta_maven_coordinate(),
        "spark.jars.ivy": str(ivy_dir()),
        **{k: v for k, v in _LOCAL_DEFAULTS.items() if k != "spark.ui.enabled"},
        **SESSION_CONF,
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.driver.extraJavaOptions": driver_java_options(),
    }
    marker = "# written by `recfactory setup`"
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            words = line.split(None, 1)
            if line.strip() == marker or (words and words[0] in ours):
                continue
            kept.append(line)
    lines = kept + [marker] + [f"{k} {v}" for k, v in ours.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
