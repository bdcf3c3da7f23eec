"""Ray: a local runtime by default, the cluster at ``RAY_ADDRESS`` when it is set.

Local sessions keep their files (logs, sockets, and the auth token Ray 2.60 would otherwise write
to ~/.ray) in the project temp folder (``RECFACTORY_TMP``, see env.py) instead of /tmp/ray and
~/.ray, so parallel checkouts and CI runs do not share state. The dashboard is off locally (it needs a port and a second process).
"""

from __future__ import annotations

import logging
import os
import secrets

from recfactory.jobs.runtime.env import ray_tmp

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None, **kwargs):
    """Connect to RAY_ADDRESS, or start (or reuse) a local Ray. Returns the `ray` module."""
    import ray

    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS")
    # Keep Ray's own per-user files (auth token, session_latest) out of the home directory.
    os.environ.setdefault("RAY_TMPDIR", str(ray_tmp()))
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True, **kwargs)
    else:
        _local_auth_token()
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _temp_dir=str(ray_tmp()),
            log_to_driver=True,
            **kwargs,
        )
    return ray


def _local_auth_token() -> None:
    """Ray 2.60 turns token auth on for local clusters and saves the token in ~/.ray/auth_token.
    Keep auth on, but with a token file of our own in the project temp folder."""
    if any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return  # the user chose
    token = ray_tmp() / "auth_token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def node_cpus() -> tuple[int, int]:
    """(CPUs of the largest alive node, CPUs of the cluster): a task that wants a whole node's
    threads asks for the first — asking for the cluster's total never schedules on several nodes.

    ``RECFACTORY_TASK_THREADS`` caps the first: the threads (and CPUs) one task takes. For nodes
    shared with other work — the test suite runs two processes on two cores — where a native thread
    pool (LightGBM, faiss, torch) larger than the cores it actually gets spins at every barrier
    (LightGBM's 30 trees on 20,000 rows: 0.8 s on one thread, 5.5 s on two beside another busy
    process). Results do not depend on it."""
    import ray

    cpus = [int(nd["Resources"].get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive")]
    per_node = max([1, *cpus])
    cap = os.environ.get("RECFACTORY_TASK_THREADS", "")
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise ValueError(f"RECFACTORY_TASK_THREADS must be a positive integer, not {cap!r}")
        per_node = min(per_node, int(cap))
    return per_node, max(1, sum(cpus))
