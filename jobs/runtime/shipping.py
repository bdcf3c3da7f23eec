"""Shipping the recfactory code to a cluster's workers with each run (``RECFACTORY_PY_FILES``).

The unit is a wheel (``pip wheel --no-deps -w dist .``); each engine gets it in the form it loads:

- Spark puts only ``.zip`` / ``.egg`` / ``.jar`` files from ``--py-files`` on the executors' path
  (``SparkContext.PACKAGE_EXTENSIONS``); a ``.whl`` would be copied there and never imported. A
  pure-Python wheel is a zip archive, so it ships as a ``.zip`` copy of itself.
- Ray would ``pip install`` a ``.whl`` in ``py_modules`` on every node, dependencies and all; the
  wheel is unpacked instead and its top-level packages shipped as directories.

Both derived copies live next to the wheel, keyed by its content, so a rebuilt wheel of the same
version is never shadowed by an older copy.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
import zipfile
from pathlib import Path


def _entries(py_files: str) -> list[str]:
    return [x.strip() for x in py_files.split(",") if x.strip()]


def _keyed(wheel: str, suffix: str) -> Path:
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()[:12]
    return Path(wheel).with_name(f"{Path(wheel).stem}-{digest}{suffix}")


def _publish(target: Path, make) -> None:
    """Create target atomically (a temp sibling, then rename); concurrent tasks may race."""
    if target.exists():
        return
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}")
    make(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another task published it first
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def spark_py_files(py_files: str) -> str:
    """``--py-files`` for Spark: local wheels as ``.zip`` copies; other entries as they are."""
    out = []
    for f in _entries(py_files):
        if f.endswith(".whl") and "://" not in f:
            target = _keyed(f, ".zip")
            _publish(target, lambda tmp, f=f: shutil.copyfile(f, tmp))
            f = str(target)
        out.append(f)
    return ",".join(out)


def ray_py_modules(py_files: str) -> list[str]:
    """``--py-files`` as Ray ``py_modules``: a local wheel's top-level packages as directories;
    other entries as they are."""
    out: list[str] = []
    for f in _entries(py_files):
        if not f.endswith(".whl") or "://" in f:
            out.append(f)
            continue
        target = _keyed(f, ".unpacked")

        def unpack(tmp: Path, f: str = f) -> None:
            with zipfile.ZipFile(f) as z:
                z.extractall(tmp)

        _publish(target, unpack)
        out += sorted(str(p) for p in target.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".data")))
    return out
