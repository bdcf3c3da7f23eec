"""The pipelines as data: flags from the jobs' declarations, dependencies from their tables."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from recfactory.jobs.runtime.job import JOBS, RUNS_TABLE, load_job
from recfactory.jobs.runtime.params import parse_params
from recfactory.jobs.runtime.pipeline import (
    DAILY,
    PIPELINES,
    WEEKLY,
    Step,
    parse_overrides,
    step_params,
    to_argv,
    upstream,
)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_to_argv_parses_back_to_the_same_parameters_for_every_job(job):
    cls = load_job(job)
    params = step_params(Step(job), "1998-04-30", "/tmp/wh")
    for only_set in (False, True):
        argv = to_argv(params, only_set=only_set)
        assert parse_params(cls.Params, argv, job, "") == params
    assert to_argv(params, only_set=True) == ["--warehouse=/tmp/wh", "--as-of=1998-04-30"]


def test_to_argv_round_trips_lists_bools_and_nones():
    s = Step("build_sids", params={"new_generation": True, "codebook_sizes": [16, 16, 16], "drop_levels": []})
    p = step_params(s, "1998-04-30", "wh", {"remove_top_tokens": 2})
    argv = to_argv(p, only_set=True)
    assert "--new-generation" in argv and "--codebook-sizes=16,16,16" in argv and "--remove-top-tokens=2" in argv
    assert parse_params(load_job("build_sids").Params, argv, "x", "") == p
    q = step_params(Step("build_gbdt_leaves"), "1998-04-30", "wh", {"model_version": None})
    assert (
        "--model-version=none" in to_argv(q)
        and parse_params(load_job("build_gbdt_leaves").Params, to_argv(q), "x", "") == q
    )


def test_bad_overrides_are_refused_naming_the_task_and_the_parameter():
    with pytest.raises(ValueError, match=r"build_sids \(build_sids\) has no parameter\(s\) \['codebook_size'\]"):
        step_params(Step("build_sids"), "1998-04-30", "wh", {"codebook_size": [8]})
    with pytest.raises(ValueError, match=r"train_gbdt \(train_gbdt\): --num-trees: "):
        step_params(Step("train_gbdt"), "1998-04-30", "wh", {"num_trees": 0})
    with pytest.raises(ValueError, match="set per run"):
        step_params(Step("train_gbdt"), "1998-04-30", "wh", {"as_of": "1999-01-01"})
    with pytest.raises(ValueError, match="JSON object"):
        parse_overrides('{"train_gbdt": 3}')


def test_the_shipped_dataset_confs_are_valid_overrides():
    """`make run --params @jobs/conf/<dataset>.json`: every shipped file parses and each override
    is a parameter of its task."""
    confs = sorted((Path(__file__).resolve().parents[1] / "jobs" / "conf").glob("*.json"))
    assert confs
    steps = {s.task_id: s for s in DAILY}
    for path in confs:
        for task, override in parse_overrides(f"@{path}").items():
            step_params(steps[task], "1998-04-30", "wh", override)


def _reference_upstream(steps):
    """Brute force: a step depends on every earlier step that outputs a table it reads."""
    out = {}
    for i, s in enumerate(steps):
        cls = load_job(s.job)
        reads = set(cls.input_tables(step_params(s, "2000-01-01", "wh"))) - set(cls.outputs)
        deps = set()
        for e in steps[:i]:
            if reads & set(load_job(e.job).outputs):
                deps.add(e.task_id)
        if s.last:  # every earlier step nothing else waits for
            waited = set().union(*out.values()) if out else set()
            deps = {e.task_id for e in steps[:i]} - waited
        out[s.task_id] = sorted(deps)
    return out


def test_daily_dependencies_follow_the_tables_each_job_reads():
    deps = upstream(DAILY)
    assert deps == _reference_upstream(DAILY)
    assert deps["ingest"] == []
    assert deps["build_sids"] == ["align_embeddings", "build_similarity"]
    assert deps["build_gbdt_leaves"] == ["build_training_samples", "train_gbdt"]
    # the report waits for every other step, through the steps nothing else waits for
    g = nx.DiGraph([(d, t) for t, ds in deps.items() for d in ds])
    assert nx.ancestors(g, "report") == {s.task_id for s in DAILY} - {"report"}
    assert deps["report"] == ["build_cross_stats", "build_gbdt_leaves", "build_sequences", "build_sids"]
    assert set(deps["align_embeddings"]) >= {"build_content_embeddings", "build_similarity", "build_graph_embeddings"}
    # every table a daily step reads is written by an earlier daily step
    written = set()
    for s in DAILY:
        cls = load_job(s.job)
        reads = set(cls.input_tables(step_params(s, "2000-01-01", "wh"))) - set(cls.outputs) - {RUNS_TABLE}
        assert reads <= written, (s.task_id, reads - written)
        written |= set(cls.outputs)
    assert upstream(WEEKLY) == {"refit_sids": [], "refit_gbdt": []}


def test_params_choose_inputs_and_so_dependencies():
    p = {
        s.task_id: step_params(
            s, "2000-01-01", "wh", {"embeddings": "graph_embeddings"} if s.job == "build_sids" else None
        )
        for s in DAILY
    }
    assert upstream(DAILY, p)["build_sids"] == ["build_graph_embeddings", "build_similarity"]
    assert set(PIPELINES) == {"daily", "weekly"}


# `recfactory pipeline` in one process, its steps and a failed gate: test_gbdt_jobs (on its samples)
