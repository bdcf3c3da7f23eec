"""The run report (`recfactory report`): layout, escaping and the pure sections on small frames, a report on a warehouse
that has only ingest's tables (the missing sections say which job builds them), and — in
test_dags, after the daily DAG — the full report of a pipeline run opened in headless Chromium."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from recfactory.jobs.report import SECTIONS
from recfactory.jobs.reporting.html import table
from recfactory.jobs.reporting.runs import layered_layout


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
    pos = layered_layout(g)
    assert set(pos) == set(g)
    assert all(pos[a][1] < pos[b][1] for a, b in g.edges)
    assert len(set(pos.values())) == len(pos)


def test_layered_layout_orders_a_layer_by_its_parents_to_avoid_crossings():
    # two chains: whichever side a starts on, its descendants stay on that side
    g = nx.DiGraph([("a", "a_child"), ("b", "b_child"), ("a_child", "a_grand"), ("b_child", "b_grand")])
    pos = layered_layout(g)
    left = pos["a"][0] < pos["b"][0]
    assert (pos["a_child"][0] < pos["b_child"][0]) == left and (pos["a_grand"][0] < pos["b_grand"][0]) == left


def test_tables_escape_text_and_format_numbers():
    html = table(
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


def test_nearest_by_cosine_over_partitions_equals_brute_force():
    from recfactory.jobs.reporting.neighbors import nearest_by_cosine, top_k_lists

    rng = np.random.default_rng(3)
    ids = [f"i{j:02d}" for j in range(40)]
    vecs = rng.normal(size=(40, 6))
    rows = [{"item_id": i, "vector": v.tolist()} for i, v in zip(ids, vecs, strict=True)]
    queries = pd.DataFrame({"item_id": ids[:3], "vector": [v.tolist() for v in vecs[:3]]})
    k = 5
    # three "partitions", each giving its own top k per query, merged
    cand = [c for part in (rows[:13], rows[13:27], rows[27:]) for c in nearest_by_cosine(queries, part, k)]
    got = top_k_lists(cand, k)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for qi, q in enumerate(ids[:3]):
        scores = unit @ unit[qi]
        order = sorted((j for j in range(40) if j != qi), key=lambda j: (-scores[j], ids[j]))
        assert got[q] == [ids[j] for j in order[:k]]


def test_the_quarantine_section_reconciles_ingest_and_plots_only_when_rows_were_set_aside():
    from recfactory.jobs.reporting.quarantine import quarantine_section

    tables = pd.DataFrame(
        [
            {"table": "events_quarantine", "rows": 3, "note": ""},
            {"table": "sid_quarantine", "rows": None, "note": "not built"},
        ]
    )
    reasons = pd.DataFrame(
        [
            {"table": "events_quarantine", "reason": "BAD_DWELL", "rows": 2},
            {"table": "events_quarantine", "reason": "NULL_KEY", "rows": 1},
        ]
    )
    counts = {"events_input": 10, "events_clean": 7, "events_quarantine": 3, "events_backdated": 4}
    r = quarantine_section(tables, reasons, counts, dt.date(2025, 6, 30))
    assert [name for name, _ in r.figures] == ["quarantine_reasons.png"]
    assert "input = clean + quarantined: <b>yes</b>" in r.html and "4 events published for dates before" in r.html
    assert r.html.index("BAD_DWELL") < r.html.index("NULL_KEY")  # most rows first
    counts["events_clean"] = 6
    empty = quarantine_section(tables, reasons.iloc[:0], counts, dt.date(2025, 6, 30))
    assert empty.figures == [] and "<b>NO</b>" in empty.html and "No row was quarantined" in empty.html


def test_the_sid_section_reads_one_generation_and_names_every_level():
    from recfactory.jobs.reporting.sids import WHOLE_SID, sids_section

    def level(gen, lv, size):
        return {
            "generation": gen,
            "level": lv,
            "codebook_size": size,
            "items": 100.0,
            "utilization": 0.5,
            "perplexity": size / 3,
            "gini": 0.2,
            "top_token_share": 0.1,
            "max_code_size": 9.0,
            "relative_recon_error": 0.3,
            "prefix_recall": 0.4,
            "prefix_recall_random": 0.1,
        }

    whole = {k: 0.01 for k in WHOLE_SID} | {"generation": "g2", "level": 0, "items": 100.0}
    met = pd.DataFrame([level("g1", 1, 4), level("g2", 1, 8), level("g2", 2, 16), whole])
    counts = pd.DataFrame({"pos": [0, 0, 1], "code": [1, 2, 5], "count": [60, 40, 100]})
    r = sids_section(met, counts)
    assert [name for name, _ in r.figures] == ["sid_codes.png"]
    assert "Generation g2" in r.html and "2 levels" in r.html and "collision_rate_after" in r.html
    assert "fit_seconds" not in r.html  # timings are not quality


def test_embedding_maps_project_seeded_and_colour_the_most_frequent_categories():
    from recfactory.jobs.reporting.maps import maps_section, project

    rng = np.random.default_rng(0)
    ids = [f"i{j:03d}" for j in range(80)]
    frame = pd.DataFrame({"item_id": ids, "vector": list(rng.normal(size=(80, 60)))})
    cats = pd.Series(["a"] * 40 + ["b"] * 30 + ["c"] * 10, index=ids)
    for how in ("tsne", "pca"):
        xy = project(np.stack(frame["vector"].to_numpy()), how, seed=7)
        assert xy.shape == (80, 2) and np.isfinite(xy).all()
        assert np.array_equal(xy, project(np.stack(frame["vector"].to_numpy()), how, seed=7))  # seeded
    r = maps_section(
        [("graph: x", frame), ("aligned", frame.iloc[::-1])], cats, colored=2, projection="pca", seed=7, sample=80
    )
    assert [name for name, _ in r.figures] == ["embedding_maps.png"]
    assert "PCA of L2-normalised vectors" in r.html and "the 2 most frequent categories coloured" in r.html
    legend = [t.get_text() for t in r.figures[0][1].legends[0].get_texts()]
    assert legend == ["other", "a", "b"]


@pytest.mark.spark
def test_a_report_of_a_warehouse_with_only_ingest_names_the_jobs_to_run(
    spark, movielens_run, tmp_path, chromium, capsys
):
    from deltalake import DeltaTable

    from recfactory.jobs.runtime.job import run_job

    src, _ = movielens_run
    wh = tmp_path / "wh"
    # ingest's tables only (other tests add tables to the shared warehouse), copied: it stays as they expect
    for name in ("_runs", "events_clean", "events_quarantine", "items", "items_quarantine"):
        shutil.copytree(Path(src) / name, wh / name)
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


def test_the_quality_section_shows_lightgcns_u2i_beside_its_baselines():
    from recfactory.jobs.reporting.html import Missing
    from recfactory.jobs.reporting.quality import quality_section

    sim = pd.DataFrame(
        [
            {"algo": a, "k": k, "hit_rate": 0.1, "coverage": 0.2, "users": 50}
            for a in ("swing", "popularity")
            for k in (10, 20)
        ]
    )
    rows = [("next_item", "deepwalk", k, 0.2, None, 40, np.nan) for k in (10, 20)]
    rows += [
        ("u2i", m, k, 0.1 * (i + 1), 0.3, 942, 0.01 * (i + 1) + k / 1000)
        for i, m in enumerate(("lightgcn", "popularity", "itemcf"))
        for k in (10, 20)
    ]
    graph = pd.DataFrame(rows, columns=["split", "method", "k", "hit_rate", "coverage", "pairs", "ndcg"])
    html = quality_section(sim, graph, Missing("alignment_metrics does not exist")).html
    assert "User to item" in html and "942 users" in html
    u2i = html[html.index("User to item") :]
    for col in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "lightgcn", "itemcf", "popularity"):
        assert col in u2i, col
    assert "<td>lightgcn</td><td>0.1000</td><td>0.1000</td><td>0.0200</td><td>0.0300</td>" in u2i  # recall, NDCG
    # a graph table without the u2i split (LightGCN off): no U2I block
    assert "User to item" not in quality_section(sim, graph[graph["split"] != "u2i"], Missing("x")).html
