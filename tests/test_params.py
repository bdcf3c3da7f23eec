"""Parameter declarations → CLI flags, validation, hashing; table-name safety."""

import datetime as dt

import pytest

from recfactory.jobs.ingest import IngestParams
from recfactory.jobs.runtime.env import table_path, validate_table_name
from recfactory.jobs.runtime.params import params_hash, params_table, parse_params


def parse(argv):
    return parse_params(IngestParams, argv, prog="t", description="")


def test_flags_are_typed_and_defaulted():
    p = parse(
        [
            "--as-of",
            "2026-11-28",
            "--seed",
            "7",
            "--event-types",
            "click,purchase",
            "--no-check-orphans",
            "--dataset",
            "synthetic",
            "--synthetic-events",
            "500",
        ]
    )
    assert p.as_of == dt.date(2026, 11, 28)
    assert p.seed == 7 and p.event_types == ["click", "purchase"]
    assert p.check_orphans is False and p.synthetic_events == 500
    assert p.warehouse == "./warehouse" and p.dataset == "synthetic"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--as-of", "2026-13-01"], "--as-of"),
        (["--as-of", "2026-11-28", "--seed", "-1"], "--seed"),
        (["--as-of", "2026-11-28", "--dataset", "nope"], "invalid choice"),
        (["--as-of", "2026-11-28", "--events-path", "/x"], "--dataset tables"),
        (["--as-of", "2026-11-28", "--dataset", "tables", "--events-path", "/x"], "both"),
        (["--as-of", "2026-11-28", "--events-columns", "user_id"], "canonical=source"),
        (["--seed", "3"], "--as-of"),
    ],
)
def test_bad_flags_fail_with_a_message_naming_the_problem(argv, needle, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert needle in capsys.readouterr().err


def test_params_hash_ignores_warehouse_but_not_values():
    a = parse(["--as-of", "2026-11-28", "--warehouse", "/a"])
    b = parse(["--as-of", "2026-11-28", "--warehouse", "/b"])
    c = parse(["--as-of", "2026-11-28", "--seed", "1"])
    assert params_hash(a) == params_hash(b) != params_hash(c)


def test_params_table_lists_every_flag():
    table = params_table(IngestParams)
    for name in IngestParams.model_fields:
        assert f"`--{name.replace('_', '-')}`" in table


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x y", "..", "/etc"])
def test_table_names_cannot_escape_the_warehouse(bad):
    with pytest.raises(ValueError, match="invalid table name"):
        validate_table_name(bad)


def test_table_path_resolves_under_the_warehouse(tmp_path):
    assert table_path(str(tmp_path), "events_clean") == f"{tmp_path}/events_clean"
    assert table_path("s3a://bucket/wh/", "items") == "s3a://bucket/wh/items"


def test_arrow_uri_is_what_pyarrow_and_delta_rs_read():
    from recfactory.jobs.runtime.env import arrow_uri

    assert arrow_uri("s3a://bucket/wh", "_runs") == "s3://bucket/wh/_runs"
    assert arrow_uri("/data/wh", "_checkpoints", "align") == "/data/wh/_checkpoints/align"


def test_credentials_in_uris_never_reach_manifests():
    from recfactory.jobs.runtime.env import redact

    assert redact("s3a://AKIA:se%2Fcret@bucket/raw") == "s3a://***@bucket/raw"
    assert redact({"p": ["abfss://u:pw@acct/x", "/local/path@2"]}) == {"p": ["abfss://***@acct/x", "/local/path@2"]}


def test_no_parameter_has_two_defaults():
    """A job parameter that a transform's spec also declares (same name) has one default: the job's
    Params and the spec dataclass its `*_spec()` builds agree."""
    import dataclasses
    import inspect
    import re

    from recfactory.jobs.runtime.job import JOBS, load_job

    def norm(v):
        return tuple(v) if isinstance(v, list | tuple) else v

    disagree, checked = [], 0
    for name in JOBS:
        P = load_job(name).Params
        mod = inspect.getmodule(P)
        for m in (m for m in dir(P) if m.endswith("_spec") and callable(getattr(P, m))):
            for cls_name in set(re.findall(r"\b([A-Z]\w*Spec)\(", inspect.getsource(getattr(P, m)))):
                cls = getattr(mod, cls_name)
                for f in dataclasses.fields(cls):
                    if f.name not in P.model_fields:
                        continue
                    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    checked += 1
                    if norm(P.model_fields[f.name].default) != norm(default):
                        disagree.append(
                            f"{name}.{f.name}: {P.model_fields[f.name].default!r} vs {cls_name} {default!r}"
                        )
    assert checked > 20 and not disagree, disagree
