"""Job parameters, declared once.

Each job declares a frozen pydantic model (typed, validated, documented, with defaults). From that
one declaration come the CLI flags (``--as-of``, ``--seed`` ...), ``--help``, the reference docs/reference/jobs.md and,
later, the Airflow params (pydantic's JSON schema is what Airflow's ``Param`` takes). Pydantic is
used rather than hand-written validation because it already gives types, bounds, enums and JSON
schema; it is a dependency of Airflow and Ray anyway.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from recfactory.features.spec import Seeded
from recfactory.jobs.runtime.env import DEFAULT_WAREHOUSE
from recfactory.jobs.runtime.env import TABLE_NAME as _TABLE_NAME_RE

__all__ = [
    "JobParams",
    "Field",
    "Restricted",
    "TABLE_NAME",
    "build_parser",
    "parse_params",
    "params_hash",
    "params_table",
    "restricted_fields",
]

# A warehouse table name (a folder under the warehouse root: no separators, no dots, no ..), as a
# pydantic pattern: a table-name parameter fails at validation, not when the table is opened
TABLE_NAME = _TABLE_NAME_RE.pattern
# What a restricted parameter is. Such a parameter is taken from the command line and a pipeline's
# params file (written by whoever runs the job) but not from an Airflow run conf (anyone who may
# trigger a DAG) unless the deployment allows it: see ``pipeline.check_run_conf``.
RESTRICTED_KINDS = {
    "path": "a path (it decides which files are read or written)",
    "filter": "a row filter",
    "class": "a plug-in class path (module:Class)",
}
_RESTRICTED = "x-recfactory-restricted"


def Restricted(kind: str, default: Any = ..., **kwargs: Any) -> Any:  # noqa: N802 - a Field, as pydantic's
    """A :func:`Field` marked as a restricted parameter of ``kind`` (one of RESTRICTED_KINDS)."""
    if kind not in RESTRICTED_KINDS:
        raise ValueError(f"unknown restricted kind {kind!r}")
    return Field(default, json_schema_extra={_RESTRICTED: kind}, **kwargs)


def restricted_fields(model: type[BaseModel]) -> dict[str, str]:
    """{parameter: kind} of a params model's restricted parameters."""
    out = {}
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if _RESTRICTED in extra:
            out[name] = str(extra[_RESTRICTED])
    return out


class JobParams(Seeded):
    """Parameters every job takes (and, from ``Seeded``, the seed)."""

    warehouse: str = Field(
        DEFAULT_WAREHOUSE,
        description="Warehouse root: every table lives at <warehouse>/<table_name> "
        "(local path or a URI such as s3a://bucket/prefix).",
    )
    as_of: dt.date = Field(
        description="Logical date YYYY-MM-DD. Jobs see only events with ts < the end of this date "
        "(as_of + 1 day, 00:00 UTC) and write partition ds = as_of.",
    )

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    @model_validator(mode="after")
    def _filters_parse(self):
        """Every filter parameter is well-formed before anything runs (its columns are checked
        against the table when it is read)."""
        from recfactory.features.filters import parse_filter

        for name, kind in restricted_fields(type(self)).items():
            value = getattr(self, name)
            if kind == "filter" and value:
                parse_filter(value)
        return self


def params_hash(params: BaseModel, exclude: tuple[str, ...] = ("warehouse",)) -> str:
    """Stable hash of what determines the output (the warehouse location does not)."""
    d = {k: v for k, v in json.loads(params.model_dump_json()).items() if k not in exclude}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _none_or_str(value: str) -> str | None:
    """An optional parameter's flag value: "none" (any case) is None."""
    return None if value.strip().lower() == "none" else value


def build_parser(model: type[BaseModel], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, field in model.model_fields.items():
        tp, optional = unwrap_optional(field.annotation)
        origin = typing.get_origin(tp)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if optional and tp is not bool and origin not in (list, tuple):
            kwargs["type"] = _none_or_str
        help_ = field.description or ""
        if field.is_required():
            kwargs["required"] = True
            help_ += " (required)"
        else:
            help_ += f" (default: {_show_default(field.default)})"
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = [str(a) for a in typing.get_args(tp)]
        elif origin in (list, tuple):
            kwargs["type"] = _split_list
            kwargs["metavar"] = "A,B,..."
        kwargs["help"] = help_.replace("%", "%%")
        parser.add_argument(flag(name), **kwargs)
    return parser


def _show_default(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "none"
    if v == "":
        return '""'
    return "none" if v is None else str(v)


def parse_params(model: type[BaseModel], argv: list[str], prog: str, description: str) -> BaseModel:
    parser = build_parser(model, prog, description)
    ns = parser.parse_args(argv)
    try:
        return model(**vars(ns))
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msgs.append(f"{flag(loc) if loc else ''}: {err['msg']}")
        parser.error("; ".join(msgs))
        raise  # unreachable: parser.error exits


def params_table(model: type[BaseModel]) -> str:
    """Markdown table of a job's parameters (for docs/reference/jobs.md)."""
    rows = ["| flag | default | description |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else f"`{_show_default(field.default)}`"
        rows.append(f"| `{flag(name)}` | {default} | {field.description or ''} |")
    return "\n".join(rows)
