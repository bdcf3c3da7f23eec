"""Ray runtime: local by default, session files inside the project temp folder.

Run in a fresh interpreter: earlier tests (walks, training) leave a local Ray running in the test
process, and Ray does not restart cleanly inside one process (a second `ray.init` after
`ray.shutdown` timed out waiting for its GCS here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from subproc import result_of

pytestmark = pytest.mark.ray

SCRIPT = r"""
import json, os
from recfactory.jobs.runtime.env import ray_tmp
from recfactory.jobs.runtime.ray_runtime import init_ray, shutdown_ray

ray = init_ray(num_cpus=2)
try:
    @ray.remote
    def square(x):
        return x * x

    tmp = ray_tmp()
    print("RESULT " + json.dumps({
        "squares": ray.get([square.remote(i) for i in range(5)]),
        "tmp": str(tmp),
        "sessions": [p.name for p in tmp.iterdir() if p.name.startswith("session_")],
        "ray_tmpdir": os.environ["RAY_TMPDIR"],
        "token": (tmp / "auth_token").exists(),
    }))
finally:
    shutdown_ray()
"""


def test_local_ray_runs_tasks_with_files_in_project_tmp(tmp_path):
    # none of the RAY_* variables a Ray started by this test process exported (address, token, ...)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), RECFACTORY_TMP=str(tmp_path / "t"))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = result_of(out.stdout)
    assert res["squares"] == [0, 1, 4, 9, 16]
    assert res["sessions"], res
    assert res["ray_tmpdir"] == res["tmp"]
    # nothing under the home directory: the auth token lives with the session files
    assert res["token"]
    assert not (tmp_path / "home" / ".ray").exists()
