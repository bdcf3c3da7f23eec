"""Real clusters on localhost for the cluster-mode tests (the fixtures are in conftest.py).

A Spark standalone master + worker (pyspark's own `spark-class` launcher, what sbin/start-master.sh
and start-worker.sh run) and a multi-node Ray cluster (`ray start --head` + `ray start --address`).
Each process runs in its own process group, so teardown kills it with everything it spawned and
nothing else (`ray stop` would also kill other Ray sessions of the user).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

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
