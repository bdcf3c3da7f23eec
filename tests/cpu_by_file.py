"""Where a test run's CPU goes: by test file and by kind of process (a measuring tool, not a test).

Run it beside the suite, then stop it (SIGTERM or Ctrl-C) when the suite ends::

    .venv/bin/python tests/cpu_by_file.py cpu.json &  make test;  kill %1

Every 2 s it reads the CPU time of every process started after it, and adds each one's increase to
(the test file its nearest pytest-xdist ancestor is running, the kind of process: the test process,
its Spark JVM, a job's subprocess and its JVM, a spark-submit's JVM, an executor, Ray's system
processes or workers, the Airflow CLI, ...). pytest-xdist names each worker process after the test
it runs. A process that lives less than one interval is missed; the totals are a lower bound.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import psutil

JAVA_KINDS = (
    ("deploy.master.Master", "java: standalone master"),
    ("deploy.worker.Worker", "java: standalone worker"),
    ("CoarseGrainedExecutorBackend", "java: executor"),
)
RAY_SYSTEM = ("raylet", "gcs_server", "log_monitor", "dashboard", "autoscaler", "runtime_env")


def _is_worker(cmdline: str) -> bool:
    return cmdline.startswith("[pytest-xdist")


def kind(p: psutil.Process, cl: list[str]) -> str:
    s, name = " ".join(cl), p.name()
    if cl and cl[0].endswith("java"):
        for marker, k in JAVA_KINDS:
            if marker in s:
                return k
        if "pyspark-shell" in s:  # a session pyspark started: the test process's own, or a subprocess's
            try:
                parent = " ".join(p.parent().cmdline())
            except (psutil.Error, AttributeError):
                parent = ""
            return "java: the test process's Spark" if _is_worker(parent) else "java: a subprocess's Spark"
        return "java: spark-submit" if "SparkSubmit" in s else "java: other"
    if _is_worker(s):
        return "python: the test process"
    if any(x in s for x in RAY_SYSTEM) or name in ("ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        return "ray: system processes"
    if name.startswith("ray::") or "default_worker.py" in s:
        return "ray: workers and actors"
    if any(x.endswith("/airflow") for x in cl[:2]):
        return "python: airflow CLI"
    if "pyspark.daemon" in s or "pyspark.worker" in s:
        return "python: Spark's Python workers"
    if "-m recfactory" in s or "/jobs/" in s:
        return "python: a job's process"
    return "python: other" if "python" in name else f"other: {name}"


def owning_test_file(p: psutil.Process, cl: list[str]) -> str:
    for proc in [p, *p.parents()]:
        title = " ".join(cl if proc is p else proc.cmdline())
        if _is_worker(title):
            test = title.split("] ", 1)
            return test[1].split("::")[0] if len(test) > 1 else "(between tests)"
    return "(no test process)"


def main(out: str, every: float = 2.0) -> None:
    t0 = time.time()
    last: dict[tuple[int, float], float] = {}
    total: dict[tuple[str, str], float] = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    def dump() -> None:
        files: dict[str, dict[str, float]] = {}
        for (f, k), v in total.items():
            files.setdefault(f, {})[k] = round(v, 1)
        kinds: dict[str, float] = {}
        for (_, k), v in total.items():
            kinds[k] = round(kinds.get(k, 0) + v, 1)
        by_file = {
            f: {"total": round(sum(d.values()), 1), **dict(sorted(d.items(), key=lambda x: -x[1]))}
            for f, d in sorted(files.items(), key=lambda x: -sum(x[1].values()))
        }
        res = {
            "seconds": round(time.time() - t0),
            "cpu_seconds": round(sum(total.values()), 1),
            "by_kind": dict(sorted(kinds.items(), key=lambda x: -x[1])),
            "by_file": by_file,
        }
        with open(out, "w") as fh:
            json.dump(res, fh, indent=1)

    dumped = time.time()
    while not stop:
        for p in psutil.process_iter():
            try:
                started = p.create_time()
                if started < t0:
                    continue
                t = p.cpu_times()
                key, cpu = (p.pid, started), t.user + t.system
                grew, last[key] = cpu - last.get(key, 0.0), cpu
                if grew > 0:
                    cl = p.cmdline()
                    at = (owning_test_file(p, cl), kind(p, cl))
                    total[at] = total.get(at, 0.0) + grew
            except psutil.Error:
                continue
        if time.time() - dumped > 30:
            dump()
            dumped = time.time()
        time.sleep(every)
    dump()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu.json")
