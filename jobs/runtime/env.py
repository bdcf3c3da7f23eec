"""Where things live: the cache (Delta jars), the project temp folder (Ray sessions), tables.

Everything is overridable from the environment, nothing is hard-wired to this machine:

- ``RECFACTORY_CACHE``  jar cache (default ``~/.cache/recfactory``): shared by every checkout so a
  second run, or CI on a fresh clone of the same machine, resolves nothing from the network.
- ``RECFACTORY_TMP``    project temp folder for Ray session files (default ``./.tmp`` under the
  current directory; a short fallback under /tmp when the path is too long for Ray's sockets).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

# AF_UNIX socket paths are limited to 107 bytes; Ray puts its sockets ~60 bytes deep in its temp dir.
_RAY_TMP_MAX = 45


def cache_dir() -> Path:
    p = Path(os.environ.get("RECFACTORY_CACHE", Path.home() / ".cache" / "recfactory"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def project_tmp() -> Path:
    p = Path(os.environ.get("RECFACTORY_TMP", Path.cwd() / ".tmp")).absolute()
    p.mkdir(parents=True, exist_ok=True)
    return p


def ray_tmp() -> Path:
    p = project_tmp() / "ray"
    if len(str(p)) > _RAY_TMP_MAX:
        digest = hashlib.sha1(str(p).encode()).hexdigest()[:10]
        p = Path("/tmp") / f"rf-ray-{digest}"
    p.mkdir(parents=True, exist_ok=True)
    return p


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(value):
    """Drop credentials embedded in URIs (scheme://user:secret@host/...) before anything is logged
    or recorded in a manifest; recurses into lists and dicts."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\g<scheme>***@", value)
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


def validate_table_name(name: str) -> str:
    """Table names are identifiers: no path separators, no '..', nothing outside the warehouse."""
    if not isinstance(name, str) or not TABLE_NAME.match(name):
        raise ValueError(
            f"invalid table name {name!r}: use letters, digits and '_' only (no path separators)"
        )
    return name


def normalize_warehouse(warehouse: str) -> str:
    """Absolute local path, or a URI (s3a://, abfss://, hdfs://, file://) left as given."""
    if "://" in warehouse:
        return warehouse.rstrip("/")
    return str(Path(warehouse).expanduser().absolute())


def table_path(warehouse: str, name: str) -> str:
    return f"{normalize_warehouse(warehouse)}/{validate_table_name(name)}"


def arrow_uri(root: str, *parts: str) -> str:
    """A location under a warehouse root as pyarrow's filesystems, delta-rs and Ray Train see it:
    Hadoop's s3a:// is s3:// there; local roots stay paths."""
    return "/".join([root.replace("s3a://", "s3://", 1), *parts])
