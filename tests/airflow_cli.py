"""The Airflow CLI of this venv, as the DAG tests run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def airflow(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    """``airflow *args`` with the deployment's environment; output captured as text."""
    return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)
