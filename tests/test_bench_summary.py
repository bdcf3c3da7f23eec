"""The bench run's summary (`make bench`'s last step) on stage files of known content: ratios and
which side is better, files of another bench run left out and named, missing stages named."""

from __future__ import annotations

import json

from recfactory.jobs.runtime.bench import STAGES, summarize


def _files(out, run):
    data = {
        "similarity-small": {"spark_s": 4.0, "scipy_s": 8.0, "exact_agreement": True, "lists": 1200},
        "graph-small": {
            "walks_per_s": {"ours_unweighted": 900.0, "pyg_torch_cluster_unweighted": 600.0},
            "throughput_walks": 10,
            "walk_length": 20,
            "ours_skipgram_s": 3.0,
            "gensim_s": None,
            "gensim_skipped": "gensim not installed",
            "ours_hr@20": 0.1,
            "gensim_hr@20": None,
        },
        "gbdt-small": {
            "spark_cores": 2,
            "job_rows_per_s_per_core": 70_000,
            "raw_rows_per_s_per_core": 100_000,
            "encode_rows_per_s_per_core": 90_000,
            "encode_ratio": 0.9,
            "rows": 100_000,
            "trees": 200,
        },
        "e2e-small": {"tasks": 13, "airflow_s": 600.0, "pipeline_s": 300.0, "airflow_skipped": None, "events": 100_000},
        "content-clothing": {
            "in_process": {"minilm-onnx@1": 50.0, "minilm-st@1": 25.0},
            "cosine_onnx_vs_st": {"mean": 0.99, "min": 0.97},
        },
    }
    for stem, res in data.items():
        res["bench_run"] = run if stem != "content-clothing" else "an-older-run"
        (out / f"{stem}.json").write_text(json.dumps(res))


def test_summary_ratios_sides_and_what_did_not_run(tmp_path):
    _files(tmp_path, "r1")
    res = summarize("small", "r1", out=tmp_path)
    rows = {(r["stage"], r["unit"]): r for r in res["rows"]}
    sim = rows[("similarity", "s")]
    assert sim["ratio"] == 0.5 and sim["ours_better"] is True and "agree exactly: True" in sim["quality"]
    walks = rows[("graph", "walks/s")]
    assert walks["ratio"] == 1.5 and walks["ours_better"] is True
    sg = rows[("graph", "s")]
    assert sg["ratio"] is None and sg["ours_better"] is None and sg["quality"] == "gensim not installed"
    leaves = rows[("gbdt", "rows/s/core")]
    assert leaves["ratio"] == 0.7 and leaves["ours_better"] is False
    e2e = rows[("end_to_end", "s")]
    assert e2e["ratio"] == 2.0 and e2e["ours_better"] is False
    st = res["stages"]
    assert st["content"]["status"].startswith("not run in bench run r1") and "an-older-run" in st["content"]["status"]
    assert st["sids"]["status"] == "not run" and st["pipeline"]["status"] == "not run"
    assert set(st) == set(STAGES)
    md = (tmp_path / "results-small.md").read_text()
    assert "| [similarity](similarity-small.md) |" in md and "| 0.5 | ours |" in md
    assert "Not in this run: sids (not run); content (not run in bench run r1" in md
    assert json.loads((tmp_path / "results-small.json").read_text())["bench_run"] == "r1"


def test_summary_without_a_run_id_takes_every_file(tmp_path):
    _files(tmp_path, "r1")
    res = summarize("small", None, out=tmp_path)
    assert res["stages"]["content"]["status"] == "ran"
    assert any(r["stage"] == "content" and r["ratio"] == 2.0 for r in res["rows"])
