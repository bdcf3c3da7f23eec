"""`recfactory <job> [flags]`, `python -m recfactory <job> [flags]`, and the per-job scripts.

Extra commands:
  recfactory setup        resolve the Delta jars into the cache (network once, offline after) and
                          write them into pyspark's spark-defaults.conf for plain `spark-submit`
  recfactory jobs         list the jobs
  recfactory params-doc   the parameter tables of every job, as markdown (docs/reference/jobs.md)
  recfactory pipeline     the daily (or weekly) pipeline's jobs for one date in one process: the
                          Airflow DAG's graph without Airflow (--help for its flags)
  recfactory runs         the history of attempts (--warehouse W [--as-of D] [--job J]): status,
                          duration, published versions; abandoned attempts with their partial versions
  recfactory replay       re-run a recorded run from its manifest and compare its outputs with the
                          recorded versions (--warehouse W RUN_ID); exit 0 only when all match
  recfactory vacuum       remove data files older than --retain-days N that no run of those days
                          and no current publication reads (replay keeps working for the window)
"""

from __future__ import annotations

import sys

from recfactory.jobs.runtime.job import GATE_EXIT_CODE, JOBS, QualityGateError, load_job, run_job
from recfactory.jobs.runtime.params import params_table

USAGE = (
    "usage: recfactory {setup,jobs,params-doc,pipeline,runs,replay,vacuum,"
    + ",".join(JOBS)
    + "} [flags]  (--help per job)"
)


def setup() -> int:
    from recfactory.jobs.runtime.spark import get_spark, write_spark_defaults

    spark = get_spark("recfactory-setup")
    spark.range(1).count()
    path = write_spark_defaults()
    print(f"Delta jars cached under the Ivy cache; spark-submit defaults written to {path}")
    return 0


PARAMS_REFERENCE = "docs/reference/jobs.md"


def params_reference() -> str:
    """docs/reference/jobs.md: every job's description, outputs and parameter table, from the jobs'
    own declarations (`make params-doc` writes it; a test keeps the file equal to this)."""
    parts = [
        "# Jobs and their parameters",
        "",
        "Generated from the jobs' declarations by `make params-doc`; a test keeps this file equal to them.",
        "",
    ]
    for name in JOBS:
        cls = load_job(name)
        parts += [
            f"## `{name}`",
            "",
            cls.description,
            "",
            "Writes: " + ", ".join(f"`{t}`" for t in cls.outputs),
            "",
            params_table(cls.Params),
            "",
        ]
    return "\n".join(parts)


def params_doc() -> int:
    print(params_reference(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "setup":
        return setup()
    if cmd == "jobs":
        for name in JOBS:
            print(f"{name:24s} {load_job(name).description.splitlines()[0]}")
        return 0
    if cmd == "params-doc":
        return params_doc()
    if cmd == "pipeline":
        from recfactory.jobs.runtime.pipeline import pipeline_main

        return pipeline_main(rest)
    if cmd == "runs":
        from recfactory.jobs.runtime.attempts import runs_main

        return runs_main(rest)
    if cmd == "replay":
        from recfactory.jobs.runtime.replay import replay_main

        return replay_main(rest)
    if cmd == "vacuum":
        from recfactory.jobs.runtime.vacuum import vacuum_main

        return vacuum_main(rest)
    if cmd not in JOBS:
        print(f"unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        run_job(cmd, rest)
    except QualityGateError as e:  # nothing was published; a distinct status for schedulers
        print(f"{cmd}: quality gate failed, nothing published: {e}", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0


def job_script_main(name: str) -> None:
    """Entry for `spark-submit jobs/<name>.py [flags]` and `python jobs/<name>.py [flags]`."""
    sys.exit(main([name, *sys.argv[1:]]))
