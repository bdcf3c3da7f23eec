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


DEFAULT_WAREHOUSE = "./warehouse"  # every entry point's default warehouse root
RUNS_TABLE = "_runs"  # one row per finished run (written by jobs.runtime.job)

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# query-string and connection-string parameters that carry a credential or a signature
_SIGNED = re.compile(
    r"(?P<name>(?<![A-Za-z0-9_])(?:x-amz-(?:signature|credential|security-token)|x-goog-(?:signature|credential)"
    r"|sig|signature|sv_sig|token|access_token|id_token|refresh_token|api_?key|apikey|key|password|passwd|pwd"
    r"|secret|client_secret|accountkey|sharedaccesssignature|sharedaccesskey|code|auth)=)(?P<value>[^&;\s'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<name>\b(?:bearer|basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# environment variables whose values are secrets: their values never appear in a record or a log
_SECRET_ENV = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|(?:^|_)(?:API_?)?KEY(?:$|_)|AUTH", re.IGNORECASE
)
MASK = "***"


_NOT_SECRET_ENV = re.compile(r"_(?:PATH|FILE|DIR|MODE)$", re.IGNORECASE)  # where a secret is, not what


def _secret_env_values() -> list[str]:
    vals = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and not _NOT_SECRET_ENV.search(k) and len(v) >= 6}
    return sorted(vals, key=len, reverse=True)


def redact(value):
    """The value with every credential masked, before anything is logged or recorded (``_runs``,
    commit metadata, the report, Airflow logs): user:password@ in URIs, signed query strings
    (``?sig=``, ``X-Amz-Signature=``, ``X-Goog-Credential=``, ``token=``, ...), connection-string keys
    (``AccountKey=``), bearer tokens, AWS access key ids, and the value of any environment
    variable named like a secret (``*_SECRET*``, ``*TOKEN*``, ``*PASSWORD*``, ``*_KEY``, ...).
    Recurses into lists, tuples and dicts."""
    if isinstance(value, str):
        s = _USERINFO.sub(r"\g<scheme>" + MASK + "@", value)
        s = _SIGNED.sub(r"\g<name>" + MASK, s)
        s = _BEARER.sub(r"\g<name>" + MASK, s)
        s = _AWS_KEY_ID.sub(MASK, s)
        for secret in _secret_env_values():
            s = s.replace(secret, MASK)
        return s
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


class RedactingFilter:
    """A logging filter (for handlers) that redacts every record's message and arguments."""

    def filter(self, record) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            record.args = (
                tuple(redact(a) if isinstance(a, str) else a for a in record.args)
                if isinstance(record.args, tuple)
                else redact(record.args)
            )
        if record.exc_info and record.exc_info[1] is not None:
            redact_exception(record.exc_info[1])
        return True


def redact_exception(e: BaseException) -> BaseException:
    """Mask credentials in an exception's message, in place (its args and its string attributes,
    where PySpark's captured JVM exceptions keep their description and stack trace), and in the
    exceptions it was raised from; returns it."""
    seen, first = set(), e
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        e = cur
        seen.add(id(e))
        try:
            e.args = tuple(redact(a) if isinstance(a, str) else a for a in e.args)
            for k, v in list(vars(e).items()):
                if isinstance(v, str):
                    setattr(e, k, redact(v))
        except Exception:  # noqa: BLE001 - an exception type whose attributes cannot be set keeps them
            pass
        cur = e.__cause__ or e.__context__
    return first


def install_log_redaction() -> None:
    """Redact every record that reaches the root logger's handlers (idempotent)."""
    import logging

    for h in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


def validate_table_name(name: str) -> str:
    """Table names are identifiers: no path separators, no '..', nothing outside the warehouse."""
    if not isinstance(name, str) or not TABLE_NAME.match(name):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and '_' only (no path separators)")
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


def arrow_fs(location: str):
    """(pyarrow filesystem, path) of a location: a local path as it is, a ``file:`` URI (as Spark
    names files: percent-encoded) as its path, an object-store URI (s3a:// read as s3://) by its
    scheme."""
    from urllib.parse import unquote, urlparse

    import pyarrow.fs as pafs

    u = urlparse(location)
    if u.scheme in ("", "file"):
        return pafs.LocalFileSystem(), unquote(u.path) if u.scheme else location
    return pafs.FileSystem.from_uri(arrow_uri(location))
