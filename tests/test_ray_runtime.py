"""Ray runtime: local by default, session files inside the project temp folder."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.ray


def test_local_ray_runs_tasks_with_files_in_project_tmp(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECFACTORY_TMP", str(tmp_path / "t"))
    from recfactory.jobs.runtime.env import ray_tmp
    from recfactory.jobs.runtime.ray_runtime import init_ray, shutdown_ray

    ray = init_ray(num_cpus=2)
    try:
        @ray.remote
        def square(x):
            return x * x

        assert ray.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
        tmp = ray_tmp()
        assert any(p.name.startswith("session_") for p in tmp.iterdir()), list(tmp.iterdir())
        assert os.environ["RAY_TMPDIR"] == str(tmp)
        # nothing under the home directory: the auth token lives with the session files
        assert (tmp / "auth_token").exists()
        assert not (tmp_path / "home" / ".ray").exists()
    finally:
        shutdown_ray()
