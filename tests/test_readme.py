"""The docs stay true: the README is a short entry point, the job reference is the jobs' own
declarations, every output table and quarantine reason is documented, and every link resolves
inside the repository."""

import re
from pathlib import Path

import pytest

from recfactory.jobs.runtime.attempts import ATTEMPTS_TABLE
from recfactory.jobs.runtime.cli import PARAMS_REFERENCE, params_reference
from recfactory.jobs.runtime.job import JOBS, RUNS_TABLE, load_job

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TABLES = (ROOT / "docs" / "reference" / "tables.md").read_text()
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_readme_is_an_entry_point():
    assert len(README.splitlines()) <= 250
    assert "make run" in README and "make test" in README


def test_the_job_reference_is_generated_from_the_declarations():
    text = (ROOT / PARAMS_REFERENCE).read_text()
    assert text == params_reference(), "docs/reference/jobs.md is stale: run `make params-doc`"


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_flag_and_output_is_documented(name):
    job = load_job(name)
    reference = (ROOT / PARAMS_REFERENCE).read_text()
    section = reference.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
    for field in job.Params.model_fields:
        assert f"`--{field.replace('_', '-')}`" in section, f"{name}: --{field} undocumented"
    tour = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
    for table in job.outputs:
        assert f"| `{table}` |" in TABLES, f"table {table} undocumented"
        assert f"`{table}`" in tour, f"table {table} missing from the README's tour"


def test_runs_and_attempts_tables_documented():
    for table in (RUNS_TABLE, ATTEMPTS_TABLE):
        assert f"| `{table}` |" in TABLES and f"`{table}`" in README


def test_every_quarantine_reason_is_listed_with_an_example():
    from recfactory.features.schema import EVENT_REASONS, ITEM_REASONS, reasons_table

    assert reasons_table() in TABLES
    for reasons in (EVENT_REASONS, ITEM_REASONS):
        assert all(when and example for when, example in reasons.values())
    # and the README's own short table names every one, each with an input that produces it
    section = README.split("### Quarantine reasons", 1)[1].split("\n#", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in section.splitlines() if line.startswith("| `")}
    assert set(rows) == {*EVENT_REASONS, *ITEM_REASONS}
    assert all(line.split("|")[3].strip() for line in rows.values())


def _anchors(md: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out, fence = set(), False
    for line in md.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#+ (.*)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(doc):
    md = doc.read_text()
    body = re.sub(r"```.*?```", "", md, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", body):
        assert not re.match(r"^[a-z]+:", target), f"{doc.name}: links outside the repository: {target}"
        path, _, frag = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.is_relative_to(ROOT) and dest.exists(), f"{doc.name}: broken link {target}"
        if frag and dest.suffix == ".md":
            assert frag in _anchors(dest.read_text()), f"{doc.name}: no heading for {target}"
