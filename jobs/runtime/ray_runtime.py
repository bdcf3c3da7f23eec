"""Ray: a local runtime by default, the cluster at ``RAY_ADDRESS`` when it is set.

Local sessions keep their files (logs, sockets, the auth token Ray 2.60 writes) in the project temp
folder (``RECFACTORY_TMP``, see env.py) instead of /tmp/ray and ~/.ray, so parallel checkouts and
CI runs do not share state. The dashboard is off locally (it needs a port and a second process).
"""

from __future__ import annotations

import logging
import os

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
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _temp_dir=str(ray_tmp()),
            log_to_driver=True,
            **kwargs,
        )
    return ray


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
