"""Parameter declarations → CLI flags, validation, hashing; table-name safety."""

import datetime as dt

import pytest

from recfactory.features.synthetic import SyntheticSpec
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
            "--synthetic",
            "events=500,days=7",
        ]
    )
    assert p.as_of == dt.date(2026, 11, 28)
    assert p.seed == 7 and p.event_types == ["click", "purchase"]
    assert p.check_orphans is False
    spec = SyntheticSpec.parse(p.synthetic, p.seed)
    assert (spec.events, spec.days, spec.seed, spec.n_items) == (500, 7, 7, 100)
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
        (
            ["--as-of", "2026-11-28", "--dataset", "synthetic", "--synthetic", "event=5"],
            "unknown synthetic parameter 'event'",
        ),
        (
            ["--as-of", "2026-11-28", "--dataset", "synthetic", "--synthetic", "events=0"],
            "events: Input should be greater",
        ),
        (["--as-of", "2026-11-28", "--dataset", "synthetic", "--synthetic", "seed=3"], "--seed"),
        (["--as-of", "2026-11-28", "--synthetic", "events=5"], "--synthetic needs --dataset synthetic"),
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


def _specs():
    """Every transform spec of the libraries (features, graph, tokenizers)."""
    import importlib
    import pkgutil

    from recfactory.features.spec import Spec

    for pkg in ("features", "graph", "tokenizers"):
        root = importlib.import_module(f"recfactory.{pkg}")
        for m in pkgutil.iter_modules(root.__path__):
            importlib.import_module(f"recfactory.{pkg}.{m.name}")
    seen, todo = [], [Spec]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.split(".")[1] in ("features", "graph", "tokenizers") and sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def test_every_parameter_is_declared_once_with_one_default():
    """A job's Params inherit the specs of its transforms (no `*_spec()` mapper copies fields
    between two declarations): every field, and so its default, is declared by exactly one class
    of the Params' bases."""
    from recfactory.jobs.runtime.job import JOBS, load_job

    specs = _specs()
    assert len(specs) >= 10, specs
    twice, mappers, inherited = [], [], 0
    for name in JOBS:
        P = load_job(name).Params
        mappers += [f"{name}.{m}" for m in vars(P) if m.endswith("spec") and callable(getattr(P, m))]
        for field in P.model_fields:
            owners = [c.__name__ for c in P.__mro__ if field in vars(c).get("__annotations__", {})]
            if len(owners) != 1:
                twice.append(f"{name}.{field}: {owners}")
        inherited += sum(issubclass(P, spec) for spec in specs)
    assert not twice and not mappers, (twice, mappers)
    assert inherited >= 12
