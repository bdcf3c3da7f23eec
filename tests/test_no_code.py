"""No parameter runs as code: row filters, plug-in class paths and run-conf overrides are parsed as
data and checked, never evaluated (hostile rows in the input: test_hostile_input.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from recfactory.features.filters import RowFilter, parse_filter


def test_filters_parse_as_data_and_refuse_anything_else():
    f = parse_filter(
        "method = 'deepwalk' and dim != 0 and encoder in (minilm-onnx, \"it's\") and ds not in ('2025-01-01')"
    )
    assert isinstance(f, RowFilter) and [c.op for c in f.clauses] == ["=", "!=", "in", "not in"]
    assert f.clauses[2].values == ("minilm-onnx", "it's") and parse_filter(str(f)) == f
    for bad in [
        "raise_error(reflect('java.lang.System','getenv','SOME_SECRET')) IS NULL",
        "method = 'a' or 1=1",
        "1 = 1",
        "method = ",
        "method in ('a'",
        "method like 'a%'",
        "method = 'a'; drop table x",
        "`method` = 'a'",
        "",
        "method = lower('A')",
    ]:
        with pytest.raises(ValueError):
            parse_filter(bad)


@pytest.mark.spark
def test_a_filter_is_checked_against_the_schema_and_matches_a_pandas_reference(spark):
    from recfactory.features.filters import filter_column

    pdf = pd.DataFrame(
        {"method": ["deepwalk", "node2vec", "eges", None], "dim": [64, 64, 32, 8], "ok": [True, False, True, True]}
    )
    df = spark.createDataFrame(pdf)
    cases = {
        "method = deepwalk": pdf["method"] == "deepwalk",
        "method in (deepwalk, eges) and dim != 64": pdf["method"].isin(["deepwalk", "eges"]) & (pdf["dim"] != 64),
        "method not in (eges) and ok = true": pdf["method"].notna() & (pdf["method"] != "eges") & pdf["ok"],
    }
    for text, mask in cases.items():
        got = sorted(r["dim"] for r in df.where(filter_column(parse_filter(text), df.schema)).collect())
        assert got == sorted(pdf.loc[mask, "dim"]), text
    with pytest.raises(ValueError, match="no column 'vector'"):
        filter_column(parse_filter("vector = 1"), df.schema)
    with pytest.raises(ValueError, match="not a value of column 'dim'"):
        filter_column(parse_filter("dim = abc"), df.schema)


def test_a_hostile_embedding_filter_fails_validation_without_touching_the_environment(monkeypatch, capsys):
    from recfactory.jobs.runtime.cli import main

    monkeypatch.setenv("SOME_SECRET", "hunter2-do-not-leak")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "build_sids",
                "--as-of",
                "2025-06-30",
                "--embedding-filter",
                "raise_error(reflect('java.lang.System','getenv','SOME_SECRET')) IS NULL",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--embedding-filter" in err and "hunter2" not in err


def test_the_run_conf_may_not_set_restricted_parameters_unless_the_deployment_allows_them():
    from recfactory.jobs.runtime.pipeline import DAILY, check_run_conf

    steps = {s.task_id: s for s in DAILY}
    check_run_conf(steps["ingest"], {"max_quarantine_fraction": 0.5}, allow="")  # not restricted
    check_run_conf(steps["build_content_embeddings"], {"encoders": ["minilm-st"]}, allow="")  # a registered name
    for task, conf, named in [
        ("ingest", {"events_path": "/etc", "items_path": "/x"}, ["ingest.events_path", "ingest.items_path"]),
        ("report", {"output_dir": "/var/www"}, ["report.output_dir"]),
        ("build_sids", {"embedding_filter": "method = 'x'"}, ["build_sids.embedding_filter"]),
        ("build_content_embeddings", {"encoders": ["os:system"]}, ["build_content_embeddings.encoders"]),
        ("build_content_embeddings", {"image_root": "/"}, ["build_content_embeddings.image_root"]),
    ]:
        with pytest.raises(ValueError) as e:
            check_run_conf(steps[task], conf, allow="ingest.max_quarantine_fraction")
        assert all(n in str(e.value) for n in named) and "RECFACTORY_RUN_CONF_ALLOW=" in str(e.value)
        check_run_conf(steps[task], conf, allow=",".join(named))  # allowed
    check_run_conf(steps["report"], {"output_dir": "/tmp/r"}, allow="*")
