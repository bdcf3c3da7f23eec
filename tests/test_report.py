"""The run report (`recfactory report`): layout and escaping on small inputs, a report on a warehouse
that has only ingest's tables (the missing sections say which job builds them), and — in
test_dags, after the daily DAG — the full report of a pipeline run opened in headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import networkx as nx
import pandas as pd
import pytest

from recfactory.jobs.report import SECTIONS, _layered_layout, _table


def test_layered_layout_draws_every_edge_downwards_and_no_two_nodes_on_one_spot():
    g = nx.DiGraph(
        [
            ("src\nv0", "ingest"),
            ("ingest", "events\nv1"),
            ("ingest", "items\nv1"),
            ("events\nv1", "sessions_job"),
            ("items\nv1", "sessions_job"),
            ("sessions_job", "sessions\nv3"),
            ("events\nv1", "similarity"),
            ("similarity", "item_similarity\nv2"),
            ("sessions\nv3", "report"),
            ("item_similarity\nv2", "report"),
        ]
    )
    pos = _layered_layout(g)
    assert set(pos) == set(g)
    assert all(pos[a][1] < pos[b][1] for a, b in g.edges)
    assert len(set(pos.values())) == len(pos)


def test_layered_layout_orders_a_layer_by_its_parents_to_avoid_crossings():
    # two chains: whichever side a starts on, its descendants stay on that side
    g = nx.DiGraph([("a", "a_child"), ("b", "b_child"), ("a_child", "a_grand"), ("b_child", "b_grand")])
    pos = _layered_layout(g)
    left = pos["a"][0] < pos["b"][0]
    assert (pos["a_child"][0] < pos["b_child"][0]) == left and (pos["a_grand"][0] < pos["b_grand"][0]) == left


def test_tables_escape_text_and_format_numbers():
    html = _table(
        pd.DataFrame(
            {
                "title": ["<script>alert(1)</script>", "A & B"],
                "n": [1234567, 3],
                "x": [0.123456, float("nan")],
                "size": [256.0, 1682.0],
                "r": [0.0, 0.5],
            }
        )
    )
    assert "<script>" not in html and "&lt;script&gt;" in html and "A &amp; B" in html
    assert "1,234,567" in html and "0.1235" in html and "–" in html
    assert "<td>256</td>" in html and "<td>1,682</td>" in html  # whole-number float column
    assert "<td>0.0000</td>" in html and "<td>0.5000</td>" in html


@pytest.mark.spark
def test_a_report_of_a_warehouse_with_only_ingest_names_the_jobs_to_run(
    spark, movielens_run, tmp_path, chromium, capsys
):
    from deltalake import DeltaTable

    from recfactory.jobs.runtime.job import run_job

    src, _ = movielens_run
    wh = tmp_path / "wh"
    # ingest's tables only (other tests add tables to the shared warehouse), copied: it stays as they expect
    for table in ("_runs", "events_clean", "events_quarantine", "items", "items_quarantine"):
        shutil.copytree(Path(src) / table, wh / table)
    out = tmp_path / "report"
    ctx = run_job("report", ["--warehouse", str(wh), "--as-of", "1998-04-30", "--output-dir", str(out)], spark=spark)
    index = DeltaTable(str(wh / "report_index")).to_pandas()
    assert len(index) == 1 and index["path"][0] == f"{out}/index.html"
    missing = list(index["missing_sections"][0])
    assert missing == ["Item-to-item quality", "Neighbor examples", "Embedding maps", "Semantic IDs", "GBDT"]
    assert ctx.row_counts["sections"] == len(SECTIONS) - len(missing)
    page = chromium(out / "index.html", tmp_path / "screenshot.png")
    with capsys.disabled():  # in the test output even when it passes
        print(f"\nscreenshot of the report: {tmp_path / 'screenshot.png'}")
    assert page["ok"] and page["problems"] == [] and page["broken"] == []
    assert page["headings"] == list(SECTIONS)
    text = " ".join(page["missing"])
    for job in ("build_similarity", "build_graph_embeddings", "build_sids", "train_gbdt"):
        assert job in text
    # what ingest did is there: its run, the lineage from the package files, no quarantined row
    html = (out / "index.html").read_text()
    assert "ml-100k.inter" in html and "events: input = clean + quarantined: <b>yes</b>" in html
    assert sorted(p.name for p in out.glob("*.png")) == ["lineage.png", "runs_durations.png"]
    # the report's inputs are pinned like every job's
    runs = DeltaTable(str(wh / "_runs")).to_pandas()
    rep = runs[runs["job"] == "report"].iloc[0]
    assert {i["name"] for i in rep["inputs"]} >= {"_runs", "events_quarantine", "items_quarantine"}
