"""README stays true: every job, each of its flags, and every output table is documented."""

from pathlib import Path

import pytest

from recfactory.jobs.runtime.job import JOBS, RUNS_TABLE, load_job

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_flag_and_output_is_in_the_readme(name):
    job = load_job(name)
    assert f"### `{name}`" in README
    section = README.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
    for field in job.Params.model_fields:
        assert f"`--{field.replace('_', '-')}`" in section, f"{name}: --{field} undocumented"
    for table in job.outputs:
        assert f"`{table}`" in README.split("## Tables", 1)[1], f"table {table} undocumented"


def test_runs_table_and_commands_documented():
    assert f"`{RUNS_TABLE}`" in README
    assert "make run" in README and "make test" in README


def test_every_quarantine_reason_is_listed_with_an_example():
    from recfactory.features.schema import EVENT_REASONS, ITEM_REASONS, reasons_table

    assert reasons_table() in README
    for reasons in (EVENT_REASONS, ITEM_REASONS):
        assert all(when and example for when, example in reasons.values())
